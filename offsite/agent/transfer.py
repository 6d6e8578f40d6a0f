"""A job's transfers: a few threads, each with its own target session, that stage uploads,
publish them in chain order and run deletions.

The job's coordinator (job.py) picks and leases items and hands them over as tasks; the
threads report each item's outcome back through `results`, and the coordinator alone
touches the queue's acknowledgements, the source view and the sync result. Publishing is
decided by `Dispatch`: the thread that stages the first file of its chain publishes it and
any later staged files right behind it, so no thread ever waits for another's turn.
"""
from __future__ import annotations

import logging
import os
import queue as stdqueue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import BinaryIO, Callable, Iterator, NamedTuple, cast

from .. import crashpoints
from ..backupfiles import classify, md5_sidecar, sidecar_md5
from ..config import Job
from ..errors import Interrupted, OwnerMismatch, PermanentError, SourceError, TransientError
from ..owner import check_owner
from ..queue import QueueItem
from ..state import StateDir
from ..system import keep_freed_buffers
from ..targets import Target, make_target
from .dispatcher import Dispatch
from .hashing import HashingReader
from .streams import stage_ranged, wanted
from .throttle import Throttle

log = logging.getLogger(__name__)


CORRUPT = "the image at the source does not match its .md5 sidecar: the backup itself is damaged"


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


class Kind(Enum):
    """What became of a task, as a transfer thread reports it."""

    PUBLISHED = "published"  # under its final name
    DELETED = "deleted"  # off the target (into the bin, unless keep_deleted is off)
    PRESENT = "present"  # a mirrored deletion's file is at the source after all: not deleted
    UNKNOWN = "unknown"  # a mirrored deletion's look-up at the source failed: not deleted
    SKIPPED = "skipped"  # gone at the source before it was sent
    CHANGED = "changed"  # another version than planned at the source, or written meanwhile
    INTERRUPTED = "interrupted"  # the agent stopping, or the window closing
    CORRUPT = "corrupt"  # the image does not match its .md5 sidecar
    UNREADABLE = "unreadable"  # the source file fails to read
    FAILED = "failed"  # the target failed (error: the OffsiteError)
    IDLE = "idle"  # the thread is done with the task, whatever became of it


class Outcome(NamedTuple):
    kind: Kind
    task: Task
    error: Exception | None = None


