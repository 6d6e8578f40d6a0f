"""What the operator is told about a job: the pass of work under way (`SyncStats`), the job's
status (`status`: the one builder, used by the running agent and by `offsite status` when no
agent runs), and the facts the alert rules read (`facts`).

A running job knows more than its state directory does (the phase it is in, the file being
sent, its plan's held deletions); that knowledge comes in as `Live`. Without an agent, `Live`
is made from the state directory alone (`Live.offline`), and the same builder gives the same
fields: what it cannot know is None or zero.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .. import alerts
from ..alerts import Book, Facts, Limits
from ..backlog import Flow, Forecast, forecast
from ..config import Config, Job
from ..errors import OffsiteError
from ..lockproof import last as last_lock
from ..queue import CHANGED, CORRUPT, QueueItem, oldest_upload, read_items, summary
from ..restorable import Point, points_of
from ..state import StateDir
from ..verify import last as last_verify
from ..windows import is_open, next_opening

LISTED = 100  # paths kept in a result's "sent" and "deleted" lists (SPEC section 6)


def iso(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") if t else None


def epoch(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text).timestamp() if text else None


def lag_seconds(oldest_ns: int | None, now: dt.datetime) -> float:
    """How far the offsite copy is behind: the age of the oldest file still to send (its
    modification time), 0 when nothing is."""
    return round(max(0.0, now.timestamp() - oldest_ns / 1e9), 1) if oldest_ns else 0.0


@dataclass
class SyncStats:
    """One pass of work ("Last Synchronization Results"): from the first item drained until
    the job is idle again or gives up. Retries inside the pass belong to it."""

    started: dt.datetime
    errors: list[str] = field(default_factory=list)
    bytes_sent: int = 0  # the sizes of the files published
    bytes_on_wire: int = 0  # what went over the wire, resent bytes included
    files_sent: int = 0
    files_deleted: int = 0
    files_skipped: int = 0
    sent: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    ok: bool = True  # False once the pass ended with work undone or an error unhealed

    def error(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)

    def published(self, path: str, size: int) -> None:
        self.files_sent += 1
        self.bytes_sent += size
        if len(self.sent) < LISTED:
            self.sent.append(path)

    def removed(self, path: str) -> None:
        self.files_deleted += 1
        if len(self.deleted) < LISTED:
            self.deleted.append(path)

    def result(self, finished: dt.datetime) -> dict:
        return {
            "started": iso(self.started), "finished": iso(finished), "ok": self.ok,
            "errors": self.errors, "bytes_sent": self.bytes_sent, "bytes_on_wire": self.bytes_on_wire,
            "files_sent": self.files_sent, "files_deleted": self.files_deleted,
            "files_skipped": self.files_skipped, "sent": self.sent, "deleted": self.deleted,
        }


class Tally:
    """A job's running account, kept by its coordinator: the pass of work under way, the
    counters since the agent started, the bin's size, and the bytes on the wire (for the
    rate status shows)."""

    RATE_OVER = 10.0  # seconds the rate is averaged over

    def __init__(self) -> None:
        self.pass_: SyncStats | None = None
        self.counters = {"files_sent": 0, "bytes_sent": 0, "files_deleted": 0, "transfer_failures": 0,
                         "verified_files": 0, "verify_mismatches": 0}
        self.bin_bytes: int | None = None  # the bin's size on the target, as of the last look
        self.bin_files = 0
        self.wire = 0  # bytes on the wire since the agent started
        self._rate: list[tuple[float, int]] = []  # (monotonic, bytes on the wire so far), recent

    def stats(self, now: dt.datetime) -> SyncStats:
        """The pass of work under way; one starts now if none is."""
        if self.pass_ is None:
            self.pass_ = SyncStats(now)
        return self.pass_

    def on_wire(self, n: int) -> None:
        if self.pass_ is not None:
            self.pass_.bytes_on_wire += n
        self.wire += n

    def published(self, path: str, size: int, now: dt.datetime) -> None:
        self.stats(now).published(path, size)
        self.counters["files_sent"] += 1
        self.counters["bytes_sent"] += size

    def removed(self, path: str, size: int, binned: bool, now: dt.datetime) -> None:
        self.stats(now).removed(path)
        self.counters["files_deleted"] += 1
        if binned:
            self.binned(size, 1)

    def binned(self, size: int, files: int) -> None:
        """Files went into the bin (or, negative, out of it)."""
        if self.bin_bytes is not None:
            self.bin_bytes, self.bin_files = self.bin_bytes + size, self.bin_files + files

    def failure(self, msg: str, now: dt.datetime) -> None:
        """An item failed for a reason of its own (a damaged or unreadable source file)."""
        self.counters["transfer_failures"] += 1
        stats = self.stats(now)
        stats.error(msg)
        stats.ok = False

    def transfer(self, tasks: list, mono: float) -> dict | None:
        """The file being sent (the biggest, when several are), and the job's rate. `tasks`:
        the uploads running (each with .item.path, .size, .done, .wire)."""
        wire = self.wire + sum(t.wire for t in tasks)
        self._rate = [(m, w) for m, w in self._rate if mono - m <= self.RATE_OVER] + [(mono, wire)]
        if not tasks:
            return None
        (m0, w0), (m1, w1) = self._rate[0], self._rate[-1]
        rate = (w1 - w0) / (m1 - m0) if m1 - m0 >= 1.0 else None
        t = max(tasks, key=lambda t: t.size)
        share = rate / len(tasks) if rate else None
        return {"path": t.item.path, "done": t.done, "total": t.size, "rate": round(rate) if rate else None,
                "eta": round((t.size - t.done) / share) if share else None}


def judge(stats: SyncStats, now: dt.datetime, *, left: int, stopped: str | None, window_closed: bool, failed: bool,
          changed: int, unreadable: Mapping[str, str], source: Path) -> dict:
    """The result of a pass of work that just ended ("Last Synchronization Results"). It is
    ok when it did its work: errors met on the way and healed by a retry are listed, but do
    not fail it. `stopped`: what stopped it ("the agent stopped"), if anything did. `failed`:
    the job is in error, or gave up on transient failures, or ends with work left and
    trouble unhealed."""
    if left and stopped:
        stats.error(f"{stopped} with {left} file(s) still to do")
        stats.ok = False
    elif left and window_closed:
        stats.error(f"the window closed with {left} file(s) still to do")
        stats.ok = False
    if failed:
        stats.ok = False
    # What section 8 keeps from the target is not a sync that did its work.
    if changed:
        stats.error(f"{changed} file(s) changed at the source after they were sent are not sent again "
                    f"(source-changed)")
        stats.ok = False
    if unreadable:
        stats.error("cannot read " + "; ".join(f"{source / k if k else source}: {v}"
                                               for k, v in sorted(unreadable.items())[:3]))
        stats.ok = False
    return stats.result(now)


@dataclass
class Live:
    """What is known of a job beyond its queue: from its runner, or from the state directory."""

    phase: str = "idle"  # starting | idle | syncing | error (the builder refines it)
    error: str | None = None  # a permanent failure
    trouble: str | None = None  # a transient failure being retried
    trouble_since: float | None = None
    owner: str = "unknown"  # unknown | ok | mismatch | unset (no agent, no owner ID yet)
    looked: bool = True  # source and target looked at since the agent started
    last_sync: dict | None = None
    last_success: float | None = None
    held_deletes: int = 0
    held_reason: str | None = None
    waiting_files: int = 0
    changed_files: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)
    bin_bytes: int | None = None
    bin_files: int = 0
    transfer: dict | None = None
    free_bytes: int | None = None
    lock: dict | None = None  # the last lock canary (upkeep.py), with object_lock_days
    counters: dict[str, int] = field(default_factory=dict)
    newest_source: float | None = None  # epoch seconds of the newest backup file at the source
    target: str = ""
    restorable: list[Point] = field(default_factory=list)  # per volume or definition (restorable.py)
    flow: Flow | None = None  # inflow, outflow and backlog by day (backlog.py)

    @classmethod
    def offline(cls, job: Job, results: Mapping, successes: Mapping, owner_id: str | None,
                queue_error: str | None, known: Mapping, changed: int) -> Live:
        """What the state directory tells of a job no agent runs: its last sync's result, and
        what the last runner of the job knew when it stopped (`known`: JobRunner.remember)."""
        last = results.get(job.name)
        ok = bool(last and last.get("ok"))
        error = queue_error or known.get("error")
        return cls(phase="error" if (last and not ok) or error else "idle", error=error,
                   owner=known.get("owner") or ("ok" if owner_id else "unset"), last_sync=last,
                   last_success=successes.get(job.name, epoch(last["finished"]) if ok and last else None),
                   held_deletes=known.get("held_deletes") or 0, held_reason=known.get("held_reason"),
                   bin_bytes=known.get("bin_bytes"), bin_files=known.get("bin_files") or 0, changed_files=changed,
                   restorable=points_of(known.get("restorable")))


def remembered(points: list[Point]) -> list[dict]:
    return [{"chain": p.chain, "point": p.point, "time": p.time, "missing": p.missing,
             "base_offsite": p.base_offsite} for p in points]


def restorable_entries(points: list[Point], now: dt.datetime) -> list[dict]:
    """`restorable` of `offsite status --json`: per volume or definition, the newest point
    restorable from the offsite copy alone, its time and age, and the first missing link."""
    return [{"chain": p.chain, "point": p.point,
             "time": iso(dt.datetime.fromtimestamp(p.time, tz=now.tzinfo)) if p.time is not None else None,
             "age_seconds": p.age(now.timestamp()), "missing": p.missing, "base_offsite": p.base_offsite}
            for p in points]


def remember(state: StateDir, job: str, last: dict | None, **facts: object) -> dict:
    """known.json: what a job's runner knows and the state directory cannot otherwise tell
    (owner, error, held deletions, the bin), for status without an agent; written only when
    it differs from `last`, what was written before. Returns what is written now."""
    if facts != last:
        state.update_json("known.json", lambda d: d.__setitem__(job, facts))
    return facts


def taken_over(state: StateDir, job: str) -> None:
    """`offsite reinit` without an agent: the folder is the job's now, and the error its owner
    ID gave is over (any other shows again at the next sync)."""
    def clear(d: dict) -> None:
        entry = d.get(job)
        if isinstance(entry, dict):
            d[job] = {**entry, "owner": "ok", "error": None}

    state.update_json("known.json", clear)


def status(job: Job, counts: dict, oldest_ns: int | None, live: Live, now: dt.datetime) -> dict:
    """One job's entry of `offsite status --json` (SPEC section 6)."""
    phase, error = live.phase, live.error
    if phase not in ("syncing", "error"):  # both are what the runner says they are
        if error or live.held_reason:
            phase = "error"
        elif live.trouble:
            phase, error = "paused", live.trouble
        elif not live.looked:
            phase = "starting"  # not idle before the source and target were looked at
        elif counts["pending_files"] and not is_open(job.windows, now):
            phase = "waiting"
        elif not counts["pending_files"]:
            phase = "idle"
    return {
        "name": job.name,
        "state": phase,
        **counts,
        "waiting_files": live.waiting_files,
        "next_window": iso(next_opening(job.windows, now)),
        "owner": live.owner,
        "error": error,
        "held_deletes": live.held_deletes,
        "held_reason": live.held_reason,
        "changed_files": live.changed_files,
        "unreadable": dict(live.unreadable),
        "bin_bytes": live.bin_bytes,
        "bin_files": live.bin_files,
        "last_sync": live.last_sync,
        "lag_seconds": lag_seconds(oldest_ns, now),
        "transfer": live.transfer,
        "target_free_bytes": live.free_bytes,
        "lock": {k: live.lock.get(k) for k in ("checked", "ok", "problem")} if live.lock else None,
        "counters": dict(live.counters),
        "last_success_ts": live.last_success,
        "restorable": restorable_entries(live.restorable, now),
        "backlog": backlog_entry(forecast(live.flow, counts["pending_bytes"], now, job.windows)) if live.flow else None,
    }


