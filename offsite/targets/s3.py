"""The `s3` target: boto3, for AWS and S3-compatible stores.

Large files go up as multipart uploads whose part size grows with the file, so the largest
images stay under S3's 10,000 parts; each part carries its Content-MD5, which the server
checks. The upload ID lives in a small record under `<prefix>/<folder>/.offsite/staging/`,
so an interrupted upload resumes after a restart from the parts the server lists, and the
object appears under its key only when the upload is completed. Small files are sent with
one PUT at publish time. Multipart uploads that no record names are aborted as strays.

Proof at publish: before an upload is completed, the ETag the server lists for each part
(the MD5 of what it stored) is compared with the MD5 of that part as read from the source
now, so parts staged by an earlier run that no longer match the source are never
published; after completion, the object's ETag (the MD5 of the parts' MD5s, "-N") is
compared with the one the parts give. Both only where the store's ETags are MD5s: not with
aws:kms encryption, and not on a store whose part ETags did not match their Content-MD5.

Round trips: a session lists the staging records once when it opens, so an upload asks
for no listing; a small file is one PUT with its Content-MD5,
which the server checks, so nothing more is asked after it.
"""
from __future__ import annotations

import base64
import builtins
import datetime as dt
import hashlib
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Collection, Mapping
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

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
    md5_hex,
    not_as_sent,
    staging_stem,
    stale_staging,
)


class _Paced(io.RawIOBase):
    """A part's bytes, reported to `progress` as the HTTP client reads them, so a throttle
    paces the socket writes instead of pausing between whole parts."""

    def __init__(self, data: bytes, progress: Progress) -> None:
        self.data, self.pos, self.progress, self.counted = memoryview(data), 0, progress, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else len(self.data) + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos:end])
        self.pos = end
        if end > self.counted:  # a retry re-reads: count each byte once
            self.progress(end - self.counted)
            self.counted = end
        return out

# Small files are sent with one PUT at publish time; until then their bytes wait here, shared
# by every session of the process, because with parallel transfers the thread that publishes
# a file (in chain order) is not always the one that staged it. The job's dispatcher bounds
# how many staged files wait at once.
_SMALL: dict[tuple, bytes] = {}
_SMALL_LOCK = threading.Lock()
_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()
# The MD5 of each part of a multipart upload as read from the source (upload ID -> part
# number -> MD5), and whether a store's part ETags are MD5s (endpoint -> bool): shared by
# every session, because the session that publishes a file is not always the one that
# uploaded it, and publish must check every part against what was read (issue 15).
_PART_MD5S: dict[str, dict[int, str]] = {}
_ETAGS_ARE_MD5: dict[tuple, bool] = {}
_SHARED_LOCK = threading.Lock()

MiB = 1024 * 1024
MIN_PART = 16 * MiB  # also the largest file sent with one PUT
PARALLEL_PARTS = 4
MAX_PARTS = 9000  # S3 allows 10,000; leave room
COPY_LIMIT = 5 * 1024 * MiB  # the largest object one CopyObject copies

_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed", "InvalidToken",
         "ExpiredToken", "InvalidClientTokenId"}
_TRANSIENT = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
              "Throttling", "ThrottlingException", "503", "500", "502", "504"}