class Sessions:
    """The job's open target sessions, reused from task to task; each holds one of the agent's
    `max_connections` slots while it is open."""

    def __init__(self, job: Job, slots: threading.BoundedSemaphore, stopping: threading.Event,
                 state: StateDir, streams: int = 1) -> None:
        self.job, self.slots, self.stopping, self.state = job, slots, stopping, state
        self.streams = streams  # sessions one big file may use at once (streams.py)
        self.owner = "unknown"  # the target folder's owner ID, as the last check found it: ok | mismatch
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
        return self._open(owner=True)

    def spare(self) -> Target | None:
        """Another session for a stream of a file already under way, if one is free or a
        slot is free right now; None rather than waiting (the file goes on with fewer).
        Raises TransientError and PermanentError (it could not be opened)."""
        with self._lock:
            if self._free:
                return self._free.pop()
        if not self.slots.acquire(blocking=False):
            return None
        return self._open(owner=False)

    def _open(self, owner: bool) -> Target:
        """A new session on the slot just taken (given back if it fails); the round's first
        checks the owner ID (several sessions opening at once must not each write one)."""
        target: Target | None = None
        try:
            target = make_target(self.job)
            target.open()
            with self._owner_lock:
                if owner and not self._owner_checked:
                    try:
                        self.owner = check_owner(target, self.state, self.job.name, claim=True)
                    except OwnerMismatch:
                        self.owner = "mismatch"
                        raise
                    self._owner_checked = True
        except BaseException:
            if target is not None:
                target.close()
            self.slots.release()
            raise
        self.opened += 1
        return target

    def checkin(self, target: Target) -> None:
        with self._lock:
            self._free.append(target)

    @contextmanager
    def session(self, reuse: bool = True) -> Iterator[Target]:
        """A session for a few calls: given back after (closed instead unless `reuse`), and
        closed when a call fails."""
        target = self.checkout()
        try:
            yield target
        except BaseException:
            self.drop(target)
            raise
        if reuse:
            self.checkin(target)
        else:
            self.drop(target)

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

    def submit(self, task: Task, threads: int) -> None:
        """Hand `task` to a thread, starting one while fewer than `threads` run."""
        if len(self._threads) < threads:
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
                self.results.put(Outcome(Kind.INTERRUPTED, task))
            except (TransientError, PermanentError) as e:  # could not open a session
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome(Kind.FAILED, task, e))
            except Exception as e:  # noqa: BLE001 - a bug fails the item, never the thread silently
                log.exception("job %s: unexpected error on %s", self.job.name, task.item.path)
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome(Kind.FAILED, task, PermanentError(f"unexpected error: {e}")))
            finally:
                self.results.put(Outcome(Kind.IDLE, task))

    def _work(self, target: Target, task: Task) -> bool:
        """Run one task (and publish what its success lets through); False when the session
        must be dropped."""
        current = task
        try:
            if task.item.op == "delete":
                if task.mirrored:
                    seen = self._still_gone(task.item.path)
                    if seen is not None:
                        self.dispatch.hold(task.item.id)
                        why = SourceError("its look-up at the source failed right before the deletion: not deleted")
                        self.results.put(Outcome(seen, task, why if seen is Kind.UNKNOWN else None))
                        return True
                self._remove(target, task)
                crashpoints.reach("deleted")  # off the target, not yet off the queue
                self.dispatch.finished(task.item.id)
                self.results.put(Outcome(Kind.DELETED, task))
                return True
            for path in task.room:  # staged by later files of its chain: room for this one
                target.discard(path)
            kind = self._stage(target, task)
            if kind is Kind.CORRUPT:
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome(Kind.CORRUPT, task, SourceError(CORRUPT)))
                return True
            if kind is Kind.CHANGED:
                self.dispatch.hold(task.item.id)
                self.results.put(Outcome(Kind.CHANGED, task))
                return True
            if kind is Kind.SKIPPED:
                self.results.put(Outcome(Kind.SKIPPED, task))
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
                    self.results.put(Outcome(Kind.PUBLISHED, t))
                    later = self.dispatch.finished(t.item.id)
                run = later
            return True
        except Interrupted:
            self.dispatch.hold(current.item.id)
            self.results.put(Outcome(Kind.INTERRUPTED, current))
            return True
        except SourceError as e:
            self.dispatch.hold(current.item.id)
            self.results.put(Outcome(Kind.UNREADABLE, current, e))
            return True
        except (TransientError, PermanentError) as e:
            self.dispatch.hold(current.item.id)
            self.results.put(Outcome(Kind.FAILED, current, e))
            return False

    def _still_gone(self, path: str) -> Kind | None:
        """Absence is not evidence: right before a mirrored deletion, the file is looked up at
        the source once more. None (gone) only for "no such file"; PRESENT when it is there;
        any other error makes it UNKNOWN, and nothing is deleted."""
        where = self.job.source.joinpath(*path.split("/"))
        try:
            os.lstat(where)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("job %s: %s could not be looked up at the source (%s): not deleted on the target",
                        self.job.name, path, e.strerror or e)
            return Kind.UNKNOWN
        else:
            return Kind.PRESENT
        try:  # "no such file", and its folder's listing agrees (a share can list what it cannot open)
            listed = where.name in os.listdir(where.parent)
        except FileNotFoundError:
            listed = False
        except OSError as e:
            log.warning("job %s: the folder of %s could not be listed (%s): not deleted on the target",
                        self.job.name, path, e.strerror or e)
            return Kind.UNKNOWN
        return Kind.UNKNOWN if listed else None

    @staticmethod
    def _remove(target: Target, task: Task) -> None:
        """Every deletion goes through the bin, unless keep_deleted is "off"."""
        if task.keep_deleted:
            target.to_bin(task.item.path, task.day)
        else:
            target.delete(task.item.path)

    def _stage(self, target: Target, task: Task) -> Kind | None:
        """Upload the planned version of the file to staging: None once staged, SKIPPED (gone
        at the source), CHANGED (another version than planned, or written meanwhile) or
        CORRUPT (not what its .md5 sidecar says)."""
        path = task.item.path
        src = self.job.source.joinpath(*path.split("/"))
        try:
            f = open(src, "rb")
        except FileNotFoundError:
            return Kind.SKIPPED
        except OSError as e:
            raise SourceError(f"cannot read {src} ({e.strerror})") from None
        with f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) != (task.size, task.mtime_ns):
                return Kind.CHANGED

            counting = threading.Lock()  # several streams of one file report at once

            def progress(n: int) -> None:
                with counting:
                    task.wire += n
                    task.done += n
                    done = task.done
                self.throttle.consume(n, self.stopping)
                if self.on_progress:
                    self.on_progress(path, done, task.size)
                if self.stopping.is_set():
                    raise Interrupted("the agent is stopping")
                if not self.may_send():
                    raise Interrupted("the job's window closed")

            progress.chunk = self.throttle.chunk()  # type: ignore[attr-defined]
            expected = self._expected_md5(path)
            if task.size >= HashingReader.PIPELINE_FROM:
                keep_freed_buffers()  # a big file's buffers come and go: keep their pages
            if wanted(target, self.sessions.streams, task.size):
                try:
                    digest = task.md5 = stage_ranged(target, self.sessions, self.sessions.streams, src, f,
                                                     path, task.size, task.mtime_ns, progress)
                except OSError as e:
                    raise SourceError(f"cannot read {src} ({e.strerror})") from None
            else:
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
            return Kind.CHANGED
        if expected and digest != expected:
            target.discard(path)  # nothing of it is published, nor kept to resume from
            return Kind.CORRUPT
        return None

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
