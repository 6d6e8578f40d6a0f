"""One job at work: its source view, its target, its share of the queue.

Each job has one coordinator thread that owns the job's state: it folds watcher hints into
the source view, reconciles (source scan + target listing) at start and every `rescan`,
turns the plan into queue items, and drains them inside the job's windows through up to
`transfers` transfer threads (transfer.py). The agent's main thread only hands it hints and
requests. `offsite sync` without an agent runs the same code in its own thread.

Work is proportional to what changed: the plan is kept per chain, and only the chains whose
files changed (at the source, or on the target by our own deletions and by a monthly that
lets retention run) are planned again; a finished upload changes nothing else.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import queue as stdqueue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import windows
from ..config import AgentSettings, Job
from ..errors import (
    Interrupted,
    OffsiteError,
    OwnerMismatch,
    PermanentError,
    TargetFull,
    TransientError,
)
from ..queue import QueueItem, WorkQueue
from ..selection import RemoteFile
from ..state import Hashes, StateDir
from ..system import folder_state
from ..targets import Target, make_target, reachable
from ..verify import verify
from ..watchers import SourceView
from ..watchers.scan import describe_error
from . import control
from .chains import CHANGED, Planner
from .dispatcher import Dispatch, backoff
from .throttle import Throttle
from .transfer import Outcome, Sessions, Task, Transfers

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def _epoch(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso).timestamp() if iso else None


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


LISTED = 100  # paths kept in a result's "sent" and "deleted" lists (SPEC section 6)
PROBE_EVERY = 5.0  # seconds between reachability probes while a target is unreachable
SPACE_EVERY = 300.0  # seconds between looks at the target's free space, besides reconciliations
VERIFY_SAMPLE = 10.0  # percent of the copy a scheduled verify (verify_every) reads back


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
    kind: str  # "sync" | "retry" | "reinit" | "undelete"
    allow_deletes: bool = False
    reply: Callable[[dict], None] | None = None
    accept_changes: bool = False  # sync: files changed at the source go, their copies to the bin
    paths: list[str] = field(default_factory=list)  # undelete
    day: str | None = None  # undelete


class JobRunner:
    def __init__(self, job: Job, settings: AgentSettings, queue: WorkQueue, state: StateDir,
                 slots: threading.BoundedSemaphore, throttle: Throttle | None = None,
                 hashes: Hashes | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.job = job
        self.clock = clock or _now  # local wall-clock time, for windows and records
        self.settings = settings
        self.queue = queue
        self.state = state
        self.slots = slots
        self.transfers = job.transfers or settings.transfers
        # A job's own cap replaces the agent-wide one, which all other jobs share.
        self.throttle = Throttle(job.bandwidth) if job.bandwidth else (throttle or Throttle(settings.bandwidth))
        self.view = SourceView(job.source, settings.settle, job.family)
        probe = make_target(job)
        self.keeps_mtime, self.where = probe.keeps_mtime, probe.describe()
        fold_case = not probe.case_sensitive
        self.endpoint = probe.endpoint()  # for the reachability probe; None: no server of its own
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.rewatch = threading.Event()  # the source folder was gone: its watch is dead
        self.on_progress: Callable[[str, int, int], None] | None = None  # path, done, total
        self.dispatch = Dispatch(job.family, max_waiting=2 * self.transfers)
        self.sessions = Sessions(job, slots, self.stopping, self._check_owner)
        self._own_hashes = hashes is None
        self.hashes = hashes if hashes is not None else Hashes(state.root)  # the MD5 of each file published
        self.plan = Planner(job, queue, self.view, self.dispatch, state, self.hashes, self.keeps_mtime, fold_case)
        self._lock = threading.Lock()
        self._hints: set[str] = set()
        self._requests: list[Request] = []
        self._thread: threading.Thread | None = None
        # What status shows; written by the coordinator, read by anyone under _lock.
        self.phase = "idle"
        self.error: str | None = None
        self.owner_state = "unknown"
        self.last_sync: dict | None = state.read_json("results.json", {}).get(job.name)
        self._need_reconcile = True
        self._next_rescan = 0.0
        self._retry_at = 0.0  # after a permanent error: not before this (monotonic)
        self._source_missing = False
        self._source_unreadable: str | None = None  # the source folder itself fails to read
        self._transient_since: float | None = None
        self._transient_count = 0
        self._gave_up = False  # transient failures outlasted retry_for: the pass is over
        self._probe_at: float | None = None  # next reachability probe (monotonic), while parked
        self._unreachable = False  # the last probe found the server not answering
        self._pass: SyncStats | None = None  # the pass of work under way
        self.transient_error: str | None = None  # the last failure that retries should heal
        self._running: Transfers | None = None
        # What the operator is told (status, metrics, alerts), beside the state above.
        self.looked = False  # source and target looked at since the agent started
        self.counters = {"files_sent": 0, "bytes_sent": 0, "files_deleted": 0, "transfer_failures": 0,
                         "verified_files": 0, "verify_mismatches": 0}
        self.last_success: float | None = _epoch(self.last_sync["finished"]) \
            if self.last_sync and self.last_sync.get("ok") else None
        self.last_success = state.read_json("success.json", {}).get(job.name, self.last_success)
        self.trouble_since: float | None = None  # epoch seconds transient trouble began
        self.free_bytes: int | None = None  # on the target, where the protocol tells
        self.bin_bytes: int | None = None  # the bin's size on the target, as of the last look
        self.bin_files = 0
        self._free_at = 0.0  # next look at the target's free space (monotonic)
        self._verify_at: float | None = None  # next scheduled verify (epoch seconds), once known
        self._rate: list[tuple[float, int]] = []  # (monotonic, bytes on the wire so far), recent
        self._wire = 0  # bytes on the wire since the agent started

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

    def close(self) -> None:
        """Close the job's sessions, and the hash records when the runner opened them."""
        self.sessions.close()
        if self._own_hashes:
            self.hashes.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def status(self, now: dt.datetime) -> dict:
        counts = self.queue.summary(self.job.name)
        pending = counts["pending_files"]
        with self._lock:
            phase, error, owner, last = self.phase, self.error, self.owner_state, self.last_sync
            trouble = self.transient_error
        held = self.plan.decision.reason
        if phase != "syncing":
            if error or held:
                phase = "error"
            elif trouble:
                phase, error = "paused", trouble
            elif not self.looked:
                phase = "starting"  # not idle before the source and target were looked at
            elif pending and not windows.is_open(self.job.windows, now):
                phase = "waiting"
            elif not pending:
                phase = "idle"
        oldest = self.queue.oldest_upload(self.job.name)
        lag = max(0.0, now.timestamp() - oldest / 1e9) if oldest else 0.0
        return {
            "name": self.job.name,
            "state": phase,
            **counts,
            "waiting_files": self.plan.waiting,
            "next_window": _iso(windows.next_opening(self.job.windows, now)),
            "owner": owner,
            "error": error,
            "held_deletes": self.plan.decision.held,
            "held_reason": held,
            "changed_files": len(self.plan.changed),
            "unreadable": self._unreadable(),
            "bin_bytes": self.bin_bytes,
            "bin_files": self.bin_files,
            "last_sync": last,
            "lag_seconds": round(lag, 1),
            "transfer": self._transfer(),
            "target_free_bytes": self.free_bytes,
            "counters": dict(self.counters),
            "last_success_ts": self.last_success,
        }

    def facts(self) -> dict:
        """What the alert rules need beside the status."""
        failed = self.queue.failed(self.job.name)
        with self._lock:
            return {"error": self.error, "trouble": self.transient_error, "trouble_since": self.trouble_since,
                    "newest_source": self.plan.newest_source, "target": self.where,
                    "corrupt": tuple(sorted(i.path for i in failed if i.cause == "source-corrupt")),
                    "changed": tuple(sorted(i.path for i in failed if i.cause == CHANGED)),
                    "unreadable": self._unreadable()}

    def _unreadable(self) -> dict[str, str]:
        """Source folders (and files) that fail to read: relative path ("" the source itself)
        -> the error."""
        if self._source_unreadable:
            return {"": self._source_unreadable}
        return dict(list(self.view.unreadable.items()))

    def _transfer(self) -> dict | None:
        """The file being sent (the biggest, when several are), and the job's rate."""
        run = self._running
        tasks = [t for t in list(run.running.values()) if t.item.op == "upload"] if run is not None else []
        mono = time.monotonic()
        wire = self._wire + sum(t.wire for t in tasks)
        self._rate = [(m, w) for m, w in self._rate if mono - m <= 10.0] + [(mono, wire)]
        if not tasks:
            return None
        (m0, w0), (m1, w1) = self._rate[0], self._rate[-1]
        rate = (w1 - w0) / (m1 - m0) if m1 - m0 >= 1.0 else None
        t = max(tasks, key=lambda t: t.size)
        share = rate / len(tasks) if rate else None
        return {"path": t.item.path, "done": t.done, "total": t.size, "rate": round(rate) if rate else None,
                "eta": round((t.size - t.done) / share) if share else None}

    # ------------------------------------------------------------ the coordinator
    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a bug must not kill the job silently
                log.exception("job %s: unexpected error", self.job.name)
                self._fail(f"unexpected error: {e}")
            self.wake.wait(0.5)
            self.wake.clear()
        self.close()
        with self._lock:
            left, self._requests = self._requests, []
        for r in left:
            if r.reply:
                r.reply({"ok": False, "error": "the agent stopped or reloaded before doing this"})

    def step(self) -> None:
        """One turn of the coordinator: requests, source changes, reconciliation, transfers."""
        with self._lock:
            requests, self._requests = self._requests, []
            hints, self._hints = self._hints, set()
        syncs = [r for r in requests if r.kind == "sync"]
        for r in requests:
            if r.kind == "reinit":
                self._reinit(r)
            else:
                self._handle(r)
        mono, wall = time.monotonic(), time.time_ns()

        where = folder_state(self.job.source)
        if where == "missing":
            self._source_missing = True
            self.rewatch.set()
            self._fail(
                f"the source folder {self.job.source} is missing (an unmounted disk?); "
                "nothing is deleted on the target while it is"
            )
            self._answer(syncs)
            return
        if where == "unreadable":
            # Absence is not evidence: a source that fails to read deletes nothing, sends nothing.
            try:
                os.listdir(self.job.source)
                error = "it cannot be looked at"
            except OSError as e:
                error = describe_error(e)
            if self._source_unreadable is None:
                log.warning("job %s: the source folder %s cannot be read (%s); nothing is deleted on the target "
                            "until it reads again", self.job.name, self.job.source, error)
            self._source_unreadable = error
            self.rewatch.set()
            self._answer(syncs)
            return
        self._source_unreadable = None
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
            self.plan.allow_deletes = any(r.allow_deletes for r in syncs)
            if self._pass is None:
                self._pass = SyncStats(self.clock())
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
            if forced and any(r.accept_changes for r in syncs) and self.plan.changed:
                n = self.plan.accept_changes()
                log.info("job %s: %d file(s) changed at the source accepted by a person: they are sent, their "
                         "offsite copies going to the bin", self.job.name, n)
            if forced or windows.is_open(self.job.windows, self.clock()):
                self._drain(forced)
            if self.job.verify_every is not None and not forced and time.time() >= self._verify_due() \
                    and windows.is_open(self.job.windows, self.clock()) and not self.stopping.is_set():
                self._verify()
            if self.job.min_free is not None and time.monotonic() >= self._free_at \
                    and self.plan.target_files is not None:
                target = self.sessions.checkout()
                self._look_at_space(target, time.monotonic())
                self.sessions.checkin(target)
        except (PermanentError, TransientError) as e:
            self._target_failed(e, None)
        except Interrupted:
            pass  # stopping: nothing was in flight outside _drain
        finally:
            self.sessions.close()
            if self._pass is not None and (forced or self._pass_over()):
                self._finish(self._pass, forced)
            if forced and self.plan.allow_deletes:
                self.plan.allow_deletes = False
                self.plan.replan(None)  # deletions were allowed for this sync only
            self._answer(syncs)

    def _handle(self, r: Request) -> None:
        """A person's request that needs no pause of the work: a retry, an undelete."""
        if r.kind == "retry":
            self._clear_error()
            self.plan.replan(None)  # accepted changes, retried items
        elif r.kind == "undelete":
            self._undelete(r)

    def _urgent(self) -> None:
        """While transfers run: the requests that must not wait for the round's end (a large
        image can take hours). A sync is answered when the job is idle anyway, and a reinit
        waits for the round, whose sessions it closes."""
        with self._lock:
            urgent = [r for r in self._requests if r.kind in ("retry", "undelete")]
            self._requests = [r for r in self._requests if r.kind not in ("retry", "undelete")]
        for r in urgent:
            self._handle(r)

    def _answer(self, syncs: list[Request]) -> None:
        last = self.last_sync
        for r in syncs:
            if r.reply:
                r.reply({"ok": self.error is None and bool(last and last["ok"]),
                         "error": self.error, "held": self.plan.decision.reason, "result": last,
                         "waiting_files": self.plan.waiting, "changed": list(self.plan.changed)})

    def _pass_over(self) -> bool:
        """Is the pass of work under way over: the job idle again, or giving up?"""
        if self.stopping.is_set() or self.error or self._gave_up:
            return True
        if not windows.is_open(self.job.windows, self.clock()):
            return True
        return self.queue.summary(self.job.name)["pending_files"] == 0

    # ------------------------------------------------------------ reconciliation and plans
    def _reconcile(self, mono: float, wall: int) -> None:
        """The full look: walk the source, list the target, plan every group; then tidy the
        staging folder and the bin."""
        self.view.scan(mono, wall)
        self.view.take_changed()
        target = self.sessions.checkout()
        try:
            listing = target.list()
            self._look_at_space(target, mono)
            with self._lock:
                self.transient_error = None
                self.trouble_since = None
            self.looked = True
            self._need_reconcile = False
            self._next_rescan = mono + self.settings.rescan
            self.plan.rebuild(listing, target.foreign)
            log.info("job %s: reconciled: %d backup file(s) at the source, %d on the target", self.job.name,
                     len(self.view.entries), len(listing))
            # No transfer runs now: what is staged for files no longer queued (vanished) goes.
            target.tidy({it.path for it in self.queue.items(self.job.name) if it.op == "upload"})
            self._tend_bin(target)
        except BaseException:
            self.sessions.drop(target)
            raise
        self.sessions.checkin(target)

    def _tend_bin(self, target: Target) -> None:
        """The bin's size, for status, and days older than keep_deleted purged."""
        binned = target.bin_list()
        keep = self.job.keep_deleted
        today = dt.datetime.now(dt.timezone.utc)
        expired = set()
        for b in binned:
            try:
                ended = dt.datetime.fromisoformat(b.day).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
            except ValueError:
                continue  # not a day the agent wrote: left alone
            if (today - ended).total_seconds() >= (keep or 0):
                expired.add(b.day)
        for day in sorted(expired):
            target.purge_bin(day)
            log.info("job %s: purged the bin's files of %s (keep_deleted)", self.job.name, day)
        kept = [b for b in binned if b.day not in expired]
        self.bin_bytes, self.bin_files = sum(b.size for b in kept), len(kept)

    def _undelete(self, req: Request) -> None:
        """`offsite undelete` while the agent runs: done here, where the job's target and plan are."""
        target = None
        try:
            target = self.sessions.checkout()
            done = control.undelete(target, self.state, self.job, req.paths, req.day)
            self.sessions.checkin(target)
        except OffsiteError as e:
            if target is not None:
                self.sessions.drop(target)
            if req.reply:
                req.reply({"ok": False, "error": str(e)})
            return
        finally:
            self.sessions.close()
        if self.plan.target_files is not None:
            for d in done:
                if d["ok"]:
                    self.plan.target_files[d["path"]] = self.plan.target_files.get(d["path"]) or \
                        RemoteFile(d["size"])
            self.plan.touched({d["path"] for d in done})
        back = [d for d in done if d["ok"]]
        if self.bin_bytes is not None:
            self.bin_bytes, self.bin_files = self.bin_bytes - sum(d["size"] for d in back), self.bin_files - len(back)
        if req.reply:
            req.reply({"ok": all(d["ok"] for d in done), "error": None, "files": done})

    def _verify_due(self) -> float:
        """When the next scheduled verify is due (epoch seconds): verify_every after the last
        one recorded (read once; then kept as verifies run)."""
        assert self.job.verify_every is not None
        if self._verify_at is None:
            last = self.state.read_json("verify.json", {}).get(self.job.name) or {}
            finished = _epoch(last.get("finished")) if isinstance(last, dict) else None
            self._verify_at = (finished or 0.0) + self.job.verify_every
        return self._verify_at

    def _verify(self) -> None:
        """A sampled verify of the offsite copy, in the job's window (verify_every)."""
        target = self.sessions.checkout()
        try:
            result = verify(target, self.job.family, self.hashes.of_job(self.job.name), VERIFY_SAMPLE, None,
                            self.clock(), consume=lambda n: self.throttle.consume(n, self.stopping))
        finally:
            # Not reused: ProFTPD's mod_digest caches a file's hash in the session by path,
            # size and second, so a file replaced since could be answered from the cache.
            self.sessions.drop(target)
        result = {"job": self.job.name, **result}
        self.state.update_json("verify.json", lambda d: d.__setitem__(self.job.name, result))
        self._verify_at = time.time() + self.job.verify_every  # type: ignore[operator]
        self.counters["verified_files"] += result["files_checked"]
        self.counters["verify_mismatches"] += len(result["mismatches"])
        (log.error if result["mismatches"] else log.info)(
            "job %s: verified %d file(s) on the target (%d bytes read): %s", self.job.name, result["files_checked"],
            result["bytes_read"], "; ".join(f"{m['path']} {m['problem']}" for m in result["mismatches"]) or "all good")

    def _look_at_space(self, target: Target, mono: float) -> None:
        """The target's free space, for the target-space alert: at each reconciliation and
        every few minutes while transfers run, only when the job watches it."""
        if self.job.min_free is None:
            return
        self._free_at = mono + SPACE_EVERY
        try:
            self.free_bytes = target.free_space()
        except OffsiteError as e:
            log.debug("job %s: free space unknown (%s)", self.job.name, e)
            self.free_bytes = None

    def _fold_hints(self, hints: set[str] | None = None) -> None:
        """Fold watcher hints (taken here unless given) and settling files into the plan."""
        if hints is None:
            with self._lock:
                hints, self._hints = self._hints, set()
        mono, wall = time.monotonic(), time.time_ns()
        self.view.touch(hints, mono, wall)
        self.view.refresh(mono, wall)
        changed = self.view.take_changed()
        if changed:
            self.plan.touched(changed)

    # ------------------------------------------------------------ transfers
    def _drain(self, forced: bool) -> None:
        """Run the queued work through the transfer threads until nothing more can start
        and nothing runs, or the job must stop (trouble, the window, the agent stopping)."""
        may_send = (lambda: True) if forced else (lambda: windows.is_open(self.job.windows, self.clock()))
        run = Transfers(self.job, self.dispatch, self.sessions, self.throttle, self.stopping, may_send,
                        self.on_progress)
        self._running = run
        halted = False
        try:
            while True:
                if not halted and (self.stopping.is_set() or not may_send()):
                    halted = True
                if not halted:
                    self._urgent()
                    self._fold_hints()
                    while len(run.running) < (1 if run.alone else self.transfers):
                        task = self._next_task()
                        if task is None:
                            break
                        task.alone = run.alone
                        run.submit(task, self.transfers)
                if not run.running:
                    break
                try:
                    outcome = run.results.get(timeout=0.5)
                except stdqueue.Empty:
                    continue
                halted |= self._outcome(run, outcome)
                while True:  # everything else that is already there
                    try:
                        outcome = run.results.get_nowait()
                    except stdqueue.Empty:
                        break
                    halted |= self._outcome(run, outcome)
        finally:
            run.close()
            while True:  # outcomes reported as the threads ended
                try:
                    self._outcome(run, run.results.get_nowait())
                except stdqueue.Empty:
                    break
            for task in self.dispatch.in_flight():  # staged, waiting for an earlier file: kept there
                if self._pass is not None:
                    self._pass.bytes_on_wire += task.wire  # sent, though not published yet
                task.wire = 0
                now_ = self.queue.get(task.item.id)
                if now_ is not None and now_.state == "in-flight":
                    self.queue.release(task.item.id, count_attempt=False)
            self.dispatch.end_round()
            self._running = None
            with self._lock:
                if self.phase == "syncing":
                    self.phase = "idle"

    def _next_task(self) -> Task | None:
        while True:
            it = self.dispatch.pick(self.queue.get, self.plan.blockers, self.clock())
            if it is None:
                return None
            if self._pass is None:
                self._pass = SyncStats(self.clock())
            with self._lock:
                self.phase = "syncing"
            task = Task(it, day=dt.datetime.now(dt.timezone.utc).date().isoformat(),
                        keep_deleted=self.job.keep_deleted is not None)
            assert self.plan.target_files is not None
            if it.op == "upload":
                e = self.view.entries.get(it.path)
                if e is None:  # gone at the source: nothing to send
                    self.queue.ack(it.id)
                    self.dispatch.discard(it.id)
                    self._pass.files_skipped += 1
                    log.info("job %s: %s vanished at the source before it was sent; skipped", self.job.name, it.path)
                    self.plan.touched({it.path})
                    continue
                if not e.ready:  # written again since it was planned
                    self.plan.touched({it.path})
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
                self._pass.bytes_on_wire += later.wire
                self.queue.release(later.item.id, count_attempt=False)
                task.room.append(later.item.path)
            return task

    def _outcome(self, run: Transfers, o: Outcome) -> bool:
        """Apply what a transfer thread reports; True when the job must stop starting work."""
        stats = self._pass or SyncStats(self.clock())
        task = o.task
        assert task is not None
        it, path = task.item, task.item.path
        if o.kind == "idle":
            run.running.pop(it.id, None)
            return False
        stats.bytes_on_wire += task.wire
        self._wire += task.wire
        task.wire = 0
        if o.kind == "published":
            self.queue.ack(it.id)
            stats.published(path, task.size)
            self.counters["files_sent"] += 1
            self.counters["bytes_sent"] += task.size
            log.info("job %s: sent %s (%d bytes)%s", self.job.name, path, task.size,
                     "; its previous copy went to the bin" if task.replaces and task.keep_deleted else "")
            self._healthy()
            self.plan.published(path, task.size, task.mtime_ns, task.md5)
        elif o.kind == "deleted":
            self.queue.ack(it.id)
            stats.removed(path)
            self.counters["files_deleted"] += 1
            if self.bin_bytes is not None and task.keep_deleted:
                self.bin_bytes, self.bin_files = self.bin_bytes + task.size, self.bin_files + 1
            log.info("job %s: deleted %s%s", self.job.name, path, " (to the bin)" if task.keep_deleted else "")
            self._healthy()
            self.plan.removed(path)
        elif o.kind == "present":
            # Looked up right before its deletion: the file is at the source after all.
            self.queue.release(it.id, count_attempt=False)
            log.info("job %s: %s is at the source again: not deleted on the target", self.job.name, path)
            self.view.touch({path}, time.monotonic(), time.time_ns())
            self.plan.touched(self.view.take_changed() | {path})
        elif o.kind == "unknown":
            # The look-up right before a deletion failed: its folder reads badly; nothing is deleted.
            self.queue.release(it.id, str(o.error), count_attempt=False)
            self.view.touch({path}, time.monotonic(), time.time_ns())
            self.plan.touched(self.view.take_changed() | {path})
        elif o.kind == "skipped":
            self.queue.ack(it.id)
            stats.files_skipped += 1
            log.info("job %s: %s vanished at the source before it was sent; skipped", self.job.name, path)
            self.view.touch({path}, time.monotonic(), time.time_ns())
            self.plan.touched(self.view.take_changed() | {path})
        elif o.kind == "changed":
            self.queue.release(it.id, "changed while it was sent; sent again once it settles", count_attempt=False)
            log.info("job %s: %s changed while it was sent; it is sent again once it settles", self.job.name, path)
            self.view.recheck(path, time.monotonic(), time.time_ns())
            self.plan.touched(self.view.take_changed() | {path})
        elif o.kind == "interrupted":
            self.queue.release(it.id, count_attempt=False)
            return True
        elif o.kind == "corrupt":
            self.counters["transfer_failures"] += 1
            msg = f"{path}: {o.error}"
            log.error("job %s: %s; it is not sent until the image is restored and retried "
                      "('offsite queue retry %d')", self.job.name, msg, it.id)
            self.queue.fail(it.id, str(o.error), "source-corrupt")
            stats.error(msg)
            stats.ok = False
        elif o.kind == "unreadable":
            self.counters["transfer_failures"] += 1
            log.error("job %s: %s", self.job.name, o.error)
            self.queue.fail(it.id, str(o.error))
            stats.error(str(o.error))
            stats.ok = False
        elif o.kind == "failed":
            assert isinstance(o.error, OffsiteError)
            self.counters["transfer_failures"] += 1
            if isinstance(o.error, TargetFull) and not task.alone:
                # Full while other transfers wrote too: their files may be what took the room.
                # Try it again alone, ahead of the later files of its chain, which give back
                # the room they staged; the target is full only if it fails alone.
                run.alone = True
                self.dispatch.again(it.id)
                self.queue.release(it.id, count_attempt=False)
                log.info("job %s: %s; trying %s again alone", self.job.name, o.error, path)
                return False
            if run.backoff is not None and isinstance(o.error, TransientError):
                # The same trouble seen by another transfer of this round: one failure, one wait.
                self.queue.release(it.id, str(o.error), self.clock() + dt.timedelta(seconds=run.backoff))
                if self._pass is not None:
                    self._pass.error(str(o.error))
            else:
                run.backoff = self._target_failed(o.error, it)
            return True
        return False

    # ------------------------------------------------------------ target sessions
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
        self.sessions.close()
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
    def _target_failed(self, e: OffsiteError, it: QueueItem | None) -> float | None:
        """Transient: back off (returns the wait); permanent: the job is in error."""
        if self._pass is not None:
            self._pass.error(str(e))
        if isinstance(e, TransientError):
            with self._lock:
                self.transient_error = str(e)
                if self.trouble_since is None:
                    self.trouble_since = time.time()
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
            # Full attempts back off, but a cheap probe notices a server that is back: one
            # that does not answer now is marked so (a failure can come before any probe,
            # and a server back by the next probe must still count as back).
            if self.endpoint is not None and not reachable(self.endpoint):
                self._unreachable = True
            self._probe_at = mono + min(PROBE_EVERY, wait)
            if it is not None:
                self.queue.release(it.id, str(e), self.clock() + dt.timedelta(seconds=wait))
            else:
                self._retry_at = time.monotonic() + wait
                self._need_reconcile = True
            log.info("job %s: %s (retrying in %.0fs)", self.job.name, e, wait)
            return wait
        if it is not None:
            self.queue.release(it.id, str(e), count_attempt=True)
        self._fail(str(e))
        return None

    def _fail(self, msg: str) -> None:
        with self._lock:
            first = self.error != msg
            self.error, self.phase = msg, "error"
        if first:
            log.error("job %s: %s", self.job.name, msg)
        self._retry_at = time.monotonic() + self.settings.rescan

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
            self.trouble_since = None

    def _probe(self, mono: float) -> None:
        """While transient failures back off: is the server answering again? A server that
        was not answering and now is gets its parked items retried at once."""
        if self.endpoint is None:
            self._probe_at = None
            return
        self._probe_at = mono + PROBE_EVERY
        up = reachable(self.endpoint)
        if not up:
            self._unreachable = True
        elif self._unreachable:
            self._unreachable = False
            parked = [i.id for i in self.queue.items(self.job.name) if i.state == "ready" and i.next_attempt]
            self.queue.retry(parked)
            self._retry_at = 0.0
            log.info("job %s: %s:%d answers again; going on", self.job.name, *self.endpoint)

    def _finish(self, stats: SyncStats, forced: bool = False) -> None:
        """Record the pass that just ended as the job's last sync. It is ok when it did its
        work: errors met on the way and healed by a retry are listed, but do not fail it."""
        gave_up, self._pass, self._gave_up = self._gave_up, None, False
        stats.files_skipped += self.plan.skipped
        self.plan.skipped = 0
        left = self.queue.summary(self.job.name)["pending_files"]
        if left and self.stopping.is_set():
            stats.error(f"the agent stopped with {left} file(s) still to do")
            stats.ok = False
        elif left and not forced and not windows.is_open(self.job.windows, self.clock()):
            stats.error(f"the window closed with {left} file(s) still to do")
            stats.ok = False
        if self.error or gave_up or (left and self.transient_error):
            stats.ok = False
        # What section 8 keeps from the target is not a sync that did its work.
        if self.plan.changed:
            stats.error(f"{len(self.plan.changed)} file(s) changed at the source after they were sent are not sent "
                        f"again (source-changed)")
            stats.ok = False
        unreadable = self._unreadable()
        if unreadable:
            stats.error("cannot read " + "; ".join(f"{self.job.source / k if k else self.job.source}: {v}"
                                                   for k, v in sorted(unreadable.items())[:3]))
            stats.ok = False
        result = stats.result(self.clock())
        with self._lock:
            self.last_sync = result
        self.state.update_json("results.json", lambda d: d.__setitem__(self.job.name, result))
        if result["ok"]:
            self.last_success = time.time()
            self.state.update_json("success.json", lambda d: d.__setitem__(self.job.name, self.last_success))
        log.info("job %s: sync %s: %d sent (%d bytes), %d deleted, %d skipped%s", self.job.name,
                 "ok" if result["ok"] else "failed", stats.files_sent, stats.bytes_sent,
                 stats.files_deleted, stats.files_skipped,
                 ": " + "; ".join(stats.errors) if stats.errors else "")
