"""Time windows (a pure rule): when a job may move data.

A window is parsed once into a value, and asked "is it open at t" and "when does it open
next after t" by pure functions: nothing here reads the clock. Times are local wall-clock
(naive datetimes); a window whose end is not after its start runs past midnight and belongs
to the day it starts.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: dt.time = dt.time(0, 0)
    end: dt.time | None = None  # None: until the end of the start day

    def spans(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """The interval this window covers when it starts on `day`."""
        begin = dt.datetime.combine(day, self.start)
        if self.end is None:
            return begin, dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0))
        finish = dt.datetime.combine(day, self.end)
        if finish <= begin:
            finish += dt.timedelta(days=1)
        return begin, finish


def _naive(now: dt.datetime) -> dt.datetime:
    return now.replace(tzinfo=None) if now.tzinfo else now


def is_open(windows: tuple[Window, ...], now: dt.datetime) -> bool:
    """True when `windows` is empty (always open) or `now` lies in one of them."""
    if not windows:
        return True
    now = _naive(now)
    for w in windows:
        for back in (0, 1):  # a window that started yesterday may still be open
            day = now.date() - dt.timedelta(days=back)
            if day.weekday() in w.days:
                begin, finish = w.spans(day)
                if begin <= now < finish:
                    return True
    return False


def next_opening(windows: tuple[Window, ...], now: dt.datetime) -> dt.datetime | None:
    """The first window start strictly after `now`; None when there are no windows."""
    if not windows:
        return None
    aware = now.tzinfo is not None
    now = _naive(now)
    best: dt.datetime | None = None
    for offset in range(0, 8):
        day = now.date() + dt.timedelta(days=offset)
        for w in windows:
            if day.weekday() in w.days:
                begin, _ = w.spans(day)
                if begin > now and (best is None or begin < best):
                    best = begin
        if best is not None:
            break
    # Local wall-clock time; with the offset it has then (SPEC: times carry their offset).
    return best.astimezone() if best is not None and aware else best

