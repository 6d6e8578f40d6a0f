"""A round of transfers: which queued items start, how they are handed to the transfer
threads, and what each outcome does to the queue, the plan and the job's account.

The job's coordinator (job.py) opens a round when the job may send, calls `fill` to start
work up to the job's `transfers`, `take` to apply what the threads report, and `end` when
nothing more can start and nothing runs. Only the coordinator calls these: the queue's
acknowledgements, the source view and the plan are changed here, on its thread, never by
the transfer threads (transfer.py), which only report `Outcome`s.

An item in flight is a `Task`: the dispatcher (dispatcher.py) holds it, in chain order, from
`started` until it is `finished` or held (and its chain's order with it); the round's
`running` lists those a thread works on; the queue holds its durable state (leased).
"""
from __future__ import annotations

import datetime as dt
import logging
import queue as stdqueue
from typing import Callable, NamedTuple

from ..config import Job
from ..errors import OffsiteError, TargetFull, TransientError
from ..queue import CORRUPT, QueueItem, WorkQueue
from ..selection import RemoteFile
from ..watchers import SourceView
from .chains import Planner
from .dispatcher import Dispatch
from .report import Tally
from .transfer import Kind, Outcome, Task, Transfers
from .trouble import Trouble

log = logging.getLogger(__name__)


class Now(NamedTuple):
    """The time of a turn of the job's coordinator, read once: monotonic seconds for waits,
    the wall clock in ns for the source view, and the local time for windows and records."""

    mono: float
    wall_ns: int
    local: dt.datetime


