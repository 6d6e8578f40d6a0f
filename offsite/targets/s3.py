"""The `s3` target: boto3, for AWS and S3-compatible stores.

A file of up to MIN_PART (16 MiB) is sent with one PUT at publish time, carrying its
Content-MD5, which the server checks; until then its bytes wait in memory. A larger file goes
up as a multipart upload that resumes after a restart and is proven part by part at publish
(s3_multipart.py). Requests, the shared client and the translation of botocore's errors are
s3_bucket.py's; the bin is s3_bin.py's. This module owns the contract's entry points, the
small files, the listing, the owner ID and the probe.

Round trips: what one session learnt, the others of the process know (s3_bucket.Folder):
the bucket is asked about once per process, and the staging records are listed once (by
the reconciliation's listing of the job folder, which holds them), so a session opens with
no request at all and an upload asks for no listing. The same listing answers the tidy's
and the bin's questions, unless this process changed the agent folder since. A small file
is one PUT, in one round trip, with its Content-MD5, which the server checks: the MD5 of
the bytes read from the source that publish() is given, so nothing more is asked after it
and the bytes are not hashed a second time.
"""
from __future__ import annotations

import builtins
import threading
from typing import Any, BinaryIO, Callable, Collection, Mapping
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError

from ..errors import PermanentError, TransientError
from ..selection import RemoteFile
from .base import AGENT_DIR, BIN_DIR, OWNER_FILE, PROBE_NAME, Progress, cause, check_relpath
from .s3_bin import S3Bin
from .s3_bucket import Bucket
from .s3_lock import CANARY, prove
from .s3_multipart import MAX_PARTS, MIN_PART, PARALLEL_PARTS, Multipart, part_size

__all__ = ["MAX_PARTS", "MIN_PART", "S3Target", "part_size"]

# Small files are sent with one PUT at publish time; until then their bytes wait here, shared
# by every session of the process, because with parallel transfers the thread that publishes
# a file (in chain order) is not always the one that staged it. The job's dispatcher bounds
# how many staged files wait at once.
_SMALL: dict[tuple, bytes] = {}
_SMALL_LOCK = threading.Lock()


