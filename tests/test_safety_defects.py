"""The defects issue 15 found by reading the code, each shown end to end (or at the
smallest level that can show it) and failing on the code before the fix:
- one path in flight twice, sharing one staged upload;
- a reload that starts a second coordinator beside one that has not stopped yet;
- staged uploads (and open S3 multipart uploads) of files that vanished, kept for ever;
- a hash-record connection per runner, never closed;
- `queue drop` racing the coordinator's lease.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
from conftest import finished_file, wait_until
from faultfs import FaultFS

from offsite.agent import control
from offsite.errors import UsageError
from offsite.queue import WorkQueue
from offsite.state import StateDir

MiB = 1024 * 1024
G = "PC1/{1F6E2A3B-AAAA}/4F6F6CACA58B077D"


def test_a_macrium_file_rewritten_during_its_upload_is_sent_once_in_its_new_version(site, start_agent):
    site.config(agent='bandwidth = "4MB/s"\ntransfers = 4', job='family = "macrium"')
    full = finished_file(site.source / f"{G}-00-00.mrimg", 12 * MiB)
    agent = start_agent()
    staging = site.target / ".offsite" / "staging"
    wait_until(lambda: staging.exists() and sum(p.stat().st_size for p in staging.glob("*.part")) > 3 * MiB,
               what="the upload under way")
    new = os.urandom(13 * MiB)
    with open(full, "r+b") as f:  # a synthetic full: Reflect rewrites the file in place
        f.write(new)
    wait_until(lambda: (site.target / f"{G}-00-00.mrimg").exists()
               and (site.target / f"{G}-00-00.mrimg").read_bytes() == new, timeout=60, what="the new version offsite")
    wait_until(lambda: json.loads(site.offsite("queue", "list", "--json").stdout) == [], what="an empty queue")
    assert list(staging.glob("*")) == []
    log = agent.output()
    assert "nothing is staged" not in log and "Traceback" not in log
    assert log.count(f"sent {G}-00-00.mrimg (") == 1
    assert agent.stop() == 0


def test_a_reload_never_runs_two_coordinators_for_one_job(site, servers, tmp_path, start_agent):
    """A runner that cannot stop within the grace (here a read that stalls; in the field an
    FTP or SFTP server hashing a large image before its rename) is waited for: its job's new
    runner starts only when it has ended, and max_connections holds throughout."""
    server = servers.get("sftp")
    loc = server.new_location()
    site.source.rmdir()
    fs = FaultFS(tmp_path / "backing", site.source, tmp_path / "faultfs.log")
    try:
        site.config(target=loc, agent='max_connections = 1\ntransfers = 1', job='mode = "all"')
        finished_file(fs.backing / "C_VOL-b001.spf", 3 * MiB)
        fs.fail("", error=None, ops=["read"], delay=12)  # every read of a file stalls
        agent = start_agent()
        wait_until(lambda: "reconciled" in agent.output(), what="the first look")
        time.sleep(1)  # the transfer is now stuck in its first read
        agent.proc.send_signal(signal.SIGHUP)
        port, most = loc["port"], 0
        deadline = time.monotonic() + 16
        while time.monotonic() < deadline:
            try:
                conns = psutil.Process(agent.proc.pid).net_connections(kind="tcp")
            except psutil.Error:
                break
            most = max(most, sum(1 for c in conns if c.raddr and c.raddr.port == port
                                 and c.status == psutil.CONN_ESTABLISHED))
            time.sleep(0.05)
        fs.heal()
        wait_until(lambda: "C_VOL-b001.spf" in server.listing(loc), timeout=60, what="the file, once reads answer")
        log = agent.output()
        assert most <= 1, f"{most} connections at once with max_connections = 1"
        assert "its previous run is still finishing a step" in log and "its previous run has ended" in log
        assert log.count("sent C_VOL-b001.spf") == 1 and "Traceback" not in log
        assert agent.stop() == 0
    finally:
        fs.stop()


@pytest.mark.parametrize("kind", ["local", "sftp", "s3"])
def test_what_was_staged_for_a_file_that_vanished_is_removed(kind, servers, site, start_agent):
    server = servers.get(kind) if kind != "local" else None
    loc = server.new_location() if server else None
    site.config(target=loc, agent='bandwidth = "10MB/s"', job='mode = "all"')
    big = finished_file(site.source / "C_VOL-b001.spf", 48 * MiB)

    def staged() -> int:
        if server is not None:
            return server.staged_bytes(loc)
        d = site.target / ".offsite" / "staging"
        return sum(p.stat().st_size for p in d.iterdir()) if d.exists() else 0

    agent = start_agent()
    wait_until(lambda: staged() >= 20 * MiB, timeout=60, what="the upload under way")
    agent.kill()
    assert staged() > 0
    big.unlink()  # ImageManager's retention, while the agent was down
    agent = start_agent()
    wait_until(lambda: site.job_status()["state"] == "idle", what="the job to look")
    assert staged() == 0
    if kind == "local":
        assert list((site.target / ".offsite" / "staging").iterdir()) == []  # the .ckpt too
    if kind == "s3":  # and the open multipart upload is aborted, not billed for ever
        assert server.client().list_multipart_uploads(Bucket=loc["bucket"]).get("Uploads", []) == []
    assert agent.stop() == 0


def test_reloads_open_no_more_hash_record_handles(site, start_agent):
    site.config()
    finished_file(site.source / "C_VOL-b001.spf", 100)
    agent = start_agent()
    wait_until(lambda: "sent C_VOL-b001.spf" in agent.output(), what="the copy")

    def handles() -> int:
        fds = os.listdir(f"/proc/{agent.proc.pid}/fd")
        return sum(1 for fd in fds if "hashes.db" in os.readlink(f"/proc/{agent.proc.pid}/fd/{fd}"))

    before = handles()
    for i in range(20):
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda i=i: agent.output().count("reloading the configuration") == i + 1, what=f"reload {i + 1}")
    wait_until(lambda: agent.output().count("reconciled") >= 21, what="every reloaded job to look")
    assert handles() == before <= 3  # hashes.db, its WAL and shared memory: one connection
    assert agent.stop() == 0


def test_queue_drop_and_the_coordinators_lease_never_race(tmp_path):
    """`queue drop` checks "not in flight" and removes in one step under the queue's lock;
    the coordinator's lease of an item dropped meanwhile finds nothing, never a KeyError."""
    state = StateDir(tmp_path / "state")
    state.ensure()
    q = WorkQueue(state.queue_dir)
    items = [q.put("j", "upload", f"C_VOL-b001-i{i:04d}.spi", 1, i) for i in range(600)]
    errors: list[BaseException] = []
    leased, dropped = set(), set()

    def coordinator() -> None:
        try:
            for it in items:
                got = q.lease(it.id)
                if got is not None:
                    leased.add(it.id)
        except BaseException as e:  # noqa: BLE001 - what the test looks for
            errors.append(e)

    def person() -> None:
        try:
            for it in reversed(items):
                try:
                    dropped.add(control.drop(q, state, it.id).id)
                except UsageError:
                    pass  # in flight already: refused, as it should be
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=coordinator), threading.Thread(target=person)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.close()
    assert errors == []
    assert leased.isdisjoint(dropped) and leased | dropped == {it.id for it in items}
    recorded = set(state.read_json("dropped.json", {}).get("j", {}))
    assert recorded == {it.path for it in items if it.id in dropped}