def backlog_entry(f: Forecast) -> dict:
    """`backlog` of `offsite status --json`: the last 7 days' inflow and outflow, the rates,
    the time to catch up at the last 24 hours' outflow, and the falling-behind message."""
    return {"pending_bytes": f.pending_bytes,
            "days": [{"date": d, "inflow_bytes": i, "outflow_bytes": o} for d, i, o in f.days],
            "inflow_bytes_per_day": round(f.inflow_per_day), "outflow_bytes_per_day": round(f.outflow_per_day),
            "catch_up_seconds": None if f.catch_up_seconds is None else round(f.catch_up_seconds),
            "seeding": f.seeding, "forecast": f.text, "falling_behind": f.behind}


def facts(st: dict, live: Live, failed: Iterable[QueueItem]) -> Facts:
    """What the alert rules read of a job: its status entry, what its runner knows, and its
    failed queue items (a damaged image, a file changed at the source)."""
    failed = list(failed)
    verified = st.get("last_verify") or {}
    return Facts(
        state=st["state"], error=live.error, trouble=live.trouble, trouble_since=live.trouble_since,
        owner=st["owner"], held_deletes=st["held_deletes"], held_reason=st["held_reason"],
        pending_files=st["pending_files"], pending_bytes=st["pending_bytes"], lag_seconds=st["lag_seconds"],
        newest_source=live.newest_source, free_bytes=st.get("target_free_bytes"), target=live.target,
        corrupt=tuple(sorted(i.path for i in failed if i.cause == CORRUPT)),
        changed=tuple(sorted(i.path for i in failed if i.cause == CHANGED)),
        unreadable=tuple(sorted(live.unreadable.items())),
        lock_problem=(st.get("lock") or {}).get("problem"),
        verify_bad=tuple(m["path"] for m in verified.get("mismatches", [])) if isinstance(verified, dict) else (),
        restorable=tuple((p.chain, p.point, p.time, p.missing) for p in live.restorable),
        falling_behind=(st.get("backlog") or {}).get("falling_behind"),
    )