class S3Target(S3Bin):
    resumable = True
    resume_min_size = MIN_PART + 1  # up to one part: a single PUT at publish
    keeps_mtime = False  # listings carry no metadata; sizes decide

    def __init__(self, options: Mapping[str, Any], folder: str) -> None:
        self.o = options
        self.store = Bucket(options, pool=2 * PARALLEL_PARTS)
        prefix = (options.get("prefix") or "").strip("/")
        self.root = f"{prefix}/{folder}/" if prefix else f"{folder}/"
        self.agent = self.root + AGENT_DIR + "/"
        self.staging = self.agent + "staging/"
        self.bin = self.agent + BIN_DIR + "/"
        self.known = self.store.folder(self.root)
        self.uploads = Multipart(self.store, self.root, self.staging, self.known)
        self._listed: tuple[dict[str, int], list[dict]] | None = None  # list()'s agent folder, and when
        self._uploads: list[dict] | None = None  # the multipart uploads open as list() saw them

    @property
    def client(self) -> Any:
        """The boto3 client, once open (None before)."""
        return self.store.client

    def endpoint(self) -> tuple[str, int] | None:
        url = urlsplit(self.o.get("endpoint") or f"https://s3.{self.o.get('region') or 'us-east-1'}.amazonaws.com")
        if not url.hostname:
            return None
        return url.hostname, url.port or (443 if url.scheme == "https" else 80)

    def describe(self) -> str:
        where = f" at {self.o['endpoint']}" if self.o.get("endpoint") else ""
        return f"s3://{self.store.name}/{self.root}{where}"

    def open(self, create: bool = True) -> None:
        self.store.connect()
        self.store.check()  # once per process and bucket

    def close(self) -> None:
        self.store.client = None
        self._listed = self._uploads = None

    def _small_key(self, relpath: str) -> tuple:
        return (self.o.get("endpoint"), self.store.name, self.root, relpath)

    def list(self) -> dict[str, RemoteFile]:
        with self.known.lock:
            before = dict(self.known.changes)
        # The multipart uploads left open, for the tidy that follows a reconciliation's
        # listing, asked at the same time: one round trip less, and the same moment as the
        # staging records it is compared with.
        uploads: list[list[dict]] = []
        ahead = threading.Thread(target=self._open_uploads, args=(uploads,), name="s3-upload-listing", daemon=True)
        ahead.start()
        try:
            everything = self.store.keys(self.root)
        finally:
            ahead.join()
        self._uploads = uploads[0] if uploads else None
        mine = [o for o in everything if o["Key"].startswith(self.agent)]
        self._listed = (before, mine)
        with self.known.lock:  # the records, unless known already or changed meanwhile
            if self.known.records is None and self.known.changes.get(self.staging, 0) == before.get(self.staging, 0):
                self.known.records = {o["Key"] for o in mine if o["Key"].startswith(self.staging)}
        keys = [o for o in everything if not o["Key"].startswith(self.agent) and not o["Key"].endswith("/")]
        # Another job's folder nested in this one (it holds its own .offsite/owner): never listed.
        owned = tuple(o["Key"][: -len(f"{AGENT_DIR}/{OWNER_FILE}")] for o in keys
                      if o["Key"].endswith(f"/{AGENT_DIR}/{OWNER_FILE}"))
        self.foreign = frozenset(k[len(self.root):].rstrip("/") for k in owned)
        return {o["Key"][len(self.root):]: RemoteFile(o["Size"]) for o in keys
                if not (owned and o["Key"].startswith(owned))}

    def _open_uploads(self, out: builtins.list[builtins.list[dict]]) -> None:
        try:
            out.append(self.uploads.open_uploads())
        except (TransientError, PermanentError):
            pass  # the tidy asks again, and says what failed

    def read_back(self, relpath: str, sink: Callable[[bytes], None]) -> bool:
        key = self.root + check_relpath(relpath)
        r = self.store.call(key, self.store.client.get_object, missing_ok=True, Bucket=self.store.name, Key=key)
        if r is None:
            return False
        try:
            for chunk in r["Body"].iter_chunks(1 << 20):
                sink(chunk)
        except (BotoCoreError, OSError) as e:
            raise TransientError(f"reading {relpath} back from {self.describe()} broke: {cause(e)}") from None
        finally:
            r["Body"].close()
        return True

    def read_owner(self) -> str | None:
        data = self.store.get(self.agent + OWNER_FILE)
        return data.decode("utf-8").strip() or None if data is not None else None

    def write_owner(self, owner: str) -> None:
        self.store.put(self.agent + OWNER_FILE, (owner + "\n").encode("utf-8"))  # a PUT is atomic

    # ---------------------------------------------------------------- uploads
    def upload(self, relpath: str, src: BinaryIO, size: int, mtime_ns: int, progress: Progress) -> int:
        key = self.root + check_relpath(relpath)
        record_key = self.uploads.record_key(relpath, size, mtime_ns)
        self.uploads.drop_others(relpath, keep=record_key)
        if size <= MIN_PART:
            src.seek(0)
            data = src.read(size)
            progress(len(data))
            with _SMALL_LOCK:
                _SMALL[self._small_key(relpath)] = data
            return len(data)
        return self.uploads.upload(key, record_key, relpath, src, size, progress)

    def publish(self, relpath: str, size: int, mtime_ns: int, md5: str | None = None) -> None:
        key = self.root + check_relpath(relpath)
        if size <= MIN_PART:
            with _SMALL_LOCK:
                data = _SMALL.pop(self._small_key(relpath), None)
            if data is None or len(data) != size:
                raise TransientError(f"nothing complete is staged for {relpath}: sending it again")
            # Its Content-MD5, the MD5 of the bytes read from the source, proves size and bytes.
            self.store.put(key, data, md5, **self.store.object_extra())
            return
        self.uploads.complete(key, self.uploads.record_key(relpath, size, mtime_ns), relpath, size)
        head = self.store.call(relpath, self.store.client.head_object, Bucket=self.store.name, Key=key)
        if head["ContentLength"] != size:
            raise TransientError(f"{relpath} has {head['ContentLength']} bytes on the server, not {size}")

    def tidy(self, keep: Collection[str]) -> None:
        """Drop the staging records (and abort the uploads) of files not in `keep`, and abort
        multipart uploads under this job's folder that no staging record names."""
        listed = self.listed(self.staging)
        self.uploads.tidy(keep, listed, self._uploads if listed is not None else None)

    def listed(self, prefix: str) -> builtins.list[dict] | None:
        """The objects under `prefix` (in the agent folder) as this session's last list() saw
        them, if this process changed nothing there since; None: ask the store."""
        if self._listed is None or self._listed[0].get(prefix, 0) != self.known.count(prefix):
            return None
        return [o for o in self._listed[1] if o["Key"].startswith(prefix)]

    def discard(self, relpath: str) -> None:
        with _SMALL_LOCK:
            _SMALL.pop(self._small_key(relpath), None)
        for rk in self.uploads.records(relpath):
            self.uploads.drop(rk)

    def delete(self, relpath: str) -> None:
        self.store.delete(self.root + check_relpath(relpath), relpath)  # missing: fine

    def lock_canary(self) -> str | None:
        return prove(self.store, self.agent + CANARY, self.describe())

    def probe(self) -> None:
        tmp, final = self.agent + PROBE_NAME + ".tmp", self.agent + PROBE_NAME
        sse = self.store.sse()
        try:
            self.store.put(tmp, b"offsite probe\n")
        except (TransientError, PermanentError) as e:
            if not sse:
                raise
            raise PermanentError(
                f"{self.describe()} refused an object written with server-side encryption {self.store.sse_text()} "
                f"({e}): check that the store supports it and knows that key") from None
        self.store.call(final, self.store.client.copy_object, Bucket=self.store.name, Key=final,
                        CopySource={"Bucket": self.store.name, "Key": tmp}, **sse)
        self.store.delete(tmp)
        if self.store.get(final) != b"offsite probe\n":
            raise PermanentError(f"the probe object in {self.describe()} did not read back as written")
        if sse:  # the store must say it encrypted the object as asked, not ignore the header
            head = self.store.call(final, self.store.client.head_object, Bucket=self.store.name, Key=final)
            got = {k: head.get(k) for k in sse}
            if got != sse:
                self.store.delete(final)
                raise PermanentError(
                    f"{self.describe()} did not encrypt the probe object as asked ({self.store.sse_text()}; the store "
                    f"reported {got.get('ServerSideEncryption') or 'no encryption'})")
        self.store.delete(final)
