"""The job runner in-process, where a test needs what a real run cannot give as root."""
from __future__ import annotations

import builtins
import os
import threading
import time

from offsite import config
from offsite.agent.job import JobRunner, Request
from offsite.queue import WorkQueue
from offsite.state import StateDir


def test_an_unreadable_file_is_an_error_for_that_file_only(site, monkeypatch):
    site.config()
    for name in ("C_VOL-b001.spf", "C_VOL-b001-i001-cd.spi", "D_VOL-b001.spf", "D_VOL-b001-i001-cd.spi"):
        (site.source / name).write_bytes(name.encode())
        os.utime(site.source / name, (time.time() - 60, time.time() - 60))
    unreadable = str(site.source / "C_VOL-b001-i001-cd.spi")
    real_open = builtins.open

    def deny(path, *a, **kw):
        if str(path) == unreadable and "r" in (a[0] if a else kw.get("mode", "r")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", deny)
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(1))
    reply = {}
    runner.request(Request("sync", reply=reply.update))
    runner.step()
    queue.close()
    assert set(site.target_files()) == {"C_VOL-b001.spf", "D_VOL-b001.spf", "D_VOL-b001-i001-cd.spi"}
    failed = [i for i in queue.items() if i.state == "failed"]
    assert [i.path for i in failed] == ["C_VOL-b001-i001-cd.spi"]
    assert "cannot read" in failed[0].last_error and "Permission denied" in failed[0].last_error
    assert reply["result"]["files_sent"] == 3 and not reply["result"]["ok"]
    assert runner.error is None  # the job itself is not in error


def test_a_job_is_starting_until_it_has_looked_at_its_source_and_target(site):
    site.config()
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(1))
    import datetime as dt

    now = dt.datetime.now().astimezone()
    assert runner.status(now)["state"] == "starting"  # not "idle, 0 pending" before it looked
    runner.step()
    st = runner.status(now)
    queue.close()
    assert st["state"] == "idle" and st["lag_seconds"] == 0 and st["transfer"] is None
