"""What SFTP, FTP/FTPS and SMB targets share: a remote file system with rename.

`RemoteFileTarget` implements the whole Target contract on a few primitives each protocol
module provides (stat, list a folder, make folders, write at an offset, rename, remove).
Uploads are staged as `<folder>/.offsite/staging/<hash>-<size>-<mtime>.part`, resumed from
the staged file's size, checked for size, and published with one rename.

Round trips are what a small file costs on a WAN, so a session asks the server nothing it
already knows: the staging folder is listed once when the session opens (what is staged and
how much: one listing instead of a stat and a listing per file), and the folders known to
exist are remembered. A file's upload is handled by one session at a time, so the listing
stays true for it; publish() still asks the server for the staged size, the promise itself.
"""
from __future__ import annotations

import abc
import builtins
import io
import posixpath
from typing import BinaryIO, Callable, Collection, Iterator

from ..errors import PermanentError, TransientError
from ..selection import RemoteFile
from .base import (
    AGENT_DIR,
    BIN_DIR,
    OWNER_FILE,
    PROBE_NAME,
    Binned,
    Progress,
    Target,
    binned,
    binned_name,
    check_day,
    check_relpath,
    not_as_sent,
    staging_stem,
    stale_staging,
)
from .staged import StagedSizes


class Entry:
    __slots__ = ("name", "is_dir", "size", "mtime_ns")

    def __init__(self, name: str, is_dir: bool, size: int = 0, mtime_ns: int | None = None) -> None:
        self.name, self.is_dir, self.size, self.mtime_ns = name, is_dir, size, mtime_ns


