"""The alert rules and their book, as pure functions of the facts and `now` (SPEC section 6)."""
from __future__ import annotations

import datetime as dt

import pytest

from offsite.alerts import Book, Facts, Limits, body, conditions, subject

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
T = NOW.timestamp()
QUIET = Limits(max_lag=None)


@pytest.mark.parametrize("facts, limits, expected", [
    (Facts("idle"), Limits(), set()),
    (Facts("error", error="the target disk is full"), QUIET, {"job-error"}),
    (Facts("paused", trouble="cannot connect", trouble_since=T - 30), Limits(max_lag=None, retry_for=60), set()),
    (Facts("paused", trouble="cannot connect", trouble_since=T - 61), Limits(max_lag=None, retry_for=60),
     {"job-error"}),
    (Facts("error", error="owned by another", owner="mismatch"), QUIET, {"owner-mismatch"}),
    (Facts("error", held_deletes=7, held_reason="7 deletions exceed max_deletes"), QUIET, {"deletes-held"}),
    (Facts("syncing", lag_seconds=3600), Limits(max_lag=3599), {"lag"}),
    (Facts("syncing", lag_seconds=3600), Limits(max_lag=3600), set()),
    (Facts("syncing", pending_files=11), Limits(max_lag=None, max_pending_files=10), {"queue"}),
    (Facts("syncing", pending_bytes=10**9 + 1), Limits(max_lag=None, max_pending_bytes=10**9), {"queue"}),
    (Facts("idle", newest_source=T - 7200), Limits(max_lag=None, inactive_after=3600), {"source-inactive"}),
    (Facts("idle", newest_source=None), Limits(max_lag=None, inactive_after=3600), set()),
    (Facts("idle", free_bytes=10), Limits(max_lag=None, min_free=11), {"target-space"}),
    (Facts("idle", free_bytes=None), Limits(max_lag=None, min_free=11), set()),  # unknown: no alert
])
def test_conditions(facts, limits, expected):
    got = conditions("job1", facts, limits, NOW)
    assert set(got) == expected
    assert all(msg.endswith(".") for msg in got.values())  # whole sentences, saying what to do


def test_one_message_when_an_alert_starts_one_when_it_clears_and_again_after_repeat():
    book = Book()
    held = {("job1", "lag"): "3h behind"}
    assert [e.kind for e in book.update(held, {"", "job1"}, NOW, repeat=3600)] == ["start"]
    assert book.update(held, {"", "job1"}, NOW + dt.timedelta(minutes=59), repeat=3600) == []
    assert [e.kind for e in book.update(held, {"", "job1"}, NOW + dt.timedelta(minutes=60), repeat=3600)] == ["repeat"]
    assert book.update(held, {"", "job1"}, NOW + dt.timedelta(minutes=61), repeat=None) == []
    [clear] = book.update({}, {"", "job1"}, NOW + dt.timedelta(minutes=90), repeat=3600)
    assert clear.kind == "clear" and clear.since == NOW.isoformat(timespec="seconds")
    assert book.active == {}


def test_a_restart_neither_repeats_nor_forgets_and_a_job_not_yet_looked_at_keeps_its_alerts():
    book = Book()
    book.update({("job1", "job-error"): "disk full"}, {"", "job1"}, NOW, repeat=None)
    again = Book.of(book.to_json())  # read back from alerts.json after a restart
    assert again.update({("job1", "job-error"): "disk full"}, {"", "job1"}, NOW, repeat=None) == []
    assert again.update({}, {""}, NOW, repeat=None) == []  # job1 still starting: nothing clears
    assert [e.kind for e in again.update({}, {"", "job1"}, NOW, repeat=None)] == ["clear"]


def test_history_stays_bounded():
    book = Book()
    for i in range(500):
        book.update({("job1", "lag"): "x"} if i % 2 == 0 else {}, {"", "job1"}, NOW + dt.timedelta(seconds=i),
                    repeat=None)
    assert len(book.to_json()["history"]) == 200


def test_messages_name_the_host_the_job_and_what_to_do():
    book = Book()
    [e] = book.update({("job1", "deletes-held"): conditions(
        "job1", Facts("error", held_deletes=3, held_reason="3 deletions exceed max_deletes (2)"), QUIET, NOW
    )["deletes-held"]}, {"", "job1"}, NOW, repeat=None)
    assert subject(e, "backup1") == "[offsite backup1] ALERT deletes-held on job job1"
    text = body(e, "backup1")
    assert "job job1 on backup1" in text and "offsite sync job1 --allow-deletes" in text


def test_an_unreadable_book_is_an_empty_one():
    for data in ([], {"active": []}, {"history": {}}, None, "x"):
        assert Book.of(data).active == {}
