"""`offsite status` with no agent running says what the agent said: one status builder, and
what only a job's runner knows (held deletions, the owner ID's state, a permanent error, the
bin's size) left in the state directory when it changes (known.json). Each case is made by the
real `offsite` command: a standalone sync or an agent that is then stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import finished_file, wait_until


def status(site) -> tuple[int, dict]:
    r = site.offsite("status", "--json")
    return r.returncode, json.loads(r.stdout)["jobs"][0]


def test_held_deletions_are_an_error_with_or_without_the_agent(site, start_agent):
    site.config(job="max_deletes = 3\ninclude_intra_daily = true")
    intras = [f"C_VOL-b001-i{i:03d}" for i in range(1, 11)]
    finished_file(site.source / "C_VOL-b001.spf", 100)
    for d in intras + ["C_VOL-b001-i010-cd"]:
        finished_file(site.source / f"{d}.spi", 100)
        finished_file(site.source / f"{d}.md5", 40)
    assert site.offsite("sync", "job1").returncode == 0
    for d in intras[:6]:  # consolidated: deletions ImageManager explains, more than max_deletes
        (site.source / f"{d}.spi").unlink()
        (site.source / f"{d}.md5").unlink()
    r = site.offsite("sync", "job1")
    assert "held: 6 image deletions within 24 hours exceed max_deletes = 3" in r.stderr, r.stderr
    code, st = status(site)
    assert (code, st["state"], st["held_deletes"]) == (1, "error", 12), st  # 6 images, their sidecars
    assert st["held_reason"] == "6 image deletions within 24 hours exceed max_deletes = 3"
    assert [a["name"] for a in st["alerts"]] == ["deletes-held"]

    agent = start_agent()  # the agent agrees, and leaves the same when it stops
    wait_until(lambda: site.job_status()["held_reason"], what="the agent to hold them too")
    running = site.job_status()
    assert agent.stop() == 0
    code, st = status(site)
    assert code == 1 and {k: st[k] for k in ("state", "held_deletes", "held_reason")} == \
        {k: running[k] for k in ("state", "held_deletes", "held_reason")}

    assert site.offsite("sync", "job1", "--allow-deletes").returncode == 0
    code, st = status(site)
    assert (code, st["state"], st["held_deletes"], st["held_reason"]) == (0, "idle", 0, None), st
    assert st["bin_files"] == 12 and st["bin_bytes"] == 6 * 140  # the bin's size, as the agent shows it


def test_an_owner_mismatch_shows_without_the_agent_until_reinit(site):
    site.config()
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    assert site.offsite("sync", "job1").returncode == 0
    (site.target / ".offsite" / "owner").write_text("someone-else:0123456789\n")
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 1000)
    r = site.offsite("sync", "job1")
    assert r.returncode == 1 and "owned by another job" in r.stderr
    code, st = status(site)
    assert (code, st["state"], st["owner"]) == (1, "error", "mismatch"), st
    assert "offsite reinit job1" in st["error"]
    assert "owner-mismatch" in [a["name"] for a in st["alerts"]]
    assert site.offsite("reinit", "job1").returncode == 0
    code, st = status(site)
    assert (st["owner"], st["error"]) == ("ok", None), st
    assert site.offsite("sync", "job1").returncode == 0
    code, st = status(site)
    assert (code, st["state"]) == (0, "idle") and "C_VOL-b001-i001-cd.spi" in site.target_files()


def test_a_file_changed_at_the_source_is_counted_without_the_agent(site):
    site.config()
    image = finished_file(site.source / "C_VOL-b001.spf", 1000)
    assert site.offsite("sync", "job1").returncode == 0
    finished_file(image, data=b"e" * 1500)  # encrypted in place
    assert site.offsite("sync", "job1").returncode == 1
    code, st = status(site)
    assert (code, st["changed_files"], st["failed_files"]) == (1, 1, 1), st
    assert "source-changed" in [a["name"] for a in st["alerts"]]
    assert (site.target / "C_VOL-b001.spf").read_bytes() == b"x" * 1000 or \
        (site.target / "C_VOL-b001.spf").stat().st_size == 1000  # the copy offsite kept


def test_an_interrupted_standalone_sync_says_so(site):
    site.config(agent='bandwidth = "1MB/s"')
    finished_file(site.source / "C_VOL-b001.spf", 8 * 1024 * 1024)
    proc = subprocess.Popen([sys.executable, "-m", "offsite", "-c", str(site.cfg), "sync", "job1"],
                            stderr=subprocess.PIPE, text=True)
    staging = site.target / ".offsite" / "staging"
    wait_until(lambda: staging.exists() and any(p.stat().st_size > 0 for p in staging.glob("*.part")),
               what="the upload under way")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted; the transfer resumes at the next sync" in err, err
    _, st = status(site)
    assert st["last_sync"]["errors"] == ["the sync was interrupted with 1 file(s) still to do"], st["last_sync"]
    assert "agent" not in " ".join(st["last_sync"]["errors"])
    assert os.path.exists(site.source / "C_VOL-b001.spf")
