"""The agent's lookout: which alerts hold, what to send about them, and the heartbeat.

Called by the agent's main loop with the jobs' latest status; the rules are in alerts.py,
the delivery in notify.py. The book of alerts in force is kept in the state directory
(alerts.json), so a restart neither repeats an alert nor forgets one.
"""
from __future__ import annotations

import datetime as dt
import logging
import socket
import time

from .. import alerts
from ..alerts import Book, Event, Facts
from ..config import Config
from ..notify import Notifier
from ..state import StateDir
from ..units import format_duration
from .report import limits_of

log = logging.getLogger(__name__)
UNHEALTHY = ("job-error", "owner-mismatch")  # a job with one of these is not healthy


class Watch:
    def __init__(self, config: Config, state: StateDir, restarted: bool) -> None:
        self.config, self.state = config, state
        self.host = socket.gethostname()
        self.restarted = restarted  # the previous run ended without a clean stop
        self._restart_told = False
        saved = state.read_json("alerts.json", {})
        self.book = Book.of(saved)
        n = config.notify
        self.notifier = Notifier(n) if (n.urls or n.heartbeat_url is not None) else None
        self._synced: dict[str, str | None] = {}  # job -> finished time of the last sync seen
        self._summary_day: str | None = saved.get("summary_sent") if isinstance(saved, dict) else None

    def reconfigure(self, config: Config) -> None:
        if config.notify != self.config.notify:
            self.stop()
            n = config.notify
            self.notifier = Notifier(n) if (n.urls or n.heartbeat_url is not None) else None
        self.config = config

    def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()

    def delivering(self) -> bool:
        """Is a message or ping still on its way (a destination that has not answered)?"""
        return self.notifier is not None and self.notifier.delivering()

    # ---------------------------------------------------------------- each second
    def tick(self, jobs: list[dict], facts: dict[str, Facts], now: dt.datetime) -> None:
        held: dict[tuple[str, str], str] = {}
        judged = {""}
        by_name = {j.name: j for j in self.config.jobs}
        for st in jobs:
            name = st["name"]
            job = by_name.get(name)
            if job is None or st["state"] == "starting":
                continue  # not looked at yet: its alerts stay as they were
            judged.add(name)
            f = facts[name]
            for alert, message in alerts.conditions(name, f, limits_of(job, self.config.agent.retry_for),
                                                    now).items():
                held[(name, alert)] = message
        for key in list(self.book.active):  # jobs no longer configured: their alerts clear
            job_name = key.split("/", 1)[0]
            if job_name and job_name not in by_name:
                judged.add(job_name)
        if self.restarted:
            if self._restart_told and all(st["state"] != "starting" for st in jobs):
                self.restarted = False  # said, and every job looked at its source and target again
            else:
                self._restart_told = True
                held[("", "agent-restarted")] = (
                    "the previous run of the agent ended without a clean stop (a crash, a kill or a power "
                    "loss). It is going on from its queue; nothing needs doing unless this repeats.")
        events = self.book.update(held, judged, now, self.config.notify.repeat)
        if events:
            self._save()
        for e in events:
            self._tell(e)
        self._heartbeat(jobs)
        self._summary(jobs, now)

    def _tell(self, e: Event) -> None:
        subject, body = alerts.subject(e, self.host), alerts.body(e, self.host)
        (log.info if e.kind == "clear" else log.warning)("%s: %s", subject, body)
        if self.notifier is not None:
            self.notifier.send(subject, body)
            if e.name in UNHEALTHY and e.kind == "start":
                self.notifier.heartbeat(fail=f"{e.job}: {e.name}: {e.message}"[:400])
            elif e.name in UNHEALTHY and e.kind == "clear" and self._healthy():
                self.notifier.heartbeat()

    def _healthy(self) -> bool:
        return not any(k.split("/", 1)[1] in UNHEALTHY for k in self.book.active)

    def _heartbeat(self, jobs: list[dict]) -> None:
        n = self.notifier
        if n is None or self.config.notify.heartbeat_url is None:
            return
        synced_ok = False
        for st in jobs:
            last = st.get("last_sync") or {}
            seen = self._synced.get(st["name"], "unset")
            if last.get("finished") != seen:
                self._synced[st["name"]] = last.get("finished")
                synced_ok |= seen != "unset" and bool(last.get("ok"))
        if not self._healthy():
            return
        due = n.last_ping is None or time.monotonic() - n.last_ping >= self.config.notify.heartbeat_every
        if synced_ok or due:
            n.heartbeat()

    def _summary(self, jobs: list[dict], now: dt.datetime) -> None:
        n = self.config.notify
        if n.summary != "daily" or self.notifier is None:
            return
        day = now.date().isoformat()
        hh, mm = (int(x) for x in n.summary_at.split(":"))
        if self._summary_day == day or (now.hour, now.minute) < (hh, mm):
            return
        self._summary_day = day
        self._save()
        lines = [f"offsite on {self.host}, {now.strftime('%Y-%m-%d %H:%M')}:"]
        for st in jobs:
            last = st.get("last_sync") or {}
            lines.append(f"- job {st['name']}: {st['state']}, lag {format_duration(st['lag_seconds'])}, "
                         f"{st['pending_files']} file(s) pending, last sync "
                         f"{'ok' if last.get('ok') else 'failed' if last else 'none yet'}"
                         f"{' at ' + last['finished'] if last.get('finished') else ''}")
        active = sorted(self.book.active)
        lines.append("Active alerts: " + (", ".join(active) if active else "none"))
        self.notifier.send(f"[offsite {self.host}] daily summary", "\n".join(lines))

    def _save(self) -> None:
        data = self.book.to_json()
        data["summary_sent"] = self._summary_day
        self.state.write_json("alerts.json", data)

    # ---------------------------------------------------------------- for status
    def of_job(self, job: str) -> list[dict]:
        return self.book.of_job(job)

    def of_agent(self) -> list[dict]:
        return self.book.of_job("")
