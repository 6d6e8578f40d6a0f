"""The MD5 of every byte of a file as it is uploaded, whatever order the target reads it in:
what proves, at publish time, that the copy is the file (and, for ShadowProtect images, that
the file is what its .md5 sidecar says)."""
from __future__ import annotations

import hashlib
import queue as stdqueue
import threading


class HashingReader:
    """The source file as the target reads it, with the MD5 of every byte of the file: bytes
    read in order are hashed as they pass; a gap (an upload resumed at an offset, S3 parts
    read out of order) is read once more from the file, so a resumed upload is checked as
    fully as a whole one. No fileno(): the local target then copies through read(), not
    the kernel, so every byte is seen."""

    PIPELINE_FROM = 8 * 1024 * 1024  # files this big are hashed on a thread of their own

    def __init__(self, f, size: int) -> None:
        self.f, self.size = f, size
        self.md5 = hashlib.md5()
        self.hashed = 0  # bytes [0, hashed) are in the digest
        self.bytes_reread = 0  # read a second time to fill gaps (for tests and the bench)
        # MD5 runs beside the copy on another core (hashlib lets go of the GIL): the bench
        # showed hashing inline cost a local copy a third of its speed.
        self._chunks: stdqueue.Queue[bytes | None] | None = None
        self._hasher: threading.Thread | None = None
        if size >= self.PIPELINE_FROM:
            self._chunks = stdqueue.Queue(maxsize=16)
            self._hasher = threading.Thread(target=self._hash_loop, name="md5", daemon=True)
            self._hasher.start()

    def _hash_loop(self) -> None:
        assert self._chunks is not None
        while (chunk := self._chunks.get()) is not None:
            self.md5.update(chunk)

    def _update(self, data: bytes) -> None:
        if self._chunks is not None:
            self._chunks.put(data)
        else:
            self.md5.update(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def read(self, n: int = -1) -> bytes:
        pos = self.f.tell()
        if pos > self.hashed:
            self._fill(pos)
            self.f.seek(pos)
        data = self.f.read(n)
        if pos == self.hashed:
            self._update(data)
            self.hashed += len(data)
        elif pos < self.hashed < pos + len(data):
            self._update(data[self.hashed - pos:])
            self.hashed = pos + len(data)
        return data

    def _fill(self, upto: int) -> None:
        self.f.seek(self.hashed)
        while self.hashed < upto:
            chunk = self.f.read(min(1 << 20, upto - self.hashed))
            if not chunk:
                break
            self._update(chunk)
            self.hashed += len(chunk)
            self.bytes_reread += len(chunk)

    def hexdigest(self) -> str:
        """The MD5 of the whole file (what was not read yet is read now)."""
        if self.hashed < self.size:
            self._fill(self.size)
        self.close()
        return self.md5.hexdigest()

    def close(self) -> None:
        """End the hashing thread (also when the upload failed half-way)."""
        if self._chunks is not None and self._hasher is not None:
            self._chunks.put(None)
            self._hasher.join()
            self._chunks = None
