"""The `s3` target's large files: multipart uploads that resume, and their proof at publish.

Large files go up as multipart uploads whose part size grows with the file, so the largest
images stay under S3's 10,000 parts; each part carries its Content-MD5, which the server
checks. The upload ID lives in a small record under `<prefix>/<folder>/.offsite/staging/`,
so an interrupted upload resumes after a restart from the parts the server lists, and the
object appears under its key only when the upload is completed. Multipart uploads that no
record names are aborted as strays.

Proof at publish: before an upload is completed, the ETag the server lists for each part
(the MD5 of what it stored) is compared with the MD5 of that part as read from the source
now, so parts staged by an earlier run that no longer match the source are never
published; after completion, the object's ETag (the MD5 of the parts' MD5s, "-N") is
compared with the one the parts give. Both only where the store's ETags are MD5s: not with
aws:kms encryption, and not on a store whose part ETags did not match their Content-MD5.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Collection

from ..errors import TransientError
from .base import Progress, md5_hex, not_as_sent, staging_stem, stale_staging
from .s3_bucket import Bucket, Folder, MiB

MIN_PART = 16 * MiB  # also the largest file sent with one PUT
PARALLEL_PARTS = 4
MAX_PARTS = 9000  # S3 allows 10,000; leave room

# The MD5 of each part of a multipart upload as read from the source (upload ID -> part
# number -> MD5), and whether a store's part ETags are MD5s (endpoint -> bool): shared by
# every session, because the session that publishes a file is not always the one that
# uploaded it, and publish must check every part against what was read (issue 15).
_PART_MD5S: dict[str, dict[int, str]] = {}
_ETAGS_ARE_MD5: dict[tuple, bool] = {}
_SHARED_LOCK = threading.Lock()


def part_size(size: int) -> int:
    """Parts of at least 16 MiB, in whole MiB, few enough for the largest images."""
    need = -(-size // MAX_PARTS)
    return max(MIN_PART, -(-need // MiB) * MiB)


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


class Multipart:
    """One session's multipart uploads under a job folder's staging prefix. Raises only
    TransientError and PermanentError (and whatever `progress` raises: Interrupted)."""

    def __init__(self, bucket: Bucket, root: str, staging: str, folder: Folder) -> None:
        self.b, self.root, self.staging = bucket, root, staging
        self.folder = folder  # the staging records as the process knows them, shared by its sessions

    def _known(self, record_key: str, there: bool) -> None:
        """A record this process wrote or removed (Folder.changed() was called before the
        request): the shared set follows."""
        with self.folder.lock:
            if self.folder.records is not None:
                (self.folder.records.add if there else self.folder.records.discard)(record_key)

    @property
    def etags_are_md5(self) -> bool | None:
        """Does this store's ETag of a part equal its MD5? Not with aws:kms (AWS documents it);
        found out from the first part sent otherwise (None until then)."""
        if self.b.o.get("sse") == "aws:kms":
            return False
        return _ETAGS_ARE_MD5.get((self.b.o.get("endpoint"), self.b.o.get("region")))

    @etags_are_md5.setter
    def etags_are_md5(self, value: bool) -> None:
        _ETAGS_ARE_MD5[(self.b.o.get("endpoint"), self.b.o.get("region"))] = value

    # ---------------------------------------------------------------- staging records
    def record_key(self, relpath: str, size: int, mtime_ns: int) -> str:
        return f"{self.staging}{staging_stem(relpath)}-{size}-{mtime_ns}.json"

    def records(self, relpath: str | None = None) -> list[str]:
        """The staging records on the server: all of them, or `relpath`'s."""
        prefix = self.staging + (staging_stem(relpath) + "-" if relpath else "")
        return [o["Key"] for o in self.b.keys(prefix)]

    def drop_others(self, relpath: str, keep: str | None) -> None:
        """Drop every record of `relpath` but `keep` (other versions of the file), and abort
        their uploads; from the records the process knows (listed once, by the first to ask)."""
        records = self.folder.records
        if records is None:
            before = self.folder.count(self.staging)
            records = set(self.records())
            with self.folder.lock:
                if self.folder.records is None and self.folder.changes.get(self.staging, 0) == before:
                    self.folder.records = records
        stem = self.staging + staging_stem(relpath) + "-"
        with self.folder.lock:
            mine = [r for r in records if r.startswith(stem)]
        for other in mine:
            if other != keep:
                self.drop(other)

    def drop(self, record_key: str) -> None:
        """Remove a record and abort the upload it names."""
        self.folder.changed(self.staging)
        data = self.b.get(record_key)
        if data is not None:
            rec = json.loads(data)
            with _SHARED_LOCK:
                _PART_MD5S.pop(rec["upload_id"], None)
            self.b.call(record_key, self.b.client.abort_multipart_upload, missing_ok=True, Bucket=self.b.name,
                        Key=rec["key"], UploadId=rec["upload_id"])
        self.b.delete(record_key)
        self._known(record_key, False)

    def open_uploads(self) -> list[dict]:
        """The multipart uploads open under the job folder (ListMultipartUploads' Uploads)."""
        r = self.b.call("the upload listing", self.b.client.list_multipart_uploads, Bucket=self.b.name,
                        Prefix=self.root)
        return r.get("Uploads", [])

    def tidy(self, keep: Collection[str], listed: list[dict] | None = None, uploads: list[dict] | None = None) -> None:
        """Drop the records (and abort the uploads) of files not in `keep`, and abort multipart
        uploads under the job folder that no record names. `listed`: the staging folder's
        objects as a listing just made saw them (S3Target.listed), else it is listed here;
        `uploads`: the open uploads as the same listing saw them, else they are asked here."""
        known = set()
        records = [o["Key"] for o in listed] if listed is not None else self.records()
        stale = set(stale_staging([r[len(self.staging):] for r in records], keep))
        for rk in records:
            if rk[len(self.staging):] in stale:
                self.drop(rk)
                continue
            data = self.b.get(rk)
            if data is not None:
                known.add(json.loads(data)["upload_id"])
        with self.folder.lock:  # the truth, as no session uploads now
            self.folder.records = {r for r in records if r[len(self.staging):] not in stale}
        for u in uploads if uploads is not None else self.open_uploads():
            if u["UploadId"] not in known:
                self.b.call(u["Key"], self.b.client.abort_multipart_upload, missing_ok=True, Bucket=self.b.name,
                            Key=u["Key"], UploadId=u["UploadId"])

    def parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """Part number -> (ETag, size) of the parts the server holds; None if the upload is gone."""
        out: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            r = self.b.call(key, self.b.client.list_parts, missing_ok=True, Bucket=self.b.name, Key=key,
                            UploadId=upload_id, PartNumberMarker=marker)
            if r is None:
                return None
            for p in r.get("Parts", []):
                out[p["PartNumber"]] = (p["ETag"], p["Size"])
            if not r.get("IsTruncated"):
                return out
            marker = r["NextPartNumberMarker"]

    # ---------------------------------------------------------------- upload and publish
    def upload(self, key: str, record_key: str, relpath: str, src: BinaryIO, size: int,
               progress: Progress) -> int:
        """Send the parts the server does not hold yet; the bytes sent."""
        record = self.b.get(record_key)
        done: dict[int, int] = {}
        if record is not None:
            rec = json.loads(record)
            upload_id, psize = rec["upload_id"], rec["part_size"]
            held = self.parts(key, upload_id)
            if held is None:  # the upload is gone (aborted, expired): start over
                record = None
            else:
                done = {n: size_ for n, (_, size_) in held.items()}
        if record is None:
            psize = part_size(size)
            r = self.b.call(key, self.b.client.create_multipart_upload, Bucket=self.b.name, Key=key,
                            **self.b.sse(), **self.b.object_extra())
            upload_id, done = r["UploadId"], {}
            self.folder.changed(self.staging)
            self.b.put(record_key, json.dumps({"key": key, "upload_id": upload_id, "part_size": psize}).encode())
            self._known(record_key, True)
        count = -(-size // psize)
        todo = [n for n in range(1, count + 1) if done.get(n) != min(psize, size - (n - 1) * psize)]

        with _SHARED_LOCK:
            md5s = _PART_MD5S.setdefault(upload_id, {})
        if self.etags_are_md5 is not False:  # parts staged before: hash what the source holds now
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
            r = self.b.call(f"{relpath} part {n}", self.b.client.upload_part, Bucket=self.b.name, Key=key,
                            UploadId=upload_id, PartNumber=n, Body=_Paced(data, progress),
                            ContentMD5=base64.b64encode(digest).decode())
            md5s[n] = digest.hex()
            if self.etags_are_md5 is None:  # the store checked the Content-MD5: is its ETag that MD5?
                self.etags_are_md5 = md5_hex(r.get("ETag", "")) == digest.hex()
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

    def complete(self, key: str, record_key: str, relpath: str, size: int) -> None:
        """Prove the staged parts against what was read from the source, then complete the
        upload (the object appears under `key`) and prove the object's ETag. A staged upload
        that is incomplete or does not match is dropped: TransientError, sent again."""
        record = self.b.get(record_key)
        if record is None:
            raise TransientError(f"nothing is staged for {relpath}: sending it again")
        rec = json.loads(record)
        etags = self.parts(key, rec["upload_id"])
        if etags is None or sum(s for _, s in etags.values()) != size:
            self.drop(record_key)
            raise TransientError(f"the staged upload of {relpath} is incomplete: sending it again")
        with _SHARED_LOCK:
            sent = _PART_MD5S.pop(rec["upload_id"], {})
        if self.etags_are_md5 is not False:
            for n, (etag, _) in sorted(etags.items()):
                there = md5_hex(etag)
                if n not in sent:  # never published unproven: upload() hashes every part first
                    self.drop(record_key)
                    raise TransientError(f"part {n} of {relpath} was not checked against the source: "
                                         f"sending it again")
                if there is not None and there != sent[n]:
                    self.drop(record_key)
                    raise not_as_sent(f"{relpath} (part {n})", there, sent[n])
        done = self.b.call(relpath, self.b.client.complete_multipart_upload, Bucket=self.b.name, Key=key,
                           UploadId=rec["upload_id"],
                           MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n}
                                                      for n, (e, _) in sorted(etags.items())]})
        self.folder.changed(self.staging)
        self.b.delete(record_key)
        self._known(record_key, False)
        if self.etags_are_md5 is not False and sent and len(sent) == len(etags):
            # The object's ETag, as S3 defines it for a multipart upload, from our parts.
            want = hashlib.md5(b"".join(bytes.fromhex(sent[n]) for n in sorted(sent))).hexdigest()
            there = str(done.get("ETag", "")).strip('"').lower()
            if there.endswith(f"-{len(sent)}") and md5_hex(there.split("-")[0]) and there != f"{want}-{len(sent)}":
                raise not_as_sent(relpath, there, f"{want}-{len(sent)}")
