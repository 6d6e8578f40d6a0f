"""A job's transfers: a few threads, each with its own target session, that stage uploads,
publish them in chain order and run deletions.

The job's coordinator (job.py) picks and leases items and hands them over as tasks; the
threads report each item's outcome back through `results`, and the coordinator alone
touches the queue's acknowledgements, the source view and the sync result. Publishing is
decided by `Dispatch`: the thread that stages the first file of its chain publishes it and
any later staged files right behind it, so no thread ever waits for another's turn.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue as stdqueue
import threading
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, NamedTuple, cast

from .. import crashpoints
from ..backupfiles import classify, md5_sidecar, sidecar_md5
from ..config import Job
from ..errors import Interrupted, PermanentError, SourceError, TransientError
from ..queue import QueueItem
from ..targets import Target, make_target
from .dispatcher import Dispatch
from .throttle import Throttle

log = logging.getLogger(__name__)


CORRUPT = "the image at the source does not match its .md5 sidecar: the backup itself is damaged"


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


@dataclass
class Task:
    item: QueueItem
    size: int = 0  # the source version that was planned: a different one is not sent
    mtime_ns: int = 0
    wire: int = 0  # bytes that went over the wire for it
    done: int = 0  # of `size`, in this attempt
    alone: bool = False  # started with no other transfer of the job running, nor to start
    md5: str | None = None  # of the bytes staged, once staged
    room: list[str] = field(default_factory=list)  # staged files to discard before it starts
    day: str = ""  # the bin's day (UTC) for what this task removes from the target
    keep_deleted: bool = True  # removed files go to the bin (else deleted at once)
    replaces: bool = False  # an upload whose path is on the target: that copy goes to the bin first
    mirrored: bool = False  # a deletion mirrored from the source: looked up there right before


class Outcome(NamedTuple):
    # published | deleted | present | unknown | skipped | changed | interrupted | failed | unreadable | corrupt
    # | idle
    kind: str
    task: Task | None
    error: Exception | None = None


class Sessions:
    """The job's open target sessions, reused from task to task; each holds one of the agent's
    `max_connections` slots while it is open."""

    def __init__(self, job: Job, slots: threading.BoundedSemaphore, stopping: threading.Event,
                 check_owner: Callable[[Target], None]) -> None:
        self.job, self.slots, self.stopping, self.check_owner = job, slots, stopping, check_owner
        self._free: list[Target] = []
        self._lock = threading.Lock()
        self._owner_lock = threading.Lock()
        self._owner_checked = False  # once per round, by the first session: several sessions
        # opening at once on a new target folder must not each write an owner ID
        self.opened = 0  # sessions opened, for tests

    def checkout(self) -> Target:
        while True:
            with self._lock:
                if self._free:
                    return self._free.pop()
            if self.slots.acquire(timeout=0.2):  # max_connections, all jobs together
                break
            if self.stopping.is_set():
                raise Interrupted("the agent is stopping")
        try:
            target = make_target(self.job)
            target.open()
            with self._owner_lock:
                if not self._owner_checked:  # the round's first session
                    self.check_owner(target)
                    self._owner_checked = True
        except BaseException:
            self.slots.release()
            raise
        self.opened += 1
        return target

    def checkin(self, target: Target) -> None:
        with self._lock:
            self._free.append(target)

    def drop(self, target: Target) -> None:
        """A session that failed, or one not to be reused: closed, its slot given back at once."""
        try:
            target.close()
        finally:
            self.slots.release()

    def close(self) -> None:
        """Close every session; the next round checks the owner ID again."""
        with self._lock:
            free, self._free = self._free, []
            self._owner_checked = False
        for t in free:
            self.drop(t)


class Transfers:
    def __init__(self, job: Job, dispatch: Dispatch, sessions: Sessions, throttle: Throttle,
                 stopping: threading.Event, may_send: Callable[[], bool],
                 on_progress: Callable[[str, int, int], None] | None) -> None:
        self.job, self.dispatch, self.sessions, self.throttle = job, dispatch, sessions, throttle
        self.stopping, self.may_send, self.on_progress = stopping, may_send, on_progress
        self.results: stdqueue.SimpleQueue[Outcome] = stdqueue.SimpleQueue()
        self._tasks: stdqueue.SimpleQueue[Task | None] = stdqueue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.running: dict[int, Task] = {}  # item id -> task, while a thread works on it
        self.backoff: float | None = None  # the wait after this round's first transient failure
        self.alone = False  # one transfer at a time for the rest of the round (the target was full)

    def submit(self, task: Task, most: int) -> None:
        self.running[task.item.id] = task
        if len(self._threads) < min(most, len(self.running)):
            t = threading.Thread(target=self._loop, name=f"transfer-{self.job.name}-{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
            t.start()
        self._tasks.put(task)

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()
        self._threads = []
        self.sessions.close()

    # ---------------------------------------------------------------- the threads
    def _loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                # A session per task from the job's pool: an idle thread holds none, so a
                # job under a small max_connections still uses every slot it gets.
                target = self.sessions.checkout()
                if self._work(target, task):
                    self.sessions.checkin(target)
                else:
                    self.sessions.drop(target)
            except Interrupted:
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome("interrupted", task))
            except (TransientError, PermanentError) as e:  # could not open a session
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome("failed", task, e))
            except Exception as e:  # noqa: BLE001 - a bug fails the item, never the thread silently
                log.exception("job %s: unexpected error on %s", self.job.name, task.item.path)
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome("failed", task, PermanentError(f"unexpected error: {e}")))
            finally:
                self.results.put(Outcome("idle", task))

    def _work(self, target: Target, task: Task) -> bool:
        """Run one task (and publish what its success lets through); False when the session
        must be dropped."""
        current = task
        try:
            if task.item.op == "delete":
                if task.mirrored:
                    seen = self._still_gone(task.item.path)
                    if seen != "gone":
                        self.dispatch.hold(task.item.id)
                        self.results.put(Outcome(seen, task, SourceError(seen) if seen != "present" else None))
                        return True
                self._remove(target, task)
                crashpoints.reach("deleted")  # off the target, not yet off the queue
                self.dispatch.finished(task.item.id)
                self.results.put(Outcome("deleted", task))
                return True
            for path in task.room:  # staged by later files of its chain: room for this one
                target.discard(path)
            kind = self._stage(target, task)
            if kind == "corrupt":
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome("corrupt", task, SourceError(CORRUPT)))
                return True
            if kind == "changed":
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome("changed", task))
                return True
            if kind == "skipped":
                self.results.put(Outcome("skipped", task))
                run = self.dispatch.finished(task.item.id)
            else:
                crashpoints.reach("staged")  # staged whole, not yet published
                run = self.dispatch.staged(task.item.id)
            while run:
                later: list[Task] = []
                for t in run:
                    current = t
                    if t.replaces and t.keep_deleted:
                        target.to_bin(t.item.path, t.day)  # the copy it replaces, first (SPEC section 8)
                        crashpoints.reach("binned")  # the old copy in the bin, the new one not yet out
                    target.publish(t.item.path, t.size, t.mtime_ns, t.md5)
                    crashpoints.reach("published")  # under its final name, not yet off the queue
                    self.results.put(Outcome("published", t))
                    later = self.dispatch.finished(t.item.id)
                run = later
            return True
        except Interrupted:
            self.dispatch.hold(current.item.id)
            self.results.put(Outcome("interrupted", current))
            return True
        except SourceError as e:
            self.dispatch.hold(current.item.id)
            self.results.put(Outcome("unreadable", current, e))
            return True
        except (TransientError, PermanentError) as e:
            self.dispatch.hold(current.item.id)
            self.results.put(Outcome("failed", current, e))
            return False

    def _still_gone(self, path: str) -> str:
        """Absence is not evidence: right before a mirrored deletion, the file is looked up at
        the source once more. 'gone' only for "no such file"; 'present' when it is there;
        any other error makes it 'unknown', and nothing is deleted."""
        where = self.job.source.joinpath(*path.split("/"))
        try:
            os.lstat(where)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("job %s: %s could not be looked up at the source (%s): not deleted on the target",
                        self.job.name, path, e.strerror or e)
            return "unknown"
        else:
            return "present"
        try:  # "no such file", and its folder's listing agrees (a share can list what it cannot open)
            listed = where.name in os.listdir(where.parent)
        except FileNotFoundError:
            listed = False
        except OSError as e:
            log.warning("job %s: the folder of %s could not be listed (%s): not deleted on the target",
                        self.job.name, path, e.strerror or e)
            return "unknown"
        return "unknown" if listed else "gone"

    @staticmethod
    def _remove(target: Target, task: Task) -> None:
        """Every deletion goes through the bin, unless keep_deleted is "off"."""
        if task.keep_deleted:
            target.to_bin(task.item.path, task.day)
        else:
            target.delete(task.item.path)

    def _stage(self, target: Target, task: Task) -> str:
        """Upload the planned version of the file to staging: 'staged', 'skipped' (gone at
        the source) or 'changed' (another version than planned, or written meanwhile)."""
        path = task.item.path
        src = self.job.source.joinpath(*path.split("/"))
        try:
            f = open(src, "rb")
        except FileNotFoundError:
            return "skipped"
        except OSError as e:
            raise SourceError(f"cannot read {src} ({e.strerror})") from None
        with f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) != (task.size, task.mtime_ns):
                return "changed"

            def progress(n: int) -> None:
                task.wire += n
                task.done += n
                self.throttle.consume(n, self.stopping)
                if self.on_progress:
                    self.on_progress(path, task.done, task.size)
                if self.stopping.is_set():
                    raise Interrupted("the agent is stopping")
                if not self.may_send():
                    raise Interrupted("the job's window closed")

            progress.chunk = self.throttle.chunk()  # type: ignore[attr-defined]
            expected = self._expected_md5(path)
            reader = HashingReader(f, task.size)  # every file: its hash is recorded for verify
            try:
                target.upload(path, cast(BinaryIO, reader), task.size, task.mtime_ns, progress)
                digest = task.md5 = reader.hexdigest()
            except OSError as e:
                raise SourceError(f"cannot read {src} ({e.strerror})") from None
            finally:
                reader.close()
        try:
            after = os.stat(src)
        except OSError:
            after = None
        if after is None or (after.st_size, after.st_mtime_ns) != (task.size, task.mtime_ns):
            target.discard(path)
            return "changed"
        if expected and digest != expected:
            target.discard(path)  # nothing of it is published, nor kept to resume from
            return "corrupt"
        return "staged"

    def _expected_md5(self, path: str) -> str | None:
        """A ShadowProtect image's MD5 as its .md5 sidecar at the source gives it, if any."""
        f = classify(path, self.job.family)
        sidecar = md5_sidecar(f) if f is not None else None
        if sidecar is None:
            return None
        try:
            with open(self.job.source.joinpath(*sidecar.split("/")), "rb") as s:
                head = s.read(4096)
        except OSError:
            return None  # no sidecar (yet): nothing to compare with
        return sidecar_md5(head, path.rsplit("/", 1)[-1])
