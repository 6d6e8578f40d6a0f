"""Windows: one table of (windows, instant, open?, next opening)."""
from __future__ import annotations

import datetime as dt

import pytest

from offsite.windows import Window, is_open, next_opening

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
WEEKNIGHTS = Window(frozenset({MON, TUE, WED, THU, FRI}), dt.time(19, 0), dt.time(7, 0))
WEEKEND = Window(frozenset({SAT, SUN}))
OFFICE = Window(frozenset({MON, TUE, WED, THU, FRI}), dt.time(9, 0), dt.time(17, 0))
NOON_TO_NOON = Window(frozenset({WED}), dt.time(12, 0), dt.time(12, 0))  # end not after start: 24 h


def t(day: int, hh: int, mm: int = 0) -> dt.datetime:
    """Day 0 = Monday 2026-11-16."""
    return dt.datetime(2026, 11, 16, hh, mm) + dt.timedelta(days=day)


SPEC_EXAMPLE = (WEEKNIGHTS, WEEKEND)

CASES = [
    # windows, now, open, next opening
    ((), t(MON, 12), True, None),
    (SPEC_EXAMPLE, t(MON, 12), False, t(MON, 19)),
    (SPEC_EXAMPLE, t(MON, 18, 59), False, t(MON, 19)),
    (SPEC_EXAMPLE, t(MON, 19), True, t(TUE, 19)),
    (SPEC_EXAMPLE, t(MON, 23, 59), True, t(TUE, 19)),
    (SPEC_EXAMPLE, t(TUE, 3), True, t(TUE, 19)),  # Monday's window runs past midnight
    (SPEC_EXAMPLE, t(TUE, 7), False, t(TUE, 19)),  # end is exclusive
    (SPEC_EXAMPLE, t(FRI, 23), True, t(SAT, 0)),
    (SPEC_EXAMPLE, t(SAT, 6), True, t(SUN, 0)),  # Friday night and Saturday overlap
    (SPEC_EXAMPLE, t(SAT, 13), True, t(SUN, 0)),
    (SPEC_EXAMPLE, t(SUN, 23, 59), True, t(MON, 19) + dt.timedelta(days=7)),
    (SPEC_EXAMPLE, t(MON, 3), False, t(MON, 19)),  # Sunday has no night window
    ((WEEKNIGHTS,), t(SAT, 3), True, t(MON, 19) + dt.timedelta(days=7)),  # Friday's night
    ((WEEKNIGHTS,), t(SAT, 8), False, t(MON, 19) + dt.timedelta(days=7)),
    ((WEEKNIGHTS,), t(MON, 5), False, t(MON, 19)),  # belongs to Sunday, which has none
    ((OFFICE,), t(WED, 9), True, t(THU, 9)),
    ((OFFICE,), t(WED, 17), False, t(THU, 9)),
    ((OFFICE,), t(SAT, 10), False, t(MON, 9) + dt.timedelta(days=7)),
    ((NOON_TO_NOON,), t(WED, 11, 59), False, t(WED, 12)),
    ((NOON_TO_NOON,), t(THU, 11, 59), True, t(WED, 12) + dt.timedelta(days=7)),
    ((NOON_TO_NOON,), t(THU, 12), False, t(WED, 12) + dt.timedelta(days=7)),
]


@pytest.mark.parametrize("windows,now,open_,nxt", CASES)
def test_windows(windows, now, open_, nxt):
    assert is_open(windows, now) is open_
    assert next_opening(windows, now) == nxt


def test_aware_times_are_read_as_local_wall_clock():
    now = t(MON, 20).replace(tzinfo=dt.timezone(dt.timedelta(hours=5)))
    assert is_open((WEEKNIGHTS,), now)

