"""max_connections across jobs, and a failing job beside healthy ones."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
from conftest import toml_table, wait_until
from servers import free_port

MiB = 1024 * 1024


def test_connections_are_capped_and_a_failing_job_delays_no_other(servers, site, start_agent):
    sftp = servers.get("sftp")
    locs = {f"good{i}": sftp.new_location() for i in range(3)}
    locs["bad"] = sftp.new_location() | {"port": free_port()}  # nothing listens there


    extra = "".join(toml_table(n, o) for n, o in locs.items())
    extra += "".join(f"[[jobs]]\nname = '{n}'\nsource = '{site.source}'\nlocation = '{n}'\nmode = 'all'\n"
                     f"bandwidth = '10MB/s'\n" for n in locs)
    site.config(agent="max_connections = 2", extra=extra)
    # site.config always adds job1 (local); it shares the cap too
    big = site.source / "C_VOL-b001.spf"
    big.write_bytes(os.urandom(20 * MiB))
    os.utime(big, (time.time() - 60, time.time() - 60))
    agent = start_agent()
    peak, done = [0], threading.Event()

    def sample():
        proc = psutil.Process(agent.proc.pid)
        while not done.is_set():
            try:
                n = sum(1 for c in proc.net_connections(kind="tcp")
                        if c.raddr and c.raddr.port == sftp.port and c.status == psutil.CONN_ESTABLISHED)
            except psutil.Error:
                break
            peak[0] = max(peak[0], n)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for name in ("good0", "good1", "good2"):
            target = Path(locs[name]["path"]) / name / "C_VOL-b001.spf"
            wait_until(target.exists, timeout=60, what=f"{name} to finish beside the failing job")
    finally:
        done.set()
        sampler.join()
    assert 1 <= peak[0] <= 2, peak[0]
    bad = {j["name"]: j for j in site.status()["jobs"]}["bad"]
    assert bad["state"] == "paused" and "was refused" in bad["error"]
    assert agent.stop() == 0
