"""Work proportional to the change: seeding a large folder costs the same per file whatever
the size of the queue. Counted in calls, not seconds (the machines here are shared)."""
from __future__ import annotations

import os
import threading
import time

from offsite import config
from offsite.agent.job import JobRunner, Request
from offsite.queue import WorkQueue
from offsite.state import StateDir

VOLUMES = ("C_VOL", "D_VOL", "E_VOL", "F_VOL")


def seed(site, n: int) -> None:
    old = time.time() - 3600
    per = n // len(VOLUMES)
    for vol in VOLUMES:
        for i in range(per):
            p = site.source / (f"{vol}-b001.spf" if i == 0 else f"{vol}-b001-i{i:05d}-cd.spi")
            p.write_bytes(b"x" * 10)
            os.utime(p, (old, old))


def seeding_work(site, n: int) -> dict:
    seed(site, n)
    site.config(job='mode = "all"')
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    scans = {"queue": 0, "source": 0}
    items, snapshot = queue.items, None

    def counted_items(job=None):
        scans["queue"] += 1  # a walk of every queued item of the job
        return items(job)

    queue.items = counted_items  # type: ignore[method-assign]
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(8))
    snapshot = runner.view.snapshot

    def counted_snapshot(paths=None):
        if paths is None:
            scans["source"] += 1  # a copy of the whole source view
        return snapshot(paths)

    runner.view.snapshot = counted_snapshot  # type: ignore[method-assign]
    reply: dict = {}
    runner.request(Request("sync", reply=reply.update))
    runner.step()
    queue.close()
    assert reply["result"]["files_sent"] == n, reply
    assert len(list(site.target.iterdir())) == n + 1  # and .offsite
    return {"queue scans": scans["queue"], "source copies": scans["source"],
            "chains planned": runner.plan.planned, "entries per pick": runner.dispatch.looked / n,
            "sessions": runner.sessions.opened}


def test_seeding_20000_files_costs_the_same_per_file_as_2000(tmp_path):
    from conftest import Site

    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = seeding_work(Site(tmp_path / "small"), 2_000)
    large = seeding_work(Site(tmp_path / "large"), 20_000)
    print(f"2,000 files: {small}\n20,000 files: {large}")
    # Whole-job walks happen at the reconciliation only, never per file.
    assert small["queue scans"] == large["queue scans"] <= 3
    assert small["source copies"] == large["source copies"] == 0
    # Each chain is planned at the reconciliation (and once more when the sync ends); a
    # finished upload plans nothing again.
    assert small["chains planned"] == large["chains planned"] <= 2 * len(VOLUMES)
    # Picking the next file looks at the heads of the chains, whatever the queue holds.
    assert large["entries per pick"] <= small["entries per pick"] * 1.1
    assert large["sessions"] <= 4  # transfers = 4, each session reused from file to file