class RemoteFileTarget(Target):
    """A target on a remote file system; subclasses provide the primitives below, which
    raise only TransientError and PermanentError (TargetFull where the server says it is
    full): the contract's errors (base.Target) are theirs."""

    resumable = True
    CHUNK = 1024 * 1024

    def __init__(self, location_path: str, folder: str) -> None:
        self.location = location_path.rstrip("/") or "/"
        self.root = posixpath.join(self.location, folder)
        self.agent = posixpath.join(self.root, AGENT_DIR)
        self.staging = posixpath.join(self.agent, "staging")
        self.bin = posixpath.join(self.agent, BIN_DIR)
        self._dirs: set[str] = set()  # folders known to exist on the server
        self._staged_sizes: StagedSizes | None = None  # staging listing at open: name -> size

    # ---------------------------------------------------------------- primitives
    @abc.abstractmethod
    def _connect(self) -> None:
        """Connect and authenticate (raising offsite errors)."""

    @abc.abstractmethod
    def _size(self, path: str) -> int | None:
        """The size of a file, or None if there is none."""

    @abc.abstractmethod
    def _is_dir(self, path: str) -> bool:
        """Does this folder exist?"""

    @abc.abstractmethod
    def _listdir(self, path: str) -> list[Entry]:
        """The entries of a folder."""

    @abc.abstractmethod
    def _mkdir(self, path: str) -> None:
        """Create one folder whose parent exists; an existing folder is fine."""

    @abc.abstractmethod
    def _write(self, path: str, offset: int, src: BinaryIO, size: int, progress: Progress) -> int:
        """Write src[offset:size] at `offset` of `path` (created or truncated to `offset`);
        return the bytes sent (all of them where the server cannot resume)."""

    @abc.abstractmethod
    def _rename(self, src: str, dst: str) -> None:
        """Move src to dst in one step, replacing dst where the protocol allows; a
        PermanentError where it refuses (dst exists, or src does not)."""

    @abc.abstractmethod
    def _remove(self, path: str) -> None:
        """Remove a file; a missing file is fine."""

    @abc.abstractmethod
    def _rmdir(self, path: str) -> None:
        """Remove an empty folder; a missing one is fine."""

    def _set_mtime(self, path: str, mtime_ns: int) -> None:
        """Set the modification time where the protocol can (keeps_mtime)."""

    def _put_small(self, path: str, data: bytes) -> None:
        self._write(path, 0, io.BytesIO(data), len(data), lambda n: None)

    def _md5(self, path: str) -> str | None:
        """The server's MD5 of a file it stores (lower-case hex), computed from what it stores
        now; None where the protocol or this server has no such command."""
        return None

    @abc.abstractmethod
    def _get_small(self, path: str) -> bytes | None:
        """A small file's content, or None if there is none."""

    # ---------------------------------------------------------------- the contract
    def open(self, create: bool = True) -> None:
        self._connect()
        self._dirs = set()
        if not self._is_dir(self.location):
            raise PermanentError(f"the location path {self.location} does not exist on {self.describe_server()}")
        self._dirs.add(self.location)
        self._staged_sizes = None
        if create:
            self._makedirs(self.staging)
            self._staged_sizes = StagedSizes((e.name, e.size) for e in self._listdir(self.staging) if not e.is_dir)

    def describe(self) -> str:
        return f"{self.describe_server()}:{self.root}"

    @abc.abstractmethod
    def describe_server(self) -> str:
        """user@host:port, without secrets."""

    def _makedirs(self, path: str) -> None:
        missing = []
        p = path
        while p not in ("/", "", self.location) and p not in self._dirs and not self._is_dir(p):
            missing.append(p)
            p = posixpath.dirname(p)
        for d in reversed(missing):
            self._mkdir(d)
        while path not in ("/", "") and path not in self._dirs:
            self._dirs.add(path)
            path = posixpath.dirname(path)

    def _walk(self, path: str, rel: str, top: bool = True,
              foreign: set[str] | None = None) -> Iterator[tuple[str, Entry]]:
        entries = [e for e in self._listdir(path) if e.name not in (".", "..")]
        if not top and any(e.is_dir and e.name == AGENT_DIR for e in entries) \
                and self._size(posixpath.join(path, AGENT_DIR, OWNER_FILE)) is not None:
            if foreign is not None:
                foreign.add(rel)
            return  # another job's folder, nested in this one: never listed, never touched
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir:
                if top and e.name == AGENT_DIR:
                    continue
                yield from self._walk(posixpath.join(path, e.name), r, False, foreign)
            else:
                yield r, e

    def list(self) -> dict[str, RemoteFile]:
        self.foreign = frozenset()
        if not self._is_dir(self.root):
            return {}
        foreign: set[str] = set()
        out = {r: RemoteFile(e.size, e.mtime_ns if self.keeps_mtime else None)
               for r, e in self._walk(self.root, "", True, foreign)}
        self.foreign = frozenset(foreign)
        return out

    def read_back(self, relpath: str, sink: Callable[[bytes], None]) -> bool:
        return self._read_into(self._final(relpath), sink)

    @abc.abstractmethod
    def _read_into(self, path: str, sink: Callable[[bytes], None]) -> bool:
        """Stream a file's bytes to `sink`; False when there is no such file."""

    def remote_md5(self, relpath: str) -> str | None:
        return self._md5(self._final(relpath))

    def read_owner(self) -> str | None:
        data = self._get_small(posixpath.join(self.agent, OWNER_FILE))
        return data.decode("utf-8").strip() or None if data is not None else None

    def write_owner(self, owner: str) -> None:
        self._makedirs(self.agent)
        tmp = posixpath.join(self.agent, OWNER_FILE + ".tmp")
        self._put_small(tmp, (owner + "\n").encode("utf-8"))
        self._move(tmp, posixpath.join(self.agent, OWNER_FILE), "the owner ID")

    def _staged(self, relpath: str, size: int, mtime_ns: int) -> str:
        return posixpath.join(self.staging, f"{staging_stem(relpath)}-{size}-{mtime_ns}.part")

    def _final(self, relpath: str) -> str:
        return posixpath.join(self.root, check_relpath(relpath))

    def upload(self, relpath: str, src: BinaryIO, size: int, mtime_ns: int, progress: Progress) -> int:
        check_relpath(relpath)
        staged = self._staged(relpath, size, mtime_ns)
        name = posixpath.basename(staged)
        self._discard_others(relpath, keep=(name,))
        if self._staged_sizes is not None:
            offset = self._staged_sizes.get(name, 0) or 0
        else:
            offset = self._size(staged) or 0
        if offset > size:
            offset = 0
        try:
            sent = self._write(staged, offset, src, size, progress)
        except (TransientError, PermanentError) as e:
            if self._staged_sizes is not None:
                self._staged_sizes.pop(name, None)  # how much got there is unknown: ask next time
                self._staged_sizes = None
            # Name the file the operator knows, not its hashed staging name.
            raise type(e)(str(e).replace(staged, relpath)) from None
        if self._staged_sizes is not None:
            self._staged_sizes[name] = size
        return sent

    def publish(self, relpath: str, size: int, mtime_ns: int, md5: str | None = None) -> None:
        final = self._final(relpath)
        staged = self._staged(relpath, size, mtime_ns)
        got = self._size(staged)
        if got is None:
            raise TransientError(f"nothing is staged for {relpath}: sending it again")
        if got != size:
            self._unstage(staged)
            raise TransientError(f"the staged copy of {relpath} has {got} bytes, not {size}: sending it again")
        if md5 is not None:
            there = self._md5(staged)
            if there is not None and there != md5:
                self._unstage(staged)
                raise not_as_sent(relpath, there, md5)
        if self.keeps_mtime:
            self._set_mtime(staged, mtime_ns)
        self._makedirs(posixpath.dirname(final))
        self._move(staged, final, relpath)
        if self._staged_sizes is not None:
            self._staged_sizes.pop(posixpath.basename(staged), None)

    def _move(self, src: str, dst: str, relpath: str) -> None:
        """Publish src as dst. Where the server will not replace a file by a rename, the old
        one is moved aside first and back if the rename fails: a published copy is never
        removed before its replacement is in place."""
        try:
            self._rename(src, dst)
            return
        except PermanentError:
            if self._size(src) is None:
                raise TransientError(f"nothing is staged for {relpath}: sending it again") from None
            if self._size(dst) is None:
                raise
        aside = posixpath.join(self.staging, staging_stem(relpath) + ".old")
        self._rename(dst, aside)
        try:
            self._rename(src, dst)
        except BaseException:
            try:
                self._rename(aside, dst)
            except (TransientError, PermanentError):
                pass  # the staging folder keeps it, and the next tidy tells no one: logged above
            raise
        self._remove(aside)

    def _unstage(self, staged: str) -> None:
        """Remove a staged copy that cannot be published: the next upload starts from zero."""
        self._remove(staged)
        if self._staged_sizes is not None:
            self._staged_sizes.pop(posixpath.basename(staged), None)

    def discard(self, relpath: str) -> None:
        # Listed afresh: other sessions may have staged ranges of it since this one listed.
        self._discard_others(relpath, keep=(), fresh=True)

    def _discard_others(self, relpath: str, keep: Collection[str], fresh: bool = False) -> None:
        stem = staging_stem(relpath) + "-"
        if self._staged_sizes is not None and not fresh:
            names = self._staged_sizes.of(stem)
        elif self._is_dir(self.staging):
            names = [e.name for e in self._listdir(self.staging)]
        else:
            return
        for name in names:
            if name.startswith(stem) and name not in keep:
                self._remove(posixpath.join(self.staging, name))
                if self._staged_sizes is not None:
                    self._staged_sizes.pop(name, None)

    def delete(self, relpath: str) -> None:
        self._remove(self._final(relpath))

    # ---------------------------------------------------------------- the bin
    def _binned(self, relpath: str, day: str, version: int = 1) -> str:
        return posixpath.join(self.bin, check_day(day), binned_name(check_relpath(relpath), version))

    def to_bin(self, relpath: str, day: str) -> None:
        final = self._final(relpath)
        if self._size(final) is None:
            return  # gone already
        version = 1
        while self._size(dest := self._binned(relpath, day, version)) is not None:
            version += 1  # the day's earlier copies stay; this one goes beside them
        self._makedirs(posixpath.dirname(dest))
        self._rename(final, dest)

    def bin_list(self) -> builtins.list[Binned]:
        if not self._is_dir(self.bin):
            return []
        out = []
        for rel, e in self._walk(self.bin, "", top=False):
            day, _, path = rel.partition("/")
            if path:
                out.append(binned(day, path, e.size))
        return out

    def from_bin(self, relpath: str, day: str, version: int = 1) -> None:
        src, final = self._binned(relpath, day, version), self._final(relpath)
        if self._size(src) is None:
            raise PermanentError(f"the bin holds no {relpath} of {day}")
        if self._size(final) is not None:
            raise PermanentError(f"{relpath} is on the target already: it is not overwritten")
        self._makedirs(posixpath.dirname(final))
        self._rename(src, final)

    def purge_bin(self, day: str) -> None:
        top = posixpath.join(self.bin, check_day(day))
        if not self._is_dir(top):
            return
        folders = {top}
        for rel, _e in self._walk(top, "", top=False):
            path = posixpath.join(top, rel)
            self._remove(path)
            d = posixpath.dirname(path)
            while d != top and d not in folders:
                folders.add(d)
                d = posixpath.dirname(d)
        for d in sorted(folders, key=lambda x: -x.count("/")):  # the deepest first
            self._rmdir(d)
        self._dirs = {d for d in self._dirs if d != top and not d.startswith(top + "/")}

    def tidy(self, keep: Collection[str]) -> None:
        if self._staged_sizes is not None:
            names = self._staged_sizes.names()
        elif self._is_dir(self.staging):
            names = [e.name for e in self._listdir(self.staging) if not e.is_dir]
        else:
            return
        for name in stale_staging(names, keep):
            self._remove(posixpath.join(self.staging, name))
            if self._staged_sizes is not None:
                self._staged_sizes.pop(name, None)

    def probe(self) -> None:
        tmp, final = posixpath.join(self.agent, PROBE_NAME + ".tmp"), posixpath.join(self.agent, PROBE_NAME)
        self._put_small(tmp, b"offsite probe\n")
        self._move(tmp, final, "a probe file")
        if self._get_small(final) != b"offsite probe\n":
            raise PermanentError(f"the probe file in {self.agent} did not read back as written")
        self._remove(final)
