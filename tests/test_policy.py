"""The failure policy (agent/trouble.py) as a table: failures and probes at given times in,
waits and states out. No clock, no network: `mono`/`wall` are passed, the probe's answer is
scripted."""
from __future__ import annotations

import random

import pytest

from offsite.agent.trouble import BACKOFF_MAX, PROBE_EVERY, Trouble, backoff


class Reach:
    """A server that answers as the test says."""

    def __init__(self, up: bool = True) -> None:
        self.up, self.asked = up, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.up


def policy(up: bool = True, retry_for: float = 60.0, rescan: float = 3600.0) -> tuple[Trouble, Reach]:
    reach = Reach(up)
    return Trouble("job1", retry_for, rescan, reach, rng=random.Random(7)), reach


def test_transient_failures_back_off_growing_then_park_until_the_rescan():
    t, _ = policy(retry_for=60.0, rescan=3600.0)
    waits = [t.transient_failure("cannot connect", mono, 1000.0 + mono) for mono in (0.0, 5.0, 15.0, 40.0)]
    assert waits == sorted(waits) and all(0 < w <= BACKOFF_MAX for w in waits)
    assert t.transient == "cannot connect" and t.since == 1000.0  # since the first of them
    assert not t.gave_up
    assert t.transient_failure("cannot connect", 61.0, 1061.0) == 3600.0  # retry_for is over: parked
    assert t.gave_up and t.end_pass() and not t.gave_up  # the pass gives up, once
    # A new series starts from the first wait again.
    assert t.transient_failure("cannot connect", 4000.0, 5000.0) <= backoff(1, random.Random(0)) * 2


@pytest.mark.parametrize("up, marked", [(False, True), (True, False)])
def test_a_failure_marks_a_server_that_does_not_answer(up, marked):
    t, reach = policy(up=up)
    wait = t.transient_failure("timed out", 0.0, 0.0)
    assert reach.asked == 1 and t.unreachable is marked
    assert t.probe_at == min(PROBE_EVERY, wait)


def test_a_server_that_answers_again_is_noticed_by_the_probe():
    t, reach = policy(up=False)
    t.wait_whole_job(t.transient_failure("refused", 0.0, 0.0), 0.0)
    assert t.waiting(1.0)
    assert not t.probe_due(t.probe_at - 0.1) and t.probe_due(t.probe_at)
    assert t.probe(PROBE_EVERY) is False and t.unreachable  # still down
    reach.up = True
    assert t.probe(2 * PROBE_EVERY) is True  # back: parked work is retried at once
    assert not t.waiting(2 * PROBE_EVERY) and not t.unreachable
    assert t.probe(3 * PROBE_EVERY) is False  # answering all along now: nothing to do


def test_a_probe_without_an_endpoint_stops_probing():
    t = Trouble("job1", 60.0, 3600.0, reach=None)
    t.transient_failure("disk not ready", 0.0, 0.0)
    assert t.probe_at is not None
    assert t.probe(10.0) is False and t.probe_at is None and not t.probe_due(1e9)


def test_a_permanent_failure_is_an_error_until_the_rescan_or_a_person():
    t, _ = policy(rescan=3600.0)
    t.permanent_failure("login refused", 100.0)
    assert t.error == "login refused" and t.waiting(3699.0) and not t.waiting(3700.0)
    t.clear_error()
    assert t.error is None and not t.waiting(101.0)


def test_success_heals_everything_transient():
    t, _ = policy(up=False)
    t.transient_failure("reset", 0.0, 50.0)
    t.healthy()
    assert (t.transient, t.since, t.probe_at, t.unreachable, t.gave_up) == (None, None, None, False, False)
    # And the next failure starts a new series: the first wait again, a new "since".
    assert t.transient_failure("reset", 500.0, 600.0) <= 2 * 2.0 and t.since == 600.0


def test_a_listing_that_answers_ends_the_trouble_shown():
    t, _ = policy()
    t.transient_failure("timed out", 0.0, 10.0)
    t.looked()
    assert t.transient is None and t.since is None
