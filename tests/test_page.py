"""The status page at `/` of the metrics address: read in headless Chromium while a sync runs
(with a screenshot kept in test-artefacts/), served next to unchanged metrics, read only."""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import finished_file, wait_until
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from servers import free_port

from offsite.agent import page

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "test-artefacts"


def image(site, name: str, size: int = 3000) -> None:
    """An image and its .md5 sidecar, a minute old, as ShadowProtect writes them."""
    data = os.urandom(size)
    finished_file(site.source / name, data=data)
    digest = hashlib.md5(data).hexdigest()
    finished_file(site.source / (name.rsplit(".", 1)[0] + ".md5"), data=f"{digest} *{name}\r\n".encode())


class Text(HTMLParser):
    """What a person reads on a page: its text, without the style sheet."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("style", "title", "script")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("style", "title", "script")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def text_of(html: str) -> str:
    t = Text()
    t.feed(html)
    return re.sub(r"\s+", " ", " ".join(t.parts))


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: tests/run installs Debian's chromium for this test"
    # As root Chromium needs --no-sandbox; a profile of its own, and nothing fetched but the page.
    return subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--disable-extensions",
                           "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                           *args], capture_output=True, text=True, timeout=90, check=False)


def test_the_status_page_in_headless_chromium_during_a_sync(site, start_agent, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    site.config(agent=f'metrics = "127.0.0.1:{port}"\nbandwidth = "1MB/s"', job='max_lag = "2s"')
    image(site, "C_VOL-b001.spf")
    agent = start_agent()
    wait_until(lambda: (j := site.job_status())["last_sync"] and any(
        r["point"] == "C_VOL-b001.spf" for r in j["restorable"]), what="the base sent and restorable")
    # A daily of 48 MiB at 1 MB/s: the sync runs for about 50 s while Chromium reads the page
    # (a loaded machine starts Chromium slowly); the agent is stopped in the middle of it.
    image(site, "C_VOL-b001-i001-cd.spi", size=48 * MiB)
    wait_until(lambda: (j := site.job_status())["state"] == "syncing" and (j["transfer"] or {}).get("path")
               == "C_VOL-b001-i001-cd.spi" and "lag" in {a["name"] for a in j["alerts"]},
               what="the daily being sent, and the lag alert")

    r = chromium(tmp_path, "--dump-dom", url)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    shot = tmp_path / "status-page.png"
    s = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", url)
    assert s.returncode == 0, s.stderr[-2000:]
    assert site.job_status()["state"] == "syncing", "the sync ended before Chromium read the page"

    text = text_of(dom)
    assert "offsite status" in text and "agent running, pid " in text
    assert "job1 syncing " in text  # the heading: the job and its state
    assert re.search(r" state syncing lag 1m \d\ds pending \d file\(s\), 48\.0 MiB ", text), text
    assert re.search(r"sending C_VOL-b001-i001-cd\.spi : [\d.]+ [KM]iB of 48\.0 MiB \(\d+%\)", text), text
    assert "Restorable from the offsite copy alone" in text
    assert re.search(r"C_VOL C_VOL-b001\.spf of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S*, 1m \d\ds old", text), text
    assert "the newest point at the source waits for C_VOL-b001-i001-cd" in text
    assert "ALERT lag since " in text  # the lag (a minute) is past max_lag (2 s)
    assert re.search(r"last sync: \S+ \S+ to \S+ \S+: ok , 2 sent \(", text), text  # the base and its sidecar
    assert re.search(r"bin (\d+ B in \d+ file\(s\)|not looked at yet)", text), text
    assert f"refreshes every {page.REFRESH} s" in text
    # Read only and self-contained: it reloads itself, and has nothing to run, submit or fetch.
    assert f'<meta http-equiv="refresh" content="{page.REFRESH}">' in dom
    for bad in ("<script", "<form", "<button", "<input", "<iframe", "<link", "<img", " src=", " href=",
                "http://", "https://"):
        assert bad not in dom.lower(), bad

    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert struct.unpack(">II", png[16:24]) == (1280, 900)  # IHDR: the window's size
    ARTEFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTEFACTS / "status-page.png")
    assert agent.stop() == 0


def fetch(url: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of one request, errors included."""
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=b"x=1" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_the_page_beside_the_metrics_read_only(site, start_agent):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    site.config(agent=f'metrics = "127.0.0.1:{port}"')
    agent = start_agent()
    status, headers, body = fetch(base + "/metrics")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4  # as Prometheus always had it
    assert b"\noffsite_up 1.0\n" in body and b'offsite_job_state{job="job1",state=' in body
    # prometheus_client's own negotiation and compression are kept.
    status, headers, body = fetch(base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text;") and body.endswith(b"# EOF\n")
    status, headers, zipped = fetch(base + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and b"offsite_up 1.0" in gzip.decompress(zipped)
    status, headers, body = fetch(base + "/metrics", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert fetch(base + "/metrics", "POST")[0] == 405

    for path in ("/", "/index.html"):
        status, headers, body = fetch(base + path)
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Security-Policy"] == page.CSP and "default-src 'none'" in page.CSP
        assert b"<h2>job1<" in body and b'http-equiv="refresh"' in body
        assert int(headers["Content-Length"]) == len(body)
    status, headers, body = fetch(base + "/", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    status, headers, _ = fetch(base + "/", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert fetch(base + "/", "DELETE")[0] == 405
    assert fetch(base + "/nope")[0] == 404
    assert fetch(base + "/metrics/x")[0] == 404
    assert agent.stop() == 0


JOB = {"name": "job1", "state": "error", "pending_files": 1, "pending_bytes": 2048, "failed_files": 0,
       "lag_seconds": 75, "owner": "ok", "bin_bytes": None, "error": "<script>alert('x')</script> & more",
       "alerts": [{"name": "target-error", "since": "2025-01-02T03:04:05+00:00", "message": "<b>bold</b>"}],
       "restorable": [], "last_sync": None, "transfer": None}
BACKLOG = {"pending_bytes": 3 * 1024**3, "inflow_bytes_per_day": 2 * 1024**3, "outflow_bytes_per_day": 5 * 1024**3,
           "catch_up_seconds": 86400 * 2, "seeding": False, "forecast": "Caught up in about 2 days.",
           "days": [{"date": "2025-01-01", "inflow_bytes": 1024**3, "outflow_bytes": 4 * 1024**3},
                    {"date": "2025-01-02", "inflow_bytes": 3 * 1024**3, "outflow_bytes": 0}]}


def test_every_value_is_escaped():
    html = page.render({"jobs": [JOB]})
    assert "<script" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "ALERT target-error since 2025-01-02 03:04:05+00:00: <b>bold</b>" \
        in text_of(html)


@pytest.mark.parametrize("backlog", [None, BACKLOG], ids=["without", "with"])
def test_the_backlog_shows_when_the_status_has_one(backlog):
    job = JOB | ({"backlog": backlog} if backlog else {})
    text = text_of(page.render({"jobs": [job]}))
    if backlog is None:
        assert "Backlog" not in text
        return
    assert "Backlog Caught up in about 2 days." in text
    assert "pending 3.0 GiB new backups per day 2.0 GiB sent per day 5.0 GiB caught up in 2d 0h" in text
    assert "2025-01-01 1.0 GiB 4.0 GiB" in text and "2025-01-02 3.0 GiB 0 B" in text


def test_the_lock_canary_and_a_point_whose_time_is_unknown_show():
    job = JOB | {"lock": {"checked": "2026-12-02T01:00:00+00:00", "ok": False, "problem": "x allowed y"},
                 "restorable": [{"chain": "C_VOL", "point": "C_VOL-b001.spf", "time": None, "age_seconds": None,
                                 "missing": None, "base_offsite": True}]}
    text = text_of(page.render({"jobs": [job]}))
    assert "object lock DOES NOT HOLD (lock canary of 2026-12-02 01:00:00+00:00)" in text
    assert "C_VOL-b001.spf (its time is not known)" in text
