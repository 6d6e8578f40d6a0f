"""Several streams for one big file: byte ranges of one staged file, written over several
sessions of a remote file system (SFTP, SMB, FTP where the server allows) at once, and
published once, as one stream's upload is.

One session's window in flight (requests outstanding x their size, over the round trip)
caps what it carries on a long link, whatever the link; several sessions writing their own
ranges of the file fill it (issue 17, bench/RESULTS.md).

Layout on the target: a file of at least RANGED_FROM bytes is staged as
`<stem>-<size>-<mtime>.ranges`. Its head (the first HEAD bytes) is written first, which
creates the file or starts it over; then its blocks (BLOCK bytes each), each by whichever
session is free, each at its own offset, never truncating. Beside it, the target keeps the
record of the blocks it holds, `<same name>.json`, written after the data it names was
flushed where the protocol can flush (SFTP's fsync@openssh.com, SMB's FLUSH): the next
attempt, after a crash too, sends only the blocks the record does not name. The record goes
before the file starts over, so it never names the blocks of an earlier file. Once every
block is there, the file is checked for size and renamed to the staging name of one stream
(`.part`): publish() is the same for both, size and MD5 proof included.

One stream never resumes a `.ranges` file (its holes would count as data): it discards it,
as every other staged version of the file (filesystem.py).
"""
from __future__ import annotations

import io
import json
import posixpath
from typing import BinaryIO, Collection

from ..errors import PermanentError, TransientError
from .base import Progress, check_relpath
from .filesystem import RemoteFileTarget

BLOCK = 32 * 1024 * 1024  # per range: an FTP range costs a data connection and a few round trips
HEAD = 64 * 1024  # written first, alone: it creates the file, so no range ever starts at 0
RANGED_FROM = 2 * BLOCK  # smaller files go over one stream; `transfers` runs several of those


def blocks(size: int) -> list[tuple[int, int]]:
    """The ranges of a file of `size` bytes, by index: the head, then BLOCK after BLOCK."""
    out = [(0, min(HEAD, size))]
    at = HEAD
    while at < size:
        out.append((at, min(size, at + BLOCK)))
        at += BLOCK
    return out


def _runs(done: Collection[int]) -> list[list[int]]:
    """Block indices as [first, last] runs: a 100 GB file's record stays a few bytes long."""
    out: list[list[int]] = []
    for i in sorted(done):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


class RangedTarget(RemoteFileTarget):
    """A remote file system whose sessions can each write a range of one staged file."""

    def _write_range(self, path: str, start: int, src: BinaryIO, end: int, progress: Progress) -> None:
        """Write src[start:end] at `start` of the existing file `path`, changing nothing else
        (no truncation)."""
        raise NotImplementedError

    def _flush(self, path: str) -> None:
        """Ask the server to put what it acknowledged of `path` on its disk, where the
        protocol can (a no-op elsewhere)."""

    def ranges(self) -> bool:
        return True

    def _ranged(self, relpath: str, size: int, mtime_ns: int) -> str:
        return self._staged(relpath, size, mtime_ns)[: -len(".part")] + ".ranges"

    def begin_ranges(self, relpath: str, size: int, mtime_ns: int, src: BinaryIO, progress: Progress) -> set[int]:
        """Prepare the ranged staging of this version of the file; return the blocks the
        target holds already (the head, written now when it starts over; every block when a
        whole copy is staged). Raises TransientError and PermanentError (TargetFull)."""
        check_relpath(relpath)
        staged = self._ranged(relpath, size, mtime_ns)
        record = staged + ".json"
        part = self._staged(relpath, size, mtime_ns)
        self._discard_others(relpath, keep=(posixpath.basename(staged), posixpath.basename(record),
                                            posixpath.basename(part)))
        if self._size(part) == size:  # staged whole, not yet published (a crash at its rename)
            self._remove(staged)
            return set(range(len(blocks(size))))
        self._remove(part)  # one stream's staged bytes: a prefix only, started over here
        done = self._read_record(record, size)
        there = self._size(staged)
        if done and there is not None and there >= max(blocks(size)[i][1] for i in done):
            return done
        self._remove(record)  # first: a record never names the blocks of an earlier file
        try:
            self._write(staged, 0, src, blocks(size)[0][1], progress)  # the head creates the file
        except (TransientError, PermanentError) as e:
            raise type(e)(str(e).replace(staged, relpath)) from None
        return {0}

    def write_range(self, relpath: str, size: int, mtime_ns: int, block: int, src: BinaryIO,
                    progress: Progress) -> None:
        """Write one block (an index of blocks()) at its offset. Raises TransientError and
        PermanentError (TargetFull); what `progress` raises passes through."""
        staged = self._ranged(relpath, size, mtime_ns)
        start, end = blocks(size)[block]
        try:
            self._write_range(staged, start, src, end, progress)
        except (TransientError, PermanentError) as e:
            raise type(e)(str(e).replace(staged, relpath)) from None

    def save_ranges(self, relpath: str, size: int, mtime_ns: int, done: Collection[int]) -> None:
        """Record on the target that it holds the blocks `done` (written and acknowledged),
        after flushing them where the protocol can. Raises TransientError, PermanentError."""
        staged = self._ranged(relpath, size, mtime_ns)
        self._flush(staged)
        body = json.dumps({"size": size, "block": BLOCK, "head": HEAD, "done": _runs(done)}).encode()
        tmp = staged + ".json.tmp"
        self._put_small(tmp, body)
        self._move(tmp, staged + ".json", relpath)

    def end_ranges(self, relpath: str, size: int, mtime_ns: int) -> None:
        """Every block written: check the size and stage the file as one stream would have,
        for publish(). Raises TransientError (not the size: removed, to be sent again),
        PermanentError."""
        staged = self._ranged(relpath, size, mtime_ns)
        part = self._staged(relpath, size, mtime_ns)
        got = self._size(staged)
        if got is None and self._size(part) == size:
            return  # renamed already (begin_ranges found it whole)
        if got != size:
            self._remove(staged + ".json")
            self._remove(staged)
            raise TransientError(f"the ranges staged for {relpath} make {got} bytes, not {size}: sending it again")
        self._move(staged, part, relpath)
        self._remove(staged + ".json")
        if self._staged_sizes is not None:
            self._staged_sizes[posixpath.basename(part)] = size

    def _read_record(self, record: str, size: int) -> set[int]:
        """The blocks the record names; none when there is no record, or one for another
        layout (an older offsite) or file."""
        data = self._get_small(record)
        try:
            r = json.loads(data or b"null")
            if r["size"] != size or r["block"] != BLOCK or r["head"] != HEAD:
                return set()
            last = len(blocks(size)) - 1
            return {i for a, b in r["done"] for i in range(int(a), int(b) + 1) if 0 <= i <= last}
        except (ValueError, TypeError, KeyError):
            return set()


def probe_ranges(target: RangedTarget, path: str) -> bool:
    """Does this server write a range at an offset past the end of a file (streams start
    beyond what the others wrote so far), and without cutting the file there? Stores "ab",
    then "X" at offset 3 and "Y" at offset 1, and reads "aY\\0X" back. pyftpdlib refuses a REST
    past the end of the file; a server that truncates at REST leaves "aY"."""
    try:
        target._put_small(path, b"ab")
        target._write_range(path, 3, io.BytesIO(b"abcX"), 4, lambda n: None)
        target._write_range(path, 1, io.BytesIO(b"aY"), 2, lambda n: None)
        ok = target._get_small(path) == b"aY\0X"
    except PermanentError:
        ok = False
    target._remove(path)
    return ok
