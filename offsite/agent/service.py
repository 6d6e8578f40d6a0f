"""The agent: `offsite run`.

The main thread is a plain loop: it reacts to flags set by signal handlers (stop, reload),
answers requests from the control mailbox, restarts watchers that died, and rewrites
status.json every second. All work happens in the job runners' threads.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import psutil

from .. import config as config_mod
from .. import logs
from ..config import Config
from ..errors import LockedError, OffsiteError
from ..queue import WorkQueue, count_rows
from ..state import Hashes, StateDir
from ..system import folder_state
from ..verify import last as last_verify
from ..watchers import SourceWatcher
from . import control
from .job import JobRunner, Request
from .throttle import Throttle
from .watch import Watch

log = logging.getLogger(__name__)
STOP_GRACE = 8.0  # seconds the runners get to reach a resumable point
HOUSEKEEPING_EVERY = 24 * 3600.0  # prune acknowledged queue rows and compact the database
SIZES_EVERY = 60.0  # seconds between measures of the state directory and queue rows


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = StateDir(config.agent.state_dir)
        self.runners: dict[str, JobRunner] = {}
        self.watchers: dict[str, SourceWatcher] = {}
        # After a reload: runners of the old configuration that did not stop in time (a server
        # hashing a large file before its rename, say), by job. The job's new runner starts
        # only once its old one has ended: one coordinator per job, always.
        self._draining: dict[str, JobRunner] = {}
        self.hashes: Hashes | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.started = dt.datetime.now().astimezone()
        self.queue: WorkQueue | None = None
        self.watch: Watch | None = None
        self._metrics = None  # the metrics HTTP server
        self._snapshot: dict = {"jobs": []}  # the last status, for the metrics and the status page
        self._sizes = (0.0, 0, 0)  # (monotonic when measured, state bytes, queue rows)

    # -- signals only set flags
    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def request_reload(self, *_: object) -> None:
        self._reload.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self.request_reload)

    def run(self) -> int:
        self.state.ensure()
        if not self.state.take_lock("agent"):
            raise LockedError(f"another agent already holds the state directory {self.state.root}")
        try:
            logs.to_file(self.state.log_dir)
            # status.json still says "running" when the last agent did not stop cleanly.
            restarted = bool(self.state.read_json("status.json", {}).get("agent", {}).get("running"))
            self.queue = self._open_queue()
            self.hashes = Hashes(self.state.root)  # one connection for every job of the agent
            self._install_signals()
            self.watch = Watch(self.config, self.state, restarted)
            if self.config.agent.metrics:
                from .metrics import serve  # prometheus_client only when metrics are on

                self._metrics = serve(self.config.agent.metrics, lambda: self._snapshot)
            self._start_jobs()
            log.info("offsite agent started (pid %d) with %d job(s) from %s",
                     os.getpid(), len(self.runners), self.config.path)
            last_status, housekept = 0.0, time.monotonic()
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self._do_reload()
                self._handle_requests()
                self._start_drained()
                self._check_watchers()
                if time.monotonic() - last_status >= 1.0:
                    self._write_status(running=True)
                    last_status = time.monotonic()
                if time.monotonic() - housekept >= HOUSEKEEPING_EVERY:
                    housekept = time.monotonic()
                    self.queue.compact()
                    log.info("housekeeping: pruned acknowledged queue rows and compacted the queue database")
                self._stop.wait(0.2)
            log.info("offsite agent stopping")
        finally:
            self._stop_jobs()
            if self._metrics is not None:
                self._metrics.shutdown()
                self._metrics.server_close()
            if self.watch is not None:
                self.watch.stop()
            self._write_status(running=False)
            if self.queue is not None:
                self.queue.close()
            if self.hashes is not None and not any(r.alive() for r in self._draining.values()):
                self.hashes.close()  # (a runner still finishing a step at exit keeps it: the process ends)
            self.state.lock.release()
        log.info("offsite agent stopped")
        return 0

    def _open_queue(self) -> WorkQueue:
        """The queue; a corrupt one is moved aside and the next reconciliation rebuilds it,
        since the source and target listings are the truth."""
        try:
            q = WorkQueue(self.state.queue_dir)
            q.compact()
            return q
        except (OffsiteError, sqlite3.DatabaseError) as e:
            aside = self.state.queue_dir.with_name(f"queue.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            self.state.queue_dir.rename(aside)
            self.state.ensure()
            log.error("the queue database could not be read (%s); moved it to %s and rebuilding the queue "
                      "from the source and target listings", e, aside)
            return WorkQueue(self.state.queue_dir)

    # -- jobs and watchers
    def _start_jobs(self) -> None:
        assert self.queue is not None
        slots = threading.BoundedSemaphore(self.config.agent.max_connections)
        shared = Throttle(self.config.agent.bandwidth)
        for job in self.config.jobs:
            runner = JobRunner(job, self.config.agent, self.queue, self.state, slots, shared, self.hashes)
            self.runners[job.name] = runner
            if job.name in self._draining:
                log.warning("job %s: its previous run is still finishing a step; it starts again once that is done",
                            job.name)
                continue
            self._start_runner(runner)

    def _start_runner(self, runner: JobRunner) -> None:
        job = runner.job
        watcher = SourceWatcher(job.source, runner.hint)
        try:
            watcher.start()
        except OSError as e:
            log.error("job %s: cannot watch %s (%s); relying on rescans", job.name, job.source, e)
        self.watchers[job.name] = watcher
        runner.start()

    def _start_drained(self) -> None:
        """Start the runners that waited for their job's old runner to end."""
        for name, old in list(self._draining.items()):
            if old.alive():
                continue
            del self._draining[name]
            log.info("job %s: its previous run has ended", name)
            runner = self.runners.get(name)
            if runner is not None and not runner.alive() and name not in self.watchers:
                self._start_runner(runner)

    def _stop_jobs(self) -> None:
        for r in self.runners.values():
            r.stop()
        deadline = time.monotonic() + STOP_GRACE
        for name, r in self.runners.items():
            if not r.join(max(0.1, deadline - time.monotonic())):
                log.warning("job %s did not stop in time", name)
                self._draining[name] = r
        for w in self.watchers.values():
            w.stop()
        self.runners, self.watchers = {}, {}

    def _check_watchers(self) -> None:
        for name, w in self.watchers.items():
            runner = self.runners[name]
            lost = runner.rewatch.is_set()
            if (lost or not w.alive()) and folder_state(runner.job.source) == "folder":
                runner.rewatch.clear()
                log.warning("job %s: %s; watching it again and rescanning", name,
                            "the source folder is back" if lost else "the watcher stopped")
                w.stop()
                try:
                    w.start()
                except OSError as e:
                    log.error("job %s: cannot watch %s (%s)", name, runner.job.source, e)
                runner.hint("")  # the whole folder: events may have been missed

    def _do_reload(self) -> None:
        try:
            new = config_mod.load(self.config.path)
        except OffsiteError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        if Path(new.agent.state_dir) != Path(self.config.agent.state_dir):
            log.error("reload refused: state_dir cannot change while the agent runs (restart it)")
            return
        log.info("reloading the configuration from %s", self.config.path)
        self._stop_jobs()
        self.config = new
        if self.watch is not None:
            self.watch.reconfigure(new)
        logging.getLogger().setLevel(new.agent.log_level.upper())
        self._start_jobs()

    # -- the control mailbox
    def _handle_requests(self) -> None:
        assert self.queue is not None
        for rid, req in self.state.requests():
            op = req.get("op")
            def reply(data: dict, rid: str = rid) -> None:
                self._write_status(running=True)  # a status read right after the answer is current
                self.state.reply(rid, data)

            try:
                if op in ("sync", "reinit"):
                    runner = self.runners.get(req.get("job", ""))
                    if runner is None:
                        reply({"ok": False, "error": f"no job named {req.get('job')!r}"})
                        continue
                    runner.request(Request(op, bool(req.get("allow_deletes")), reply,
                                           accept_changes=bool(req.get("accept_changes"))))
                elif op == "undelete":
                    runner = self.runners.get(req.get("job", ""))
                    if runner is None:
                        reply({"ok": False, "error": f"no job named {req.get('job')!r}"})
                        continue
                    runner.request(Request("undelete", reply=reply, paths=list(req.get("paths") or []),
                                           day=req.get("day")))
                elif op == "retry":
                    items = control.retry(self.queue, self.state, req.get("ids"))
                    for name in {i.job for i in items}:
                        if name in self.runners:
                            self.runners[name].request(Request("retry"))
                    reply({"ok": True, "items": [i.id for i in items]})
                elif op == "drop":
                    it = control.drop(self.queue, self.state, int(req["id"]))
                    reply({"ok": True, "item": it.to_json()})
                else:
                    reply({"ok": False, "error": f"unknown request {op!r}"})
            except OffsiteError as e:
                reply({"ok": False, "error": str(e)})

    # -- status
    def _write_status(self, running: bool) -> None:
        now = dt.datetime.now().astimezone()
        try:
            rss = psutil.Process().memory_info().rss
        except psutil.Error:
            rss = None
        lives = {name: r.live() for name, r in self.runners.items()}  # one look at each job per write
        jobs = [r.status(now, lives[name]) for name, r in self.runners.items()]
        for st in jobs:  # the agent's verifies and `offsite verify`'s
            st["last_verify"] = last_verify(self.state, st["name"])
        if running and self.watch is not None:
            try:
                self.watch.tick(jobs, {st["name"]: self.runners[st["name"]].facts(st, lives[st["name"]]) for st in jobs}, now)
            except OffsiteError as e:
                log.error("%s", e)
            except Exception:  # a bug in alerting must never stop replication
                log.exception("unexpected error while evaluating alerts")
        for st in jobs:
            st["alerts"] = self.watch.of_job(st["name"]) if self.watch is not None else []
        mono = time.monotonic()
        if not self._sizes[0] or mono - self._sizes[0] >= SIZES_EVERY:
            self._sizes = (mono, self.state.size_bytes(), count_rows(self.state.queue_dir))
        agent_alerts = self.watch.of_agent() if self.watch is not None else []
        data = {
            "agent": {"running": running, "pid": os.getpid() if running else None,
                      "started": self.started.isoformat(timespec="seconds") if running else None,
                      "rss_bytes": rss if running else None, "alerts": agent_alerts,
                      "state_bytes": self._sizes[1], "queue_rows": self._sizes[2]},
            "jobs": jobs,
            "written": now.isoformat(timespec="seconds"),
        }
        self._snapshot = {"jobs": jobs, "agent_alerts": agent_alerts, "state_bytes": self._sizes[1],
                          "queue_rows": self._sizes[2], "agent": data["agent"], "written": data["written"]}
        try:
            self.state.write_json("status.json", data)
        except OffsiteError as e:
            log.error("%s", e)
