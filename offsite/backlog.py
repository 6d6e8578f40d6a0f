"""The backlog forecast (a pure rule): what flows into a job and out of it, day by day, and
when it will have caught up.

`Flow` is the job's record, kept in the state directory (`flow.json`): by the hour, bytes of
new backup files (inflow, by when they were written at the source; a file older than the
record's reach, met by a first seeding, is backlog, not inflow), bytes published (outflow,
by when they went) and the seconds the job had something to send with its window open
(busy); and the backlog (pending bytes) seen first and last each day. `forecast()` reads it
at `now`: the last 7 days, the rates, the time to catch up (the backlog at the rate the last
24 hours' outflow went while busy, in the hours the windows are open), and whether the job
is falling behind (inflow above outflow for 3 days running while the backlog grew) with the
bandwidth its windows would need. Measuring the rate over the busy time, not the day, keeps
an idle morning from making the evening's backlog look slow to clear.
Nothing here reads the clock or the agent.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .units import format_bytes, format_duration
from .windows import Window, is_open

DAYS_SHOWN = 7
KEPT = dt.timedelta(days=9)  # the record's reach: hours older than this are dropped
BEHIND_DAYS = 3
DAY = 86400.0


def _count(x: object) -> int:
    """A count as flow.json keeps it: a whole number, not negative."""
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise ValueError(x)
    return x


def _hour(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H")


@dataclass
class Flow:
    since: float  # epoch seconds the record began: rates count from there at the earliest
    hours: dict[str, list[int]] = field(default_factory=dict)  # local hour -> [inflow, outflow, busy s]
    pending: dict[str, list[int]] = field(default_factory=dict)  # local date -> [first, last] backlog
    caught_up: bool = False  # the backlog was empty once: a first seeding is over
    busy_since: float | None = None  # epoch seconds the current busy stretch began (not yet in `hours`)
    dirty: bool = False

    @classmethod
    def of(cls, saved: object, now: dt.datetime) -> Flow:
        """The record as flow.json keeps it (`saved`), or a new one from `now`."""
        if isinstance(saved, dict):
            try:
                since = float(saved["since"])
                if not 0 <= since <= now.timestamp() + DAY:  # NaN, infinite, or not a time of ours
                    raise ValueError(since)
                hours = {str(k): [_count(x) for x in v[:3]] for k, v in saved["hours"].items()}
                pending = {str(k): [_count(x) for x in v[:2]] for k, v in saved.get("pending", {}).items()}
                if any(len(v) != 3 for v in hours.values()) or any(len(v) != 2 for v in pending.values()):
                    raise ValueError("short entry")
                return cls(since, hours, pending, saved.get("caught_up") is True)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError):
                pass  # damaged or from another version: begin again
        return cls(now.timestamp())

    def copy(self) -> Flow:
        """A copy another thread may read while this one is kept (dict copies are atomic)."""
        return Flow(self.since, dict(self.hours), dict(self.pending), self.caught_up, self.busy_since)

    def saved(self) -> dict:
        self.dirty = False
        return {"since": self.since, "hours": self.hours, "pending": self.pending, "caught_up": self.caught_up}

    def came(self, size: int, written: dt.datetime, now: dt.datetime) -> None:
        """A new backup file to send, written at `written` (local time)."""
        if now - written < KEPT:
            self.hours.setdefault(_hour(written), [0, 0, 0])[0] += size
            self.dirty = True

    def went(self, size: int, now: dt.datetime) -> None:
        """A file was published."""
        self.hours.setdefault(_hour(now), [0, 0, 0])[1] += size
        self.dirty = True

    def sending(self, busy: bool, now: dt.datetime) -> None:
        """Is the job busy now (something to send, its window open)? The stretch since the
        last call is counted into the hour, when it was busy."""
        t = now.timestamp()
        if self.busy_since is not None and t - self.busy_since >= 1:
            whole = int(t - self.busy_since)  # the fraction stays in the stretch
            self.hours.setdefault(_hour(now), [0, 0, 0])[2] += whole
            self.busy_since += whole
            self.dirty = True
        if not busy:
            self.busy_since = None
        elif self.busy_since is None:
            self.busy_since = t

    def backlog(self, pending: int, now: dt.datetime) -> None:
        day = now.date().isoformat()
        seen = self.pending.get(day)
        if seen is None:
            self.pending[day] = [pending, pending]
        elif seen[1] != pending:
            seen[1] = pending
        else:
            return
        if pending == 0 and not self.caught_up:
            self.caught_up = True
        self.dirty = True
        oldest = _hour(now - KEPT)
        for k in [k for k in self.hours if k < oldest]:
            del self.hours[k]
        for k in [k for k in self.pending if k < oldest[:10]]:
            del self.pending[k]

    def day(self, date: dt.date) -> tuple[int, int]:
        prefix = date.isoformat()
        got = [v for k, v in self.hours.items() if k.startswith(prefix)]
        return sum(v[0] for v in got), sum(v[1] for v in got)


def open_hours_per_day(windows: tuple[Window, ...], now: dt.datetime) -> float:
    """Hours a day the windows are open, averaged over the coming week (quarter-hours)."""
    if not windows:
        return 24.0
    start = now.replace(minute=0, second=0, microsecond=0)
    quarters = sum(is_open(windows, start + dt.timedelta(minutes=15 * i)) for i in range(7 * 96))
    return quarters / 4 / 7


@dataclass(frozen=True)
class Forecast:
    pending_bytes: int
    days: tuple[tuple[str, int, int], ...]  # (date, inflow, outflow), oldest first
    inflow_per_day: float
    outflow_per_day: float  # what went in the last 24 hours
    catch_up_seconds: float | None  # None: nothing went in the last 24 hours
    send_rate: float | None  # bytes a second while busy, over the last 24 hours
    seeding: bool
    text: str  # what a person reads
    behind: str | None  # the falling-behind message, when it holds


def forecast(flow: Flow, pending: int, now: dt.datetime, windows: tuple[Window, ...] = ()) -> Forecast:
    today = now.date()
    first = dt.datetime.fromtimestamp(flow.since, tz=now.tzinfo).date() if now.tzinfo else \
        dt.datetime.fromtimestamp(flow.since).date()
    dates = [today - dt.timedelta(days=n) for n in range(DAYS_SHOWN - 1, -1, -1)]
    days = tuple((d.isoformat(), *flow.day(d)) for d in dates if d >= first or flow.day(d)[0])
    # Inflow is counted by the hour each file was written, also before the record began (the
    # files a first look finds from the last days): the rate is over the whole 7 days.
    week = _hour(now - dt.timedelta(days=DAYS_SHOWN))
    inflow = sum(v[0] for k, v in flow.hours.items() if k > week) / DAYS_SHOWN
    since = _hour(now - dt.timedelta(days=1))
    recent = [v for k, v in flow.hours.items() if k >= since]
    went, busy = sum(v[1] for v in recent), float(sum(v[2] for v in recent))
    if flow.busy_since is not None:
        busy += max(0.0, now.timestamp() - flow.busy_since)
    outflow = float(went)  # what went in the last 24 hours (the hour-long buckets: up to 25)
    rate = went / busy if went and busy else None
    seeding = not flow.caught_up and pending > 0
    open_share = open_hours_per_day(windows, now) / 24
    catch_up = 0.0 if not pending else None if rate is None or not open_share else pending / rate / open_share
    verb = "seed" if seeding else "catch up"
    if not pending:
        text = "nothing waiting"
    elif catch_up is None:
        text = f"{format_bytes(pending)} waiting; nothing sent in the last 24 h to forecast from"
    else:
        text = f"about {format_duration(catch_up)} to {verb} {format_bytes(pending)} at the last 24 h rate"
    return Forecast(pending, days, inflow, outflow, catch_up, rate, seeding, text,
                    _behind(flow, pending, today, inflow, windows, now))


def _behind(flow: Flow, pending: int, today: dt.date, inflow: float, windows: tuple[Window, ...],
            now: dt.datetime) -> str | None:
    """Inflow above outflow on each of the last BEHIND_DAYS days (today included) while the
    backlog grew over them: what the job would need to keep up."""
    dates = [today - dt.timedelta(days=n) for n in range(BEHIND_DAYS - 1, -1, -1)]
    totals = [flow.day(d) for d in dates]
    start = flow.pending.get(dates[0].isoformat())
    if start is None or not all(i > o for i, o in totals) or pending <= start[0]:
        return None
    ins = sum(i for i, _ in totals) / BEHIND_DAYS
    outs = sum(o for _, o in totals) / BEHIND_DAYS
    hours = open_hours_per_day(windows, now)
    need = (ins + pending / 7) * 8 / (hours * 3600) / 1e6 if hours else None
    where = (f"about {need:.1f} Mbps while its windows are open ({hours:.1f} h a day) to keep up and clear it "
             f"within a week" if need is not None else "windows: they never open")
    return (f"for {BEHIND_DAYS} days more came in than went offsite ({format_bytes(ins)} a day in, "
            f"{format_bytes(outs)} out) and the backlog grew to {format_bytes(pending)}: the job needs {where}. "
            f"Raise the bandwidth cap or widen the windows.")
