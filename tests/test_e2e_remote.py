"""End to end against remote targets: the real agent, real servers, kills and outages."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import pytest
from conftest import Site, TargetWatcher, finished_file, wait_until
from imagemanager import ImageManager, write_events
from test_recovery import resume_overlap

from offsite.selection import Rules, SourceFile, plan

MiB = 1024 * 1024


def published(server, loc) -> dict[str, bytes]:
    return {p: b for p, b in server.files(loc, "job1").items() if not p.startswith(".offsite/")}


def selection(site: Site, mode: str) -> set[str]:
    src = {p.relative_to(site.source).as_posix(): SourceFile(p.stat().st_size, 0)
           for p in site.source.rglob("*") if p.is_file()}
    return set(plan(src, {}, Rules(mode=mode)).uploads)


@pytest.mark.parametrize("kind", ["sftp", "ftp", "ftps", "smb", "s3"])
def test_a_day_of_backups_reaches_each_remote_target_in_chain_order_with_4_transfers(kind, servers, site,
                                                                                      start_agent):
    server = servers.get(kind)
    loc = server.new_location()
    site.config(target=loc, agent="transfers = 4", job="" if kind == "s3" else 'mode = "all"')  # s3: daily-monthly
    im = ImageManager(volumes=("C_VOL", "D_VOL"), base_size=2 * MiB, inc_size=16 * 1024)
    events = im.start() + im.run(dt.timedelta(days=1))
    write_events(site.source, events)
    expected = selection(site, "daily-monthly" if kind == "s3" else "all")
    final_sizes = {e.path: e.size for e in events if e.op == "create" and e.path in expected}
    # The sampler lists the target throughout: never a half-written file, never a chain out of order.
    watcher = TargetWatcher(lambda: server.listing(loc), final_sizes)
    watcher.start()
    try:
        agent = start_agent()
        wait_until(lambda: set(server.listing(loc)) == expected, timeout=120, what=f"the day on {kind}")
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.problems == [] and watcher.snapshots > 5, watcher.problems[:5]
    files = published(server, loc)
    assert all(files[p] == (site.source / p).read_bytes() for p in expected)
    # The status is written a moment after the last file lands: wait for the owner to show.
    status = wait_until(lambda: (s := site.job_status())["owner"] == "ok" and s, what="the owner in the status")
    assert status["error"] is None
    assert agent.stop() == 0
    log = agent.output()
    assert "Traceback" not in log
    assert all(log.count(f"sent {p} (") == 1 for p in expected)  # each file sent once


@pytest.mark.parametrize("kind", ["sftp", "s3"])
def test_sigkill_in_the_middle_of_an_upload_resumes_it(kind, servers, site, start_agent):
    server = servers.get(kind)
    loc = server.new_location()
    # One stream: its resume is told by the staged size; several streams of one file resume
    # from the target's record of its blocks (tests/test_streams.py).
    site.config(target=loc, agent='bandwidth = "25MB/s"\nstreams = 1', job='mode = "all"')
    big = finished_file(site.source / "C_VOL-b001.spf", 128 * MiB)
    agent = start_agent()
    wait_until(lambda: server.staged_bytes(loc) >= 48 * MiB, timeout=60, what="the upload under way")
    agent.kill()
    kept = server.staged_bytes(loc)
    assert published(server, loc) == {}  # nothing under its final name
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in published(server, loc), timeout=90, what="the resumed upload")
    last = wait_until(lambda: (ls := site.job_status()["last_sync"]) and ls["files_sent"] >= 1 and ls,
                      what="the completed sync's result")
    # Only what the server did not hold was sent again.
    assert last["ok"] and last["bytes_on_wire"] <= 128 * MiB - kept + 1 * MiB, (last["bytes_on_wire"], kept)
    assert last["bytes_sent"] == 128 * MiB and last["sent"] == ["C_VOL-b001.spf"]
    got = published(server, loc)["C_VOL-b001.spf"]
    assert hashlib.sha256(got).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert server.staged_bytes(loc) == 0
    assert agent.stop() == 0


def test_a_server_stopped_in_the_middle_of_an_upload_is_ridden_out(servers, site, start_agent):
    server = servers.get("sftp")
    loc = server.new_location()
    # One stream: its resume is told by the staged size; several streams of one file resume
    # from the target's record of its blocks (tests/test_streams.py).
    site.config(target=loc, agent='bandwidth = "20MB/s"\nstreams = 1', job='mode = "all"')
    big = finished_file(site.source / "C_VOL-b001.spf", 80 * MiB)
    agent = start_agent()
    wait_until(lambda: server.staged_bytes(loc) >= 16 * MiB, timeout=60, what="the upload under way")
    server.stop()  # the whole server, its open sessions included
    try:
        time.sleep(8)
        items = json.loads(site.offsite("queue", "list", "--json").stdout)
        assert items and items[0]["last_error"] and "127.0.0.1" in items[0]["last_error"]
    finally:
        server.restart()
    wait_until(lambda: "C_VOL-b001.spf" in published(server, loc), timeout=60, what="the upload after the outage")
    assert published(server, loc)["C_VOL-b001.spf"] == big.read_bytes()
    assert json.loads(site.offsite("queue", "list", "--json").stdout) == []
    assert site.job_status()["error"] is None
    last = wait_until(lambda: (ls := site.job_status()["last_sync"]) and ls, what="the sync's result")
    assert last["ok"] and last["sent"] == ["C_VOL-b001.spf"] and last["bytes_sent"] == 80 * MiB
    # Ridden out, not started over: the upload went on from what the server held (16 MiB or
    # more), so the wire carried the file once and at most what was in flight when it stopped.
    sent, wire, most = last["bytes_sent"], last["bytes_on_wire"], resume_overlap("sftp", 20e6, 80 * MiB)
    assert sent <= wire <= sent + most, f"{wire} bytes on the wire for {sent} bytes sent (at most {sent + most})"
    assert agent.stop() == 0


@pytest.mark.parametrize("kind", ["local", "sftp", "s3"])
def test_sigkill_with_several_transfers_in_flight_loses_and_duplicates_nothing(kind, servers, site, start_agent):
    server = servers.get(kind)
    loc = server.new_location()
    site.config(target=loc, agent='transfers = 4\nbandwidth = "12MB/s"', job='mode = "all"')
    files = {}
    for vol in ("C_VOL", "D_VOL", "E_VOL"):  # three chains, each a base and dailies
        files[f"{vol}-b001.spf"] = 20 * MiB
        for i in range(1, 4):
            files[f"{vol}-b001-i{i:03d}-cd.spi"] = 3 * MiB
    for path, size in files.items():
        finished_file(site.source / path, size)
    watcher = TargetWatcher(lambda: server.listing(loc), files)
    watcher.start()
    try:
        agent = start_agent()
        wait_until(lambda: len(json.loads(site.offsite("queue", "list", "--state", "in-flight", "--json").stdout)) >= 3,
                   timeout=60, interval=0.2, what="several transfers in flight")
        time.sleep(1)
        agent.kill()
        before = set(server.listing(loc))
        first_log = agent.output()
        agent = start_agent()
        wait_until(lambda: set(server.listing(loc)) == set(files), timeout=120, what="everything after the restart")
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.problems == [], watcher.problems[:5]
    got = published(server, loc)
    assert all(got[p] == (site.source / p).read_bytes() for p in files)
    assert agent.stop() == 0
    second_log = agent.output()
    for p in files:  # sent at most once in all: a file published before the kill is not sent again
        assert first_log.count(f"sent {p} (") + second_log.count(f"sent {p} (") <= 1, p
        if p in before:
            assert f"sent {p} (" not in second_log, p
    assert server.staged_bytes(loc) == 0
