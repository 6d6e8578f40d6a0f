"""Bandwidth caps: the real agent never beats its cap (measured on the target), and the bucket
gives exactly the rate (proven on a simulated clock, so a busy machine cannot fail it)."""
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
def test_the_real_agent_never_sends_faster_than_the_cap(kind, rate, servers, site, start_agent):
    """The cap as the operator sees it, measured on the target over 8 seconds. Only the upper
    bound is asserted: a busy machine can make a copy slower than its cap, never faster. That
    the bucket gives the whole rate (no lost time between chunks) is proven without a clock
    below (test_the_bucket_gives_exactly_the_rate_over_simulated_time)."""
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
        f.truncate(int(bps * 14))  # more than the measurement needs
    os.utime(big, (time.time() - 60, time.time() - 60))
    agent = start_agent()
    wait_until(lambda: staged_bytes(job_folder) > 0, what="the transfer to start")
    time.sleep(1)  # past the start
    t0, b0 = time.monotonic(), staged_bytes(job_folder)
    time.sleep(8)
    t1, b1 = time.monotonic(), staged_bytes(job_folder)
    measured = (b1 - b0) / (t1 - t0)
    print(f"{kind} at {rate}: measured {measured / 1e6:.2f} MB/s")
    assert 0 < measured <= bps * 1.10, f"{measured / 1e6:.2f} MB/s for {rate}"
    assert agent.stop() == 0


class FakeClock:
    """time.monotonic and time.sleep for the throttle module, with no real waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@pytest.mark.parametrize("rate", [125.0, 2e6, 20e6, 400e6])
@pytest.mark.parametrize("write_time", [0.0, 0.3])
def test_the_bucket_gives_exactly_the_rate_over_simulated_time(rate, write_time, monkeypatch):
    """Chunks written one after another through the bucket (each write taking `write_time`
    of the chunk's share of a second) take bytes/rate seconds, give or take the burst:
    the bucket neither loses the time spent writing nor lets more through."""
    import offsite.agent.throttle as throttle_module

    clock = FakeClock()
    monkeypatch.setattr(throttle_module, "time", clock)
    t = Throttle(rate)
    start = clock.now
    sent = 0
    while clock.now - start < 100:
        n = t.chunk()
        clock.now += write_time * n / rate  # the write itself
        t.consume(n)
        sent += n
    elapsed = clock.now - start
    assert sent / elapsed == pytest.approx(rate, rel=0.01)
    assert sent <= rate * (elapsed + t.burst) + t.chunk()


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
    """20MB/s lowered to 2MB/s by a reload: after it, the copy runs at the new cap, which is
    an upper bound a busy machine cannot break (and far below what ran before)."""
    import signal

    site.config(agent='bandwidth = "20MB/s"')
    big = site.source / "C_VOL-b001.spf"
    with open(big, "wb") as f:
        f.truncate(2000 * 1000 * 1000)
    os.utime(big, (time.time() - 60, time.time() - 60))
    agent = start_agent()
    wait_until(lambda: staged_bytes(site.target) > 0, what="the transfer to start")

    def rate(seconds: float) -> float:
        t0, b0 = time.monotonic(), staged_bytes(site.target)
        time.sleep(seconds)
        return (staged_bytes(site.target) - b0) / (time.monotonic() - t0)

    time.sleep(1)
    before = rate(3)
    assert before <= 20e6 * 1.10
    site.config(agent='bandwidth = "2MB/s"')
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloading the configuration" in agent.output(), what="the reload")
    time.sleep(1.5)
    after = rate(4)
    print(f"before the reload {before / 1e6:.2f} MB/s, after {after / 1e6:.2f} MB/s")
    assert 0 < after <= 2e6 * 1.10
    assert before > 3 * after, "the copy ran as slowly before the reload: the first cap was not in force"
    assert agent.stop() == 0
