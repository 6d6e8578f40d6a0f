"""One job at work: its thread, the hints and requests it is handed, and reconciliation.

Each job has one coordinator thread that owns the job's state. A turn (`step`) reads the
clock once and: takes the requests and watcher hints handed in by other threads, looks at
the source folder itself, reconciles (source scan + target listing) at start and every
`rescan` or else folds the hints into the plan (chains.py), and, inside the job's windows,
runs a round of transfers (rounds.py) until nothing more can start. Failures go to the
failure policy (trouble.py), the account of the work to report.py, the bin, free space and
scheduled verifies to upkeep.py. `offsite sync` without an agent runs the same turn.

Work is proportional to what changed: the plan is kept per chain, and only the chains whose
files changed (at the source, or on the target by our own deletions and by a monthly that
lets retention run) are planned again; a finished upload changes nothing else.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from typing import Callable

from .. import windows
from ..config import AgentSettings, Job
from ..errors import Interrupted, OffsiteError, PermanentError, TransientError
from ..owner import take_over
from ..queue import WorkQueue
from ..state import Hashes, StateDir
from ..system import folder_state
from ..targets import make_target, reachable
from ..watchers import SourceView
from ..watchers.scan import describe_error
from . import control, report
from .chains import Planner
from .dispatcher import Dispatch
from .mailbox import Mailbox, Request
from .report import Live, SyncStats, Tally
from .rounds import Now, Round
from .throttle import Throttle
from .transfer import Sessions, Transfers
from .trouble import Trouble
from .upkeep import Upkeep

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(self, job: Job, settings: AgentSettings, queue: WorkQueue, state: StateDir,
                 slots: threading.BoundedSemaphore, throttle: Throttle | None = None,
                 hashes: Hashes | None = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.job, self.settings, self.queue, self.state = job, settings, queue, state
        self.clock = clock or (lambda: dt.datetime.now().astimezone())  # local time, for windows and records
        self.transfers = job.transfers or settings.transfers
        # A job's own cap replaces the agent-wide one, which all other jobs share.
        self.throttle = Throttle(job.bandwidth) if job.bandwidth else (throttle or Throttle(settings.bandwidth))
        self.view = SourceView(job.source, settings.settle, job.family)
        probe = make_target(job)
        self.keeps_mtime, self.where = probe.keeps_mtime, probe.describe()
        endpoint = probe.endpoint()  # for the reachability probe; None: no server of its own
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.rewatch = threading.Event()  # the source folder was gone: its watch is dead
        self.on_progress: Callable[[str, int, int], None] | None = None  # path, done, total
        self.dispatch = Dispatch(job.family, max_waiting=2 * self.transfers)
        self.sessions = Sessions(job, slots, self.stopping, state, job.streams or settings.streams)
        self._own_hashes = hashes is None
        self.hashes = hashes if hashes is not None else Hashes(state.root)  # the MD5 of each file published
        self.plan = Planner(job, queue, self.view, self.dispatch, state, self.hashes, self.keeps_mtime,
                            not probe.case_sensitive)
        self.trouble = Trouble(job.name, settings.retry_for, settings.rescan,
                               (lambda: reachable(endpoint)) if endpoint is not None else None)
        self.tally = Tally()
        self.upkeep = Upkeep(job, state, self.hashes, self.throttle, self.stopping, self.tally)
        self.mail = Mailbox(self.wake)  # hints and requests, handed in by other threads
        self.hint, self.request = self.mail.hint, self.mail.request
        self._thread: threading.Thread | None = None
        self._round: Round | None = None  # the round of transfers under way
        self.last_sync: dict | None = state.read_json("results.json", {}).get(job.name)
        ok = bool(self.last_sync and self.last_sync.get("ok"))
        self.last_success: float | None = state.read_json("success.json", {}).get(
            job.name, report.epoch(self.last_sync["finished"]) if ok and self.last_sync else None)
        self.looked = False  # source and target looked at since the agent started
        self._need_reconcile = True
        self._next_rescan = 0.0
        self._source_missing = False
        self._source_unreadable: str | None = None  # the source folder itself fails to read
        self.stop_reason = "the agent stopped"  # what a stop is, in the last sync's result
        self._known: dict | None = None  # what was last left for status without an agent

    @property
    def error(self) -> str | None:
        return self.trouble.error

    # ------------------------------------------------------------ the thread
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
        """Wait up to `timeout` for the thread to end; True when it has (or never ran)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive()

    def live(self) -> Live:
        """What the job knows beyond its queue, for status and the alert rules."""
        rnd, t = self._round, self.trouble
        tasks = [x for x in list(rnd.running.values()) if x.item.op == "upload"] if rnd is not None else []
        decision = self.plan.decision
        return Live(
            phase="error" if t.error else ("syncing" if rnd is not None and rnd.picked else "idle"),
            error=t.error, trouble=t.transient, trouble_since=t.since, owner=self.sessions.owner,
            looked=self.looked, last_sync=self.last_sync, last_success=self.last_success,
            held_deletes=decision.held, held_reason=decision.reason, waiting_files=self.plan.waiting,
            changed_files=len(self.plan.changed), unreadable=self._unreadable(),
            bin_bytes=self.tally.bin_bytes, bin_files=self.tally.bin_files, lock=self.upkeep.lock,
            transfer=self.tally.transfer(tasks, time.monotonic()), free_bytes=self.upkeep.free_bytes,
            counters=dict(self.tally.counters), newest_source=self.plan.newest_source, target=self.where,
            restorable=self.plan.points, flow=self.plan.flow.copy())

    def status(self, now: dt.datetime, live: Live | None = None) -> dict:
        return report.status(self.job, self.queue.summary(self.job.name), self.queue.oldest_upload(self.job.name),
                             live or self.live(), now)

    def facts(self, st: dict, live: Live | None = None) -> report.Facts:
        """What the alert rules read of this job, beside its status entry `st`."""
        return report.facts(st, live or self.live(), self.queue.failed(self.job.name))

    def remember(self) -> None:
        """Leave what status without an agent cannot know (not via live(): it samples the rate)."""
        d, tally, points = self.plan.decision, self.tally, report.remembered(self.plan.refresh())
        self._known = report.remember(self.state, self.job.name, self._known, owner=self.sessions.owner,
                                      error=self.trouble.error, held_deletes=d.held, held_reason=d.reason,
                                      bin_bytes=tally.bin_bytes, bin_files=tally.bin_files, restorable=points)

    def _unreadable(self) -> dict[str, str]:
        """Source folders and files that fail to read: relative path ("" the source) -> error."""
        if self._source_unreadable:
            return {"": self._source_unreadable}
        return dict(list(self.view.unreadable.items()))

    # ------------------------------------------------------------ the coordinator
    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - a bug must not kill the job silently
                log.exception("job %s: unexpected error", self.job.name)
                self.trouble.permanent_failure(f"unexpected error: {e}", time.monotonic())
            self.remember()
            self.wake.wait(0.5)
            self.wake.clear()
        self.close()
        self.mail.refuse_all("the agent stopped or reloaded before doing this")

    def _now(self) -> Now:
        return Now(time.monotonic(), time.time_ns(), self.clock())

    def step(self) -> None:
        """One turn of the coordinator: requests, source changes, reconciliation, transfers."""
        requests, hints = self.mail.take()
        syncs = [r for r in requests if r.kind == "sync"]
        for r in requests:
            if r.kind == "reinit":
                self._reinit(r)
            else:
                self._handle(r)
        now = self._now()
        if not self._source_reads():
            self._answer(syncs)
            return
        forced = bool(syncs)
        if self.trouble.probe_due(now.mono) and self.trouble.probe(now.mono):
            self.queue.retry([i.id for i in self.queue.items(self.job.name) if i.state == "ready" and i.next_attempt])
            log.info("job %s: the target answers again; going on", self.job.name)
        if forced:
            self.trouble.clear_error()
            self._need_reconcile = True
            self.plan.allow_deletes = any(r.allow_deletes for r in syncs)
            self.tally.stats(now.local)
        elif self.trouble.waiting(now.mono):
            self.view.touch(hints, now.mono, now.wall_ns)  # keep the view fresh; no hot retry loop
            return
        elif self.trouble.error:
            self.trouble.clear_error()
            self._need_reconcile = True
        try:
            if self._need_reconcile or now.mono >= self._next_rescan:
                self._reconcile(now)
            else:
                self._fold_hints(hints, now)
            if forced and any(r.accept_changes for r in syncs) and self.plan.changed:
                log.info("job %s: %d file(s) changed at the source accepted by a person: they are sent, their "
                         "offsite copies going to the bin", self.job.name, self.plan.accept_changes())
            if forced or windows.is_open(self.job.windows, now.local):
                self._drain(forced)
            now = self._now()
            may_verify = not forced and not self.stopping.is_set() and windows.is_open(self.job.windows, now.local)
            self.upkeep.turn(self.sessions, now.mono, now.local, may_verify, self.plan.target_files is not None)
        except (PermanentError, TransientError) as e:
            self._job_failed(e)
        except Interrupted:
            pass  # stopping: nothing was in flight outside _drain
        finally:
            self.sessions.close()
            end = self._now()  # a round may have taken hours
            if self.tally.pass_ is not None and (forced or self._pass_over(end.local)):
                self._finish(self.tally.pass_, end.local, forced)
            if forced and self.plan.allow_deletes:
                self.plan.allow_deletes = False
                self.plan.replan(None)  # deletions were allowed for this sync only
            self._answer(syncs)

    def _source_reads(self) -> bool:
        """Is the source folder there and readable? Absence is not evidence: a source that is
        missing or fails to read deletes nothing and sends nothing."""
        where = folder_state(self.job.source)
        if where == "folder":
            self._source_unreadable = None
            if self._source_missing:
                self._source_missing = False
                self.trouble.clear_error()
                self._need_reconcile = True
            return True
        self.rewatch.set()
        if where == "missing":
            self._source_missing = True
            self.trouble.permanent_failure(f"the source folder {self.job.source} is missing (an unmounted disk?); "
                                           "nothing is deleted on the target while it is", time.monotonic())
            return False
        try:
            os.listdir(self.job.source)
            error = "it cannot be looked at"
        except OSError as e:
            error = describe_error(e)
        if self._source_unreadable is None:
            log.warning("job %s: the source folder %s cannot be read (%s); nothing is deleted on the target until "
                        "it reads again", self.job.name, self.job.source, error)
        self._source_unreadable = error
        return False

    def _handle(self, r: Request) -> None:
        """A person's request that needs no pause of the work: a retry, an undelete."""
        if r.kind == "retry":
            self.trouble.clear_error()
            self.plan.replan(None)  # accepted changes, retried items
        elif r.kind == "undelete":
            self._undelete(r)

    def _answer(self, syncs: list[Request]) -> None:
        last = self.last_sync
        for r in syncs:
            if r.reply:
                r.reply({"ok": self.trouble.error is None and bool(last and last["ok"]),
                         "error": self.trouble.error, "held": self.plan.decision.reason, "result": last,
                         "waiting_files": self.plan.waiting, "changed": list(self.plan.changed)})

    def _pass_over(self, now: dt.datetime) -> bool:
        """Is the pass of work under way over: the job idle again, or giving up?"""
        return bool(self.stopping.is_set() or self.trouble.error or self.trouble.gave_up
                    or not windows.is_open(self.job.windows, now)
                    or (self.queue.summary(self.job.name)["pending_files"] == 0 and not self.trouble.transient))  # never listed: not done

    # ------------------------------------------------------------ reconciliation
    def _reconcile(self, now: Now) -> None:
        """The full look: walk the source, list the target, plan every group; then tidy the
        staging folder and the bin."""
        self.view.scan(now.mono, now.wall_ns)
        self.view.take_changed()
        with self.sessions.session() as target:
            listing = target.list()
            self.upkeep.look_at_space(target, now.mono)
            self.trouble.looked()
            self.looked = True
            self._need_reconcile = False
            self._next_rescan = now.mono + self.settings.rescan
            self.plan.rebuild(listing, target.foreign)
            log.info("job %s: reconciled: %d backup file(s) at the source, %d on the target", self.job.name,
                     len(self.view.entries), len(listing))
            # No transfer runs now: what is staged for files no longer queued (vanished) goes.
            target.tidy({it.path for it in self.queue.items(self.job.name) if it.op == "upload"})
            self.upkeep.tend_bin(target, now.local)

    def _fold_hints(self, hints: set[str], now: Now) -> None:
        """Fold watcher hints and settling files into the plan."""
        self.view.touch(hints, now.mono, now.wall_ns)
        self.view.refresh(now.mono, now.wall_ns)
        changed = self.view.take_changed()
        if changed:
            self.plan.touched(changed)

    # ------------------------------------------------------------ transfers
    def _drain(self, forced: bool) -> None:
        """Run rounds of transfers until nothing more can start and nothing runs, or the job
        must stop (trouble, the window, the agent stopping). Each loop is a turn: it reads the
        clock once."""
        def may_send(at: dt.datetime | None = None) -> bool:  # the transfer threads ask with no time
            return forced or windows.is_open(self.job.windows, at or self.clock())

        run = Transfers(self.job, self.dispatch, self.sessions, self.throttle, self.stopping, may_send,
                        self.on_progress)
        rnd = self._round = Round(self.job, self.queue, self.plan, self.view, self.dispatch, run, self.transfers,
                                  self.trouble, self.tally)
        halted = False
        try:
            while True:
                now = self._now()
                if not halted and (self.stopping.is_set() or not may_send(now.local)):
                    halted = True
                if not halted:
                    for r in self.mail.take_urgent():
                        self._handle(r)
                    self._fold_hints(self.mail.take_hints(), now)
                    rnd.fill(now)
                if not rnd.busy():
                    break
                halted |= rnd.take(0.5, now)
        finally:
            rnd.end(self._now())
            self._round = None

    def _job_failed(self, e: OffsiteError) -> None:
        """A failure of the job's own (a listing, a session), not of one item."""
        if self.tally.pass_ is not None:
            self.tally.pass_.error(str(e))
        mono = time.monotonic()
        if isinstance(e, TransientError):
            self.trouble.wait_whole_job(self.trouble.transient_failure(str(e), mono, time.time()), mono)
            self._need_reconcile = True
        else:
            self.trouble.permanent_failure(str(e), mono)

    # ------------------------------------------------------------ requests
    def _undelete(self, req: Request) -> None:
        """`offsite undelete` while the agent runs: done here, where the job's target and plan are."""
        try:
            with self.sessions.session() as target:
                done = control.undelete(target, self.state, self.job, req.paths, req.day)
        except OffsiteError as e:
            if req.reply:
                req.reply({"ok": False, "error": str(e)})
            return
        finally:
            self.sessions.close()
        back = [d for d in done if d["ok"]]
        self.plan.undeleted({d["path"]: d["size"] for d in back}, {d["path"] for d in done})
        self.tally.binned(-sum(d["size"] for d in back), -len(back))
        if req.reply:
            req.reply({"ok": all(d["ok"] for d in done), "error": None, "files": done})

    def _reinit(self, req: Request) -> None:
        self.sessions.close()
        try:
            where = take_over(self.job, self.state)
        except OffsiteError as e:
            if req.reply:
                req.reply({"ok": False, "error": str(e)})
            return
        self.trouble.clear_error()
        self._need_reconcile = True
        self.sessions.owner = "ok"
        log.info("job %s: took over the target folder %s", self.job.name, where)
        if req.reply:
            req.reply({"ok": True, "error": None, "target": where})

    # ------------------------------------------------------------ the end of a pass
    def _finish(self, stats: SyncStats, now: dt.datetime, forced: bool) -> None:
        """Record the pass that just ended as the job's last sync."""
        self.tally.pass_ = None
        stats.files_skipped += self.plan.skipped
        self.plan.skipped = 0
        left = self.queue.summary(self.job.name)["pending_files"]
        gave_up = self.trouble.end_pass()
        result = report.judge(
            stats, now, left=left, stopped=self.stop_reason if self.stopping.is_set() else None,
            window_closed=not forced and not windows.is_open(self.job.windows, now),
            failed=bool(self.trouble.error or gave_up or self.trouble.transient),
            changed=len(self.plan.changed), unreadable=self._unreadable(), source=self.job.source)
        self.last_sync = result
        self.state.update_json("results.json", lambda d: d.__setitem__(self.job.name, result))
        if result["ok"]:
            self.last_success = time.time()
            self.state.update_json("success.json", lambda d: d.__setitem__(self.job.name, self.last_success))
        log.info("job %s: sync %s: %d sent (%d bytes), %d deleted, %d skipped%s", self.job.name,
                 "ok" if result["ok"] else "failed", stats.files_sent, stats.bytes_sent,
                 stats.files_deleted, stats.files_skipped,
                 ": " + "; ".join(stats.errors) if stats.errors else "")