class Round:
    def __init__(self, job: Job, queue: WorkQueue, plan: Planner, view: SourceView, dispatch: Dispatch,
                 run: Transfers, width: int, trouble: Trouble, tally: Tally) -> None:
        self.job, self.queue, self.plan, self.view, self.dispatch = job, queue, plan, view, dispatch
        self.run, self.width, self.trouble, self.tally = run, width, trouble, tally
        self.running: dict[int, Task] = {}  # item id -> task, while a thread works on it
        self.picked = False  # an item was started this round: the job is syncing
        self.backoff: float | None = None  # the wait after this round's first transient failure
        self.alone = False  # one transfer at a time for the rest of the round (the target was full)
        self._apply: dict[Kind, Callable[[Task, Exception | None, Now], bool]] = {
            Kind.PUBLISHED: self._published, Kind.DELETED: self._deleted, Kind.PRESENT: self._present,
            Kind.UNKNOWN: self._unknown, Kind.SKIPPED: self._skipped, Kind.CHANGED: self._changed,
            Kind.INTERRUPTED: self._interrupted, Kind.CORRUPT: self._corrupt, Kind.UNREADABLE: self._unreadable,
            Kind.FAILED: self._failed,
        }

    # ---------------------------------------------------------------- starting work
    def fill(self, now: Now) -> None:
        """Start items until the job's `transfers` run (one, after the target was full). Items
        found stale on the way (gone at the source, or written again) are set aside, and
        their groups planned again only once picking is over; then picking goes on."""
        while True:
            again: set[str] = set()
            while len(self.running) < (1 if self.alone else self.width):
                task = self._next(now.local, again)
                if task is None:
                    break
                task.alone = self.alone
                self.running[task.item.id] = task
                self.run.submit(task, min(self.width, len(self.running)))
            if not again:
                return
            self.plan.touched(again)

    def _next(self, now: dt.datetime, again: set[str]) -> Task | None:
        """The next item the dispatcher lets start, leased, as a task; None when none can.
        Stale items are taken out of the dispatcher's index and their paths added to `again`."""
        while True:
            it = self.dispatch.pick(self.queue.get, self.plan.blockers, now)
            if it is None:
                return None
            stats = self.tally.stats(now)
            self.picked = True
            task = Task(it, day=now.astimezone(dt.timezone.utc).date().isoformat(),
                        keep_deleted=self.job.keep_deleted is not None)
            assert self.plan.target_files is not None
            if it.op == "upload":
                e = self.view.entries.get(it.path)
                if e is None:  # gone at the source: nothing to send
                    self.queue.ack(it.id)
                    self.dispatch.discard(it.id)
                    stats.files_skipped += 1
                    log.info("job %s: %s vanished at the source before it was sent; skipped", self.job.name, it.path)
                    again.add(it.path)
                    continue
                if not e.ready:  # written again since it was planned: planned again, after picking
                    self.dispatch.discard(it.id)
                    again.add(it.path)
                    continue
                task.size, task.mtime_ns = e.size, e.mtime_ns
                task.replaces = it.path in self.plan.target_files  # its copy goes to the bin first
            else:
                task.mirrored = self.plan.is_mirrored(it.path)
                task.size = (self.plan.target_files.get(it.path) or RemoteFile(0)).size
                if task.mirrored:
                    self.plan.deleting(it.path)
            leased = self.queue.lease(it.id)
            if leased is None:  # dropped by a person meanwhile
                self.dispatch.discard(it.id)
                continue
            task.item = leased
            for later in self.dispatch.started(task.item, task):  # started again, alone: room
                self.tally.on_wire(later.wire)
                self.queue.release(later.item.id, count_attempt=False)
                task.room.append(later.item.path)
            return task

    # ---------------------------------------------------------------- outcomes
    def busy(self) -> bool:
        return bool(self.running)

    def take(self, timeout: float, now: Now) -> bool:
        """Apply the outcomes the threads reported (waiting up to `timeout` for the first);
        True when the job must stop starting work (trouble, the agent stopping)."""
        halt = False
        try:
            o = self.run.results.get(timeout=timeout)
        except stdqueue.Empty:
            return False
        while True:
            halt |= self.apply(o, now)
            try:
                o = self.run.results.get_nowait()
            except stdqueue.Empty:
                return halt

    def apply(self, o: Outcome, now: Now) -> bool:
        task = o.task
        if o.kind is Kind.IDLE:
            self.running.pop(task.item.id, None)
            return False
        self.tally.on_wire(task.wire)
        task.wire = 0
        return self._apply[o.kind](task, o.error, now)

    def end(self, now: Now) -> None:
        """The round is over: the threads end, and what is staged and waits for an earlier file
        of its chain goes back to the queue (kept staged, to publish next round)."""
        self.run.close()
        while True:  # outcomes reported as the threads ended
            try:
                self.apply(self.run.results.get_nowait(), now)
            except stdqueue.Empty:
                break
        for task in self.dispatch.in_flight():
            self.tally.on_wire(task.wire)  # sent, though not published yet
            task.wire = 0
            now_ = self.queue.get(task.item.id)
            if now_ is not None and now_.state == "in-flight":
                self.queue.release(task.item.id, count_attempt=False)
        self.dispatch.end_round()

    def _looked_again(self, path: str, now: Now) -> None:
        self.view.touch({path}, now.mono, now.wall_ns)
        self.plan.touched(self.view.take_changed() | {path})

    def _published(self, task: Task, _e: Exception | None, now: Now) -> bool:
        it, path = task.item, task.item.path
        self.queue.ack(it.id)
        self.tally.published(path, task.size, now.local)
        log.info("job %s: sent %s (%d bytes)%s", self.job.name, path, task.size,
                 "; its previous copy went to the bin" if task.replaces and task.keep_deleted else "")
        self.trouble.healthy()
        self.plan.published(path, task.size, task.mtime_ns, task.md5)
        self.plan.refresh(now.mono)
        return False

    def _deleted(self, task: Task, _e: Exception | None, now: Now) -> bool:
        path = task.item.path
        self.queue.ack(task.item.id)
        self.tally.removed(path, task.size, task.keep_deleted, now.local)
        log.info("job %s: deleted %s%s", self.job.name, path, " (to the bin)" if task.keep_deleted else "")
        self.trouble.healthy()
        self.plan.removed(path)
        return False

    def _present(self, task: Task, _e: Exception | None, now: Now) -> bool:
        # Looked up right before its deletion: the file is at the source after all.
        self.queue.release(task.item.id, count_attempt=False)
        log.info("job %s: %s is at the source again: not deleted on the target", self.job.name, task.item.path)
        self._looked_again(task.item.path, now)
        return False

    def _unknown(self, task: Task, e: Exception | None, now: Now) -> bool:
        # The look-up right before a deletion failed: its folder reads badly; nothing is deleted.
        self.queue.release(task.item.id, str(e), count_attempt=False)
        self._looked_again(task.item.path, now)
        return False

    def _skipped(self, task: Task, _e: Exception | None, now: Now) -> bool:
        self.queue.ack(task.item.id)
        self.tally.stats(now.local).files_skipped += 1
        log.info("job %s: %s vanished at the source before it was sent; skipped", self.job.name, task.item.path)
        self._looked_again(task.item.path, now)
        return False

    def _changed(self, task: Task, _e: Exception | None, now: Now) -> bool:
        path = task.item.path
        self.queue.release(task.item.id, "changed while it was sent; sent again once it settles", count_attempt=False)
        log.info("job %s: %s changed while it was sent; it is sent again once it settles", self.job.name, path)
        self.view.recheck(path, now.mono, now.wall_ns)
        self.plan.touched(self.view.take_changed() | {path})
        return False

    def _interrupted(self, task: Task, _e: Exception | None, now: Now) -> bool:
        self.queue.release(task.item.id, count_attempt=False)
        return True

    def _corrupt(self, task: Task, e: Exception | None, now: Now) -> bool:
        msg = f"{task.item.path}: {e}"
        log.error("job %s: %s; it is not sent until the image is restored and retried "
                  "('offsite queue retry %d')", self.job.name, msg, task.item.id)
        self.queue.fail(task.item.id, str(e), CORRUPT)
        self.tally.failure(msg, now.local)
        return False

    def _unreadable(self, task: Task, e: Exception | None, now: Now) -> bool:
        log.error("job %s: %s", self.job.name, e)
        self.queue.fail(task.item.id, str(e))
        self.tally.failure(str(e), now.local)
        return False

    def _failed(self, task: Task, e: Exception | None, now: Now) -> bool:
        assert isinstance(e, OffsiteError)
        it = task.item
        self.tally.counters["transfer_failures"] += 1
        if isinstance(e, TargetFull) and not task.alone:
            # Full while other transfers wrote too: their files may be what took the room.
            # Try it again alone, ahead of the later files of its chain, which give back the
            # room they staged; the target is full only if it fails alone.
            self.alone = True
            self.dispatch.again(it.id)
            self.queue.release(it.id, count_attempt=False)
            log.info("job %s: %s; trying %s again alone", self.job.name, e, it.path)
            return False
        if self.backoff is not None and isinstance(e, TransientError):
            # The same trouble seen by another transfer of this round: one failure, one wait.
            self.queue.release(it.id, str(e), now.local + dt.timedelta(seconds=self.backoff))
            self.tally.stats(now.local).error(str(e))
        else:
            self.backoff = item_failed(self.queue, self.trouble, self.tally, e, it, now.local, now.mono)
        return True


def item_failed(queue: WorkQueue, trouble: Trouble, tally: Tally, e: OffsiteError, it: QueueItem,
                now: dt.datetime, mono: float) -> float | None:
    """A target failure met by one item: a transient one parks the item for the wait the
    policy gives (returned); a permanent one counts an attempt and puts the job in error."""
    if tally.pass_ is not None:
        tally.pass_.error(str(e))
    if isinstance(e, TransientError):
        wait = trouble.transient_failure(str(e), mono, now.timestamp())
        queue.release(it.id, str(e), now + dt.timedelta(seconds=wait))
        return wait
    queue.release(it.id, str(e), count_attempt=True)
    trouble.permanent_failure(str(e), mono)
    return None