def part_size(size: int) -> int:
    """Parts of at least 16 MiB, in whole MiB, few enough for the largest images."""
    need = -(-size // MAX_PARTS)
    return max(MIN_PART, -(-need // MiB) * MiB)


def _md5_of(src: BinaryIO, start: int, length: int) -> str:
    """The MD5 of src[start:start+length], read in pieces."""
    h = hashlib.md5()
    src.seek(start)
    while length > 0:
        data = src.read(min(length, 8 * MiB))
        if not data:
            raise TransientError(f"the source ended before {start + length} bytes")
        h.update(data)
        length -= len(data)
    return h.hexdigest()


class S3Target(Target):
    resumable = True
    resume_min_size = MIN_PART + 1  # up to one part: a single PUT at publish
    keeps_mtime = False  # listings carry no metadata; sizes decide

    def __init__(self, options: Mapping[str, Any], folder: str) -> None:
        self.o = options
        self.bucket = options["bucket"]
        prefix = (options.get("prefix") or "").strip("/")
        self.root = f"{prefix}/{folder}/" if prefix else f"{folder}/"
        self.agent = self.root + AGENT_DIR + "/"
        self.staging = self.agent + "staging/"
        self.client: Any = None  # a boto3 client (untyped)
        self._known_records: set[str] | None = None  # staging records, listed at open
        self.bin = self.agent + BIN_DIR + "/"

    @property
    def _etags_are_md5(self) -> bool | None:
        """Does this store's ETag of a part equal its MD5? Not with aws:kms (AWS documents it);
        found out from the first part sent otherwise (None until then)."""
        if self.o.get("sse") == "aws:kms":
            return False
        return _ETAGS_ARE_MD5.get((self.o.get("endpoint"), self.o.get("region")))

    @_etags_are_md5.setter
    def _etags_are_md5(self, value: bool) -> None:
        _ETAGS_ARE_MD5[(self.o.get("endpoint"), self.o.get("region"))] = value

    def endpoint(self) -> tuple[str, int] | None:
        url = urlsplit(self.o.get("endpoint") or f"https://s3.{self.o.get('region') or 'us-east-1'}.amazonaws.com")
        if not url.hostname:
            return None
        return url.hostname, url.port or (443 if url.scheme == "https" else 80)

    def describe(self) -> str:
        where = f" at {self.o['endpoint']}" if self.o.get("endpoint") else ""
        return f"s3://{self.bucket}/{self.root}{where}"

    # ---------------------------------------------------------------- calls
    def _call(self, what: str, fn: Callable, missing_ok: bool = False, **kw):
        try:
            return fn(**kw)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if missing_ok and (code in ("NoSuchKey", "404", "NoSuchUpload", "NotFound") or status == 404):
                return None
            if code == "NoSuchBucket":
                raise PermanentError(f"the bucket {self.bucket} does not exist") from None
            if code in _AUTH:
                raise PermanentError(f"authentication failed for bucket {self.bucket}: {code}") from None
            if code in ("AccessDenied", "403") or status == 403:
                raise PermanentError(f"access denied on {what} in bucket {self.bucket}") from None
            if code in _TRANSIENT or (status or 0) >= 500:
                raise TransientError(f"{what} in bucket {self.bucket}: {code or status}") from None
            raise PermanentError(f"{what} failed in bucket {self.bucket}: {code} {e.response.get('Error', {}).get('Message', '')}".rstrip()) from None
        except NoCredentialsError:
            raise PermanentError("no S3 credentials: set access_key_id and secret_access_key, or the "
                                 "standard AWS environment variables or files") from None
        except EndpointConnectionError:
            raise TransientError(f"cannot connect to {self.o.get('endpoint') or 'S3'}") from None
        except (BotoCoreError, OSError) as e:
            raise TransientError(f"{what} in bucket {self.bucket}: {e}") from None

    def open(self, create: bool = True) -> None:
        secret = self.o.get("secret_access_key")
        extra = {}
        if self.o.get("endpoint"):
            # Many S3-compatible stores reject boto3's default CRC checksums (boto3 1.36+).
            extra = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
        cfg = Config(s3={"addressing_style": self.o.get("addressing_style") or "auto"},
                     retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=30, read_timeout=120,
                     max_pool_connections=2 * PARALLEL_PARTS, **extra)
        # One client for all sessions of the same location: boto3 clients are thread-safe,
        # and making one costs tens of milliseconds of CPU.
        key = (self.o.get("endpoint"), self.o.get("region"), self.o.get("addressing_style"),
               self.o.get("access_key_id"), secret)
        try:
            with _CLIENTS_LOCK:
                if key not in _CLIENTS:
                    _CLIENTS[key] = boto3.client(
                        "s3", endpoint_url=self.o.get("endpoint"), region_name=self.o.get("region"),
                        aws_access_key_id=self.o.get("access_key_id"),
                        aws_secret_access_key=secret.reveal() if secret else None, config=cfg)
                self.client = _CLIENTS[key]
        except (BotoCoreError, ValueError) as e:
            raise PermanentError(f"cannot set up the S3 client: {e}") from None
        head = self._call(f"bucket {self.bucket}", self.client.head_bucket, missing_ok=True, Bucket=self.bucket)
        if head is None:
            raise PermanentError(f"the location (bucket) {self.bucket} does not exist")
        if create:
            self._known_records = set(self._records())

    def close(self) -> None:
        self.client = None
        self._known_records = None

    def _small_key(self, relpath: str) -> tuple:
        return (self.o.get("endpoint"), self.bucket, self.root, relpath)

    def _keys(self, prefix: str) -> list[dict]:
        out: list[dict] = []
        token = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self._call("the listing", self.client.list_objects_v2, **kw)
            out += page.get("Contents", [])
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def list(self) -> dict[str, RemoteFile]:
        keys = [o for o in self._keys(self.root) if not o["Key"].startswith(self.agent) and not o["Key"].endswith("/")]
        # Another job's folder nested in this one (it holds its own .offsite/owner): never listed.
        owned = tuple(o["Key"][: -len(f"{AGENT_DIR}/{OWNER_FILE}")] for o in keys
                      if o["Key"].endswith(f"/{AGENT_DIR}/{OWNER_FILE}"))
        self.foreign = frozenset(k[len(self.root):].rstrip("/") for k in owned)
        return {o["Key"][len(self.root):]: RemoteFile(o["Size"]) for o in keys
                if not (owned and o["Key"].startswith(owned))}

    def read_back(self, relpath: str, sink: Callable[[bytes], None]) -> bool:
        key = self.root + check_relpath(relpath)
        r = self._call(key, self.client.get_object, missing_ok=True, Bucket=self.bucket, Key=key)
        if r is None:
            return False
        try:
            for chunk in r["Body"].iter_chunks(1 << 20):
                sink(chunk)
        except (BotoCoreError, OSError) as e:
            raise TransientError(f"reading {relpath} back from {self.describe()} broke: {e}") from None
        finally:
            r["Body"].close()
        return True

    def _get(self, key: str) -> bytes | None:
        r = self._call(key, self.client.get_object, missing_ok=True, Bucket=self.bucket, Key=key)
        return None if r is None else r["Body"].read()

    def _put(self, key: str, data: bytes, **extra) -> None:
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5,
                   **self._sse(), **extra)

    def _sse_text(self) -> str:
        key = self.o.get("sse_kms_key_id")
        return f"sse {self.o.get('sse')}" + (f" with key {key}" if key else "")

    def _sse(self) -> dict:
        """Server-side encryption, asked for on every object written (records included)."""
        out: dict[str, str] = {}
        if self.o.get("sse"):
            out["ServerSideEncryption"] = self.o["sse"]
            if self.o.get("sse_kms_key_id"):
                out["SSEKMSKeyId"] = self.o["sse_kms_key_id"]
        return out

    def read_owner(self) -> str | None:
        data = self._get(self.agent + OWNER_FILE)
        return data.decode("utf-8").strip() or None if data is not None else None

    def write_owner(self, owner: str) -> None:
        self._put(self.agent + OWNER_FILE, (owner + "\n").encode("utf-8"))  # a PUT is atomic

    def _object_extra(self) -> dict:
        extra: dict[str, Any] = {}
        if self.o.get("storage_class"):
            extra["StorageClass"] = self.o["storage_class"]
        if self.o.get("object_lock_days"):
            until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.o["object_lock_days"])
            extra.update(ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
        return extra

    # ---------------------------------------------------------------- uploads
    def _record_key(self, relpath: str, size: int, mtime_ns: int) -> str:
        return f"{self.staging}{staging_stem(relpath)}-{size}-{mtime_ns}.json"

    def _records(self, relpath: str | None = None) -> builtins.list[str]:
        prefix = self.staging + (staging_stem(relpath) + "-" if relpath else "")
        return [o["Key"] for o in self._keys(prefix)]

    def upload(self, relpath: str, src: BinaryIO, size: int, mtime_ns: int, progress: Progress) -> int:
        key = self.root + check_relpath(relpath)
        record_key = self._record_key(relpath, size, mtime_ns)
        if self._known_records is None:
            records = self._records(relpath)
        else:
            stem = self.staging + staging_stem(relpath) + "-"
            records = [r for r in self._known_records if r.startswith(stem)]
        for other in records:
            if other != record_key:
                self._drop_record(other)
        if size <= MIN_PART:
            src.seek(0)
            data = src.read(size)
            progress(len(data))
            with _SMALL_LOCK:
                _SMALL[self._small_key(relpath)] = data
            return len(data)
        record = self._get(record_key)
        done: dict[int, int] = {}
        if record is not None:
            rec = json.loads(record)
            upload_id, psize = rec["upload_id"], rec["part_size"]
            held = self._etags(key, upload_id)
            if held is None:  # the upload is gone (aborted, expired): start over
                record = None
            else:
                done = {n: size_ for n, (_, size_) in held.items()}
        if record is None:
            psize = part_size(size)
            r = self._call(key, self.client.create_multipart_upload, Bucket=self.bucket, Key=key,
                           **self._sse(), **self._object_extra())
            upload_id, done = r["UploadId"], {}
            self._put(record_key, json.dumps({"key": key, "upload_id": upload_id, "part_size": psize}).encode())
            if self._known_records is not None:
                self._known_records.add(record_key)
        count = -(-size // psize)
        todo = [n for n in range(1, count + 1) if done.get(n) != min(psize, size - (n - 1) * psize)]

        with _SHARED_LOCK:
            md5s = _PART_MD5S.setdefault(upload_id, {})
        if self._etags_are_md5 is not False:  # parts staged before: hash what the source holds now
            for n in sorted(set(range(1, count + 1)) - set(todo)):
                md5s[n] = _md5_of(src, (n - 1) * psize, min(psize, size - (n - 1) * psize))

        def part(n: int) -> int:
            start = (n - 1) * psize
            length = min(psize, size - start)
            with read_lock:  # one file object: reads one at a time, uploads side by side
                src.seek(start)
                data = src.read(length)
            if len(data) != length:
                raise TransientError(f"the source ended at {start + len(data)} of {size} bytes")
            digest = hashlib.md5(data).digest()
            r = self._call(f"{relpath} part {n}", self.client.upload_part, Bucket=self.bucket, Key=key,
                           UploadId=upload_id, PartNumber=n, Body=_Paced(data, progress),
                           ContentMD5=base64.b64encode(digest).decode())
            md5s[n] = digest.hex()
            if self._etags_are_md5 is None:  # the store checked the Content-MD5: is its ETag that MD5?
                self._etags_are_md5 = md5_hex(r.get("ETag", "")) == digest.hex()
            return length

        # One S3 connection cannot fill a fast or distant link: a large file's parts go up
        # PARALLEL_PARTS at a time (memory: that many parts), and the first failure stops the
        # rest. A file of a few parts goes one part at a time: little to gain, and an
        # interruption would find every part half sent and nothing to resume.
        read_lock = threading.Lock()
        sent = 0
        width = PARALLEL_PARTS if count >= 2 * PARALLEL_PARTS else 1
        with ThreadPoolExecutor(width, thread_name_prefix="s3-part") as pool:
            futures = [pool.submit(part, n) for n in todo[:width]]
            queued = width
            try:
                while futures:
                    sent += futures.pop(0).result()
                    if queued < len(todo):
                        futures.append(pool.submit(part, todo[queued]))
                        queued += 1
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return sent

    def publish(self, relpath: str, size: int, mtime_ns: int, md5: str | None = None) -> None:
        key = self.root + check_relpath(relpath)
        if size <= MIN_PART:
            with _SMALL_LOCK:
                data = _SMALL.pop(self._small_key(relpath), None)
            if data is None or len(data) != size:
                raise TransientError(f"nothing complete is staged for {relpath}: sending it again")
            self._put(key, data, **self._object_extra())  # its Content-MD5 proves size and bytes
            return
        else:
            record_key = self._record_key(relpath, size, mtime_ns)
            record = self._get(record_key)
            if record is None:
                raise TransientError(f"nothing is staged for {relpath}: sending it again")
            rec = json.loads(record)
            etags = self._etags(key, rec["upload_id"])
            if etags is None or sum(s for _, s in etags.values()) != size:
                self._drop_record(record_key)
                raise TransientError(f"the staged upload of {relpath} is incomplete: sending it again")
            with _SHARED_LOCK:
                sent = _PART_MD5S.pop(rec["upload_id"], {})
            if self._etags_are_md5 is not False:
                for n, (etag, _) in sorted(etags.items()):
                    there = md5_hex(etag)
                    if n not in sent:  # never published unproven: upload() hashes every part first
                        self._drop_record(record_key)
                        raise TransientError(f"part {n} of {relpath} was not checked against the source: "
                                             f"sending it again")
                    if there is not None and there != sent[n]:
                        self._drop_record(record_key)
                        raise not_as_sent(f"{relpath} (part {n})", there, sent[n])
            done = self._call(relpath, self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                              UploadId=rec["upload_id"],
                              MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n}
                                                         for n, (e, _) in sorted(etags.items())]})
            self._call(record_key, self.client.delete_object, Bucket=self.bucket, Key=record_key)
            if self._known_records is not None:
                self._known_records.discard(record_key)
            if self._etags_are_md5 is not False and sent and len(sent) == len(etags):
                # The object's ETag, as S3 defines it for a multipart upload, from our parts.
                want = hashlib.md5(b"".join(bytes.fromhex(sent[n]) for n in sorted(sent))).hexdigest()
                there = str(done.get("ETag", "")).strip('"').lower()
                if there.endswith(f"-{len(sent)}") and md5_hex(there.split("-")[0]) and there != f"{want}-{len(sent)}":
                    raise not_as_sent(relpath, there, f"{want}-{len(sent)}")
        head = self._call(relpath, self.client.head_object, Bucket=self.bucket, Key=key)
        if head["ContentLength"] != size:
            raise TransientError(f"{relpath} has {head['ContentLength']} bytes on the server, not {size}")

    def _etags(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """Part number -> (ETag, size) of the parts the server holds; None if the upload is gone."""
        out: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            r = self._call(key, self.client.list_parts, missing_ok=True, Bucket=self.bucket, Key=key,
                           UploadId=upload_id, PartNumberMarker=marker)
            if r is None:
                return None
            for p in r.get("Parts", []):
                out[p["PartNumber"]] = (p["ETag"], p["Size"])
            if not r.get("IsTruncated"):
                return out
            marker = r["NextPartNumberMarker"]

    def _drop_record(self, record_key: str) -> None:
        if self._known_records is not None:
            self._known_records.discard(record_key)
        data = self._get(record_key)
        if data is not None:
            rec = json.loads(data)
            with _SHARED_LOCK:
                _PART_MD5S.pop(rec["upload_id"], None)
            self._call(record_key, self.client.abort_multipart_upload, missing_ok=True, Bucket=self.bucket,
                       Key=rec["key"], UploadId=rec["upload_id"])
        self._call(record_key, self.client.delete_object, Bucket=self.bucket, Key=record_key)

    def tidy(self, keep: Collection[str]) -> None:
        """Drop the staging records (and abort the uploads) of files not in `keep`, and abort
        multipart uploads under this job's folder that no staging record names."""
        known = set()
        records = self._records()
        stale = set(stale_staging([r[len(self.staging):] for r in records], keep))
        for rk in records:
            if rk[len(self.staging):] in stale:
                self._drop_record(rk)
                continue
            data = self._get(rk)
            if data is not None:
                known.add(json.loads(data)["upload_id"])
        self._known_records = {r for r in records if r[len(self.staging):] not in stale}
        r = self._call("the upload listing", self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=self.root)
        for u in r.get("Uploads", []):
            if u["UploadId"] not in known:
                self._call(u["Key"], self.client.abort_multipart_upload, missing_ok=True, Bucket=self.bucket,
                           Key=u["Key"], UploadId=u["UploadId"])

    def discard(self, relpath: str) -> None:
        with _SMALL_LOCK:
            _SMALL.pop(self._small_key(relpath), None)
        for rk in self._records(relpath):
            self._drop_record(rk)

    def delete(self, relpath: str) -> None:
        key = self.root + check_relpath(relpath)
        self._call(relpath, self.client.delete_object, Bucket=self.bucket, Key=key)  # missing: fine

    # ---------------------------------------------------------------- the bin
    def _binned(self, relpath: str, day: str, version: int = 1) -> str:
        return f"{self.bin}{check_day(day)}/{binned_name(check_relpath(relpath), version)}"

    def _head(self, key: str) -> dict | None:
        return self._call(key, self.client.head_object, missing_ok=True, Bucket=self.bucket, Key=key)

    def _copy(self, src: str, dst: str, size: int, **extra) -> None:
        """A server-side copy; past 5 GB (one CopyObject's limit) boto3's managed copy, in parts."""
        if size < COPY_LIMIT:
            self._call(dst, self.client.copy_object, Bucket=self.bucket, Key=dst,
                       CopySource={"Bucket": self.bucket, "Key": src}, **self._sse(), **extra)
        else:
            self._call(dst, self.client.copy, CopySource={"Bucket": self.bucket, "Key": src}, Bucket=self.bucket,
                       Key=dst, ExtraArgs={**self._sse(), **extra})

    def to_bin(self, relpath: str, day: str) -> None:
        key, dest = self.root + check_relpath(relpath), self._binned(relpath, day)
        head = self._head(key)
        if head is None:
            return  # gone already
        version = 1
        while self._head(dest) is not None:
            version += 1  # the day's earlier copies stay; this one goes beside them
            dest = self._binned(relpath, day, version)
        self._copy(key, dest, head["ContentLength"])
        self._call(relpath, self.client.delete_object, Bucket=self.bucket, Key=key)

    def bin_list(self) -> builtins.list[Binned]:
        out = []
        for o in self._keys(self.bin):
            day, _, path = o["Key"][len(self.bin):].partition("/")
            if path and not path.endswith("/"):
                out.append(binned(day, path, o["Size"]))
        return out

    def from_bin(self, relpath: str, day: str, version: int = 1) -> None:
        src, key = self._binned(relpath, day, version), self.root + check_relpath(relpath)
        head = self._head(src)
        if head is None:
            raise PermanentError(f"the bin holds no {relpath} of {day}")
        if self._head(key) is not None:
            raise PermanentError(f"{relpath} is on the target already: it is not overwritten")
        self._copy(src, key, head["ContentLength"], **self._object_extra())
        self._call(src, self.client.delete_object, Bucket=self.bucket, Key=src)

    def purge_bin(self, day: str) -> None:
        keys = [o["Key"] for o in self._keys(f"{self.bin}{check_day(day)}/")]
        for i in range(0, len(keys), 1000):
            r = self._call(f"the bin's {day}", self.client.delete_objects, Bucket=self.bucket,
                           Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
            if r and r.get("Errors"):
                e = r["Errors"][0]
                raise PermanentError(f"cannot remove {e.get('Key')} from the bin in bucket {self.bucket}: "
                                     f"{e.get('Code')}")

    def probe(self) -> None:
        tmp, final = self.agent + PROBE_NAME + ".tmp", self.agent + PROBE_NAME
        try:
            self._put(tmp, b"offsite probe\n")
        except (TransientError, PermanentError) as e:
            if not self._sse():
                raise
            raise PermanentError(
                f"{self.describe()} refused an object written with server-side encryption {self._sse_text()} "
                f"({e}): check that the store supports it and knows that key") from None
        self._call(final, self.client.copy_object, Bucket=self.bucket, Key=final,
                   CopySource={"Bucket": self.bucket, "Key": tmp}, **self._sse())
        self._call(tmp, self.client.delete_object, Bucket=self.bucket, Key=tmp)
        if self._get(final) != b"offsite probe\n":
            raise PermanentError(f"the probe object in {self.describe()} did not read back as written")
        asked = self._sse()
        if asked:  # the store must say it encrypted the object as asked, not ignore the header
            head = self._call(final, self.client.head_object, Bucket=self.bucket, Key=final)
            got = {k: head.get(k) for k in asked}
            if got != asked:
                self._call(final, self.client.delete_object, Bucket=self.bucket, Key=final)
                raise PermanentError(
                    f"{self.describe()} did not encrypt the probe object as asked ({self._sse_text()}; the store "
                    f"reported {got.get('ServerSideEncryption') or 'no encryption'})")
        self._call(final, self.client.delete_object, Bucket=self.bucket, Key=final)
