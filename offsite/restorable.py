"""Restorable points: for one volume (ShadowProtect) or backup definition (Macrium), the newest
point that can be restored from the offsite copy alone, and the first link missing when the
newest point at the source cannot be.

Pure: the names one group holds at the source and on the target come in, with the job's
rules; a `Point` goes out. The caller (agent/chains.py) knows both sides already: no round
trip is made for this.

ShadowProtect (reference/backup-files.md section 1). A point is restorable offsite when the
target holds, complete (every piece of the image, and its `.md5`), a path of images from the
chain's base to it, and the chain's `.spk` when the chain is encrypted. An image covers the
points since the previous image of its level or above (design, from ImageManager's
consolidation: a daily absorbs the intra-dailies since the previous daily, a weekly the
dailies since the previous weekly or monthly, a monthly those since the previous monthly, a
rolling file the monthlies before it); an original incremental covers one step (incrementals
are numbered one after another: `-i007` needs point 6, whatever file holds it), an old-style
differential (`-dNNN-i000`) the points since the base. An image known only by its `.md5` is
a link no side holds. The previous image is looked for among every image of the chain known at the source or on the
target, so a link that ImageManager has consolidated away and the job mirrored is not asked
for. That relies on ImageManager's lifecycle: a consolidated file (daily, weekly, monthly) is
removed only once a file of a higher level absorbed it, and monthlies are kept; a daily that
came and went while no one looked, with nothing known that absorbed it, cannot be told from
names (design, noted). With `replicate_base = false` the base is taken as offsite (seeded by
a shipped disk): `base_offsite` says so. Whether a file on the target is complete (its size
as sent) is the caller's `on_target`.

Macrium (section 3): the newest increment of a set whose files, and those of every earlier
increment (split files included), are all on the target, with the repository's information
file when the source has one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

from .backupfiles import REPOSITORY_INFO, BackupFile, Level, Role, classify

ZERO = (0, 0)


@dataclass(frozen=True)
class Point:
    chain: str  # the volume ("SRV01/C_VOL") or the backup definition's folder
    point: str | None  # the newest restorable point's image (its path), None when there is none
    time: float | None  # that image's modification time, epoch seconds
    missing: str | None  # the first absent link of the newest point at the source, if not restorable
    base_offsite: bool = True  # False: replicate_base = false, the base is taken as offsite

    def age(self, now: float) -> float | None:
        return None if self.time is None else round(max(0.0, now - self.time), 1)


def points_of(saved: object) -> list[Point]:
    """Restorable points as known.json keeps them (agent/report.py `remembered`), read back."""
    out = []
    for x in saved if isinstance(saved, list) else ():
        try:
            out.append(Point(str(x["chain"]), x.get("point"), x.get("time"), x.get("missing"),
                             bool(x.get("base_offsite", True))))
        except (TypeError, KeyError, AttributeError):
            continue  # written by another version: left out, the next look writes it again
    return out


def label(f: BackupFile) -> str:
    """The name a person knows a group by: "<folder>/<volume>", or the definition's folder."""
    folder = f.path[: f.path.rfind("/")] if "/" in f.path else ""
    if f.family == "macrium":
        return folder or "."
    name = f.path[len(folder) + 1 if folder else 0:]
    volume = name[:_volume_end(name)]
    return f"{folder}/{volume}" if folder else volume


def _volume_end(name: str) -> int:
    """Where the volume label ends in a ShadowProtect name: before its last "-b<digits>"."""
    low = name.casefold()
    i = low.rfind("-b")
    while i > 0 and not (i + 2 < len(low) and low[i + 2].isdigit()):
        i = low.rfind("-b", 0, i)
    return i


