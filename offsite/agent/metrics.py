"""Prometheus metrics at `[agent] metrics`, with the names of SPEC section 6.

A collector reads the agent's latest status (the same one `offsite status` shows) at each
scrape, so the numbers on a dashboard and on a terminal never disagree; prometheus_client
makes them, with its process metrics. One threaded HTTP server answers at the address:
`/metrics` the metrics (prometheus_client's own WSGI app), `/` the status page (page.py), read
only (GET and HEAD), and 404 anything else.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from .. import __version__
from ..alerts import NAMES as ALERTS
from ..errors import ConfigError
from . import page
from .report import epoch

log = logging.getLogger(__name__)
STATES = ("starting", "idle", "syncing", "waiting", "paused", "error")


class Collector:
    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        jobs = s.get("jobs", [])
        up = GaugeMetricFamily("offsite_up", "1 while the agent runs")
        up.add_metric([], 1)
        yield up
        info = GaugeMetricFamily("offsite_build_info", "the agent's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        state = GaugeMetricFamily("offsite_job_state", "1 for the job's current state", labels=["job", "state"])
        for j in jobs:
            for st in STATES:
                state.add_metric([j["name"], st], 1 if j["state"] == st else 0)
        yield state
        for name, key, doc in (
            ("offsite_files_sent", "files_sent", "files published on the target since the agent started"),
            ("offsite_bytes_sent", "bytes_sent", "bytes of the files published since the agent started"),
            ("offsite_files_deleted", "files_deleted", "files deleted on the target since the agent started"),
            ("offsite_transfer_failures", "transfer_failures", "failed transfers since the agent started"),
            ("offsite_verified_files", "verified_files", "files read back and checked by scheduled verifies"),
            ("offsite_verify_mismatches", "verify_mismatches", "copies scheduled verifies found not as sent"),
        ):
            c = CounterMetricFamily(name, doc, labels=["job"])
            for j in jobs:
                c.add_metric([j["name"]], j.get("counters", {}).get(key, 0))
            yield c
        for name, value, doc in (
            ("offsite_pending_files", lambda j: j["pending_files"], "files waiting to be sent or deleted"),
            ("offsite_pending_bytes", lambda j: j["pending_bytes"], "bytes waiting to be sent"),
            ("offsite_failed_files", lambda j: j["failed_files"], "files that failed and wait for a person"),
            ("offsite_lag_seconds", lambda j: j.get("lag_seconds") or 0, "age of the oldest file not yet offsite"),
            ("offsite_transfer_rate_bytes", lambda j: (j.get("transfer") or {}).get("rate") or 0,
             "bytes per second being sent now"),
            ("offsite_bin_bytes", lambda j: j.get("bin_bytes") or 0,
             "bytes in the bin on the target (.offsite/deleted), kept for keep_deleted"),
        ):
            g = GaugeMetricFamily(name, doc, labels=["job"])
            for j in jobs:
                g.add_metric([j["name"]], value(j))
            yield g
        g = GaugeMetricFamily("offsite_last_success_timestamp_seconds",
                              "when the job's last successful sync ended (absent before the first)", labels=["job"])
        for j in jobs:
            if j.get("last_success_ts") is not None:
                g.add_metric([j["name"]], j["last_success_ts"])
        yield g
        for name, key, doc in (
            ("offsite_inflow_bytes_per_day", "inflow_bytes_per_day",
             "bytes of new backup files a day at the source, over the last 7 days"),
            ("offsite_catch_up_seconds", "catch_up_seconds",
             "time to send what waits at the last 24 hours' outflow (absent while nothing went)"),
        ):
            g = GaugeMetricFamily(name, doc, labels=["job"])
            for j in jobs:
                got = (j.get("backlog") or {}).get(key)
                if got is not None:
                    g.add_metric([j["name"]], got)
            yield g
        g = GaugeMetricFamily("offsite_restorable_timestamp_seconds",
                              "when the newest point restorable from the offsite copy alone was taken, per volume "
                              "or backup definition (absent while none is)", labels=["job", "chain"])
        for j in jobs:
            for r in j.get("restorable") or []:
                if r.get("time"):
                    g.add_metric([j["name"], r["chain"]], epoch(r["time"]) or 0)
        yield g
        a = GaugeMetricFamily("offsite_alert_active", "1 while the alert holds", labels=["job", "alert"])
        for j in jobs:
            active = {x["name"] for x in j.get("alerts", [])}
            for name in ALERTS:
                a.add_metric([j["name"], name], 1 if name in active else 0)
        for x in s.get("agent_alerts", []):
            a.add_metric(["", x["name"]], 1)
        yield a
        rows = GaugeMetricFamily("offsite_queue_rows", "rows in the queue database, acknowledged ones included")
        rows.add_metric([], s.get("queue_rows", 0))
        yield rows
        size = GaugeMetricFamily("offsite_state_bytes", "size of the state directory")
        size.add_metric([], s.get("state_bytes", 0))
        yield size


def serve(address: str, snapshot: Callable[[], dict]):
    """Serve the metrics at "host:port"; returns the server (shutdown() stops it)."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(Collector(snapshot))  # type: ignore[arg-type]
    host = host.strip("[]")
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
        server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
        server: ThreadingWSGIServer = make_server(str(sockaddr[0]), int(port), app(registry, snapshot),
                                                  server_class, Quiet)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics at {address} ({e.strerror or e})") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics served at http://%s/metrics, the status page at http://%s/", address, address)
    return server


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Requests are not logged."""


def app(registry: CollectorRegistry, snapshot: Callable[[], dict]) -> Callable:
    """The WSGI application: the metrics at /metrics, exactly as prometheus_client serves
    them, the status page at / (and /index.html); read only."""
    metrics = make_wsgi_app(registry)

    def answer(environ: dict, start_response: Callable) -> list[bytes]:
        path, method = environ.get("PATH_INFO") or "/", environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            if method != "HEAD":
                return metrics(environ, start_response)
            seen: list = []
            body = b"".join(metrics({**environ, "REQUEST_METHOD": "GET"}, lambda s, h, *_: seen.extend((s, h))))
            start_response(seen[0], seen[1] + [("Content-Length", str(len(body)))])
            return [b""]
        if path not in ("/", "/index.html"):
            status, headers, body = "404 Not Found", [("Content-Type", "text/plain; charset=utf-8")], b"not found\n"
        elif method not in ("GET", "HEAD"):
            status, headers = "405 Method Not Allowed", [("Content-Type", "text/plain; charset=utf-8"),
                                                          ("Allow", "GET, HEAD")]
            body = b"the status page is read only: GET or HEAD\n"
        else:
            try:
                status, headers, body = "200 OK", list(page.HEADERS), page.render(snapshot()).encode()
            except Exception:  # a bug in the page must not stop the agent, nor the metrics
                log.exception("unexpected error while rendering the status page")
                status, headers = "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")]
                body = b"the status page failed: see the agent's log\n"
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return [b"" if method == "HEAD" else body]

    return answer
