"""Telling the operator, end to end: alerts by email (a real SMTP server, aiosmtpd, through an
Apprise mailto:// URL) and JSON webhook (a real HTTP server), the heartbeat, `notify test`,
and secrets that never show. Each alert is raised by a real condition of a running agent."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import finished_file, wait_until
from receivers import HTTPReceiver, SMTPReceiver

MiB = 1024 * 1024
TOKEN = "hook-T0ken-5ecret"


@pytest.fixture
def smtp():
    s = SMTPReceiver()
    yield s
    s.stop()


@pytest.fixture
def http():
    h = HTTPReceiver()
    yield h
    h.stop()


def notify_toml(smtp: SMTPReceiver | None, http: HTTPReceiver, heartbeat: bool = True, extra: str = "",
                hook_query: str = "") -> str:
    urls = [http.url(f"/hook/{TOKEN}", scheme="json") + hook_query]
    if smtp is not None:
        urls.insert(0, smtp.url())
    lines = ["[notify]", "urls = [" + ", ".join(f"'{u}'" for u in urls) + "]"]
    if heartbeat:
        lines += [f"heartbeat_url = '{http.url('/ping/' + TOKEN)}'", 'heartbeat_every = "10s"']
    return "\n".join(lines + [extra]) + "\n"


def alerts_sent(smtp: SMTPReceiver | None, http: HTTPReceiver, name: str) -> tuple[list[str], list[str]]:
    """The kinds (ALERT, STILL, CLEARED) of the messages about `name`, by mail and by webhook."""
    def kind(title: str) -> str | None:
        parts = title.split()
        return parts[2] if len(parts) > 3 and parts[3] == name else None

    mails = [k for m in (smtp.mails if smtp else []) if (k := kind(m.subject))]
    hooks = [k for h in http.of("/hook/") if (k := kind(h.json()["title"]))]
    return mails, hooks


def no_secret_anywhere(site, *outputs: str, secrets: tuple[str, ...]) -> None:
    texts = list(outputs) + [site.offsite("status").stdout, site.offsite("status", "--json").stdout]
    for p in site.state.rglob("*"):
        if p.is_file() and p.suffix != ".db":
            texts.append(p.read_text(errors="replace"))
    for text in texts:
        for s in secrets:
            assert s not in text


def judged_twice_more(site) -> None:
    """Wait until the agent has written its status twice more: it judges the alerts (and the
    daily summary) right before each write, so the second was judged after this call."""
    status = site.state / "status.json"
    seen = [status.stat().st_mtime_ns]

    def written() -> bool:
        now = status.stat().st_mtime_ns
        if now != seen[-1]:
            seen.append(now)
        return len(seen) >= 3

    wait_until(written, what="the agent to judge its alerts twice more")


def test_a_job_in_error_is_mailed_and_posted_once_and_cleared_once_with_the_heartbeat(site, start_agent, smtp, http,
                                                                                       servers):
    server = servers.get("sftp")
    loc = server.new_location()
    # rescan 2s: once retries for retry_for gave up, the next round of them starts soon.
    site.config(target=loc, agent='retry_for = "5s"\nrescan = "2s"', extra=notify_toml(smtp, http))
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    agent = start_agent()
    wait_until(lambda: "C_VOL-b001.spf" in server.files(loc, "job1"), what="the first file")
    wait_until(lambda: http.of("/ping/"), what="the heartbeat after a successful sync")
    assert http.of("/ping/")[0].method == "GET"
    server.stop()
    try:
        finished_file(site.source / "C_VOL-b001-i001-cd.spi", 1000)
        wait_until(lambda: alerts_sent(smtp, http, "job-error") == (["ALERT"], ["ALERT"]), timeout=60,
                   what="the job-error alert by mail and webhook")
        fail = wait_until(lambda: [h for h in http.of("/ping/") if h.path.endswith("/fail")], what="/fail ping")
        assert fail[0].method == "POST" and b"job1" in fail[0].body
        st = site.job_status()
        assert [a["name"] for a in st["alerts"]] == ["job-error"] and "was refused" in st["alerts"][0]["message"]
        # Still failing: nothing more is sent (repeat is 24h). The alert started at the end of
        # the first round of retries; wait for a second round to give up (a whole retry_for
        # of failures after the alert) and for the alerts to be judged after it.
        wait_until(lambda: agent.output().count("did not help") >= 2, timeout=60,
                   what="a second round of retries to give up")
        judged_twice_more(site)
        book = json.loads((site.state / "alerts.json").read_text())
        events = [e["kind"] for e in book["history"] if (e["job"], e["alert"]) == ("job1", "job-error")]
        assert events == ["start"]  # not cleared and started again in between
        assert alerts_sent(smtp, http, "job-error") == (["ALERT"], ["ALERT"])
    finally:
        server.restart()
    wait_until(lambda: "C_VOL-b001-i001-cd.spi" in server.files(loc, "job1"), timeout=60, what="the catch-up")
    wait_until(lambda: alerts_sent(smtp, http, "job-error") == (["ALERT", "CLEARED"], ["ALERT", "CLEARED"]),
               what="the clear message")
    fails = len([h for h in http.of("/ping/") if h.path.endswith("/fail")])
    last = http.of("/ping/")[-1]
    assert last.method == "GET" and not last.path.endswith("/fail")  # healthy again
    mail = next(m for m in smtp.mails if "ALERT job-error" in m.subject)
    assert mail.to == ["ops@example.net"] and "job job1 on" in mail.body and "retrying" in mail.body
    hook = next(h.json() for h in http.of("/hook/") if "ALERT job-error" in h.json()["title"])
    assert "job1" in hook["message"]
    assert site.job_status()["alerts"] == []
    assert agent.stop() == 0
    assert fails == 1
    no_secret_anywhere(site, agent.output(), secrets=(smtp.password, TOKEN))


def test_notify_test_reaches_every_destination_and_says_which_failed(site, smtp, http):
    site.config(extra=notify_toml(smtp, http))
    r = site.offsite("notify", "test")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines == [f"mailto://127.0.0.1:{smtp.port}/...: ok", f"json://127.0.0.1:{http.port}/...: ok",
                     f"heartbeat http://127.0.0.1:{http.port}/...: ok"]
    assert [m.subject for m in smtp.mails] == [f"[offsite {os.uname().nodename}] test message"]
    assert len(http.of("/hook/")) == 1 and len(http.of("/ping/")) == 1
    smtp.stop()  # refused from now on
    r = site.offsite("notify", "test")
    assert r.returncode == 1 and f"mailto://127.0.0.1:{smtp.port}/...: FAILED" in r.stdout
    no_secret_anywhere(site, r.stdout, r.stderr, secrets=(smtp.password, TOKEN))


def test_lag_and_queue_alerts_follow_a_throttled_sync(site, start_agent, http):
    site.config(agent='bandwidth = "200KB/s"', job='max_lag = "4s"\nmax_pending_files = 1',
                extra=notify_toml(None, http, heartbeat=False))
    finished_file(site.source / "C_VOL-b001.spf", 2 * MiB)
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 1 * MiB)
    agent = start_agent()
    wait_until(lambda: alerts_sent(None, http, "queue")[1] == ["ALERT"], what="the queue alert")
    wait_until(lambda: alerts_sent(None, http, "lag")[1] == ["ALERT"], what="the lag alert")
    st = site.job_status()
    assert st["lag_seconds"] > 4 and {a["name"] for a in st["alerts"]} >= {"lag"}
    wait_until(lambda: len(site.target_files()) == 2, timeout=60, what="the files sent")
    wait_until(lambda: alerts_sent(None, http, "lag")[1] == ["ALERT", "CLEARED"], what="lag to clear")
    wait_until(lambda: alerts_sent(None, http, "queue")[1] == ["ALERT", "CLEARED"], what="queue to clear")
    assert site.job_status()["lag_seconds"] == 0
    assert agent.stop() == 0


def test_a_source_with_no_new_backup_raises_source_inactive_until_one_lands(site, start_agent, http):
    site.config(job='inactive_after = "30s"', extra=notify_toml(None, http, heartbeat=False))
    finished_file(site.source / "C_VOL-b001.spf", 1000, age=120)
    agent = start_agent()
    wait_until(lambda: alerts_sent(None, http, "source-inactive")[1] == ["ALERT"], what="source-inactive")
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 1000, age=0)
    wait_until(lambda: alerts_sent(None, http, "source-inactive")[1] == ["ALERT", "CLEARED"], what="the clear")
    assert agent.stop() == 0


@pytest.fixture
def small_disk(site):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(site.location)], check=True)
    yield site.location
    subprocess.run(["umount", "-l", str(site.location)], check=False)


def test_a_target_running_out_of_space_raises_target_space(site, start_agent, http, small_disk):
    site.config(agent='rescan = "2s"', job='min_free = "10MB"', extra=notify_toml(None, http, heartbeat=False))
    finished_file(site.source / "C_VOL-b001.spf", 12 * MiB)
    agent = start_agent()
    wait_until(lambda: alerts_sent(None, http, "target-space")[1] == ["ALERT"], what="target-space")
    st = site.job_status()
    assert st["target_free_bytes"] < 10_000_000
    subprocess.run(["mount", "-o", "remount,size=64m", str(site.location)], check=True)
    wait_until(lambda: alerts_sent(None, http, "target-space")[1] == ["ALERT", "CLEARED"], what="the clear")
    assert agent.stop() == 0


def test_a_mass_deletion_raises_deletes_held_until_allowed(site, start_agent, http):
    site.config(job="max_deletes = 2", extra=notify_toml(None, http, heartbeat=False))
    names = ["C_VOL-b001.spf", "C_VOL-b001-i001-cd.spi", "C_VOL-b001-i002-cd.spi", "C_VOL-b001-i003-cd.spi"]
    for n in names:
        finished_file(site.source / n, 100)
    agent = start_agent()
    wait_until(lambda: len(site.target_files()) == 4, what="the files sent")
    for n in names:
        (site.source / n).unlink()
    wait_until(lambda: alerts_sent(None, http, "deletes-held")[1] == ["ALERT"], what="deletes-held")
    assert alerts_sent(None, http, "job-error")[1] == []  # held deletions are not a job error
    r = site.offsite("sync", "job1", "--allow-deletes")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: alerts_sent(None, http, "deletes-held")[1] == ["ALERT", "CLEARED"], what="the clear")
    assert agent.stop() == 0


def test_an_agent_killed_and_started_again_says_so_once(site, start_agent, http):
    site.config(extra=notify_toml(None, http, heartbeat=False))
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    agent = start_agent()
    wait_until(lambda: site.target_files(), what="the file sent")
    assert agent.stop() == 0
    agent = start_agent()  # after a clean stop: nothing to say
    wait_until(lambda: site.job_status()["state"] == "idle", what="idle")
    agent.kill()
    assert alerts_sent(None, http, "agent-restarted")[1] == []
    agent = start_agent()
    wait_until(lambda: alerts_sent(None, http, "agent-restarted")[1] == ["ALERT", "CLEARED"],
               what="agent-restarted, then its clear once the job looked again")
    msg = next(h.json()["message"] for h in http.of("/hook/") if "ALERT agent-restarted" in h.json()["title"])
    assert "without a clean stop" in msg
    assert agent.stop() == 0


def test_a_destination_that_hangs_delays_nothing(site, start_agent, http):
    http.hang.set()  # takes the request and never answers; Apprise is told to wait 2 minutes for it
    site.config(job='inactive_after = "30s"', extra=notify_toml(None, http, heartbeat=False, hook_query="?rto=120"))
    finished_file(site.source / "C_VOL-b001.spf", 1000, age=120)  # source-inactive at once
    agent = start_agent()
    wait_until(lambda: http.of("/hook/"), what="the alert to reach the hanging destination")
    finished_file(site.source / "C_VOL-b001-i001-cd.spi", 1000, age=5)
    wait_until(lambda: set(site.target_files()) == {"C_VOL-b001.spf", "C_VOL-b001-i001-cd.spi"},
               what="the new file sent")
    # The file went through while the message was still waiting for its answer: the one
    # request is still open (the clear message queued behind it has not been sent).
    assert len(http.of("/hook/")) == 1 and "could not notify" not in agent.output()
    assert agent.stop() == 0  # within the usual 10 s: the stop does not wait for it either
    assert "notification(s) were still waiting to be sent when the agent stopped" in agent.output()


def test_the_config_refuses_bad_notify_keys_in_one_line(site):
    site.config(extra="[notify]\nurls = 'json://x'\n")
    r = site.offsite("check")
    assert r.returncode == 2 and "notify.urls: must be a non-empty list of Apprise URLs" in r.stderr
    site.config(extra="[notify]\nurls_env = 'NO_SUCH_VARIABLE_HERE'\n")
    r = site.offsite("check")
    assert r.returncode == 2 and "environment variable NO_SUCH_VARIABLE_HERE is not set" in r.stderr
    site.config(job='max_lag = "soon"')
    r = site.offsite("check")
    assert r.returncode == 2 and "max_lag" in r.stderr and "Traceback" not in r.stderr


def test_the_daily_summary_is_sent_once_a_day(site, start_agent, http):
    site.config(extra=notify_toml(None, http, heartbeat=False, extra='summary = "daily"\nsummary_at = "00:00"'))
    finished_file(site.source / "C_VOL-b001.spf", 1000)
    agent = start_agent()
    wait_until(lambda: site.target_files(), what="the file sent")
    summary = wait_until(lambda: [h.json() for h in http.of("/hook/") if "daily summary" in h.json()["title"]],
                         what="the summary")
    assert "job job1:" in summary[0]["message"] and "Active alerts: none" in summary[0]["message"]
    assert agent.stop() == 0
    agent = start_agent()  # the same day: not again
    wait_until(lambda: (st := site.status())["agent"]["pid"] == agent.proc.pid and st["jobs"][0]["state"] == "idle",
               what="the new agent idle")
    judged_twice_more(site)  # the summary's time was judged, with the job looked at
    assert agent.stop() == 0
    # Whatever the new agent queued was either delivered (and logged) or still waiting at
    # its stop (and said so): neither.
    assert "daily summary" not in agent.output()
    assert "still waiting to be sent" not in agent.output()
    assert len([h for h in http.of("/hook/") if "daily summary" in h.json()["title"]]) == 1
