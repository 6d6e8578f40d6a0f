"""One S3 bucket through botocore: the requests every part of the `s3` target is built on.

Owns the botocore client (one per location and credentials, shared by every session of the
process: botocore clients are thread-safe, keep one pool of connections for all, and making
one costs tens of milliseconds of CPU), the translation of botocore's errors into offsite's
(the one place that knows S3's error codes), the location's options for every object
written (server-side encryption, storage class, object lock), the plain requests: get, put
with its Content-MD5, head, delete, a paged listing and a server-side copy; and what the
process has learnt of a bucket and of each job folder in it (`Folder`), so that a session
does not ask again what another asked already.

Requests with a Content-MD5 cost one round trip and no second hash of their bytes: a PUT is
sent without `Expect: 100-continue` (botocore adds it to every body; one more round trip
per file, to spare sending a few MiB in vain on a refusal), and, over plain http, with an
unsigned payload, as botocore already does over https: the signature covers the
Content-MD5, which the server checks, so a SHA-256 of every byte would prove nothing more.
Any other request is signed as botocore signs it.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import sys
import threading
from typing import Any, Callable, Mapping

# botocore, not boto3: boto3 adds s3transfer and its resource layer (~0.1 s of a short
# sync's start) for what offsite uses of it only past 5 GB (Bucket.copy). And botocore's
# httpsession takes its SSLContext class from urllib3.contrib.pyopenssl when that imports,
# else from urllib3 (the same ssl.SSLContext unless pyOpenSSL was injected into urllib3,
# which offsite never does): that import loads pyOpenSSL and cryptography, 40-150 ms, so it
# is hidden while botocore loads.
_PYOPENSSL = "urllib3.contrib.pyopenssl"
_hide = _PYOPENSSL not in sys.modules
if _hide:
    sys.modules[_PYOPENSSL] = None  # type: ignore[assignment]  # None in sys.modules: ImportError
try:
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        HTTPClientError,
        NoCredentialsError,
    )
finally:
    if _hide and sys.modules.get(_PYOPENSSL, 0) is None:
        del sys.modules[_PYOPENSSL]

from ..errors import OffsiteError, PermanentError, TransientError

_CLIENTS: dict[tuple, Any] = {}
_SESSION: Any = None  # the process's botocore session, made with its first client (it holds the loaded models)
_CLIENTS_LOCK = threading.Lock()
_CHECKED: set[tuple] = set()  # buckets that answered HeadBucket in this process (location, credentials)
_FOLDERS: dict[tuple, "Folder"] = {}

MiB = 1024 * 1024
COPY_LIMIT = 5 * 1024 * MiB  # the largest object one CopyObject copies

_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationHeaderMalformed", "InvalidToken",
         "ExpiredToken", "InvalidClientTokenId"}
_TRANSIENT = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
              "Throttling", "ThrottlingException", "503", "500", "502", "504",
              "BadDigest"}  # the bytes the server got are not those whose MD5 was sent: send them again


class Folder:
    """What this process knows of one job folder on the store, shared by every session: the
    agent writes a folder from one process only (its owner ID sees to that), so what one
    session learnt, or changed, holds for the others.

    `records`: the keys of the staging records (None until listed); `changes`: how many
    changes this process made under each prefix of the agent folder (the staging records,
    the bin), so that a listing made before none of them can stand in for another
    (S3Target.list() gives tidy() and bin_list() their answers that way). Both under `lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: set[str] | None = None
        self.changes: dict[str, int] = {}

    def changed(self, prefix: str) -> None:
        """A change under `prefix` is about to be made: call it before the request, so that a
        listing under way meanwhile does not count as seeing it, even if the request fails."""
        with self.lock:
            self.changes[prefix] = self.changes.get(prefix, 0) + 1

    def count(self, prefix: str) -> int:
        with self.lock:
            return self.changes.get(prefix, 0)


def _md5_proves_body(unsigned: Config) -> Callable[..., None]:
    """The before-sign handler of a client: a PUT goes without `Expect: 100-continue`, and
    a body proven by its Content-MD5 is sent unsigned over http too (see the docstring)."""
    def handler(request: Any, operation_name: str = "", **_: Any) -> None:
        if operation_name == "PutObject" and "Expect" in request.headers:
            del request.headers["Expect"]  # an email.message.Message: every Expect header goes
        if "Content-MD5" in request.headers:
            request.context["client_config"] = unsigned  # botocore reads the payload choice from here
    return handler


class Bucket:
    """A location's bucket: its client once connected, and requests that raise only
    TransientError and PermanentError."""

    def __init__(self, options: Mapping[str, Any], pool: int) -> None:
        self.o = options
        self.name: str = options["bucket"]
        self.pool = pool  # connections the client keeps: as many as requests in flight at once
        self.client: Any = None  # a botocore client (untyped), set by connect()
        secret = options.get("secret_access_key")
        self.key = (options.get("endpoint"), options.get("region"), options.get("addressing_style"),
                    options.get("access_key_id"), secret)

    def folder(self, root: str) -> Folder:
        """This process's knowledge of the job folder at `root`, shared by its sessions."""
        with _CLIENTS_LOCK:
            return _FOLDERS.setdefault((*self.key, self.name, root), Folder())

    def check(self) -> None:
        """Does the bucket exist, and do these credentials open it? Asked once per process:
        a bucket removed or a key revoked later fails the next request just as plainly."""
        if (*self.key, self.name) in _CHECKED:
            return
        if self.call(f"bucket {self.name}", self.client.head_bucket, missing_ok=True, Bucket=self.name) is None:
            raise PermanentError(f"the location (bucket) {self.name} does not exist")
        _CHECKED.add((*self.key, self.name))

    def connect(self) -> None:
        """Take the location's client, made on first use; PermanentError if it cannot be."""
        global _SESSION
        secret = self.o.get("secret_access_key")
        extra = {}
        if self.o.get("endpoint"):
            # Many S3-compatible stores reject boto3's default CRC checksums (boto3 1.36+).
            extra = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
        s3 = {"addressing_style": self.o["addressing_style"]}  # filled in by the parser
        cfg = Config(s3=s3, retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=30, read_timeout=120,
                     max_pool_connections=self.pool, **extra)
        try:
            with _CLIENTS_LOCK:
                if self.key not in _CLIENTS:
                    _SESSION = _SESSION or botocore.session.get_session()
                    client = _SESSION.create_client(
                        "s3", endpoint_url=self.o.get("endpoint"), region_name=self.o.get("region"),
                        aws_access_key_id=self.o.get("access_key_id"),
                        aws_secret_access_key=secret.reveal() if secret else None, config=cfg)
                    unsigned = cfg.merge(Config(s3={**s3, "payload_signing_enabled": False}))
                    client.meta.events.register("before-sign.s3", _md5_proves_body(unsigned))
                    _CLIENTS[self.key] = client
                self.client = _CLIENTS[self.key]
        except (BotoCoreError, ValueError) as e:
            raise PermanentError(f"cannot set up the S3 client: {e}") from None

    def call(self, what: str, fn: Callable, missing_ok: bool = False, **kw):
        """One request, its failure translated; None for a missing key when `missing_ok`."""
        try:
            return fn(**kw)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":  # before missing_ok: a missing bucket is no missing key
                _CHECKED.discard((*self.key, self.name))
                raise PermanentError(f"the bucket {self.name} does not exist") from None
            if missing_ok and (code in ("NoSuchKey", "404", "NoSuchUpload", "NotFound") or status == 404):
                return None
            if code in _AUTH:
                raise PermanentError(f"authentication failed for bucket {self.name}: {code}") from None
            if code in ("AccessDenied", "403") or status == 403:
                raise PermanentError(f"access denied on {what} in bucket {self.name}") from None
            if code in _TRANSIENT or (status or 0) >= 500:
                raise TransientError(f"{what} in bucket {self.name}: {code or status}") from None
            raise PermanentError(f"{what} failed in bucket {self.name}: {code} {e.response.get('Error', {}).get('Message', '')}".rstrip()) from None
        except NoCredentialsError:
            raise PermanentError("no S3 credentials: set access_key_id and secret_access_key, or the "
                                 "standard AWS environment variables or files") from None
        except EndpointConnectionError:
            raise TransientError(f"cannot connect to {self.o.get('endpoint') or 'S3'}") from None
        except HTTPClientError as e:  # botocore wraps what reading a body raised as the request went
            inner = e.kwargs.get("error")
            if isinstance(inner, OffsiteError):
                raise inner from None  # a progress callback's Interrupted: through unchanged
            raise TransientError(f"{what} in bucket {self.name}: {e}") from None
        except (BotoCoreError, OSError) as e:
            raise TransientError(f"{what} in bucket {self.name}: {e}") from None

    # ---------------------------------------------------------------- requests
    def keys(self, prefix: str) -> list[dict]:
        """Every object under `prefix`, as ListObjectsV2 describes it."""
        out: list[dict] = []
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self.call("the listing", self.client.list_objects_v2, **kw)
            out += page.get("Contents", [])
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def get(self, key: str) -> bytes | None:
        r = self.call(key, self.client.get_object, missing_ok=True, Bucket=self.name, Key=key)
        return None if r is None else r["Body"].read()

    def put(self, key: str, data: bytes, md5: str | None = None, **extra) -> dict:
        """One PUT with its Content-MD5, which the server checks: size and bytes are proven.
        `md5` (hex): the MD5 of `data` known already (a file's, as read from the source),
        so the bytes are not hashed twice; a wrong one is refused (BadDigest: TransientError).
        Returns the store's answer (its VersionId, where it keeps versions)."""
        digest = bytes.fromhex(md5) if md5 else hashlib.md5(data).digest()
        return self.call(key, self.client.put_object, Bucket=self.name, Key=key, Body=data,
                  ContentMD5=base64.b64encode(digest).decode(), **self.sse(), **extra)

    def head(self, key: str) -> dict | None:
        return self.call(key, self.client.head_object, missing_ok=True, Bucket=self.name, Key=key)

    def delete(self, key: str, what: str | None = None) -> None:
        """Remove one object; a missing one is fine (S3 says nothing)."""
        self.call(what or key, self.client.delete_object, Bucket=self.name, Key=key)

    def copy(self, src: str, dst: str, size: int, **extra) -> None:
        """A server-side copy; past 5 GB (one CopyObject's limit) boto3's managed copy, in parts
        (boto3 imported then, its copy given the botocore client)."""
        if size < COPY_LIMIT:
            self.call(dst, self.client.copy_object, Bucket=self.name, Key=dst,
                      CopySource={"Bucket": self.name, "Key": src}, **self.sse(), **extra)
        else:
            from boto3.s3.inject import copy as managed_copy

            self.call(dst, lambda **kw: managed_copy(self.client, **kw), CopySource={"Bucket": self.name, "Key": src},
                      Bucket=self.name, Key=dst, ExtraArgs={**self.sse(), **extra})

    # ---------------------------------------------------------------- object options
    def sse(self) -> dict:
        """Server-side encryption, asked for on every object written (records included)."""
        out: dict[str, str] = {}
        if self.o.get("sse"):
            out["ServerSideEncryption"] = self.o["sse"]
            if self.o.get("sse_kms_key_id"):
                out["SSEKMSKeyId"] = self.o["sse_kms_key_id"]
        return out

    def sse_text(self) -> str:
        key = self.o.get("sse_kms_key_id")
        return f"sse {self.o.get('sse')}" + (f" with key {key}" if key else "")

    def object_extra(self) -> dict:
        """What a backup file's object carries besides encryption: storage class, object lock."""
        extra: dict[str, Any] = {}
        if self.o.get("storage_class"):
            extra["StorageClass"] = self.o["storage_class"]
        if self.o.get("object_lock_days"):
            until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.o["object_lock_days"])
            extra.update(ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
        return extra
