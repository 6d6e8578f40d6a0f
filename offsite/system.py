"""The few operating-system specific calls offsite needs, behind portable functions.

Everything else in offsite uses pathlib and the standard library's portable calls; what
differs between POSIX and Windows (file locks, sharing modes, owner-only permissions)
lives here; and one Linux-only setting of the C library's heap (`keep_freed_buffers`).
"""
from __future__ import annotations

import ctypes
import os
import stat
import sys
import time
from pathlib import Path
from typing import IO

if sys.platform == "win32":  # pragma: no cover - not testable on this Linux machine
    import msvcrt
else:
    import fcntl


def folder_state(path: Path) -> str:
    """"folder", "missing" (no such folder, or not a folder) or "unreadable" (any other error:
    a NAS answering EIO or ESTALE). pathlib's is_dir() raises on the last kind."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:
        return "unreadable"
    return "folder" if stat.S_ISDIR(st.st_mode) else "missing"


class FileLock:
    """An exclusive, non-blocking lock on a file, released by the OS if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[bytes] | None = None

    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock, trying for up to `wait` seconds: `held_by_other` in another process
        (`offsite status`) holds it for an instant, which must not turn an agent away."""
        deadline = time.monotonic() + wait
        while not self._try():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _try(self) -> bool:
        f = open(self.path, "a+b")
        try:
            if sys.platform == "win32":  # pragma: no cover
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._f = f
        return True

    def release(self) -> None:
        if self._f is not None:
            try:
                if sys.platform == "win32":  # pragma: no cover
                    self._f.seek(0)
                    msvcrt.locking(self._f.fileno(), msvcrt.LK_UNLCK, 1)
                else:
                    fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            finally:
                self._f.close()
                self._f = None

    def held_by_other(self) -> bool:
        """True when another process holds the lock (probes without keeping it)."""
        if self._f is not None:
            return False
        if not self.path.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    if os.name != "nt":
        os.chmod(path, 0o700)


def open_private(path: Path, mode: str = "w"):
    """Open a new file that only its owner can read (for state and logs)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    return os.fdopen(fd, mode, encoding="utf-8")


def write_denied_to_others(path: Path) -> bool:
    """Windows: can we open the file while denying writes to others? If another process
    still has it open for writing, it is not complete. Elsewhere there is no such signal."""
    if sys.platform != "win32":
        return True
    import ctypes  # pragma: no cover
    from ctypes import wintypes  # pragma: no cover

    GENERIC_READ, FILE_SHARE_READ, OPEN_EXISTING = 0x80000000, 0x1, 3  # pragma: no cover
    create = ctypes.windll.kernel32.CreateFileW  # pragma: no cover
    create.restype = wintypes.HANDLE  # pragma: no cover
    h = create(str(path), GENERIC_READ, FILE_SHARE_READ, None, OPEN_EXISTING, 0, None)  # pragma: no cover
    if h in (None, wintypes.HANDLE(-1).value):  # pragma: no cover
        return False
    ctypes.windll.kernel32.CloseHandle(h)  # pragma: no cover
    return True  # pragma: no cover


_heap_kept = False


def keep_freed_buffers() -> None:
    """Let glibc keep up to 32 MiB of freed memory instead of handing it back at once. A big
    file moves through buffers of 1-4 MiB (and the protocol libraries' copies of them): by
    default each one freed was returned to the kernel and the next one faulted its pages in
    again, zeroed. That cost smbprotocol 5 page faults per byte sent and two thirds of its
    CPU (issue 17, bench/RESULTS.md). Peak memory rose by about 5 MB. Linux only."""
    global _heap_kept
    if _heap_kept or sys.platform != "linux":
        return
    _heap_kept = True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; musl has it as a no-op
    except (OSError, AttributeError):
        return
    mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD: buffers below this come from the heap
    mallopt(-1, 32 << 20)  # M_TRIM_THRESHOLD: free memory the heap keeps
