"""Trouble, end to end: windows closing mid-transfer, full disks, corrupt state, hostile names."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time

import pytest
from conftest import finished_file, wait_until

MiB = 1024 * 1024


def staged_bytes(folder) -> int:
    staging = folder / ".offsite" / "staging"
    return sum(p.stat().st_size for p in staging.glob("*.part")) if staging.exists() else 0


class Clock:
    """The job's wall clock, set by the test: minutes of windows pass in an instant."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_a_window_closing_mid_upload_pauses_it_until_the_next_window(site):
    from offsite import config
    from offsite.agent.job import JobRunner
    from offsite.queue import WorkQueue
    from offsite.state import StateDir

    day = dt.datetime(2026, 12, 1).astimezone()
    windows = 'windows = [{ start = "10:00", end = "10:01" }, { start = "10:02", end = "11:00" }]'
    site.config(agent='bandwidth = "4MB/s"', job=windows)
    big = site.source / "C_VOL-b001.spf"
    finished_file(big, 40 * MiB)  # 10 s at 4 MB/s: still going when the window closes
    cfg = config.load(site.cfg)
    state = StateDir(cfg.agent.state_dir)
    state.ensure()
    queue = WorkQueue(state.queue_dir)
    clock = Clock(day.replace(hour=10, second=30))
    runner = JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(4), clock=clock)
    runner.start()
    try:
        wait_until(lambda: staged_bytes(site.target) > 0, what="the transfer to start")
        clock.now = day.replace(hour=10, minute=1, second=5)  # the window closes
        wait_until(lambda: runner.status(clock())["state"] == "waiting", what="the job to wait for its window")
        paused_at = staged_bytes(site.target)
        assert 0 < paused_at < big.stat().st_size
        st = runner.status(clock())
        assert st["transfer"] is None and st["next_window"] == day.replace(hour=10, minute=2).isoformat()
        time.sleep(1.5)  # turns of the coordinator: nothing moves outside the window
        assert staged_bytes(site.target) == paused_at and site.target_files() == {}
        clock.now = day.replace(hour=10, minute=2, second=1)  # the next window opens
        wait_until(lambda: staged_bytes(site.target) > paused_at + MiB, what="the transfer to resume")
    finally:
        runner.stop()
        assert runner.join(10)
        queue.close()
    r = site.offsite("sync", "job1", "--json")  # sync ignores the window and finishes it
    sent = json.loads(r.stdout)["result"]["bytes_on_wire"]
    assert r.returncode == 0 and sent < big.stat().st_size - paused_at  # resumed, not restarted
    assert site.target_files() == {"C_VOL-b001.spf": big.stat().st_size}


@pytest.fixture
def small_disk(site):
    """The location is a 20 MiB tmpfs: a small external drive."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(site.location)], check=True)
    yield site.location
    subprocess.run(["umount", "-l", str(site.location)], check=False)


@pytest.mark.parametrize("full_size, incr_size", [(8, 16), (12, 10)])
def test_a_full_target_disk_is_a_clear_error_and_the_item_completes_once_space_is_freed(
        site, start_agent, small_disk, full_size, incr_size):
    # Both files upload at once (transfers = 4), throttled alike, so their writes interleave.
    # (8, 16): the incremental runs out of room. (12, 10): the staged incremental took the room
    # the full needs; the full is tried again alone, the incremental giving its room back.
    site.config(agent='rescan = "4s"\nbandwidth = "20MB/s"')
    finished_file(site.source / "C_VOL-b001.spf", full_size * MiB)
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", incr_size * MiB)
    agent = start_agent()
    st = wait_until(lambda: (s := site.job_status())["state"] == "error" and s, timeout=30, what="the disk-full error")
    assert "the target disk is full" in st["error"] and str(site.location) in st["error"]
    assert site.target_files() == {"C_VOL-b001.spf": full_size * MiB}  # no partial file under a final name
    assert staged_bytes(site.target) == 0  # the partial copy gave its space back
    items = json.loads(site.offsite("queue", "list", "--json").stdout)
    assert [(i["path"], i["last_error"] is not None) for i in items] == [("C_VOL-b001-i001-cd.spi", True)]
    assert "disk is full" in agent.output()
    subprocess.run(["mount", "-o", "remount,size=64m", str(site.location)], check=True)  # space freed
    wait_until(lambda: "C_VOL-b001-i001-cd.spi" in site.target_files(), timeout=30, what="the retry after space was freed")
    wait_until(lambda: site.job_status()["error"] is None, what="the error to clear")
    assert agent.stop() == 0


def test_a_corrupt_queue_database_is_moved_aside_and_rebuilt(site, start_agent):
    site.config()
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    (site.state / "queue").mkdir(parents=True)
    (site.state / "queue" / "data.db").write_bytes(b"this is not a database" * 100)
    r = site.offsite("queue", "list")
    assert r.returncode == 2 and "the queue database cannot be read" in r.stderr and "Traceback" not in r.stderr
    r = site.offsite("status", "--json")  # status still answers, and says what is wrong
    assert r.returncode == 1 and "the queue database cannot be read" in json.loads(r.stdout)["queue_error"]
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in site.target_files(), what="the rebuilt queue to work")
    assert list(site.state.glob("queue.corrupt-*"))
    assert "moved it to" in agent.output()
    assert agent.stop() == 0


HOSTILE = [
    "Vol with 'quotes\" and spaces-b001.spf",
    "Système Réservé_VOL-b001.spf",
    "データ_VOL-b001.spf",
    "L" * 230 + "-b001.spf",
    "sub dir/$weird;name&-b001.spf",
]


def test_hostile_names_and_symlinks(site, start_agent, tmp_path):
    site.config()
    for name in HOSTILE:
        finished_file(site.source / name, data=name.encode())
    finished_file(site.source / "new\nline-b001.spf", data=b"x")  # not a name backup software writes: left alone
    outside = tmp_path / "outside"
    finished_file(outside / "Secret_VOL-b001.spf", data=b"must not travel")
    os.symlink(outside, site.source / "linked")
    os.symlink(outside / "Secret_VOL-b001.spf", site.source / "Secret_VOL-b001.spf")
    agent = start_agent()
    wait_until(lambda: set(site.target_files()) == set(HOSTILE), what="the hostile names on the target")
    for name in HOSTILE:
        assert (site.target / name).read_bytes() == name.encode()
    time.sleep(1)
    assert set(site.target_files()) == set(HOSTILE)  # no symlinked file, no newline name
    assert sorted(p.name for p in site.location.iterdir()) == ["job1"]  # nothing outside the job folder
    assert agent.stop() == 0


@pytest.mark.parametrize("kind", ["sftp", "ftp", "s3"])
def test_a_sync_to_a_target_nobody_answers_fails_with_exit_1(kind, servers, site):
    """A standalone `offsite sync` whose target cannot be reached said "ok: 0 sent" and exited
    0: the target was never listed, so nothing was queued, and a pass with nothing queued
    counted as done. Failing silently is the one thing a backup tool must not do."""
    from servers import free_port

    loc = servers.get(kind).new_location()
    dead = free_port()  # nobody listens there
    if kind == "s3":
        loc = {**loc, "endpoint": f"http://127.0.0.1:{dead}"}
    else:
        loc = {**loc, "port": dead}
    site.config(target=loc, agent='retry_for = "2s"', job='mode = "all"')
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    r = site.offsite("sync", "job1", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
    last = site.job_status()["last_sync"]
    assert last["ok"] is False and last["errors"], last
