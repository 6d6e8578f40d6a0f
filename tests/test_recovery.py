"""A server that dies mid-upload and comes back, as an administrator sees it: the agent's
log holds clear lines and no library traceback, the transfer goes on soon after the server
is back, the whole outage is one sync result, and it costs the wire what was in flight when
the server died, never the file again from its first byte."""
from __future__ import annotations

import hashlib
import io
import json
import os
import time

import pytest
from conftest import finished_file, opened_target, wait_until

from offsite.agent.throttle import Throttle
from offsite.errors import Interrupted
from offsite.targets import s3, smb
from offsite.targets.sftp import SftpTarget

MiB = 1024 * 1024
IMAGE, SIDECAR = "C_VOL-b001.spf", "C_VOL-b001.md5"
SSH_WINDOW = 2 * MiB  # the channel window OpenSSH's sshd gives (64 packets of 32 KiB)


def resume_overlap(kind: str, rate: float, size: int) -> int:
    """The most that one upload cut off by a dead server can cost on the wire beyond the file
    itself: bytes counted as sent that the server did not keep, so the resume sends them again.
    It is work, not time: what the target keeps in flight, at the write size a throttle at
    `rate` asks for."""
    step = Throttle(rate).chunk()
    if kind == "smb":  # the write requests sent and not yet answered
        return smb.IN_FLIGHT * step
    if kind == "sftp":  # paramiko's write buffer (flushed once past CHUNK), then the channel window
        return SftpTarget.CHUNK + step + SSH_WINDOW
    if kind in ("ftp", "ftps"):  # blocks of the data connection the server had not written yet
        return 4 * step
    if kind.startswith("s3"):  # a part not completed is sent again whole
        return s3.part_size(size)
    raise ValueError(kind)


def published(server, loc) -> dict[str, bytes]:
    return {p: b for p, b in server.files(loc, "job1").items() if not p.startswith(".offsite/")}


def published_soon(server, loc) -> dict[str, bytes]:
    """What is published, while polling a server that was just restarted: SeaweedFS answers
    InternalError for a moment while its volume server registers again; that is no answer."""
    try:
        return published(server, loc)
    except Exception:  # noqa: BLE001 - any error of a server still coming up
        return {}


def agent_log(site) -> str:
    return (site.state / "logs" / "offsite.log").read_text()


def sync_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "job job1: sync " in line]


def a_pair(site, size: int) -> tuple[bytes, bytes]:
    image = finished_file(site.source / IMAGE, size).read_bytes()
    md5 = hashlib.md5(image).hexdigest().encode()
    sidecar = finished_file(site.source / SIDECAR, data=md5 + b" *C_VOL-b001.spf\r\n").read_bytes()
    return image, sidecar


@pytest.mark.parametrize("kind", ["sftp", "smb", "ftp", "ftps", "s3-seaweedfs"])
def test_a_server_killed_mid_upload_leaves_no_traceback_and_one_sync_result(kind, servers, site, start_agent):
    server = servers.get(kind)
    loc = server.new_location()
    site.config(target=loc, agent='bandwidth = "5MB/s"\nretry_for = "10m"', job='mode = "all"')
    image, sidecar = a_pair(site, 40 * MiB)
    agent = start_agent()
    wait_until(lambda: server.staged_bytes(loc) >= 17 * MiB, timeout=60, what="the upload under way")
    server.stop()  # the whole server, its open sessions included
    try:
        wait_until(lambda: "retrying in" in agent_log(site), timeout=30, what="the failure to be noticed")
        time.sleep(3)
    finally:
        server.restart()
    wait_until(lambda: SIDECAR in published_soon(server, loc), timeout=120, what="the upload after the outage")
    files = published(server, loc)
    assert files[IMAGE] == image and files[SIDECAR] == sidecar
    last = wait_until(lambda: (ls := site.job_status()["last_sync"]) and ls, what="the sync's result")
    assert agent.stop() == 0
    out, log = agent.output(), agent_log(site)
    assert "Traceback" not in out and "Traceback" not in log, out[-3000:]
    assert "Exception ignored" not in out
    # One pass of work, one result: the outage's errors belong to it.
    assert len(sync_lines(log)) == 1, sync_lines(log)
    assert last["ok"] and last["errors"], last
    assert last["files_sent"] == 2 and last["sent"] == [IMAGE, SIDECAR]
    assert last["bytes_sent"] == len(image) + len(sidecar)
    # The pass started from zero, so every byte went over the wire at least once; the outage
    # cost at most what was in flight when the server died. An upload that started again from
    # its first byte would cost the 17 MiB or more the server held.
    sent, wire, most = last["bytes_sent"], last["bytes_on_wire"], resume_overlap(kind, 5e6, len(image))
    if kind.startswith("s3"):
        # S3 holds a small file in memory until its PUT at publish and counts it each time it
        # is staged: the sidecar, staged behind the image when the server died, is counted twice.
        most += len(sidecar)
    assert sent <= wire <= sent + most, f"{wire} bytes on the wire for {sent} bytes sent (at most {sent + most})"