class _Chain:
    """One ShadowProtect chain's images (by stem) as the group's files give them."""

    def __init__(self) -> None:
        self.images: dict[str, list[BackupFile]] = {}  # stem -> its pieces
        self.md5: dict[str, BackupFile] = {}
        self.keys: list[BackupFile] = []

    def add(self, f: BackupFile) -> None:
        if f.role is Role.IMAGE:
            self.images.setdefault(f.stem, []).append(f)
        elif f.role is Role.MD5:
            self.md5[f.stem] = f
        elif f.role is Role.KEY:
            self.keys.append(f)

    def level(self, stem: str) -> Level:
        lv = self.images[stem][0].level
        assert lv is not None
        return lv

    def point(self, stem: str) -> tuple[int, int]:
        return self.images[stem][0].point

    def finish(self) -> None:
        """Each image's start, and the images by point: one pass in chain order. An image
        known only by its `.md5` (consolidated away, or lost) is a link too: one that no side
        holds, so a point past it is not restorable and `missing` names it."""
        for stem, md5 in self.md5.items():
            if stem not in self.images:
                ext = ".spf" if md5.level is Level.BASE else ".spi"
                self.images[stem] = [replace(md5, path=md5.path.rsplit(".", 1)[0] + ext, role=Role.IMAGE,
                                             key=(*md5.key[:3], int(Role.IMAGE), 0))]
        self.starts: dict[str, tuple[int, int]] = {}
        self.at: dict[tuple[int, int], list[str]] = {}
        last = {lv: ZERO for lv in Level}  # the newest point before this one at each level or above
        pending: list[str] = []
        for stem in sorted(self.images, key=lambda s: (self.point(s), self.level(s))):
            p, lv = self.point(stem), self.level(stem)
            if pending and self.point(pending[0]) != p:
                for done in pending:
                    if self.level(done) is not Level.BASE:
                        for up in Level:
                            if Level.INTRA <= up <= self.level(done):
                                last[up] = max(last[up], self.point(done))
                pending = []
            pending.append(stem)
            self.at.setdefault(p, []).append(stem)
            if lv is Level.BASE or (lv is Level.INTRA and p[1] == 0):  # an old-style differential: from the base
                self.starts[stem] = ZERO
            elif lv is Level.INTRA:  # incrementals are numbered one after another: the step before
                self.starts[stem] = (p[0], p[1] - 1)
            else:
                self.starts[stem] = last[lv]

    def start(self, stem: str) -> tuple[int, int]:
        """The point an image's restore starts from: what it covers begins after it."""
        return self.starts[stem]

    def links(self, stem: str) -> list[BackupFile]:
        """An image's files: its pieces and its .md5 (absent from the source too: still needed)."""
        return sorted(self.images[stem], key=lambda f: f.key) + ([self.md5[stem]] if stem in self.md5 else [])


def shadowprotect(files: Iterable[BackupFile], on_target: Callable[[str], bool], times: Mapping[str, float],
                  wanted: Callable[[BackupFile], bool], replicate_base: bool = True) -> Point | None:
    """One volume: `files` are its backup files at the source or on the target; `wanted` says
    whether the job's mode sends a file (the newest point at the source is among those)."""
    chains: dict[tuple, _Chain] = {}
    first: BackupFile | None = None
    for f in files:
        first = first or f
        chains.setdefault(f.chain, _Chain()).add(f)
    if first is None:
        return None
    best: tuple[float, str] | None = None
    missing: str | None = None
    newest_chain = max(chains)
    for key, c in sorted(chains.items()):
        c.finish()
        bases = [s for s in c.images if c.level(s) is Level.BASE]
        complete = {s for s in c.images if all(on_target(f.path) for f in c.links(s)) and s in c.md5}
        if not replicate_base:
            complete |= set(bases)
        keys_ok = all(on_target(k.path) for k in c.keys)
        reach: dict[tuple[int, int], str] = {}
        if keys_ok:
            for s in sorted(c.images, key=lambda s: (c.point(s), c.level(s))):
                if s in complete and (c.level(s) is Level.BASE or c.start(s) in reach):
                    reach[c.point(s)] = s  # the highest level at a point wins: the one ImageManager keeps
        if reach:
            stem = reach[max(reach)]
            path = min(c.images[stem], key=lambda f: f.key).path
            t = times.get(path)
            if best is None or (t or 0.0) >= best[0]:
                best = (t or 0.0, path)
        if key == newest_chain:
            missing = _first_missing(c, on_target, wanted, reach)
    if best is None:
        return Point(label(first), None, None, missing, replicate_base)
    return Point(label(first), best[1], times.get(best[1]), missing, replicate_base)