def test_a_kill_right_after_a_mirrored_deletion_keeps_its_count(site):
    """max_deletes counts a deletion before it is made: a kill between the deletion and its
    record cannot let more than max_deletes go."""
    site.config(job="include_intra_daily = true\nmax_deletes = 2")
    names = [f"C_VOL-b001-i{i:03d}" for i in range(1, 4)] + ["C_VOL-b001-i003-cd"]
    for n in names:
        finished_file(site.source / (n + ".spi"), 50)
        finished_file(site.source / (n + ".md5"), 40)
    assert site.offsite("sync", "job1").returncode == 0
    for n in names[:2]:  # two: within max_deletes
        for ext in (".spi", ".md5"):
            (site.source / (n + ext)).unlink()
    r = site.offsite("sync", "job1", env={"OFFSITE_CRASH": "deleted:1"})
    assert r.returncode == 137, r.stderr  # killed right after its first deletion
    for ext in (".spi", ".md5"):  # a third, later: past max_deletes within 24 hours
        (site.source / (names[2] + ext)).unlink()
    site.offsite("sync", "job1")
    r = site.offsite("sync", "job1")
    gone = [n for n in names[:3] if not (site.target / f"{n}.spi").exists()]
    assert len(gone) <= 2, gone  # max_deletes = 2, kill or not
    assert "image deletions within 24 hours exceed max_deletes = 2" in r.stderr, r.stderr
