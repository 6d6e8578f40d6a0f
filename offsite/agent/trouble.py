"""A job's failure policy: what a failure does to the job, how long it waits before trying
again, when it gives up on the pass of work, and when it is healthy again.

Two kinds of failure (errors.py): a transient one (a server down, a timeout) is retried
with a growing, jittered wait (`backoff`) for `retry_for`, then parked until the next rescan;
meanwhile a cheap reachability probe notices a server that answers again, and the parked
work is retried at once. A permanent one (a refused login, the owner ID of another job) puts
the job in error until the next rescan or a person's sync.

Nothing here reads the clock or the network: `mono` (monotonic seconds) and `wall` (epoch
seconds) come in, and the probe's answer comes from the `reach` function it is given, so
the whole policy is table-testable (tests/test_trouble.py).
"""
from __future__ import annotations

import logging
import random
from typing import Callable

log = logging.getLogger(__name__)

BACKOFF_FIRST = 2.0
BACKOFF_MAX = 120.0
PROBE_EVERY = 5.0  # seconds between reachability probes while a target is unreachable


def backoff(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the n-th consecutive transient failure: exponential, jittered."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** max(0, failures - 1)))
    return base * (0.5 + (rng or random).random() / 2)


class Trouble:
    """One job's failures and waits. Changed by the job's coordinator thread only; read by
    anyone (status), one attribute at a time."""

    def __init__(self, job: str, retry_for: float, rescan: float, reach: Callable[[], bool] | None,
                 rng: random.Random | None = None) -> None:
        self.job, self.retry_for, self.rescan, self.reach, self.rng = job, retry_for, rescan, reach, rng
        self.error: str | None = None  # permanent: the job is in error
        self.transient: str | None = None  # the last failure that retries should heal
        self.since: float | None = None  # epoch seconds the transient trouble began
        self.gave_up = False  # transient failures outlasted retry_for: the pass of work is over
        self.retry_at = 0.0  # no new attempt before this (monotonic)
        self.probe_at: float | None = None  # next reachability probe (monotonic), while parked
        self.unreachable = False  # the last probe found the server not answering
        self._first: float | None = None  # monotonic time of the first of these transient failures
        self._count = 0

    def waiting(self, mono: float) -> bool:
        """Is the job waiting out a failure (no new attempt yet)?"""
        return mono < self.retry_at

    def transient_failure(self, why: str, mono: float, wall: float) -> float:
        """A transient failure: the seconds to wait before the next attempt."""
        self.transient = why
        if self.since is None:
            self.since = wall
        if self._first is None:
            self._first, self._count = mono, 0
        self._count += 1
        if mono - self._first < self.retry_for:
            wait = backoff(self._count, self.rng)
        else:  # this attempt is over: park until the next chance
            wait = self.rescan
            self._first = None
            self.gave_up = True
            log.warning("job %s: %s; retrying for %ds did not help, next try in %ds", self.job, why,
                        self.retry_for, wait)
        # Full attempts back off, but a cheap probe notices a server that is back: one that
        # does not answer now is marked so (a failure can come before any probe, and a server
        # back by the next probe must still count as back).
        if self.reach is not None and not self.reach():
            self.unreachable = True
        self.probe_at = mono + min(PROBE_EVERY, wait)
        log.info("job %s: %s (retrying in %.0fs)", self.job, why, wait)
        return wait

    def wait_whole_job(self, wait: float, mono: float) -> None:
        """The failure was the job's own (a listing, a session), not one item's: the whole
        job waits."""
        self.retry_at = mono + wait

    def permanent_failure(self, why: str, mono: float) -> None:
        """The job is in error until the next rescan (or a person's sync)."""
        if self.error != why:
            log.error("job %s: %s", self.job, why)
        self.error = why
        self.retry_at = mono + self.rescan

    def clear_error(self) -> None:
        """A person's sync, or the next rescan: the job tries again."""
        self.error = None
        self.retry_at = 0.0

    def looked(self) -> None:
        """The target answered a listing: its transient trouble is over."""
        self.transient, self.since = None, None

    def healthy(self) -> None:
        """An item went through: transient trouble is over."""
        self._first, self.probe_at, self.unreachable, self.gave_up = None, None, False, False
        self.transient, self.since = None, None

    def end_pass(self) -> bool:
        """The pass of work ends: did it give up on transient failures?"""
        gave_up, self.gave_up = self.gave_up, False
        return gave_up

    def probe_due(self, mono: float) -> bool:
        return self.probe_at is not None and mono >= self.probe_at

    def probe(self, mono: float) -> bool:
        """While transient failures back off: is the server answering again? True when it was
        not answering and now is: its parked items are to be retried at once."""
        if self.reach is None:
            self.probe_at = None
            return False
        self.probe_at = mono + PROBE_EVERY
        if not self.reach():
            self.unreachable = True
            return False
        if self.unreachable:
            self.unreachable = False
            self.retry_at = 0.0
            return True
        return False
