"""The one contract every target type implements.

A target is one job's folder at one location: `<location path>/<folder>/`. Everything the
agent keeps there for itself lives in `<folder>/.offsite/` (the owner ID and staged
uploads); nothing is written outside the job's folder. Every method raises only offsite's
errors (upload() aside: an OSError reading its source), and each method's docstring names
them (see `Target`); library exceptions are translated inside each target module. Also here: the helpers every target shares (safe
paths and bin days, staging names, the bin's versioned names, MD5 answers).
"""
from __future__ import annotations

import abc
import builtins
import datetime as dt
import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO, Callable, ClassVar, Collection

from ..errors import PermanentError, TransientError
from ..selection import RemoteFile

AGENT_DIR = ".offsite"
OWNER_FILE = "owner"
PROBE_NAME = "probe"
BIN_DIR = "deleted"  # <folder>/.offsite/deleted/<YYYY-MM-DD>/<relative path> (SPEC section 8)

# Called with each chunk's byte count as it is written; may sleep (throttling) or raise
# Interrupted (stop requested) between chunks. It may carry a `chunk` attribute: the largest
# write the caller wants between two calls (a throttled transfer asks for small ones).
Progress = Callable[[int], None]


def chunk_size(progress: Progress, default: int) -> int:
    """The write size a target should use for this transfer."""
    return max(1, min(default, getattr(progress, "chunk", default)))


def cause(e: BaseException) -> str:
    """What an exception says, never nothing: a socket timeout or a closed connection is often
    raised without a message, and "... broke during X: " tells the operator nothing."""
    text = str(e).strip()
    if text:
        return text
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionResetError):
        return "the connection was reset"
    if isinstance(e, (EOFError, ConnectionAbortedError, BrokenPipeError)):
        return "the connection was closed"
    return type(e).__name__


def staging_stem(relpath: str) -> str:
    """A short, safe name for a file's staged upload, whatever its real name."""
    return hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:32]


def stale_staging(names: Collection[str], keep: Collection[str]) -> list[str]:
    """The staging folder's names that belong to no file in `keep` (relative paths)."""
    kept = {staging_stem(p) for p in keep}
    return [n for n in names if n[:32] not in kept]


def reachable(endpoint: tuple[str, int], timeout: float = 3.0) -> bool:
    """Does the server accept a TCP connection? One SYN, no protocol: a probe that is cheap
    for both sides, made while full attempts back off."""
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            return True
    except OSError:
        return False


def md5_hex(value: str) -> str | None:
    """A server's MD5 answer as lower-case hex; None for anything that is not one (an answer
    we cannot read proves nothing, and must never make a good copy look bad)."""
    value = value.strip().strip('"').lower()
    return value if len(value) == 32 and all(c in "0123456789abcdef" for c in value) else None


def not_as_sent(relpath: str, got: str, sent: str) -> TransientError:
    """A staged copy whose checksum, as the server reports it, is not that of the bytes read
    from the source: never published; the next attempt sends the file again."""
    return TransientError(f"the copy of {relpath} on the target does not match the bytes read from the "
                          f"source (the server reports MD5 {got}, {sent} was sent): sending it again")


@dataclass(frozen=True)
class Binned:
    """A file in the bin: the UTC day it was moved there, its relative path, its size, and
    which of that day's copies of the path it is (1, 2, ...: the later, the higher)."""

    day: str
    path: str
    size: int
    version: int = 1


_VERSIONED = re.compile(r"^(.*)\.~(\d+)~$")


def binned_name(relpath: str, version: int) -> str:
    """The bin's name of a day's n-th copy of a path: the path itself, then `<path>.~2~` ...
    (never a backup file's name: `~` names are never replicated)."""
    return relpath if version == 1 else f"{relpath}.~{version}~"


def binned(day: str, name: str, size: int) -> Binned:
    """A bin entry from its day and its name in the bin."""
    m = _VERSIONED.match(name)
    return Binned(day, m.group(1), size, int(m.group(2))) if m else Binned(day, name, size)


def check_day(day: str) -> str:
    """A bin day, YYYY-MM-DD; anything else could name a path outside the bin."""
    try:
        dt.date.fromisoformat(day)
    except ValueError:
        raise PermanentError(f"not a day of the bin: {day!r} (YYYY-MM-DD)") from None
    if len(day) != 10:
        raise PermanentError(f"not a day of the bin: {day!r} (YYYY-MM-DD)")
    return day


