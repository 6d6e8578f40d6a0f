"""The `local` target: a folder on a local disk, an external drive or a mounted share.

Uploads are written to `.offsite/staging/<hash>-<size>-<mtime>.part`, checkpointed (fsync,
then the durable offset recorded) every CHECKPOINT bytes, and published with an atomic
rename once their data is on disk (fsync). After a crash or power loss an upload resumes
from its last checkpoint, so bytes that never reached the disk are never trusted.

fsync only where a promise needs it: the data before the rename, so a power loss never
leaves a short file under a final name. Files under CHECKPOINT bytes keep no checkpoint
(they start over), and the rename itself is not synced: if a power loss undoes it, the
file is simply missing, and the reconciliation at start sends it again.

The bin (moves by rename, restores that never replace) is local_bin.py's; the staging
folder's names, by file, local_staging.py's.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Collection

from ..errors import PermanentError, TargetFull, TransientError
from ..selection import RemoteFile
from .base import (
    AGENT_DIR,
    BIN_DIR,
    OWNER_FILE,
    PROBE_NAME,
    Progress,
    check_relpath,
    chunk_size,
    staging_stem,
    stale_staging,
)
from .local_bin import LocalBin
from .local_staging import StagedNames, staged_names

CHUNK = 1024 * 1024  # small enough for a smooth throttle; copy_file_range keeps it cheap
CHECKPOINT = 16 * 1024 * 1024

_TRANSIENT = {errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY, errno.EINTR,
              getattr(errno, "ESTALE", -1), getattr(errno, "EHOSTDOWN", -1),
              getattr(errno, "ECONNRESET", -1), getattr(errno, "ENOTCONN", -1)}
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", -1)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
# copy_file_range cannot do this pair of files: fall back to read and write.
_NO_FAST_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF,
                 getattr(errno, "ENOTSUP", -1)}


class LocalTarget(LocalBin):
    resumable = True
    resume_min_size = CHECKPOINT  # smaller files keep no checkpoint: they start over
    keeps_mtime = True
    case_sensitive = os.name != "nt"  # a Windows drive compares names without case

    def __init__(self, location: Path, folder: str) -> None:
        self.location = Path(location)
        self.root = self.location.joinpath(*folder.split("/"))
        self.agent = self.root / AGENT_DIR
        self.staging = self.agent / "staging"
        self.bin = self.agent / BIN_DIR
        self._names: StagedNames | None = None  # the staging folder's names, listed at open

    def describe(self) -> str:
        return str(self.root)

    # -- errors
    def _error(self, e: OSError, what: str) -> Exception:
        """Translate an OSError into offsite's tree, once, here."""
        if e.errno in _FULL:
            return TargetFull(f"the target disk is full while writing {what} in {self.root}")
        if e.errno in _DENIED:
            return PermanentError(f"permission denied on {what} in {self.root}")
        if e.errno in _TRANSIENT:
            return TransientError(f"{e.strerror or e} on {what} in {self.root}")
        if e.errno == errno.ENOENT and not self.location.is_dir():
            return PermanentError(f"the location path {self.location} does not exist")
        return PermanentError(f"{e.strerror or e} on {what} in {self.root}")

    # -- contract
    def open(self, create: bool = True) -> None:
        if not self.location.is_dir():
            raise PermanentError(f"the location path {self.location} does not exist or is not a folder")
        if not create:
            return
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            # Listed once per session (a glob of the staging folder per file cost 7% of a
            # seeding of small files), into the names this process's sessions share.
            self._names = staged_names(self.staging)
            self._names.add(os.listdir(self.staging))
        except OSError as e:
            raise self._error(e, "the job folder") from None

    def close(self) -> None:
        pass

    def read_back(self, relpath: str, sink: Callable[[bytes], None]) -> bool:
        path = self.root.joinpath(*check_relpath(relpath).split("/"))
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    sink(chunk)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._error(e, relpath) from None
        return True

    def free_space(self) -> int | None:
        try:
            return shutil.disk_usage(self.location).free
        except OSError as e:
            raise self._error(e, "the free space") from None

    def list(self) -> dict[str, RemoteFile]:
        out: dict[str, RemoteFile] = {}
        foreign: set[str] = set()
        self.foreign = frozenset()
        if not self.root.is_dir():
            return out
        try:
            for dirpath, dirnames, filenames in os.walk(self.root, onerror=_raise):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                if rel == ".":
                    rel = ""
                # Never into the agent's folder, nor into another job's folder nested here.
                owned = {d for d in dirnames if os.path.exists(os.path.join(dirpath, d, AGENT_DIR, OWNER_FILE))}
                foreign |= {f"{rel}/{d}" if rel else d for d in owned}
                dirnames[:] = [d for d in dirnames if d != AGENT_DIR and d not in owned]
                for name in filenames:
                    st = os.lstat(os.path.join(dirpath, name))
                    out[f"{rel}/{name}" if rel else name] = RemoteFile(st.st_size, st.st_mtime_ns)
        except OSError as e:
            raise self._error(e, "the job folder listing") from None
        self.foreign = frozenset(foreign)
        return out

    def read_owner(self) -> str | None:
        try:
            return (self.agent / OWNER_FILE).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error(e, "the owner ID") from None

    def write_owner(self, owner: str) -> None:
        self._write_small(self.agent / OWNER_FILE, owner + "\n", "the owner ID")

    def _write_small(self, path: Path, text: str, what: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as e:
            raise self._error(e, what) from None

    def _staged(self, relpath: str, size: int, mtime_ns: int) -> tuple[Path, Path]:
        stem = f"{staging_stem(relpath)}-{size}-{mtime_ns}"
        return self.staging / f"{stem}.part", self.staging / f"{stem}.ckpt"

    def upload(self, relpath: str, src: BinaryIO, size: int, mtime_ns: int, progress: Progress) -> int:
        check_relpath(relpath)
        part, ckpt = self._staged(relpath, size, mtime_ns)
        self._discard_other_versions(relpath, keep=part.name)
        offset = self._durable_offset(part, ckpt, size) if size >= CHECKPOINT else 0
        if self._names is not None:
            self._names.add((part.name, ckpt.name) if size >= CHECKPOINT else (part.name,))
        try:
            with open(part, "r+b" if offset else "wb") as dst:
                if offset:  # "wb" has truncated it
                    dst.truncate(offset)
                if size < CHECKPOINT:  # small: nothing worth resuming, one fsync before publish
                    sent = self._copy(src, dst, offset, size, ckpt, progress)
                    dst.flush()  # what the buffer holds (a small file: all of it) first
                    os.fsync(dst.fileno())
                else:
                    try:
                        sent = self._copy(src, dst, offset, size, ckpt, progress)
                    finally:
                        self._checkpoint(dst, ckpt)
        except OSError as e:
            if e.errno in _FULL:
                self.discard(relpath)  # give the space back; the next attempt starts over
            raise self._error(e, relpath) from None
        return sent

    def _checkpoint(self, dst: BinaryIO, ckpt: Path) -> None:
        """Record how much of the staged file is on disk; best effort, so that it never
        replaces the transfer's own error (a full disk fails this too)."""
        try:
            dst.flush()
            os.fsync(dst.fileno())
            self._write_small(ckpt, str(os.fstat(dst.fileno()).st_size), "a checkpoint")
        except (OSError, PermanentError, TransientError):
            pass

    def _durable_offset(self, part: Path, ckpt: Path, size: int) -> int:
        try:
            staged = part.stat().st_size
            durable = int(ckpt.read_text().strip())
        except (OSError, ValueError):
            return 0
        return max(0, min(staged, durable, size))

    def _copy(self, src: BinaryIO, dst: BinaryIO, offset: int, size: int, ckpt: Path,
              progress: Progress) -> int:
        fast = hasattr(os, "copy_file_range") and hasattr(src, "fileno")  # not through a hashing reader
        pos, last_ckpt = offset, offset
        step = chunk_size(progress, CHUNK)
        while pos < size:
            n = min(step, size - pos)
            got = 0
            if fast:
                try:
                    got = _copy_file_range(src.fileno(), dst.fileno(), n, pos)
                except OSError as e:
                    if e.errno not in _NO_FAST_COPY:
                        raise
                    fast = False
            if not fast:
                src.seek(pos)
                data = src.read(n)
                dst.seek(pos)
                got = dst.write(data)
            if got == 0:
                raise TransientError(f"the source ended at {pos} of {size} bytes")
            pos += got
            if pos - last_ckpt >= CHECKPOINT:
                dst.flush()
                os.fsync(dst.fileno())
                self._write_small(ckpt, str(pos), "a checkpoint")
                last_ckpt = pos
            progress(got)
        return pos - offset

    def publish(self, relpath: str, size: int, mtime_ns: int, md5: str | None = None) -> None:
        check_relpath(relpath)
        part, ckpt = self._staged(relpath, size, mtime_ns)
        final = self.root.joinpath(*relpath.split("/"))
        try:
            try:
                staged = part.stat().st_size
            except FileNotFoundError:
                raise TransientError(f"nothing is staged for {relpath}: sending it again") from None
            if staged != size:
                self.discard(relpath)
                raise TransientError(
                    f"the staged copy of {relpath} has {staged} bytes, not {size}: sending it again"
                )
            os.utime(part, ns=(mtime_ns, mtime_ns))
            try:
                os.replace(part, final)
            except FileNotFoundError:  # its folder is not there yet (the staged file is: above)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, final)
            if size >= CHECKPOINT:
                ckpt.unlink(missing_ok=True)
            if self._names is not None:
                self._names.drop((part.name, ckpt.name))
        except OSError as e:
            raise self._error(e, relpath) from None

    def discard(self, relpath: str) -> None:
        # Listed afresh: another session may have staged it since this one listed the folder.
        self._discard_other_versions(relpath, keep=None, fresh=True)

    def _discard_other_versions(self, relpath: str, keep: str | None, fresh: bool = False) -> None:
        stem = staging_stem(relpath)
        keep_stem = keep[: -len(".part")] if keep else None
        try:
            # This file's names only, however many are staged; the folder itself when asked.
            names = self._names.of(stem) if self._names is not None and not fresh else os.listdir(self.staging)
            for name in [n for n in names if n.startswith(stem + "-")]:
                if keep_stem is None or not name.startswith(keep_stem + "."):
                    (self.staging / name).unlink(missing_ok=True)
                    if self._names is not None:
                        self._names.drop((name,))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(e, "the staging folder") from None

    def delete(self, relpath: str) -> None:
        check_relpath(relpath)
        final = self.root.joinpath(*relpath.split("/"))
        try:
            final.unlink(missing_ok=True)
            self._prune(final.parent)
        except OSError as e:
            raise self._error(e, relpath) from None

    def _prune(self, folder: Path) -> None:
        """Remove the folders a deletion emptied, up to the job folder."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent

    def tidy(self, keep: Collection[str]) -> None:
        try:
            names = os.listdir(self.staging)
        except FileNotFoundError:
            return
        except OSError as e:
            raise self._error(e, "the staging folder") from None
        if not names:
            return  # the usual case: no stem of every queued path needed
        for name in stale_staging(names, keep):
            try:
                (self.staging / name).unlink(missing_ok=True)
            except OSError as e:
                raise self._error(e, "the staging folder") from None
            if self._names is not None:
                self._names.drop((name,))

    def probe(self) -> None:
        tmp, final = self.agent / f"{PROBE_NAME}.tmp", self.agent / PROBE_NAME
        try:
            tmp.write_bytes(b"offsite probe\n")
            os.replace(tmp, final)
            if final.read_bytes() != b"offsite probe\n":
                raise PermanentError(f"the probe file in {self.agent} did not read back as written")
            final.unlink()
        except OSError as e:
            raise self._error(e, "a probe file") from None


def _raise(e: OSError) -> None:
    raise e


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); Windows has no directory handles to sync."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_file_range(src: int, dst: int, n: int, pos: int) -> int:
    """The kernel's copy (Linux); elsewhere the read-and-write fallback above is used."""
    if sys.platform == "win32":  # pragma: no cover - hasattr(os, "copy_file_range") is False there
        raise OSError(errno.ENOSYS, "no copy_file_range")
    return os.copy_file_range(src, dst, n, pos, pos)
