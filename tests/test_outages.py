"""Outages of a real server (SFTP) longer than retry_for (shorter ones: test_recovery.py)."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from conftest import wait_until

MiB = 1024 * 1024


def published(loc) -> set[str]:
    top = Path(loc["path"]) / "job1"
    return {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file() and ".offsite" not in p.parts}


def staged(loc) -> int:
    d = Path(loc["path"]) / "job1" / ".offsite" / "staging"
    return sum(p.stat().st_size for p in d.glob("*.part")) if d.exists() else 0


def test_an_outage_longer_than_retry_for_parks_the_items_until_the_next_chance(servers, site, start_agent):
    server = servers.get("sftp")
    loc = server.new_location()
    site.config(target=loc, agent='retry_for = "6s"\nrescan = "30s"', job='mode = "all"')
    (site.source / "C_VOL-b001.spf").write_bytes(b"x" * 1000)
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in published(loc), what="the first file")
    server.stop()
    try:
        (site.source / "C_VOL-b001-i001-cd.spi").write_bytes(b"y" * 1000)
        def parked():  # retried for retry_for, then set aside until the next rescan
            for i in json.loads(site.offsite("queue", "list", "--json").stdout):
                if i["next_attempt"] and dt.datetime.fromisoformat(i["next_attempt"]) > \
                        dt.datetime.now().astimezone() + dt.timedelta(seconds=15):
                    return i
        item = wait_until(parked, timeout=60, what="the item to be parked")
        assert item["attempts"] >= 2
        assert "127.0.0.1" in item["last_error"]
        r = site.offsite("queue", "list")
        assert "last error:" in r.stdout
        # The pass that gave up is recorded right after the item is parked.
        st = wait_until(lambda: (j := site.job_status())["last_sync"]["ok"] is False and j, timeout=10,
                        what="the failed pass recorded")
        assert st["state"] == "paused" and st["last_sync"]["errors"]
        r = site.offsite("status")
        assert "paused" in r.stdout and "127.0.0.1" in r.stdout
    finally:
        server.restart()
    # Back: the job succeeds at its next chance (the next rescan), with no user action.
    wait_until(lambda: "C_VOL-b001-i001-cd.spi" in published(loc), timeout=60, what="the next chance")
    wait_until(lambda: site.job_status()["last_sync"]["ok"], what="a successful sync")
    assert agent.stop() == 0
