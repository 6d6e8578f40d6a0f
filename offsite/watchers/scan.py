"""The source view: every backup file in a managed folder, and whether it is complete.

A file is complete (ready) when the platform's signals say so (reference/backup-files.md
section 4):
- a ShadowProtect .md5 sidecar whose first line is complete (32 hex digits, ` *`, the
  image's name, a line end): it is written in one go once the image is finished, so the
  sidecar and its image are complete at once, not a quiet period later;
- a ShadowProtect image whose complete .md5 sidecar exists;
- otherwise, its size and mtime have not changed for the job's `settle` period; a file seen
  for the first time whose mtime is already older than `settle` counts as settled;
- a Reflect X file also needs its closing trailer; on Windows the file must open with
  writes denied to others.
Events only say where to look; `scan()` walks the whole folder and repairs what events
missed. Symbolic links are never followed and never replicated. The view remembers which
paths changed (added, modified, removed, became complete) until `take_changed()`, so the
agent's work after an event is proportional to the change, not to the folder.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..backupfiles import (
    EXCLUDED_FOLDERS,
    MACRIUM_TRAILER,
    BackupFile,
    Role,
    classify,
    is_excluded,
    needs_macrium_trailer,
)
from ..selection import SourceFile
from ..system import write_denied_to_others

log = logging.getLogger(__name__)

_MD5_LINE = re.compile(rb"^([0-9a-fA-F]{32}) \*([^\r\n]+)\r?\n")


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
        # Files gone from the source less than `settle` ago: the planner still sees them (not
        # complete, so nothing is sent) until the burst they vanished in is over, so that a
        # mass deletion is counted as one by the max_deletes guard, not mirrored piecemeal.
        self._gone: dict[str, tuple[float, Entry]] = {}

    def snapshot(self, paths=None) -> dict[str, SourceFile]:
        """The source as the planner sees it: all of it, or only `paths` (those present)."""
        if paths is None:
            return {p: SourceFile(e.size, e.mtime_ns, e.ready) for p, e in self.entries.items()}
        out = {}
        for p in paths:
            if (e := self.entries.get(p)) is not None:
                out[p] = SourceFile(e.size, e.mtime_ns, e.ready)
            elif (g := self._gone.get(p)) is not None:
                out[p] = SourceFile(g[1].size, g[1].mtime_ns, False)  # just vanished: not yet mirrored
        return out

    def take_changed(self) -> set[str]:
        """The paths that changed since the last call."""
        out, self.changed = self.changed, set()
        return out

    def _forget(self, rel: str, mono: float | None = None) -> None:
        e = self.entries.pop(rel)
        if mono is not None and self.settle > 0:
            self._gone[rel] = (mono, e)
        self._unready.discard(rel)
        if e.ready and e.file.role is Role.MD5:
            self._sidecars.discard((e.file.chain, e.file.stem))
        self.changed.add(rel)

    def scan(self, mono: float, wall_ns: int) -> bool:
        """Walk the whole folder; returns True when anything changed."""
        seen: set[str] = set()
        changed = False
        for rel, st in self._walk(self.root, ""):
            seen.add(rel)
            changed |= self._observe(rel, st, mono, wall_ns)
        for rel in [r for r in self.entries if r not in seen]:
            self._forget(rel, mono)
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
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                changed |= self._observe(rel, st, mono, wall_ns)
                continue
            # Gone, or a folder: forget what is no longer there, then walk what is.
            prefix = f"{rel}/" if rel else ""
            seen: set[str] = set()
            if st is not None and stat.S_ISDIR(st.st_mode):
                for r, s in self._walk(path, rel):
                    seen.add(r)
                    changed |= self._observe(r, s, mono, wall_ns)
            gone = [rel] if rel in self.entries else []
            if st is not None or not gone:  # a folder (or the whole source): look inside
                gone = [r for r in self.entries if (r == rel or r.startswith(prefix)) and r not in seen]
            for r in gone:
                self._forget(r, mono)
                changed = True
        return self._evaluate(mono) or changed

    def refresh(self, mono: float, wall_ns: int) -> bool:
        """Stat the files not yet complete again; True when one became complete or moved."""
        changed = False
        for rel in [r for r, (at, _) in self._gone.items() if mono - at >= self.settle or r in self.entries]:
            del self._gone[rel]  # the burst is over: its deletions are planned now
            self.changed.add(rel)
            changed = True
        if not self._unready:
            return changed  # the loop runs twice a second: nothing to do is the common case
        for rel in list(self._unready):
            try:
                st = os.lstat(self.root / rel)
            except OSError:
                self._forget(rel, mono)
                changed = True
                continue
            changed |= self._observe(rel, st, mono, wall_ns)
        return self._evaluate(mono) or changed

    def recheck(self, rel: str, mono: float, wall_ns: int) -> None:
        """After a transfer found the file changed: it must settle again."""
        e = self.entries.get(rel)
        if e is not None:
            self._unready_again(rel, e)
            e.changed_at = mono
        self.touch({rel}, mono, wall_ns)

    # -- internals
    def _walk(self, top: Path, rel_top: str):
        try:
            it = list(os.scandir(top))
        except OSError:
            return
        for de in it:
            rel = f"{rel_top}/{de.name}" if rel_top else de.name
            try:
                if de.is_symlink():
                    continue
                if de.is_dir(follow_symlinks=False):
                    if de.name.casefold() in EXCLUDED_FOLDERS or de.name.startswith("."):
                        continue
                    yield from self._walk(Path(de.path), rel)
                elif de.is_file(follow_symlinks=False):
                    yield rel, de.stat(follow_symlinks=False)
            except OSError:
                continue

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
            path = self.root / rel
            if f.role is Role.MD5:
                done = _complete_sidecar(path, f.stem) or mono - e.changed_at >= self.settle
            elif f.role is Role.IMAGE and f.family == "shadowprotect" and (f.chain, f.stem) in self._sidecars:
                done = True
            else:
                done = mono - e.changed_at >= self.settle
            if not done:
                continue
            if needs_macrium_trailer(rel) and not _has_trailer(path, e.size):
                continue
            if not write_denied_to_others(path):
                continue
            e.ready = True
            self._unready.discard(rel)
            self.changed.add(rel)
            if f.role is Role.MD5:
                self._sidecars.add((f.chain, f.stem))
            changed = True
        return changed


def _complete_sidecar(path: Path, stem: str) -> bool:
    """Is this .md5 sidecar's first line whole: 32 hex digits, ' *', its image's name, a line
    end? (reference/backup-files.md section 4)"""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    m = _MD5_LINE.match(head)
    if not m:
        return False
    name = m.group(2).decode("utf-8", "replace").strip()
    return name[: name.rfind(".")].casefold() == stem if "." in name else False


def _has_trailer(path: Path, size: int) -> bool:
    if size < len(MACRIUM_TRAILER):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(size - len(MACRIUM_TRAILER))
            return f.read(len(MACRIUM_TRAILER)) == MACRIUM_TRAILER
    except OSError:
        return False
