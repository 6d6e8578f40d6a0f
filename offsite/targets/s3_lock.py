"""The lock canary of an `s3` location with `object_lock_days`: is the lock the store claims
proven to hold?

One small object, `<folder>/.offsite/lock-canary`, is written with COMPLIANCE retention (the
mode every backup file is written with) until a day later; then the requests a person or a
program holding the job's keys would make to destroy it are tried, each of which the store
must refuse:

- an overwrite: a PUT of other bytes to the same key. On a versioned bucket (object lock
  needs versioning) S3 accepts that, as a new version; what must not happen is that the
  locked version's bytes are gone. So "allowed an overwrite" means: after the PUT, the
  locked version, asked for by its VersionId, no longer reads back as written (or the
  store returned no VersionId at all: it keeps no versions, so nothing can hold a lock);
- a DeleteObject of the locked version (its VersionId);
- the same with `x-amz-bypass-governance-retention`: COMPLIANCE must refuse even that (a
  store that treats COMPLIANCE as GOVERNANCE lets keys with the bypass permission through);
- a PutObjectRetention that shortens the version's retention: COMPLIANCE must refuse it, or
  shortening and then deleting would destroy any backup.

A request answered with success is what the store allowed (even if the version happens to
survive); a refusal is any error the store gives (AccessDenied, as AWS answers, or another
code). A TransientError (no answer) leaves the question open and is raised. Last, the locked
version is read once more: it must still be there, as written. A store that refuses the
locked PUT itself (a bucket created without object lock: AWS, moto and SeaweedFS answer
InvalidRequest) does not lock either, and says so.

What is left behind: the locked version, a few dozen bytes, until its day is over. The
overwrite's own version (unlocked) is deleted at once; versions of the canary older than a
day and an hour (their retention over) are deleted by the next canary, after one listing of
the key's versions. So at most two or three versions are there at any time.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from ..errors import OffsiteError, PermanentError
from .base import AGENT_DIR
from .s3_bucket import Bucket

log = logging.getLogger(__name__)

CANARY = "lock-canary"  # in the job folder's .offsite/
NAME = f"{AGENT_DIR}/{CANARY}"
MODE = "COMPLIANCE"  # as s3_bucket.Bucket.object_extra() writes backup files
HELD = dt.timedelta(days=1)
STALE = HELD + dt.timedelta(hours=1)  # older canary versions than this are no longer locked


def prove(store: Bucket, key: str, where: str) -> str | None:
    """Write the canary at `key` and try to destroy it. None: every attempt was refused and
    it reads back as written; else one sentence naming the store (`where`) and what it
    allowed. Raises TransientError when the store did not answer."""
    now = dt.datetime.now(dt.timezone.utc)
    body = f"offsite lock canary {now.isoformat(timespec='seconds')}\n".encode()
    until = now + HELD
    try:
        put = store.put(key, body, ObjectLockMode=MODE, ObjectLockRetainUntilDate=until)
    except PermanentError as e:
        return f"{where} does not lock objects: it refused the lock canary written with {MODE} retention ({e})"
    version = put.get("VersionId")
    if not version or version == "null":
        _forget(store, key, None)  # unversioned: the one object there, unlocked
        return (f"{where} allowed an overwrite of the lock canary ({NAME}): it keeps no versions of an object "
                f"written with {MODE} retention, so nothing there can hold a lock")
    allowed: list[str] = []
    head = store.call(key, store.client.head_object, Bucket=store.name, Key=key, VersionId=version)
    if head.get("ObjectLockMode") != MODE or not head.get("ObjectLockRetainUntilDate"):
        allowed.append(f"an object written with {MODE} retention to be kept without it "
                       f"(it reports {head.get('ObjectLockMode') or 'no retention'})")
    mine = store.put(key, b"offsite lock canary overwritten\n").get("VersionId")
    overwritten = _read(store, key, version) != body
    if overwritten:
        allowed.append("an overwrite that replaced a locked version")
    gone = False
    for what, extra in (("deleting a locked version", {}),
                        ("deleting a locked version with a governance bypass",
                         {"BypassGovernanceRetention": True})):
        if _allowed(store, key, store.client.delete_object, Bucket=store.name, Key=key, VersionId=version,
                    **extra):
            allowed.append(what)
            gone = True
            break
    if not gone and _allowed(store, key, store.client.put_object_retention, Bucket=store.name, Key=key,
                             VersionId=version,
                             Retention={"Mode": MODE, "RetainUntilDate": until - dt.timedelta(hours=1)}):
        allowed.append(f"shortening a locked version's {MODE} retention")
    if not gone and not overwritten and _read(store, key, version) != body:
        allowed.append("a locked version to disappear")
    _forget(store, key, mine, keep=version, now=now)
    if not allowed:
        return None
    return f"{where} allowed {_join(allowed)} (the lock canary {NAME})"


def _allowed(store: Bucket, key: str, fn: Any, **kw: Any) -> bool:
    """Did the store accept a request it must refuse? A refusal is any PermanentError."""
    try:
        store.call(key, fn, **kw)
    except PermanentError as e:
        log.debug("the lock canary: refused as it must be: %s", e)
        return False
    return True


def _read(store: Bucket, key: str, version: str) -> bytes | None:
    """The version's bytes; None when it is missing or refused."""
    try:
        r = store.call(key, store.client.get_object, missing_ok=True, Bucket=store.name, Key=key,
                       VersionId=version)
    except PermanentError:
        return None  # NoSuchVersion, or refused: not readable as written
    return None if r is None else r["Body"].read()


def _forget(store: Bucket, key: str, mine: str | None, keep: str | None = None,
            now: dt.datetime | None = None) -> None:
    """Delete the overwrite's version (`mine`, unlocked) and the canary's versions whose
    retention is over (`now` given); without `keep`, the key itself (an unversioned store).
    Whatever fails is left for the next canary."""
    try:
        if keep is None:
            store.delete(key)
            return
        if mine and mine != keep:
            store.call(key, store.client.delete_object, Bucket=store.name, Key=key, VersionId=mine)
        listed = store.call(key, store.client.list_object_versions, Bucket=store.name, Prefix=key)
        old = [v["VersionId"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])
               if v.get("Key") == key and v.get("VersionId") not in (keep, mine)
               and now is not None and v.get("LastModified") and now - v["LastModified"] > STALE]
        for v in old:
            store.call(key, store.client.delete_object, Bucket=store.name, Key=key, VersionId=v)
    except OffsiteError as e:  # tidying the canary never fails the proof
        log.debug("the lock canary: left for later: %s", e)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
