"""A server that dies mid-upload and comes back, as an administrator sees it: the agent's
log holds clear lines and no library traceback, the transfer goes on soon after the server
is back, and the whole outage is one sync result."""
from __future__ import annotations

import hashlib
import json
import time

import pytest

from conftest import finished_file, wait_until

MiB = 1024 * 1024
IMAGE, SIDECAR = "C_VOL-b001.spf", "C_VOL-b001.md5"


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
    assert last["bytes_on_wire"] >= 17 * MiB


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
    assert last["bytes_on_wire"] >= last["bytes_sent"]  # nothing was resumed from before this pass
