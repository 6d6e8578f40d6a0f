"""Prometheus metrics, scraped from a running agent during a sync, and the shipped rules."""
from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

from conftest import finished_file, wait_until
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
SPEC_NAMES = {  # SPEC section 6, as exposed (counters with _total)
    "offsite_up", "offsite_build_info", "offsite_job_state", "offsite_files_sent_total",
    "offsite_bytes_sent_total", "offsite_files_deleted_total", "offsite_transfer_failures_total",
    "offsite_pending_files", "offsite_pending_bytes", "offsite_failed_files", "offsite_lag_seconds",
    "offsite_last_success_timestamp_seconds", "offsite_alert_active", "offsite_transfer_rate_bytes",
    "offsite_queue_rows", "offsite_state_bytes",
    "offsite_verified_files_total", "offsite_verify_mismatches_total",  # issue 11's verify
}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m[(name, tuple(sorted(labels.items())))]


def test_a_scrape_during_a_sync_has_every_spec_name_and_the_numbers_move(site, start_agent):
    port = free_port()
    site.config(agent=f'metrics = "127.0.0.1:{port}"\nbandwidth = "1MB/s"', job='max_lag = "2s"')
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    agent = start_agent()
    wait_until(lambda: site.target_files(), what="the first file")
    before = wait_until(lambda: (m := scrape(port)) and ("offsite_last_success_timestamp_seconds",
                                                         (("job", "job1"),)) in m and m, what="a first success")
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 3 * MiB)
    finished_file(site.source / "C_VOL-b001-i002-cd.spi", 3 * MiB)
    during = wait_until(lambda: (m := scrape(port)) and value(m, "offsite_transfer_rate_bytes", job="job1") > 0
                        and value(m, "offsite_lag_seconds", job="job1") > 2 and m, what="a scrape mid-transfer")
    names = {name for name, _ in during}
    assert SPEC_NAMES <= names, SPEC_NAMES - names
    assert "process_resident_memory_bytes" in names  # the client library's process metrics
    assert value(during, "offsite_up") == 1
    assert value(during, "offsite_job_state", job="job1", state="syncing") == 1
    assert value(during, "offsite_job_state", job="job1", state="idle") == 0
    assert value(during, "offsite_pending_files", job="job1") >= 1
    assert value(during, "offsite_pending_bytes", job="job1") >= 3 * MiB
    # One scrape's numbers come from one status, whose alerts were judged from its own lag: the
    # lag is past max_lag (2 s), so the lag alert holds in this very scrape.
    lag = value(during, "offsite_lag_seconds", job="job1")
    assert value(during, "offsite_alert_active", job="job1", alert="lag") == 1, f"no lag alert at a lag of {lag}s"
    wait_until(lambda: len(site.target_files()) == 3, timeout=60, what="the files sent")
    after = wait_until(lambda: (m := scrape(port)) and value(m, "offsite_pending_files", job="job1") == 0
                       and value(m, "offsite_files_sent_total", job="job1") == 3 and m, what="the numbers after")
    assert value(after, "offsite_bytes_sent_total", job="job1") - value(before, "offsite_bytes_sent_total",
                                                                         job="job1") == 6 * MiB
    assert value(after, "offsite_lag_seconds", job="job1") == 0
    assert value(after, "offsite_alert_active", job="job1", alert="lag") == 0  # nothing behind: cleared
    log = agent.output()
    assert "ALERT lag on job job1" in log and "CLEARED lag on job job1" in log  # and said so
    assert value(after, "offsite_transfer_rate_bytes", job="job1") == 0
    assert value(after, "offsite_last_success_timestamp_seconds", job="job1") >= \
        value(before, "offsite_last_success_timestamp_seconds", job="job1")
    assert agent.stop() == 0


def test_a_metrics_address_in_use_is_one_clear_line(site):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        site.config(agent=f'metrics = "127.0.0.1:{s.getsockname()[1]}"')
        r = site.offsite("run", timeout=30)
    assert r.returncode == 2 and "cannot serve metrics at 127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_shipped_alerting_rules_pass_promtool():
    assert shutil.which("promtool"), "promtool is missing: tests/run installs Debian's prometheus for it"
    r = subprocess.run(["promtool", "check", "rules", str(ROOT / "packaging/prometheus/offsite-rules.yml")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_the_grafana_dashboard_uses_only_metrics_the_agent_serves():
    import json
    import re

    dash = json.loads((ROOT / "packaging/grafana/offsite-fleet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(offsite_[a-z_]+)", e)}
    assert used and used <= SPEC_NAMES, used - SPEC_NAMES
