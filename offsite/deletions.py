"""Which deletions at the source the agent mirrors on its own, and which wait for a person.

SPEC section 8: only deletions the backup software explains are mirrored without a person.
- Consolidation (ShadowProtect): a file absorbed by a consolidated file of a higher level
  (the nearest of that level at the same or a later point of its chain) that is still at
  the source and already complete on the target, image and .md5. ImageManager deletes
  intra-dailies, dailies and weeklies this way, each level kept longer than the one below.
- Retention: a whole older chain of a volume while a newer chain of it is complete on the
  target (its base image and .md5), written after the old chain's last file.
- Macrium consolidates in place: an increment merged into a later file of its set that
  remains, or folded into the set's full backup rewritten after it (a synthetic full); a
  whole set while a newer set of its backup definition remains.
Everything else (the newest restore point of a chain, a whole volume or definition, a .md5
whose image remains, files of a folder that vanished) is held with its reason until
`offsite sync JOB --allow-deletes`. On top of that, `hold_reason` applies the job-wide
limits: more than max_deletes image deletions within 24 hours, or files changed at the
source after they were sent (source-changed), hold every mirrored deletion.

Pure: paths and facts come in, verdicts go out; nothing here reads the disk or the clock.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

from .backupfiles import BackupFile, Level, Role, classify

CONSOLIDATED = (Level.DAILY, Level.WEEKLY, Level.MONTHLY, Level.ROLLING)
WINDOW = 24 * 3600.0  # max_deletes counts the deletions mirrored within this long
SHOWN = 3  # held files named in a reason


@dataclass
class Verdict:
    """The deletions of one group (a volume, a backup definition)."""

    mirrored: list[str] = field(default_factory=list)  # explained: mirrored without a person
    held: dict[str, str] = field(default_factory=dict)  # path -> why a person must confirm it
    waiting: bool = False  # a deletion waits for the file that supersedes it to reach the target


def explain(gone: Iterable[str], source: Collection[str], target: Collection[str],
            folders: Collection[str] | None, family: str = "auto",
            mtimes: Mapping[str, int] | None = None, published: Mapping[str, float] | None = None,
            now: float = 0.0) -> Verdict:
    """Judge the deletion of each `gone` path (on the target, confirmed gone at the source)
    of ONE group, given the group's paths present at the `source` and on the `target`, the
    source's folders (casefolded; None when unknown), the files' modification times where
    known (the source's; for what is gone, the one recorded when it was sent), and when the
    files on the target were published (epoch seconds, where recorded) as of `now`."""
    facts = _Facts(source, target, family, mtimes or {}, published or {}, now)
    out = Verdict()
    for path in gone:
        f = classify(path, family)
        if f is None:
            continue
        if folders is not None and f.chain[1] != "." and f.chain[1] not in folders:
            why: str | None = f"its folder {path.rsplit('/', 1)[0]} vanished at the source"
        elif f.family == "macrium":
            why = facts.macrium(f)
        else:
            why = facts.shadowprotect(f)
        if why is None:
            out.mirrored.append(path)
        elif why == "":
            out.waiting = True
        else:
            out.held[path] = why
    return out


class _Facts:
    """What the rules ask of one group, indexed once: each judgement is then cheap."""

    def __init__(self, source: Collection[str], target: Collection[str], family: str,
                 mtimes: Mapping[str, int], published: Mapping[str, float], now: float) -> None:
        self.present, self.mtimes, self.published, self.now = set(source), mtimes, published, now
        self.files: dict[str, BackupFile] = {}
        for p in (*source, *target):
            f = classify(p, family)
            if f is not None:
                self.files[p] = f
        self.on_target = {p for p in target if p in self.files}
        present = [f for p, f in self.files.items() if p in self.present]
        self.chains_present = {f.chain for f in present}
        self.volumes_present = {f.chain[:3] for f in present}
        self.images_present = {(f.chain, f.stem): f.path for f in present if f.role is Role.IMAGE}
        self.md5_on_target = {(f.chain, f.stem) for p, f in self.files.items()
                              if p in self.on_target and f.role is Role.MD5}
        self.newest: dict[tuple, tuple] = {}  # chain -> key of its newest image on the target
        # chain -> level -> [(point, path)], sorted: the consolidated images known anywhere
        self.consolidated: dict[tuple, dict[int, list[tuple]]] = defaultdict(lambda: defaultdict(list))
        self.complete_bases: dict[tuple, dict[int, str]] = defaultdict(dict)  # volume -> base -> its image
        for p, f in self.files.items():
            if f.role is Role.IMAGE and p in self.on_target and f.key > self.newest.get(f.chain, ()):
                self.newest[f.chain] = f.key
            if f.family != "shadowprotect" or f.role is not Role.IMAGE:
                continue
            if f.level in CONSOLIDATED:
                self.consolidated[f.chain][int(f.level)].append((f.point, p))
            elif f.level is Level.BASE and p in self.present and self._complete_on_target(f):
                self.complete_bases[f.chain[:3]][f.chain[3]] = p
        for levels in self.consolidated.values():
            for files in levels.values():
                files.sort()
        self.newest_mtime: dict[tuple, int] = {}  # chain -> its newest file's modification time
        for p, f in self.files.items():
            if p in self.mtimes and self.mtimes[p] > self.newest_mtime.get(f.chain, -1):
                self.newest_mtime[f.chain] = self.mtimes[p]
        self.macrium_full: dict[tuple, str] = {}  # set -> its full, at the source and on the target
        self.macrium_later: dict[tuple, tuple] = {}  # set -> its latest key at the source and on the target
        for p, f in self.files.items():
            if f.family == "macrium" and p in self.present and p in self.on_target and f.chain[2]:
                if f.point[0] == 0:
                    self.macrium_full[f.chain] = p
                if f.key > self.macrium_later.get(f.chain, ()):
                    self.macrium_later[f.chain] = f.key

    def _settled(self, path: str) -> bool:
        """Has `path` been offsite for a day (WINDOW)? Unknown: no."""
        at = self.published.get(path)
        return at is not None and self.now - at >= WINDOW

    def _newer(self, path: str, than: tuple) -> bool:
        """Was `path` written after every file of chain `than`? (Both times known.)"""
        mine, theirs = self.mtimes.get(path), self.newest_mtime.get(than)
        return mine is not None and theirs is not None and mine > theirs

    def _complete_on_target(self, f: BackupFile) -> bool:
        return f.path in self.on_target and (f.chain, f.stem) in self.md5_on_target

    def shadowprotect(self, f: BackupFile) -> str | None:
        """None: explained; "": waits for the file that supersedes it; else why it is held."""
        if f.role in (Role.MD5, Role.BITMAP) and (f.chain, f.stem) in self.images_present:
            return f"{f.name} vanished while its image {self.images_present[(f.chain, f.stem)]} remains"
        if f.level is not Level.BASE and f.role is not Role.KEY:
            v = self._superseded(f)
            if v is None or isinstance(v, str):
                return v
        if f.chain not in self.chains_present and any(
                b > f.chain[3] and self._newer(base, f.chain) and self._settled(base)
                for b, base in self.complete_bases[f.chain[:3]].items()):
            # Retention: an older chain, while a newer one of its volume is offsite, its base
            # written after the old chain's last file (a chain renamed to look newer is not)
            # and offsite for a day (ransomware's renamed, rewritten chain appears at once).
            return None
        return self._why_held(f)

    def _superseded(self, f: BackupFile) -> str | None | bool:
        """The files that absorbed f: at each consolidated level above f's, the nearest file of
        that level at f's point or later (a daily covers its day's incrementals, a weekly its
        week's dailies, and so on), wherever it is known, at the source or on the target.
        One still at the source and complete on the target explains f's deletion (None); one
        still at the source but not yet offsite makes f wait for it (""); False when none is
        at the source. ImageManager keeps each level longer than the one below it, so what
        absorbed f outlives f at the source: a file that vanished with f (a chain renamed by
        ransomware) explains nothing, and neither does a later consolidation that never
        covered f."""
        covering = []
        for level, files in self.consolidated.get(f.chain, {}).items():
            # A rolling file is absorbed by the next rolling one (ImageManager rolls monthlies
            # into one -cr, made anew each time); every other level by a higher one.
            if level > int(f.level or 0):
                i = bisect.bisect_left(files, (f.point,))  # at f's point or later
            elif level == int(f.level or 0) == int(Level.ROLLING) and f.role is not Role.KEY:
                i = bisect.bisect_right(files, (f.point, "\uffff"))  # strictly later
            else:
                continue
            if i < len(files):
                covering.append(self.files[files[i][1]])
        present = [g for g in covering if g.path in self.present]
        if not present:
            return False
        return None if any(self._complete_on_target(g) for g in present) else ""

    def _why_held(self, f: BackupFile) -> str:
        name = f.name[: f.name.rfind(".")]  # an image and its sidecars: one reason
        if f.chain[:3] not in self.volumes_present:
            return f"the whole volume {f.name.split('-b')[0]} vanished at the source"
        if f.chain not in self.chains_present:
            return (f"the chain {f.name.split('-b')[0]}-b{f.chain[3]:03d} vanished at the source while no newer "
                    f"chain of its volume is complete on the target")
        if f.role is not Role.KEY and f.key[:3] >= self.newest.get(f.chain, ())[:3]:
            return f"{name} is the newest restore point of its chain"
        return f"{name} is not superseded by a consolidated file complete on the target"

    def macrium(self, f: BackupFile) -> str | None:
        """Macrium consolidates by changing files in place: a merge folds earlier increments
        into a later file (which remains), a synthetic full folds the oldest increment into the
        full (rewritten after it). A whole set goes by retention while a newer set of its
        backup definition remains. Anything else, and anything whose times are not known,
        waits for a person."""
        if f.chain[2] == "":
            return f"{f.name} (the repository's map of backup definitions) vanished at the source"
        if f.chain in self.chains_present:
            if f.point[0] > 0:
                if self.macrium_later.get(f.chain, ()) > f.key:
                    return None  # merged into a later file of its set, which is offsite
                full = self.macrium_full.get(f.chain)
                mine = self.mtimes.get(f.path)
                if full is not None and mine is not None and self.mtimes.get(full, -1) > mine:
                    return None  # folded into the full backup, rewritten since (a synthetic full)
                return f"{f.name} is the newest file of its backup set, and its full backup was not rewritten since"
            return f"{f.name}, the full backup of its set, vanished while other files of the set remain"
        if any(chain != f.chain and self._newer(full, f.chain) for chain, full in self.macrium_full.items()
               if self.files[full].group == f.group):
            return None  # retention: a whole set, while a newer set of the definition is offsite
        where = f.path.rsplit("/", 1)[0] if "/" in f.path else "the top folder"
        return f"the whole backup definition in {where} vanished at the source, or a set with no newer set there"


def recent(times: Iterable[float], now: float) -> int:
    """How many of these deletions (epoch seconds) were mirrored within the last 24 hours."""
    return sum(1 for t in times if now - t < WINDOW)


@dataclass(frozen=True)
class Decision:
    go: frozenset[str]  # deletions that may be made now
    held: int  # deletions that wait for a person
    reason: str | None  # why they wait


def decide(mirrored: Collection[str], images: int, held: Mapping[str, str], recent_images: int,
           changed: int, has_source: bool, max_deletes: int, allow_deletes: bool,
           retention: Collection[str] = ()) -> Decision:
    """The job's deletions: `mirrored` are explained (`images` of them images), `held` are
    not (each with its reason), `retention` are daily-monthly's own rule. Files changed at
    the source hold everything, allowed or not, until they are restored at the source or
    accepted, and so does a source that holds no backup file at all; `allow_deletes` (a
    person looked) lets the rest go; otherwise explained deletions go unless they would make
    more than max_deletes image deletions within 24 hours, which retention does not count."""
    every = frozenset(mirrored) | frozenset(held) | frozenset(retention)
    if not every:
        return Decision(frozenset(), 0, None)
    if changed:
        return Decision(frozenset(), len(every), (
            f"{changed} file(s) changed at the source after they were sent (source-changed): no deletion is "
            f"mirrored until they are restored at the source or accepted"))
    if allow_deletes:
        return Decision(every, 0, None)
    if not has_source:
        return Decision(frozenset(), len(every), "the source folder holds no backup files")
    reasons = []
    go = frozenset(mirrored) | frozenset(retention)
    if images and recent_images + images > max_deletes:
        go = frozenset(retention)
        reasons.append(f"{recent_images + images} image deletions within 24 hours exceed max_deletes = "
                       f"{max_deletes}")
    if held:
        why = sorted(set(held.values()))
        more = f"; and {len(why) - SHOWN} more" if len(why) > SHOWN else ""
        reasons.append(f"{len(held)} deletion(s) not explained by the backup software's consolidation or "
                       f"retention: " + "; ".join(why[:SHOWN]) + more)
    return Decision(go, len(every) - len(go), "; ".join(reasons) or None)