def _first_missing(c: _Chain, on_target: Callable[[str], bool], wanted: Callable[[BackupFile], bool],
                   reach: Mapping[tuple[int, int], str]) -> str | None:
    """The first link, in chain order, that the newest point the job sends is missing offsite."""
    sent = [s for s in c.images if wanted(c.images[s][0])]
    if not sent:
        return None
    top = max(sent, key=lambda s: (c.point(s), c.level(s)))
    if c.point(top) in reach:
        return None
    need: list[BackupFile] = list(c.keys)
    stem: str | None = top
    while stem is not None:
        need += c.links(stem)
        if stem not in c.md5:
            need.append(BackupFile(path=c.images[stem][0].path.rsplit(".", 1)[0] + ".md5", family="shadowprotect",
                                   chain=c.images[stem][0].chain, key=(*c.images[stem][0].key[:3], int(Role.MD5), 0),
                                   role=Role.MD5))
        if c.level(stem) is Level.BASE:
            break
        start = c.start(stem)
        at = [s for s in c.at.get(start, ()) if (c.level(s) is Level.BASE) == (start == ZERO)]
        # Prefer the image at that point that is offsite, then one the job sends.
        at.sort(key=lambda s: (all(on_target(f.path) for f in c.links(s)), wanted(c.images[s][0]), c.level(s)))
        stem = at[-1] if at else None
        if stem is None:
            return None  # the chain's start is known nowhere: nothing to name
    for f in sorted(need, key=lambda f: f.key):
        if not on_target(f.path):
            return f.path
    return None


def macrium(files: Iterable[BackupFile], on_target: Callable[[str], bool], times: Mapping[str, float],
            info: str | None = None) -> Point | None:
    """One backup definition's folder; `info` is the repository information file it needs
    (its path), when the source has one."""
    sets: dict[tuple, list[BackupFile]] = {}
    first: BackupFile | None = None
    for f in files:
        if f.chain[2] == "":
            continue  # the repository information file itself
        first = first or f
        sets.setdefault(f.chain, []).append(f)
    if first is None:
        return None
    info_ok = info is None or on_target(info)
    best: tuple[float, str] | None = None
    missing: str | None = None
    newest = max(sets, key=lambda k: max(times.get(f.path, 0.0) for f in sets[k]))
    for key, members in sets.items():
        members.sort(key=lambda f: f.point)
        ok: str | None = None
        gap: str | None = None
        for inc in sorted({f.point[0] for f in members}):
            absent = [f.path for f in members if f.point[0] == inc and not on_target(f.path)]
            if absent:
                gap = absent[0]
                break
            ok = max((f for f in members if f.point[0] == inc), key=lambda f: f.point).path
        if ok is not None and info_ok:
            t = times.get(ok, 0.0)
            if best is None or t >= best[0]:
                best = (t, ok)
        if key == newest:
            missing = gap or (None if info_ok else info)
    if best is None:
        return Point(label(first), None, None, missing)
    return Point(label(first), best[1], times.get(best[1]), missing)


def repository_info(paths: Iterable[str], folder: str) -> str | None:
    """The repository information file a definition's folder needs: the one in its nearest
    enclosing folder (Site Manager puts it at the repository's root)."""
    found = {(p[: p.rfind("/")] if "/" in p else "").casefold(): p for p in paths
             if p.rsplit("/", 1)[-1].casefold() == REPOSITORY_INFO.casefold()}
    at = folder.casefold()
    while True:
        if at in found:
            return found[at]
        if not at:
            return None
        at = at[: at.rfind("/")] if "/" in at else ""


def of_group(paths: Iterable[str], family: str, on_target: Callable[[str], bool], times: Mapping[str, float],
             wanted: Callable[[BackupFile], bool], replicate_base: bool = True, info: str | None = None) -> Point | None:
    """The restorable point of one group, from its paths (source and target)."""
    files = [f for f in (classify(p, family) for p in paths) if f is not None]
    if not files:
        return None
    if files[0].family == "macrium":
        return macrium(files, on_target, times, info)
    return shadowprotect(files, on_target, times, wanted, replicate_base)
