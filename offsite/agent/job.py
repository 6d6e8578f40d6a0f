"""One job at work: its source view, its target, its share of the queue.

Each job has one worker thread that owns all of the job's state: it folds watcher hints
into the source view, reconciles (source scan + target listing) at start and every
`rescan`, turns the plan into queue items, and drains them inside the job's windows. The
agent's main thread only hands it hints and requests. `offsite sync` without an agent runs
the same code in its own thread.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..config import AgentSettings, Job
from ..errors import (
    Interrupted, OffsiteError, OwnerMismatch, PermanentError, SourceError, TransientError,
)
from ..queue import QueueItem, WorkQueue, summary
from ..selection import Plan, RemoteFile, Rules, plan
from ..state import StateDir
from ..targets import Target, make_target, reachable
from ..watchers import SourceView
from . import control, schedule
from .dispatcher import backoff, next_item
from .throttle import Throttle

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


LISTED = 100  # paths kept in a result's "sent" and "deleted" lists (SPEC section 6)
PROBE_EVERY = 5.0  # seconds between reachability probes while a target is unreachable


@dataclass
class SyncStats:
    """One pass of work ("Last Synchronization Results"): from the first item drained until
    the job is idle again or gives up. Retries inside the pass belong to it."""

    started: dt.datetime
    errors: list[str] = field(default_factory=list)
    bytes_sent: int = 0  # the sizes of the files published
    bytes_on_wire: int = 0  # what went over the wire, resent bytes included
    files_sent: int = 0
    files_deleted: int = 0
    files_skipped: int = 0
    sent: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    ok: bool = True  # False once the pass ended with work undone or an error unhealed

    def error(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)

    def published(self, path: str, size: int) -> None:
        self.files_sent += 1
        self.bytes_sent += size
        if len(self.sent) < LISTED:
            self.sent.append(path)

    def removed(self, path: str) -> None:
        self.files_deleted += 1
        if len(self.deleted) < LISTED:
            self.deleted.append(path)

    def result(self, finished: dt.datetime) -> dict:
        return {
            "started": _iso(self.started), "finished": _iso(finished), "ok": self.ok,
            "errors": self.errors, "bytes_sent": self.bytes_sent, "bytes_on_wire": self.bytes_on_wire,
            "files_sent": self.files_sent, "files_deleted": self.files_deleted,
            "files_skipped": self.files_skipped, "sent": self.sent, "deleted": self.deleted,
        }


@dataclass
class Request:
    kind: str  # "sync" | "retry" | "reinit"
    allow_deletes: bool = False
    reply: Callable[[dict], None] | None = None


class JobRunner:
    def __init__(self, job: Job, settings: AgentSettings, queue: WorkQueue, state: StateDir,
                 slots: threading.BoundedSemaphore, throttle: Throttle | None = None) -> None:
        self.job = job
        self.settings = settings
        self.queue = queue
        self.state = state
        self.slots = slots
        # A job's own cap replaces the agent-wide one, which all other jobs share.
        self.throttle = Throttle(job.bandwidth) if job.bandwidth else (throttle or Throttle(settings.bandwidth))
        self.rules = Rules.of(job)
        self.view = SourceView(job.source, settings.settle, job.family)
        self.target: Target | None = None
        self.target_files: dict[str, RemoteFile] | None = None
        self.plan = Plan()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.rewatch = threading.Event()  # the source folder was gone: its watch is dead
        self.on_progress: Callable[[str, int, int], None] | None = None  # path, done, total
        self._lock = threading.Lock()
        self._hints: set[str] = set()
        self._requests: list[Request] = []
        self._thread: threading.Thread | None = None
        # What status shows; written by the worker, read by anyone under _lock.
        self.phase = "idle"
        self.error: str | None = None
        self.owner_state = "unknown"
        self.last_sync: dict | None = state.read_json("results.json", {}).get(job.name)
        self._need_reconcile = True
        self._next_rescan = 0.0
        self._retry_at = 0.0  # after a permanent error: not before this (monotonic)
        self._source_missing = False
        self._transient_since: float | None = None
        self._transient_count = 0
        self._gave_up = False  # transient failures outlasted retry_for: the pass is over
        self._probe_at: float | None = None  # next reachability probe (monotonic), while parked
        self._unreachable = False  # the last probe found the server not answering
        self._pass: SyncStats | None = None  # the pass of work under way
        self.transient_error: str | None = None  # the last failure that retries should heal
        self._allow_deletes = False
        self._skipped = 0  # vanished before sent, noticed between syncs
        self._dropped_stamp: int | None = None
        self._dropped_ops: dict = {}

    # ------------------------------------------------------------ from other threads
    def hint(self, rel: str) -> None:
        with self._lock:
            self._hints.add(rel)
        self.wake.set()

    def request(self, req: Request) -> None:
        with self._lock:
            self._requests.append(req)
        self.wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"job-{self.job.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def status(self, now: dt.datetime) -> dict:
        items = self.queue.items(self.job.name)
        pending = [i for i in items if i.state != "failed"]
        with self._lock:
            phase, error, owner, last = self.phase, self.error, self.owner_state, self.last_sync
            trouble = self.transient_error
        held = self.plan.held
        if phase != "syncing":
            if error or held:
                phase = "error"
            elif trouble:
                phase, error = "paused", trouble
            elif pending and not schedule.is_open(self.job.windows, now):
                phase = "waiting"
            elif pending and all(not i.due(now) for i in pending if i.state == "ready"):
                phase = "paused"
            elif not pending:
                phase = "idle"
        return {
            "name": self.job.name,
            "state": phase,
            **summary(items),
            "waiting_files": len(self.plan.waiting),
            "next_window": _iso(schedule.next_opening(self.job.windows, now)),
            "owner": owner,
            "error": error,
            "held_deletes": self.plan.held_count if held else 0,
            "held_reason": held,
            "last_sync": last,
        }

    # ------------------------------------------------------------ the worker
    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a bug must not kill the job silently
                log.exception("job %s: unexpected error", self.job.name)
                self._fail(f"unexpected error: {e}")
            self.wake.wait(0.5)
            self.wake.clear()
        self._close_target()
        with self._lock:
            left, self._requests = self._requests, []
        for r in left:
            if r.reply:
                r.reply({"ok": False, "error": "the agent stopped or reloaded before doing this"})

    def step(self) -> None:
        """One turn of the worker: requests, source changes, reconciliation, transfers."""
        with self._lock:
            requests, self._requests = self._requests, []
            hints, self._hints = self._hints, set()
        syncs = [r for r in requests if r.kind == "sync"]
        for r in requests:
            if r.kind == "retry":
                self._clear_error()
            elif r.kind == "reinit":
                self._reinit(r)
        mono, wall = time.monotonic(), time.time_ns()

        if not self.job.source.is_dir():
            self._source_missing = True
            self.rewatch.set()
            self._fail(
                f"the source folder {self.job.source} is missing (an unmounted disk?); "
                "nothing is deleted on the target while it is"
            )
            self._answer(syncs)
            return
        if self._source_missing:
            self._source_missing = False
            self._clear_error()
            self._need_reconcile = True

        forced = bool(syncs)
        if self._probe_at is not None and mono >= self._probe_at:
            self._probe(mono)
        if forced:
            self._clear_error()
            self._need_reconcile = True
            self._allow_deletes = any(r.allow_deletes for r in syncs)
            if self._pass is None:
                self._pass = SyncStats(_now())
        elif mono < self._retry_at:
            self.view.touch(hints, mono, wall)  # keep the view fresh; no hot retry loop
            return
        elif self.error:
            self._clear_error()
            self._need_reconcile = True

        try:
            if self._need_reconcile or mono >= self._next_rescan:
                self._reconcile(mono, wall)
            else:
                self._fold_hints(hints)
            if forced or schedule.is_open(self.job.windows, _now()):
                self._drain(forced)
            else:
                self._close_target()
        except (PermanentError, TransientError) as e:
            self._target_failed(e, None)
        except Interrupted:
            pass  # stopping: nothing was in flight outside _execute
        finally:
            if self._pass is not None and (forced or self._pass_over()):
                self._finish(self._pass, forced)
            if forced:
                self._allow_deletes = False
            self._answer(syncs)

    def _answer(self, syncs: list[Request]) -> None:
        last = self.last_sync
        for r in syncs:
            if r.reply:
                r.reply({"ok": self.error is None and bool(last and last["ok"]),
                         "error": self.error, "held": self.plan.held, "result": last,
                         "waiting_files": len(self.plan.waiting)})

    def _pass_over(self) -> bool:
        """Is the pass of work under way over: the job idle again, or giving up?"""
        if self.stopping.is_set() or self.error or self._gave_up:
            return True
        if not schedule.is_open(self.job.windows, _now()):
            return True
        return not any(i.state != "failed" for i in self.queue.items(self.job.name))

    # ------------------------------------------------------------ reconciliation
    def _reconcile(self, mono: float, wall: int) -> None:
        self.view.scan(mono, wall)
        target = self._open_target()
        self.target_files = target.list()
        with self._lock:
            self.transient_error = None
        self._need_reconcile = False
        self._next_rescan = mono + self.settings.rescan
        self._replan()  # step() then drains or closes the target

    def _replan(self) -> None:
        if self.target_files is None:
            return
        keeps_mtime = self.target.keeps_mtime if self.target else False
        p = plan(self.view.snapshot(), self.target_files, self.rules, keeps_mtime, self._allow_deletes)
        p = control.without_dropped(p, self._dropped(), self.view.entries)
        if p.held and p.held != self.plan.held:
            log.warning("job %s: %s; held back until 'offsite sync %s --allow-deletes'",
                        self.job.name, p.held, self.job.name)
        self.plan = p
        for path in p.uploads:
            e = self.view.entries[path]
            self.queue.put(self.job.name, "upload", path, e.size, e.mtime_ns)
        for path in p.deletes:
            t = self.target_files.get(path)
            self.queue.put(self.job.name, "delete", path, t.size if t else None, None)
        self._drop_stale()

    def _dropped(self) -> dict:
        """This job's dropped operations; the file is read again only when it changed."""
        try:
            stamp = (self.state.root / "dropped.json").stat().st_mtime_ns
        except OSError:
            return {}
        if stamp != self._dropped_stamp:
            self._dropped_stamp = stamp
            self._dropped_ops = self.state.read_json("dropped.json", {}).get(self.job.name, {})
        return self._dropped_ops

    def _drop_stale(self) -> None:
        """Queued work the current plan no longer wants: done elsewhere, vanished, superseded."""
        uploads, waiting, deletes = set(self.plan.uploads), set(self.plan.waiting), set(self.plan.deletes)
        for it in self.queue.items(self.job.name):
            if it.state == "in-flight":
                continue
            wanted = (it.path in uploads or it.path in waiting) if it.op == "upload" else it.path in deletes
            if it.state == "failed" and (it.path in self.view.entries or it.op == "delete"):
                continue  # failed items wait for the user, unless their file is gone
            if not wanted:
                if it.op == "upload" and it.path not in self.view.entries:
                    log.info("job %s: %s vanished at the source before it was sent; skipped",
                             self.job.name, it.path)
                    self._skipped += 1
                self.queue.ack(it.id)

    # ------------------------------------------------------------ transfers
    def _drain(self, forced: bool) -> None:
        while not self.stopping.is_set():
            now = _now()
            if not forced and not schedule.is_open(self.job.windows, now):
                break
            self._fold_hints()
            it = next_item(self.queue.items(self.job.name), self.plan.blockers, now, self.job.family)
            if it is None:
                break
            if self._pass is None:
                self._pass = SyncStats(now)
            with self._lock:
                self.phase = "syncing"
            if not self._execute(it, self._pass, forced):
                break
            self._replan()
        self._close_target()
        with self._lock:
            if self.phase == "syncing":
                self.phase = "idle"

    def _fold_hints(self, hints: set[str] | None = None) -> None:
        """Fold watcher hints (taken here unless given) and settling files into the plan."""
        if hints is None:
            with self._lock:
                hints, self._hints = self._hints, set()
        mono, wall = time.monotonic(), time.time_ns()
        if self.view.touch(hints, mono, wall) | self.view.refresh(mono, wall):
            self._replan()

    def _execute(self, it: QueueItem, stats: SyncStats, forced: bool) -> bool:
        """Run one item; False when the job must stop draining."""
        try:
            target = self._open_target()
            if it.op == "upload":
                self._upload(target, it, stats, forced)
            else:
                self.queue.lease(it.id)
                target.delete(it.path)
                self.target_files.pop(it.path, None)
                self.queue.ack(it.id)
                stats.removed(it.path)
                log.info("job %s: deleted %s", self.job.name, it.path)
            self._healthy()
            return True
        except Interrupted:
            self.queue.release(it.id, count_attempt=False)
            return False
        except SourceError as e:
            log.error("job %s: %s", self.job.name, e)
            self.queue.fail(it.id, str(e))
            stats.error(str(e))
            stats.ok = False
            return True
        except (TransientError, PermanentError) as e:
            self._target_failed(e, it)
            return isinstance(e, TransientError) and self.error is None

    def _upload(self, target: Target, it: QueueItem, stats: SyncStats, forced: bool) -> None:
        src = self.job.source.joinpath(*it.path.split("/"))
        entry = self.view.entries.get(it.path)
        try:
            f = open(src, "rb")
        except FileNotFoundError:
            self.queue.ack(it.id)
            stats.files_skipped += 1
            log.info("job %s: %s vanished at the source before it was sent; skipped", self.job.name, it.path)
            self.view.touch({it.path}, time.monotonic(), time.time_ns())
            return
        except OSError as e:
            raise SourceError(f"cannot read {src} ({e.strerror})") from None
        with f:
            st = os.fstat(f.fileno())
            if entry is None or not entry.ready or (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                self.view.recheck(it.path, time.monotonic(), time.time_ns())  # changed since planned
                return
            self.queue.lease(it.id)
            size, mtime = st.st_size, st.st_mtime_ns
            done = 0

            def progress(n: int) -> None:
                nonlocal done
                done += n
                stats.bytes_on_wire += n
                self.throttle.consume(n, self.stopping)
                if self.on_progress:
                    self.on_progress(it.path, done, size)
                if self.stopping.is_set():
                    raise Interrupted("the agent is stopping")
                if not forced and not schedule.is_open(self.job.windows, _now()):
                    raise Interrupted("the job's window closed")

            progress.chunk = self.throttle.chunk()  # type: ignore[attr-defined]
            try:
                target.upload(it.path, f, size, mtime, progress)
            except OSError as e:
                raise SourceError(f"cannot read {src} ({e.strerror})") from None
            try:
                after = os.stat(src)
            except OSError:
                after = None
            if after is None or (after.st_size, after.st_mtime_ns) != (size, mtime):
                target.discard(it.path)
                self.view.recheck(it.path, time.monotonic(), time.time_ns())
                self.queue.release(it.id, "changed while it was sent; sent again once it settles",
                                   count_attempt=False)
                log.info("job %s: %s changed while it was sent; it is sent again once it settles",
                         self.job.name, it.path)
                return
            target.publish(it.path, size, mtime)
        self.target_files[it.path] = RemoteFile(size, mtime if target.keeps_mtime else None)
        self.queue.ack(it.id)
        stats.published(it.path, size)
        log.info("job %s: sent %s (%d bytes)", self.job.name, it.path, size)

    # ------------------------------------------------------------ target sessions
    def _open_target(self) -> Target:
        if self.target is not None:
            return self.target
        while not self.slots.acquire(timeout=0.5):  # max_connections, all jobs together
            if self.stopping.is_set():
                raise Interrupted("the agent is stopping")
        try:
            target = make_target(self.job)
            target.open()
            self._check_owner(target)
        except BaseException:
            self.slots.release()
            raise
        self.target = target
        return target

    def _close_target(self) -> None:
        if self.target is not None:
            try:
                self.target.close()
            finally:
                self.target = None
                self.slots.release()

    def _check_owner(self, target: Target) -> None:
        mine, theirs = self.state.owner_id(self.job.name), target.read_owner()
        if theirs is None:
            target.write_owner(mine or self.state.new_owner_id(self.job.name))
        elif theirs != mine:
            with self._lock:
                self.owner_state = "mismatch"
            raise OwnerMismatch(
                f"target folder is owned by another job: {target.describe()} carries another "
                f"owner ID; run 'offsite reinit {self.job.name}' to take it over"
            )
        with self._lock:
            self.owner_state = "ok"

    def _reinit(self, req: Request) -> None:
        self._close_target()
        try:
            where = control.take_over(self.job, self.state)
        except OffsiteError as e:
            if req.reply:
                req.reply({"ok": False, "error": str(e)})
            return
        self._clear_error()
        self._need_reconcile = True
        with self._lock:
            self.owner_state = "ok"
        log.info("job %s: took over the target folder %s", self.job.name, where)
        if req.reply:
            req.reply({"ok": True, "error": None, "target": where})

    # ------------------------------------------------------------ trouble
    def _target_failed(self, e: OffsiteError, it: QueueItem | None) -> None:
        self._close_target()
        if self._pass is not None:
            self._pass.error(str(e))
        if isinstance(e, TransientError):
            with self._lock:
                self.transient_error = str(e)
            mono = time.monotonic()
            if self._transient_since is None:
                self._transient_since, self._transient_count = mono, 0
            self._transient_count += 1
            if mono - self._transient_since < self.settings.retry_for:
                wait = backoff(self._transient_count)
            else:  # this attempt is over: park until the next chance
                wait = self.settings.rescan
                self._transient_since = None
                self._gave_up = True
                log.warning("job %s: %s; retrying for %ds did not help, next try in %ds",
                            self.job.name, e, self.settings.retry_for, wait)
            # Full attempts back off, but a cheap probe notices a server that is back.
            self._probe_at = mono + min(PROBE_EVERY, wait)
            if it is not None:
                self.queue.release(it.id, str(e), _now() + dt.timedelta(seconds=wait))
            else:
                self._retry_at = time.monotonic() + wait
                self._need_reconcile = True
            log.info("job %s: %s (retrying in %.0fs)", self.job.name, e, wait)
            return
        if it is not None:
            self.queue.release(it.id, str(e), count_attempt=True)
        self._fail(str(e))

    def _fail(self, msg: str) -> None:
        with self._lock:
            first = self.error != msg
            self.error, self.phase = msg, "error"
        if first:
            log.error("job %s: %s", self.job.name, msg)
        self._retry_at = time.monotonic() + self.settings.rescan
        self._close_target()

    def _clear_error(self) -> None:
        with self._lock:
            self.error = None
            if self.phase == "error":
                self.phase = "idle"
        self._retry_at = 0.0

    def _healthy(self) -> None:
        """An item went through: transient trouble is over."""
        self._transient_since, self._probe_at, self._unreachable, self._gave_up = None, None, False, False
        with self._lock:
            self.transient_error = None

    def _probe(self, mono: float) -> None:
        """While transient failures back off: is the server answering again? A server that
        was not answering and now is gets its parked items retried at once."""
        endpoint = make_target(self.job).endpoint()
        if endpoint is None:
            self._probe_at = None
            return
        self._probe_at = mono + PROBE_EVERY
        up = reachable(endpoint)
        if not up:
            self._unreachable = True
        elif self._unreachable:
            self._unreachable = False
            parked = [i.id for i in self.queue.items(self.job.name) if i.state == "ready" and i.next_attempt]
            self.queue.retry(parked)
            self._retry_at = 0.0
            log.info("job %s: %s:%d answers again; going on", self.job.name, *endpoint)

    def _finish(self, stats: SyncStats, forced: bool = False) -> None:
        """Record the pass that just ended as the job's last sync. It is ok when it did its
        work: errors met on the way and healed by a retry are listed, but do not fail it."""
        gave_up, self._pass, self._gave_up = self._gave_up, None, False
        stats.files_skipped += self._skipped
        self._skipped = 0
        left = sum(1 for i in self.queue.items(self.job.name) if i.state != "failed")
        if left and self.stopping.is_set():
            stats.error(f"the agent stopped with {left} file(s) still to do")
            stats.ok = False
        elif left and not forced and not schedule.is_open(self.job.windows, _now()):
            stats.error(f"the window closed with {left} file(s) still to do")
            stats.ok = False
        if self.error or gave_up or (left and self.transient_error):
            stats.ok = False
        result = stats.result(_now())
        with self._lock:
            self.last_sync = result
        self.state.update_json("results.json", lambda d: d.__setitem__(self.job.name, result))
        log.info("job %s: sync %s: %d sent (%d bytes), %d deleted, %d skipped%s", self.job.name,
                 "ok" if result["ok"] else "failed", stats.files_sent, stats.bytes_sent,
                 stats.files_deleted, stats.files_skipped,
                 ": " + "; ".join(stats.errors) if stats.errors else "")
