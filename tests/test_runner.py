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
    """The file that fails to read fails alone: other chains go on. The later file of its own
    chain waits (never published before it), and once it reads again and is retried, both
    are published, in chain order."""
    site.config()
    names = ("C_VOL-b001.spf", "C_VOL-b001-i001-cd.spi", "C_VOL-b001-i002-cd.spi",
             "D_VOL-b001.spf", "D_VOL-b001-i001-cd.spi")
    for name in names:
        (site.source / name).write_bytes(name.encode())
        os.utime(site.source / name, (time.time() - 60, time.time() - 60))
    unreadable = str(site.source / "C_VOL-b001-i001-cd.spi")
    denied = [True]
    real_open = builtins.open

    def deny(path, *a, **kw):
        if denied[0] and str(path) == unreadable and "r" in (a[0] if a else kw.get("mode", "r")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", deny)
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(1))
    try:
        reply = {}
        runner.request(Request("sync", reply=reply.update))
        runner.step()
        assert set(site.target_files()) == {"C_VOL-b001.spf", "D_VOL-b001.spf", "D_VOL-b001-i001-cd.spi"}, \
            "a file was published before the earlier file of its chain that fails to read"
        failed = [i for i in queue.items() if i.state == "failed"]
        assert [i.path for i in failed] == ["C_VOL-b001-i001-cd.spi"]
        assert "cannot read" in failed[0].last_error and "Permission denied" in failed[0].last_error
        waiting = {i.path: i.state for i in queue.items() if i.state != "failed"}
        assert waiting == {"C_VOL-b001-i002-cd.spi": "ready"}  # held back, not failed with it
        assert reply["result"]["files_sent"] == 3 and not reply["result"]["ok"]
        assert runner.error is None  # the job itself is not in error

        denied[0] = False  # the file reads again, and a person retries it ('offsite queue retry')
        assert queue.retry([failed[0].id]) == 1
        reply = {}
        runner.request(Request("sync", reply=reply.update))
        runner.step()
        assert reply["result"]["ok"], reply["result"]
        assert reply["result"]["sent"] == ["C_VOL-b001-i001-cd.spi", "C_VOL-b001-i002-cd.spi"]  # chain order
        assert set(site.target_files()) == set(names) and queue.items() == []
    finally:
        runner.sessions.close()
        queue.close()


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


def test_a_server_back_after_the_job_gave_up_is_noticed_by_the_next_probe(site, servers):
    """Regression: every failure came before a probe could see the server down, the job gave
    up (parked for `rescan`), and the probe that then found the server answering did not go
    on, because no probe had ever found it down."""
    server = servers.get("sftp")
    loc = server.new_location()
    site.config(target=loc, agent='retry_for = "1s"\nrescan = "1h"')
    (site.source / "C_VOL-b001.spf").write_bytes(b"full")
    os.utime(site.source / "C_VOL-b001.spf", (time.time() - 60, time.time() - 60))
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(1))
    try:
        runner.step()
        assert "C_VOL-b001.spf" in server.files(loc, "job1")
        server.stop()
        try:
            (site.source / "C_VOL-b001-i001-cd.spi").write_bytes(b"incremental")
            os.utime(site.source / "C_VOL-b001-i001-cd.spi", (time.time() - 60, time.time() - 60))
            runner.request(Request("sync"))
            runner.step()  # fails: the first failure, backing off
            time.sleep(1.2)  # past retry_for
            runner.request(Request("sync"))
            runner.step()  # fails again: gives up, parked for an hour
            assert "C_VOL-b001-i001-cd.spi" not in server.files(loc, "job1")
        finally:
            server.restart()
        time.sleep(5.5)  # the next probe is due
        runner.step()  # the probe finds the server answering: the parked file goes at once
        runner.step()
        assert "C_VOL-b001-i001-cd.spi" in server.files(loc, "job1")
    finally:
        runner.sessions.close()
        queue.close()