def limits_of(job: Job, retry_for: float) -> Limits:
    """A job's alert thresholds (its config keys)."""
    return Limits(max_lag=job.max_lag, max_rpo=job.max_rpo, max_pending_files=job.max_pending_files,
                  max_pending_bytes=job.max_pending_bytes, inactive_after=job.inactive_after,
                  min_free=job.min_free, retry_for=retry_for)


def offline(cfg: Config, state: StateDir, now: dt.datetime) -> dict:
    """`offsite status --json` when no agent runs: the same builder on what the state
    directory holds. Its alerts are those the last agent left in force, and those its
    records show now (a damaged image a standalone `offsite sync` met, say)."""
    queue_error = None
    try:
        items = read_items(state.queue_dir)
    except OffsiteError as e:  # status must still answer when the queue is unreadable
        items, queue_error = [], str(e)
    results, successes = state.read_json("results.json", {}), state.read_json("success.json", {})
    kept = state.read_json("known.json", {})
    flows = state.read_json("flow.json", {})
    book = Book.of(state.read_json("alerts.json", {}))
    jobs = []
    for job in cfg.jobs:
        mine = [i for i in items if i.job == job.name]
        entry = kept.get(job.name) if isinstance(kept, dict) else None
        live = Live.offline(job, results, successes, state.owner_id(job.name), queue_error,
                            entry if isinstance(entry, dict) else {},
                            sum(1 for i in mine if i.state == "failed" and i.cause == CHANGED))
        if isinstance(flows, dict) and job.name in flows:
            live.flow = Flow.of(flows[job.name], now)
        live.lock = last_lock(state, job)
        st = status(job, summary(mine), oldest_upload(mine), live, now)
        st["last_verify"] = last_verify(state, job.name)
        known = book.of_job(job.name)
        held = {a["name"] for a in known}
        rules = alerts.conditions(job.name, facts(st, live, (i for i in mine if i.state == "failed")),
                                  limits_of(job, cfg.agent.retry_for), now)
        st["alerts"] = known + [{"name": name, "since": iso(now), "message": message}
                                for name, message in sorted(rules.items()) if name not in held]
        jobs.append(st)
    return {"agent": {"running": False, "pid": None, "started": None, "rss_bytes": None,
                      "alerts": book.of_job(""), "state_bytes": state.size_bytes()},
            "jobs": jobs, "queue_error": queue_error}