def check_relpath(relpath: str) -> str:
    """Refuse any path that could leave the job's folder or touch the agent's own folder."""
    p = PurePosixPath(relpath)
    if (
        not relpath
        or p.is_absolute()
        or "\\" in relpath
        or any(part in ("", ".", "..") for part in relpath.split("/"))
        or p.parts[0] == AGENT_DIR
        or "\x00" in relpath
    ):
        raise PermanentError(f"refusing the unsafe relative path {relpath!r}")
    return relpath


class Target(abc.ABC):
    """One job's folder on one location.

    Errors (offsite/errors.py), whatever the target type, as each method's docstring says:
    - TransientError: will probably heal (connection lost, timeout, server busy, a staged
      copy that must be sent again); the caller retries with backoff.
    - PermanentError: needs a person (authentication, host key, a missing location or
      bucket, permission, a path refused as unsafe, a bin entry missing or a file in the way).
      TargetFull, its subclass: no room left; from the methods that write, and only where
      the protocol says so (local disk, SFTP, FTP, SMB; never S3).
    - Interrupted: never a target's own; what a caller's callback raises (upload()'s
      `progress`, read_back()'s `sink`) passes through unchanged.
    No target raises OwnerMismatch (owner.py compares the IDs) or SourceError (the caller's).
    Every method but describe(), endpoint() and close() is called on an open target.
    Each contract method is abstract, so a target type that lacks one fails when it is
    made, not when the method is first needed; endpoint(), remote_md5() and free_space()
    are capabilities with a default ("none here").
    """

    # Capabilities, declared by each target rather than discovered by type checks.
    resumable: ClassVar[bool] = False  # an interrupted upload continues from its staged bytes
    resume_min_size: ClassVar[int] = 0  # smaller files are sent in one piece, never resumed
    keeps_mtime: ClassVar[bool] = False  # list() reports the source's modification time
    case_sensitive: ClassVar[bool] = True  # names differing only in case are different files
    foreign: frozenset[str] = frozenset()  # set by list(): subfolders holding another job's owner ID

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this target writes, without secrets: for messages. Never raises."""

    def endpoint(self) -> tuple[str, int] | None:
        """The server's host and port, for a cheap reachability probe; None for a target
        with no server of its own (a local or mounted drive). Never raises."""
        return None

    @abc.abstractmethod
    def open(self, create: bool = True) -> None:
        """Connect and authenticate; the location path must exist (PermanentError if not);
        create the job folder and its agent folder when missing (unless `create` is False:
        then a missing job folder lists as empty and nothing is written).

        Raises TransientError (no connection, timeout) and PermanentError (authentication,
        host key or certificate, missing location or bucket, permission; TargetFull when the
        agent folder cannot be created for lack of room)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Never raises."""

    @abc.abstractmethod
    def read_back(self, relpath: str, sink: Callable[[bytes], None]) -> bool:
        """Stream a published file's bytes to `sink`, in order (for `offsite verify`); False
        when there is no such file. Never changes the target.

        Raises TransientError (the connection or the read broke), PermanentError (refused,
        an unsafe path); what `sink` raises passes through."""

    def remote_md5(self, relpath: str) -> str | None:
        """The MD5 of a published file as the server computes it now from what it stores (FTP
        HASH or XMD5, SFTP check-file); None where the server offers no such thing. For
        `offsite verify`: an answer the server computed, without reading the file back.

        Where a server is asked (FTP, SFTP): TransientError (the connection broke),
        PermanentError (an unsafe path; SFTP: refused); a server that will not hash this
        file answers None."""
        return None

    def ranges(self) -> bool:
        """May several sessions write byte ranges of one staged file at once (ranged.py:
        SFTP, SMB, FTP where the server writes at an offset without truncating)? False:
        a file goes over one session. Where asked (FTP): TransientError."""
        return False

    def free_space(self) -> int | None:
        """Free bytes where the target's protocol reports them (local, SMB, SFTP with the
        statvfs extension); None where it cannot tell.

        Raises TransientError and PermanentError (local, SMB: the question failed); SFTP
        answers None instead."""
        return None

    def lock_canary(self) -> str | None:
        """Prove that the object lock the location claims (`object_lock_days`) holds: write a
        canary locked for a day and try to overwrite, delete and unlock it (s3_lock.py).
        None: the store refused it all; else one sentence naming the store and what it
        allowed. TransientError: no answer. A target with no object lock: PermanentError."""
        raise PermanentError(f"{self.describe()} has no object lock to prove")

    @abc.abstractmethod
    def tidy(self, keep: Collection[str]) -> None:
        """Remove every staged upload (S3: and multipart upload) of a file not in `keep` (the
        relative paths still queued to upload): what an interrupted run left of files that
        vanished since. Called while no session of the job uploads.

        Raises TransientError and PermanentError."""

    @abc.abstractmethod
    def list(self) -> dict[str, RemoteFile]:
        """Every published file under the job folder by '/'-separated relative path; never
        anything under the agent folder, never a staged upload, and never anything under a
        subfolder that holds its own `.offsite/owner` (another job's folder), whose paths it
        sets in `foreign`.

        Raises TransientError and PermanentError (a folder that cannot be listed)."""

    @abc.abstractmethod
    def to_bin(self, relpath: str, day: str) -> None:
        """Move a published file into the bin, `.offsite/deleted/<day>/<relpath>`: the one way
        the agent removes a backup file from its final name (SPEC section 8). When the bin
        already holds that path for that day, this copy goes beside it as the next version
        (binned_name): nothing is ever lost. A file already gone counts as moved.

        Raises TransientError, PermanentError (refused; an unsafe path or day; TargetFull
        where the day's folder cannot be created for lack of room)."""

    @abc.abstractmethod
    def bin_list(self) -> builtins.list[Binned]:
        """Every file in the bin.

        Raises TransientError and PermanentError (the bin cannot be listed)."""

    @abc.abstractmethod
    def from_bin(self, relpath: str, day: str, version: int = 1) -> None:
        """Move a file of the bin back under its final name.

        Raises PermanentError when a file is there already (never overwritten), when the bin
        holds no such file, for an unsafe path or day, or when refused (TargetFull where a
        folder cannot be created for lack of room); TransientError."""

    @abc.abstractmethod
    def purge_bin(self, day: str) -> None:
        """Remove one day of the bin, whole; a day already gone is fine.

        Raises TransientError, PermanentError (refused, or not a day: YYYY-MM-DD)."""

    @abc.abstractmethod
    def read_owner(self) -> str | None:
        """The owner ID stored in the agent folder, or None when there is none.

        Raises TransientError and PermanentError."""

    @abc.abstractmethod
    def write_owner(self, owner: str) -> None:
        """Store the owner ID atomically, replacing any other.

        Raises TransientError, PermanentError (TargetFull where the disk or share is full)."""

    @abc.abstractmethod
    def upload(self, relpath: str, src: BinaryIO, size: int, mtime_ns: int, progress: Progress) -> int:
        """Stage `size` bytes of `src` for `relpath`, resuming staged bytes of the same source
        version where the target is resumable. Returns the bytes actually sent. Nothing shows
        under the final name until publish().

        Raises TransientError (connection lost; the source ended early), PermanentError
        (refused, an unsafe path; TargetFull: no room, and the local target gives the
        staged bytes back), and Interrupted, or whatever else `progress` raises. An OSError
        reading `src` is not translated alike: S3 lets it through as it is (the caller takes
        it for the source's); the other targets read the source inside their own error
        translation and report it as theirs (TransientError or PermanentError)."""

    @abc.abstractmethod
    def publish(self, relpath: str, size: int, mtime_ns: int, md5: str | None = None) -> None:
        """Check the staged upload is complete (size, and the MD5 of the bytes read from the
        source, `md5`, where the protocol can prove it) and move it to its final name in one
        step, replacing an older version. A staged copy that does not match is removed and
        a TransientError raised: the next attempt sends it again from the start.

        Raises TransientError (nothing or not all of it staged, not as sent, connection
        lost) and PermanentError (refused, an unsafe path; TargetFull where a folder cannot
        be created for lack of room)."""

    @abc.abstractmethod
    def discard(self, relpath: str) -> None:
        """Remove whatever is staged for `relpath`; nothing staged is fine.

        Raises TransientError and PermanentError."""

    @abc.abstractmethod
    def delete(self, relpath: str) -> None:
        """Remove a published file at once, without the bin (keep_deleted = "off"); a file
        already gone counts as deleted.

        Raises TransientError and PermanentError (refused, an unsafe path)."""

    @abc.abstractmethod
    def probe(self) -> None:
        """Write, publish (rename) and delete a probe under the agent folder: the check
        `offsite check` and every sync rely on.

        Raises TransientError and PermanentError (refused, read back otherwise than written,
        S3: server-side encryption refused or not applied; TargetFull: no room)."""