def test_a_60_second_outage_the_transfer_goes_on_soon_after_the_server_returns(servers, site, start_agent):
    server = servers.get("sftp")
    loc = server.new_location()
    site.config(target=loc, agent='bandwidth = "5MB/s"\nretry_for = "10m"', job='mode = "all"')
    image, sidecar = a_pair(site, 60_000_000)
    t0 = time.monotonic()
    agent = start_agent()
    wait_until(lambda: server.staged_bytes(loc) >= 20 * MiB, timeout=60, what="the upload under way")
    down = time.monotonic()
    server.stop()
    try:
        time.sleep(10)
        st = site.job_status()
        assert st["state"] == "paused" and st["pending_files"] == 2, st
        items = json.loads(site.offsite("queue", "list", "--json").stdout)
        assert items[0]["last_error"] and items[0]["next_attempt"]
        time.sleep(50)
        at_return = server.staged_bytes(loc)
    finally:
        server.restart()
    back = time.monotonic()
    wait_until(lambda: server.staged_bytes(loc) > at_return or IMAGE in published_soon(server, loc), timeout=90,
               interval=0.2, what="the transfer to go on")
    going = time.monotonic()
    wait_until(lambda: SIDECAR in published_soon(server, loc), timeout=120, what="the pair published")
    done = time.monotonic()
    last = wait_until(lambda: (ls := site.job_status()["last_sync"]) and ls, what="the sync's result")
    assert agent.stop() == 0
    log = agent_log(site)
    print(f"timeline (s after the agent started): server down {down - t0:.1f}, back {back - t0:.1f}, "
          f"transfer going on {going - t0:.1f}, published {done - t0:.1f}")
    print("agent log:\n" + log)
    print("last_sync: " + json.dumps(last))
    # The issue asks for 30 s; the probe (every 5 s) plus a reconnect needs about 6. 15 s
    # leaves room for a loaded machine and fails the old backoff, whose next attempt after
    # a 60 s outage came 17-49 s after the server's return (21 s measured on the old code).
    assert going - back < 15, f"the transfer went on {going - back:.1f}s after the server was back"
    assert published(server, loc)[IMAGE] == image
    assert "Traceback" not in log and "Traceback" not in agent.output()
    assert len(sync_lines(log)) == 1 and last["ok"] and last["files_sent"] == 2
    assert last["bytes_sent"] == 60_000_000 + len(sidecar)
    # Nothing was resumed from before this pass, and the resume after the outage sent again at
    # most what was in flight when the server went (not the 20 MiB or more it held).
    sent, wire, most = last["bytes_sent"], last["bytes_on_wire"], resume_overlap("sftp", 5e6, len(image))
    assert sent <= wire <= sent + most, f"{wire} bytes on the wire for {sent} bytes sent (at most {sent + most})"


@pytest.mark.parametrize("kind", ["smb", "sftp", "ftp"])
def test_an_upload_stopped_and_resumed_reports_each_byte_it_sent(kind, servers, tmp_path):
    """bytes_on_wire is the sum of what uploads report to `progress`. An upload of N bytes
    that a stop request interrupts (as the agent's stop or a window's end does, between two
    writes) and that a new session resumes from what the server holds must report N in all
    where the protocol answers every write before the session ends (SMB, SFTP). SMB counted
    a write only when its answer came, so the writes still in flight when the stop came
    reached the server uncounted, and the resume started after them: 38.6 MiB reported for a
    40 MiB file sent from zero. FTP sends on a data connection the server may still be
    reading when the next session asks for the staged size: at least N, never less."""
    server = servers.get(kind)
    loc = server.new_location()
    data = os.urandom(12 * MiB)
    name, mtime = "C_VOL-b001.spf", 1_700_000_000_000_000_000
    counted: list[int] = []

    def stop_after_5_mib(n: int) -> None:
        counted.append(n)
        if sum(counted) >= 5 * MiB:
            raise Interrupted("the agent is stopping")

    stop_after_5_mib.chunk = 512 * 1024  # type: ignore[attr-defined]  # several writes in flight at once
    t = opened_target(tmp_path, loc)
    try:
        with pytest.raises(Interrupted):
            t.upload(name, io.BytesIO(data), len(data), mtime, stop_after_5_mib)
    finally:
        t.close()
    first = sum(counted)
    assert 5 * MiB <= first < len(data)
    t = opened_target(tmp_path, loc)  # the next attempt: a new session, resuming from the staged bytes
    try:
        t.upload(name, io.BytesIO(data), len(data), mtime, counted.append)
        t.publish(name, len(data), mtime, hashlib.md5(data).hexdigest())
    finally:
        t.close()
    assert server.files(loc, "j")[name] == data
    assert sum(counted) - first < len(data), "the second attempt did not resume: it sent everything again"
    assert sum(counted) >= len(data), f"{sum(counted)} bytes reported on the wire for an upload of {len(data)}"
    if kind != "ftp":
        assert sum(counted) == len(data), f"{sum(counted)} bytes reported on the wire for an upload of {len(data)}"
