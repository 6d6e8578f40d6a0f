"""When a backup file at the source is complete (ready to be sent).

The platform's signals (reference/backup-files.md section 4):
- a ShadowProtect .md5 sidecar whose first line is complete (32 hex digits, ` *`, the
  image's name, a line end): it is written in one go once the image is finished, so the
  sidecar and its image are complete at once, not a quiet period later;
- a ShadowProtect image whose complete .md5 sidecar exists;
- otherwise, its size and mtime have not changed for the job's `settle` period (the source
  view keeps that clock: scan.py);
- a Reflect X file also needs its closing trailer; on Windows the file must open with
  writes denied to others.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Collection

from ..backupfiles import MACRIUM_TRAILER, BackupFile, Role, needs_macrium_trailer
from ..system import write_denied_to_others

_MD5_LINE = re.compile(rb"^([0-9a-fA-F]{32}) \*([^\r\n]+)\r?\n")


def is_complete(rel: str, f: BackupFile, path: Path, size: int, settled: bool,
                sidecars: Collection[tuple]) -> bool:
    """Is the file at `rel` (`path` on disk, `size` bytes) complete? `settled`: unchanged for
    the settle period; `sidecars`: the (chain, stem) of the complete .md5 sidecars."""
    if f.role is Role.MD5:
        done = complete_sidecar(path, f.stem) or settled
    elif f.role is Role.IMAGE and f.family == "shadowprotect" and (f.chain, f.stem) in sidecars:
        done = True
    else:
        done = settled
    if not done:
        return False
    if needs_macrium_trailer(rel) and not has_trailer(path, size):
        return False
    return write_denied_to_others(path)


def complete_sidecar(path: Path, stem: str) -> bool:
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


def has_trailer(path: Path, size: int) -> bool:
    """Does this Reflect X file end with its closing trailer?"""
    if size < len(MACRIUM_TRAILER):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(size - len(MACRIUM_TRAILER))
            return f.read(len(MACRIUM_TRAILER)) == MACRIUM_TRAILER
    except OSError:
        return False
