"""The source view: every backup file in a managed folder, and whether it is complete.

Whether a file is complete is ready.py's rules; the view keeps their clock: a file is
settled when its size and mtime have not changed for the job's `settle` period, and a file
seen for the first time whose mtime is already older than `settle` counts as settled.
Events only say where to look; `scan()` walks the whole folder (listing.py) and repairs
what events missed. Absence is not evidence (SPEC section 8): a file missed by a listing is
unknown until an error-free listing of its folder at least `settle` later confirms it gone,
and everything under a folder that fails to read (EIO, EACCES, ESTALE, ...) is unknown until
it reads again (`unreadable`, `is_unknown`). Symbolic links are never followed and never
replicated. The view remembers which paths changed (added, modified, removed, became
complete) until `take_changed()`, so the agent's work after an event is proportional to the
change, not to the folder.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..backupfiles import BackupFile, Role, classify, is_excluded
from ..selection import SourceFile
from .listing import describe_error, listed, walk
from .ready import is_complete

log = logging.getLogger(__name__)

RETRY_UNREADABLE = 10.0  # seconds between looks at a folder that failed to read


@dataclass
class Entry:
    file: BackupFile
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time the (size, mtime) last changed
    ready: bool = False


class SourceView:
    def __init__(self, root: Path, settle: float, family: str = "auto") -> None:
        self.root = Path(root)
        self.settle = settle
        self.family = family
        self.entries: dict[str, Entry] = {}
        self._unknown_logged: set[str] = set()
        self._unready: set[str] = set()
        self._sidecars: set[tuple] = set()  # (chain, stem) of the complete .md5 sidecars
        self.changed: set[str] = set()
        # Absence is not evidence (SPEC section 8). A file missing from one listing is gone
        # only once an error-free listing of its folder at least `settle` later does not show
        # it either: until then its presence is unknown (first missed, monotonic; the entry).
        # So a mass deletion is seen as one, and a folder that hiccups deletes nothing.
        self._gone: dict[str, tuple[float, Entry | None]] = {}
        self._confirmed: set[str] = set()  # confirmed gone by this process (forgotten when seen again)
        # Folders (and files) that failed to read at the last look: rel -> the error. What
        # lies under them is unknown; it is looked at again every RETRY_UNREADABLE seconds.
        self.unreadable: dict[str, str] = {}
        self._retry_at = 0.0
        self.folders: set[str] = set()  # the folders listed (casefolded rel; "." is the root)

    def snapshot(self, paths=None) -> dict[str, SourceFile]:
        """The source as the planner sees it: all of it, or only `paths` (those present)."""
        if paths is None:
            return {p: SourceFile(e.size, e.mtime_ns, e.ready) for p, e in self.entries.items()}
        out = {}
        for p in paths:
            if (e := self.entries.get(p)) is not None:
                out[p] = SourceFile(e.size, e.mtime_ns, e.ready)
        return out

    def is_unknown_folder(self, rel: str) -> bool:
        """Does `rel` lie under (or is it) something that failed to read at the last look?"""
        if not self.unreadable:
            return False
        if "" in self.unreadable or rel in self.unreadable:
            return True
        cut = rel.find("/")
        while cut > 0:
            if rel[:cut] in self.unreadable:
                return True
            cut = rel.find("/", cut + 1)
        return False

    def is_unknown(self, rel: str) -> bool:
        """Is this path's presence at the source unknown: missed by one listing and not yet
        confirmed gone, or under a folder that failed to read?"""
        return rel in self._gone or self.is_unknown_folder(rel)

    def unknown_paths(self) -> list[str]:
        """The paths missed by a listing and not yet confirmed gone."""
        return list(self._gone)

    def first_missed(self, paths: Iterable[str]) -> float | None:
        """When the earliest of these unknown paths was first missed (monotonic), if any."""
        return min((self._gone[p][0] for p in paths if p in self._gone), default=None)

    def missed(self, paths: Iterable[str], mono: float) -> None:
        """Paths the target holds and the source does not show, which this process never saw
        vanish (it just started): missed by one listing, like any other, so unknown until a
        listing `settle` later confirms them gone. One listing at start is not evidence."""
        for p in paths:
            if p not in self.entries and p not in self._gone and p not in self._confirmed:
                self._gone[p] = (mono, None)
                self.changed.add(p)

    def done_with(self, rel: str) -> None:
        """The deletion of a confirmed-gone path was made: nothing more to remember of it."""
        self._confirmed.discard(rel)

    def take_changed(self) -> set[str]:
        """The paths that changed since the last call."""
        out, self.changed = self.changed, set()
        return out

    def _forget(self, rel: str, mono: float) -> None:
        """Missed by a listing: unknown until confirmed gone (see _confirm)."""
        e = self.entries.pop(rel)
        self._gone.setdefault(rel, (mono, e))
        self._confirmed.discard(rel)
        self._unready.discard(rel)
        if e.ready and e.file.role is Role.MD5:
            self._sidecars.discard((e.file.chain, e.file.stem))
        self.changed.add(rel)

    def scan(self, mono: float, wall_ns: int) -> bool:
        """Walk the whole folder; returns True when anything changed."""
        seen: set[str] = set()
        errors: dict[str, str] = {}
        folders: set[str] = set()
        changed = False
        for rel, st in walk(self.root, "", self.family, errors, folders, self.unreadable):
            seen.add(rel)
            changed |= self._observe(rel, st, mono, wall_ns)
        self.unreadable, self.folders = errors, folders
        for rel in [r for r in self.entries if r not in seen and not self.is_unknown(r)]:
            self._forget(rel, mono)
            changed = True
        # This listing confirms what an earlier one missed at least `settle` ago and it does
        # not show either (its folder read without error: else the path is unknown still).
        for rel in [r for r, (at, _) in self._gone.items() if mono - at >= self.settle and r not in seen
                    and not self.is_unknown_folder(r)]:
            del self._gone[rel]
            self._confirmed.add(rel)
            self.changed.add(rel)
            changed = True
        return self._evaluate(mono) or changed

    def touch(self, rels: set[str], mono: float, wall_ns: int) -> bool:
        """Look again at paths named by events (files or folders)."""
        if not rels:
            return False
        changed = False
        for rel in rels:
            path = self.root.joinpath(*rel.split("/")) if rel else self.root
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
                if rel in self.unreadable and listed(self.root, rel):
                    continue  # listed, yet not there when looked at: unknown still
                self.unreadable.pop(rel, None)
            except OSError as e:
                self._cannot_read(rel, e)
                continue
            if st is not None and stat.S_ISREG(st.st_mode):
                self.unreadable.pop(rel, None)
                self._confirmed.discard(rel)
                changed |= self._observe(rel, st, mono, wall_ns)
                continue
            if st is not None and not stat.S_ISDIR(st.st_mode) and classify(rel, self.family) is not None:
                # A backup file's name now a symbolic link (or a device): not the file, not its
                # absence either. Unknown, and said so, until it is a file again or gone.
                self._cannot_read(rel, OSError(0, "not a regular file (a symbolic link?)"))
                if rel in self.entries:
                    self._forget(rel, mono)
                self._gone.setdefault(rel, (mono, None))
                self._confirmed.discard(rel)
                continue
            # Gone, or a folder: forget what is no longer there, then walk what is.
            prefix = f"{rel}/" if rel else ""
            seen: set[str] = set()
            if st is not None and stat.S_ISDIR(st.st_mode):
                errors: dict[str, str] = {}
                folders: set[str] = set()
                for r, s in walk(path, rel, self.family, errors, folders, self.unreadable):
                    seen.add(r)
                    changed |= self._observe(r, s, mono, wall_ns)
                for r in [r for r in self.unreadable if r == rel or r.startswith(prefix)]:
                    del self.unreadable[r]
                self.unreadable.update(errors)
                self.folders |= folders
            else:
                key = rel.casefold()
                self.folders = {f for f in self.folders if f != key and not f.startswith(key + "/")}
            gone = [rel] if rel in self.entries else []
            if st is not None or not gone:  # a folder (or the whole source): look inside
                gone = [r for r in self.entries if (r == rel or r.startswith(prefix)) and r not in seen]
            for r in gone:
                if not self.is_unknown(r):
                    self._forget(r, mono)
                    changed = True
        return self._evaluate(mono) or changed

    def refresh(self, mono: float, wall_ns: int) -> bool:
        """Stat the files not yet complete again, confirm files missed by a listing, and look
        again at folders that failed to read; True when something changed."""
        changed = False
        if self.unreadable and mono >= self._retry_at:
            self._retry_at = mono + RETRY_UNREADABLE
            again = {r for r in self.unreadable if not any(r.startswith(o + "/") for o in self.unreadable if o != r)}
            changed |= self.touch(again, mono, wall_ns)
        due = [r for r, (at, _) in self._gone.items() if mono - at >= self.settle or r in self.entries]
        if due:
            changed |= self._confirm(due, mono, wall_ns)
        if not self._unready:
            return changed  # the loop runs twice a second: nothing to do is the common case
        for rel in list(self._unready):
            try:
                st = os.lstat(self.root / rel)
            except FileNotFoundError:
                self._forget(rel, mono)
                changed = True
                continue
            except OSError as e:
                self._cannot_read(rel, e)
                continue
            changed |= self._observe(rel, st, mono, wall_ns)
        return self._evaluate(mono) or changed

    def _confirm(self, rels: list[str], mono: float, wall_ns: int) -> bool:
        """Files missed by a listing at least `settle` ago: gone when an error-free listing
        of their folder (or of the nearest folder above it that exists) does not show them
        either; back when it does; still unknown when a folder fails to read."""
        listings: dict[str, set[str] | None] = {}
        back: set[str] = set()
        changed = False
        for rel in rels:
            if rel in self.entries:  # seen again meanwhile
                del self._gone[rel]
                continue
            verdict = self._absent(rel, listings)
            if verdict is None:
                continue
            if verdict:
                del self._gone[rel]
                self._confirmed.add(rel)
                self.changed.add(rel)  # gone: the planner may now judge its deletion
                changed = True
            else:
                # The listing shows it: back, if a look at it agrees; if the look says "no such
                # file" (a share that lists what it cannot open), it stays unknown, and the
                # count starts again.
                self._gone[rel] = (mono, self._gone[rel][1])
                back.add(rel)
        if back:
            changed |= self.touch(back, mono, wall_ns)
            for rel in back:
                if rel in self.entries:
                    self._gone.pop(rel, None)  # back, and looked at: it was never gone
                elif rel not in self.unreadable:
                    self._cannot_read(rel, OSError(2, "listed by its folder, but no such file when looked at"))
        return changed

    def _absent(self, rel: str, listings: dict[str, set[str] | None]) -> bool | None:
        parts = rel.split("/")
        for i in range(len(parts) - 1, -1, -1):
            folder = "/".join(parts[:i])
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(self.root.joinpath(*parts[:i])))
                except FileNotFoundError:
                    listings[folder] = None
                except OSError as e:
                    self._cannot_read(folder, e)
                    return None
            names = listings[folder]
            if names is not None:
                return parts[i] not in names
            if i == 0:
                return None  # the source itself is gone: no evidence of anything (see the job)
        return None

    def _cannot_read(self, rel: str, e: OSError) -> None:
        """Remember that `rel` failed to read, and say so once."""
        if rel not in self.unreadable:
            log.warning("%s: cannot be read (%s); nothing under it is deleted offsite until it reads again",
                        self.root / rel if rel else self.root, describe_error(e))
        self.unreadable[rel] = describe_error(e)

    def recheck(self, rel: str, mono: float, wall_ns: int) -> None:
        """After a transfer found the file changed: it must settle again."""
        e = self.entries.get(rel)
        if e is not None:
            self._unready_again(rel, e)
            e.changed_at = mono
        self.touch({rel}, mono, wall_ns)

    # -- internals
    def _observe(self, rel: str, st: os.stat_result, mono: float, wall_ns: int) -> bool:
        e = self.entries.get(rel)
        if e is None:
            f = classify(rel, self.family)
            if f is None:
                if not is_excluded(rel) and rel not in self._unknown_logged:
                    self._unknown_logged.add(rel)
                    log.info("%s: not a backup file offsite knows; it is not replicated", self.root / rel)
                return False
            # First sight: a file untouched for the settle period has already settled.
            age = (wall_ns - st.st_mtime_ns) / 1e9
            since = mono - age if age >= self.settle else mono
            self.entries[rel] = Entry(f, st.st_size, st.st_mtime_ns, since)
            self._unready.add(rel)
            self.changed.add(rel)
            return True
        if (e.size, e.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._unready_again(rel, e)
            e.size, e.mtime_ns, e.changed_at = st.st_size, st.st_mtime_ns, mono
            return True
        return False

    def _unready_again(self, rel: str, e: Entry) -> None:
        if e.ready and e.file.role is Role.MD5:
            self._sidecars.discard((e.file.chain, e.file.stem))
        e.ready = False
        self._unready.add(rel)
        self.changed.add(rel)

    def _evaluate(self, mono: float) -> bool:
        """Decide readiness for the files not yet complete; True when one became complete.
        Sidecars first: a complete one makes its image complete in the same pass."""
        changed = False
        for rel in sorted(self._unready, key=lambda r: self.entries[r].file.role is not Role.MD5):
            e = self.entries[rel]
            f = e.file
            if not is_complete(rel, f, self.root / rel, e.size, mono - e.changed_at >= self.settle, self._sidecars):
                continue
            e.ready = True
            self._unready.discard(rel)
            self.changed.add(rel)
            if f.role is Role.MD5:
                self._sidecars.add((f.chain, f.stem))
            changed = True
        return changed
