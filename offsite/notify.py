"""Telling people: messages to Apprise destinations, and the heartbeat.

Each destination has its own thread and queue, so a destination that hangs or refuses
delays nobody: not a transfer, not another destination, not the agent's stop (the threads
are daemons; a message still queued at stop is given up, and said so in the log). A failed
delivery is retried with a growing wait and logged; a destination is only ever named by
`redact(url)` (scheme and host), since Apprise URLs carry passwords and tokens.

The heartbeat is a plain HTTP request, as Healthchecks and Uptime Kuma's push monitors
expect: GET <url> while healthy, POST <url>/fail with a short reason when a job fails.
"""
from __future__ import annotations

import logging
import queue as stdqueue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .config import NotifySettings

log = logging.getLogger(__name__)
RETRY_WAITS = (10.0, 30.0, 60.0, 300.0, 900.0)  # then the message is given up
HEARTBEAT_TIMEOUT = 10.0

# Apprise logs what it sends and why it failed, URLs included: keep it out of our log;
# each delivery is reported by this module instead.
logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)


def redact(url: str) -> str:
    """'json://127.0.0.1:8080/...': enough to tell destinations apart, nothing secret."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unreadable URL"
    return f"{parts.scheme}://{host}{port}/..." if parts.scheme else "an unreadable URL"


def deliver(url: str, title: str, body: str) -> str | None:
    """Send one message through Apprise; None when delivered, else why not (no secrets)."""
    import apprise  # imported on first use: an agent without [notify] never loads it

    asset = apprise.AppriseAsset()
    # In the calling thread (a daemon of ours): Apprise's own thread pool is joined at exit,
    # so a destination that hangs would hold up the agent's stop.
    asset.async_mode = False
    a = apprise.Apprise(asset=asset)
    if not a.add(url):
        return "Apprise does not understand this URL"
    try:
        ok = a.notify(title=title, body=body)
    except Exception as e:  # noqa: BLE001 - a plugin's bug is a failed delivery, not a crash
        return f"delivery failed ({type(e).__name__})"
    return None if ok else "the destination did not accept the message"


def ping(url: str, fail: str | None = None) -> str | None:
    """Ping the heartbeat (or its /fail with `fail` as the reason); None when answered 2xx."""
    target = url.rstrip("/") + "/fail" if fail is not None else url
    data = fail.encode("utf-8")[:500] if fail is not None else None
    req = urllib.request.Request(target, data=data, method="POST" if data is not None else "GET",
                                 headers={"User-Agent": "offsite"})
    try:
        with urllib.request.urlopen(req, timeout=HEARTBEAT_TIMEOUT) as r:
            r.read(1024)
        return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {getattr(reason, 'strerror', None) or 'no answer'}"


@dataclass
class _Message:
    title: str
    body: str
    attempt: int = 0


class _Destination:
    """One URL's thread: messages in order, each retried until it goes or is given up."""

    def __init__(self, url: str, stopping: threading.Event) -> None:
        self.url, self.name, self.stopping = url, redact(url), stopping
        self.q: stdqueue.Queue[_Message] = stdqueue.Queue()
        self.delivering = False
        self.thread = threading.Thread(target=self._loop, name=f"notify {self.name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                m = self.q.get(timeout=0.5)
            except stdqueue.Empty:
                continue
            while not self.stopping.is_set():
                self.delivering = True
                try:
                    why = deliver(self.url, m.title, m.body)
                finally:
                    self.delivering = False
                if why is None:
                    log.info("notified %s: %s", self.name, m.title)
                    break
                if m.attempt >= len(RETRY_WAITS):
                    log.error("could not notify %s (%s); gave up on: %s", self.name, why, m.title)
                    break
                wait = RETRY_WAITS[m.attempt]
                m.attempt += 1
                log.warning("could not notify %s (%s); retrying in %.0fs", self.name, why, wait)
                if self.stopping.wait(wait):
                    break


class Notifier:
    """The agent's messages and heartbeat, off the replication path."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self._dests = [_Destination(u.reveal(), self.stopping) for u in settings.urls]
        self._beats: stdqueue.Queue[str | None] = stdqueue.Queue()
        self._beat_thread: threading.Thread | None = None
        self.last_ping: float | None = None  # monotonic, of the last healthy ping queued
        self._beat_failing = False
        self._pinging = False
        if settings.heartbeat_url is not None:
            self._beat_thread = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)
            self._beat_thread.start()

    def send(self, title: str, body: str) -> None:
        for d in self._dests:
            d.q.put(_Message(title, body))

    def heartbeat(self, fail: str | None = None) -> None:
        """Queue a ping (a failure ping when `fail` is a reason)."""
        if self._beat_thread is None:
            return
        if fail is None:
            self.last_ping = time.monotonic()
        self._beats.put(fail if fail is not None else "")

    def _beat_loop(self) -> None:
        assert self.settings.heartbeat_url is not None
        url = self.settings.heartbeat_url.reveal()
        while not self.stopping.is_set():
            try:
                reason = self._beats.get(timeout=0.5)
            except stdqueue.Empty:
                continue
            self._pinging = True
            try:
                why = ping(url, reason or None)
            finally:
                self._pinging = False
            if why is not None and not self._beat_failing:
                log.warning("the heartbeat %s did not answer (%s)", redact(url), why)
            elif why is None and self._beat_failing:
                log.info("the heartbeat %s answers again", redact(url))
            self._beat_failing = why is not None

    def pending(self) -> int:
        return sum(d.q.qsize() + d.delivering for d in self._dests)

    def delivering(self) -> bool:
        return self._pinging or any(d.delivering for d in self._dests)

    def stop(self) -> None:
        left = self.pending()
        self.stopping.set()
        if left:
            log.warning("%d notification(s) were still waiting to be sent when the agent stopped", left)


def test_all(settings: NotifySettings, host: str) -> list[tuple[str, str | None]]:
    """`offsite notify test`: one message to every destination and a heartbeat ping, now;
    (what, None | why it failed) for each."""
    out: list[tuple[str, str | None]] = []
    title = f"[offsite {host}] test message"
    body = (f"This is a test message from the offsite agent on {host}. If you read it, offsite can "
            f"reach you here.")
    for u in settings.urls:
        out.append((redact(u.reveal()), deliver(u.reveal(), title, body)))
    if settings.heartbeat_url is not None:
        out.append((f"heartbeat {redact(settings.heartbeat_url.reveal())}", ping(settings.heartbeat_url.reveal())))
    return out
