"""A read-only FUSE passthrough of a folder that fails on demand: the source of a backup
server whose disk or NAS answers badly (EIO, EACCES, ESTALE, a stall).

    python faultfs.py BACKING MOUNTPOINT CONTROL

CONTROL is a JSON file, read again whenever it changes:
    {"faults": [{"path": "PC2", "error": "EIO", "ops": ["readdir", "getattr"], "delay": 0}]}
Every operation on `path` or under it (relative to the mount; "" is everything) of one of
`ops` (default: all of readdir, getattr, open, read) sleeps `delay` seconds, then fails with
`error` (an errno name), or, with no error, goes on (a stall). No caching in the kernel
(attribute, entry and negative timeouts 0), so what the backing folder holds is what a
reader sees at once. Writes go to BACKING directly; the mount is read-only.

`FaultFS` (below) starts one for a test and unmounts it at the end.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

OPS = ("readdir", "getattr", "open", "read")


def serve(backing: str, mountpoint: str, control: str) -> None:
    import mfusepy as fuse  # ctypes bindings for libfuse 3 (Debian's fuse3)

    class Faulty(fuse.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.stamp: int | None = None
            self.faults: list[dict] = []
            self.lock = threading.Lock()

        def _rules(self) -> list[dict]:
            try:
                stamp: int | None = os.stat(control).st_mtime_ns
            except OSError:
                stamp = None
            with self.lock:
                if stamp != self.stamp:
                    self.stamp = stamp
                    try:
                        self.faults = json.loads(Path(control).read_text())["faults"] if stamp else []
                    except (OSError, ValueError, KeyError):
                        self.faults = []
                return self.faults

        def _check(self, op: str, path: str) -> None:
            rel = path.strip("/")
            for f in self._rules():
                top = f.get("path", "").strip("/")
                if op in f.get("ops", OPS) and (not top or rel == top or rel.startswith(top + "/")):
                    if f.get("delay"):
                        time.sleep(f["delay"])
                    if f.get("error"):
                        raise fuse.FuseOSError(getattr(errno, f["error"]))

        def _real(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def getattr(self, path, fh=None):
            self._check("getattr", path)
            try:
                st = os.lstat(self._real(path))
            except OSError as e:
                raise fuse.FuseOSError(e.errno)
            out = {k: getattr(st, k) for k in ("st_gid", "st_mode", "st_nlink", "st_size", "st_uid")}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def readdir(self, path, fh):
            self._check("readdir", path)
            try:
                return [".", "..", *os.listdir(self._real(path))]
            except OSError as e:
                raise fuse.FuseOSError(e.errno)

        def readlink(self, path):
            return os.readlink(self._real(path))

        def open(self, path, flags):
            self._check("open", path)
            try:
                return os.open(self._real(path), os.O_RDONLY)
            except OSError as e:
                raise fuse.FuseOSError(e.errno)

        def read(self, path, size, offset, fh):
            self._check("read", path)
            return os.pread(fh, size, offset)

        def release(self, path, fh):
            os.close(fh)
            return 0

    fuse.FUSE(Faulty(), mountpoint, foreground=True, ro=True, nothreads=False,
              attr_timeout=0, entry_timeout=0, negative_timeout=0)


class FaultFS:
    """A faulty view of `backing` mounted at `mount`, for one test."""

    def __init__(self, backing: Path, mount: Path, log: Path) -> None:
        self.backing, self.mount, self.control = backing, mount, mount.with_name(mount.name + ".faults.json")
        backing.mkdir(parents=True, exist_ok=True)
        mount.mkdir(parents=True, exist_ok=True)
        self.heal()
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, __file__, str(backing), str(mount), str(self.control)],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mount):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the FUSE source did not mount: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def fail(self, path: str = "", error: str | None = "EIO", ops=OPS, delay: float = 0) -> None:
        """Make operations on `path` (and under it) fail with `error` (or only stall)."""
        self._write([{"path": path, "error": error, "ops": list(ops), "delay": delay}])

    def heal(self) -> None:
        self._write([])

    def _write(self, faults: list[dict]) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"faults": faults}))
        os.replace(tmp, self.control)

    def stop(self) -> None:
        self.heal()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


if __name__ == "__main__":
    serve(*sys.argv[1:4])
