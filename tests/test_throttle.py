"""Bandwidth caps, measured: the agent's real transfer rate over 15 seconds."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import wait_until

from offsite.agent.throttle import MAX_CHUNK, MIN_CHUNK, Throttle


def staged_bytes(folder: Path) -> int:
    """Bytes written to staging: one stream's .part, or the blocks of a file several streams
    write (.ranges, a sparse file whose size runs ahead of its data: its allocated bytes)."""
    staging = folder / ".offsite" / "staging"
    if not staging.exists():
        return 0
    files = [*staging.glob("*.part"), *staging.glob("*.ranges")]
    return sum(min(st.st_size, st.st_blocks * 512) for st in (p.stat() for p in files))


@pytest.mark.parametrize("kind", ["local", "sftp"])
@pytest.mark.parametrize("rate", ["2MB/s", "20MB/s"])
def test_the_configured_rate_is_kept_over_15_seconds(kind, rate, servers, site, start_agent):
    bps = float(rate[:-4]) * 1e6
    if kind == "local":
        site.config(agent=f'bandwidth = "{rate}"')
        job_folder = site.target
    else:
        loc = servers.get("sftp").new_location()
        site.config(agent=f'bandwidth = "{rate}"', target=loc)
        job_folder = Path(loc["path"]) / "job1"
    big = site.source / "C_VOL-b001.spf"
    with open(big, "wb") as f:
        f.truncate(int(bps * 22))  # more than the measurement needs
    os.utime(big, (time.time() - 60, time.time() - 60))
    agent = start_agent()
    wait_until(lambda: staged_bytes(job_folder) > 0, what="the transfer to start")
    time.sleep(2)  # past the start
    t0, b0 = time.monotonic(), staged_bytes(job_folder)
    time.sleep(15)
    t1, b1 = time.monotonic(), staged_bytes(job_folder)
    measured = (b1 - b0) / (t1 - t0)
    print(f"{kind} at {rate}: measured {measured / 1e6:.2f} MB/s")
    assert abs(measured - bps) / bps < 0.10, f"{measured / 1e6:.2f} MB/s for {rate}"
    assert agent.stop() == 0


def test_chunks_follow_the_rate():
    assert Throttle(None).chunk() == MAX_CHUNK
    assert Throttle(2e6).chunk() == 200_000  # a tenth of a second's worth
    assert Throttle(125.0).chunk() == MIN_CHUNK  # 1 Kbps: small steps, not a 1 MiB burst
    assert Throttle(1e9).chunk() == MAX_CHUNK


def test_one_throttle_is_shared_by_concurrent_transfers():
    import threading

    t = Throttle(4e6)
    start = time.monotonic()

    def send():
        for _ in range(20):
            t.consume(100_000)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - start
    assert elapsed >= 0.9  # 4 MB at 4 MB/s: about a second, whatever the thread count


def test_a_new_rate_applies_on_sighup_without_a_restart(site, start_agent):
    import signal

    site.config(agent='bandwidth = "2MB/s"')
    big = site.source / "C_VOL-b001.spf"
    with open(big, "wb") as f:
        f.truncate(200 * 1000 * 1000)
    os.utime(big, (time.time() - 60, time.time() - 60))
    agent = start_agent()
    wait_until(lambda: staged_bytes(site.target) > 0, what="the transfer to start")

    def rate(seconds: float) -> float:
        t0, b0 = time.monotonic(), staged_bytes(site.target)
        time.sleep(seconds)
        return (staged_bytes(site.target) - b0) / (time.monotonic() - t0)

    time.sleep(1)
    assert abs(rate(4) - 2e6) / 2e6 < 0.15
    site.config(agent='bandwidth = "20MB/s"')
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloading the configuration" in agent.output(), what="the reload")
    time.sleep(1.5)
    assert abs(rate(4) - 20e6) / 20e6 < 0.15
    assert agent.stop() == 0
