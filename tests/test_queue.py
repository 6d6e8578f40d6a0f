"""The durable queue: coalescing, leases, parking, failures, crash recovery, inspection."""
from __future__ import annotations

import datetime as dt
import shutil
import sqlite3

from offsite.queue import WorkQueue, read_items


def test_repeated_events_for_one_path_coalesce(tmp_path):
    q = WorkQueue(tmp_path)
    a = q.put("j", "upload", "a.spi", 10, 1)
    assert q.put("j", "upload", "a.spi", 10, 1).id == a.id
    b = q.put("j", "upload", "a.spi", 12, 2)  # grew: same item, new version
    assert b.id == a.id and (b.size, b.mtime_ns) == (12, 2)
    d = q.put("j", "delete", "a.spi")  # then deleted: the newer event wins
    assert [i.op for i in q.items()] == ["delete"] and d.id != a.id
    q.put("other", "upload", "a.spi", 1, 1)  # other jobs are separate
    assert len(q.items()) == 2 and len(q.items("j")) == 1
    q.close()


def test_lease_ack_release_fail(tmp_path):
    q = WorkQueue(tmp_path)
    a = q.put("j", "upload", "a.spi", 10, 1)
    assert q.lease(a.id).state == "in-flight"
    # Nothing more is queued for a path while it is in flight (issue 15: two transfers of one
    # path shared one staged upload): its owner plans the path again once it is done.
    assert q.put("j", "upload", "a.spi", 11, 2).id == a.id
    assert q.put("j", "delete", "a.spi").id == a.id
    assert [i.id for i in q.items()] == [a.id]
    b = q.put("j", "upload", "b.spi", 11, 2)
    later = dt.datetime.now().astimezone() + dt.timedelta(minutes=5)
    q.release(a.id, "connection reset", later)
    it = q.get(a.id)
    assert (it.state, it.last_error, it.attempts) == ("ready", "connection reset", 1)
    assert not it.due(dt.datetime.now().astimezone())
    q.fail(b.id, "cannot read", "source-corrupt")
    assert (q.get(b.id).state, q.get(b.id).cause) == ("failed", "source-corrupt")
    assert q.lease(b.id) is None  # failed: not handed out
    assert {i.id for i in q.items()} == {a.id, b.id}
    q.retry([b.id])
    assert q.get(b.id).state == "ready"
    q.ack(a.id)
    assert q.get(a.id) is None
    q.close()


def test_in_flight_items_run_again_after_a_crash(tmp_path):
    q = WorkQueue(tmp_path)
    a = q.put("j", "upload", "a.spi", 10, 1)
    q.lease(a.id)
    # no close: the process died
    q2 = WorkQueue(tmp_path)
    it = q2.get(a.id)
    assert it.state == "ready" and it.attempts == 1
    q2.close()
    q.close()


def test_inspection_never_changes_the_writers_work(tmp_path):
    q = WorkQueue(tmp_path)
    a = q.put("j", "upload", "a.spi", 10, 1)
    q.put("j", "upload", "b.spi", 10, 1)
    q.lease(a.id)
    before = (tmp_path / "data.db").stat().st_mtime_ns
    for _ in range(3):
        items = {i.path: i.state for i in read_items(tmp_path)}
        assert items == {"a.spi": "in-flight", "b.spi": "ready"}
    assert q.get(a.id).state == "in-flight"
    assert (tmp_path / "data.db").stat().st_mtime_ns == before
    q.close()


def test_acknowledged_rows_are_cleared(tmp_path):
    q = WorkQueue(tmp_path)
    for i in range(50):
        q.ack(q.put("j", "upload", f"{i}.spi", 1, 1).id)
    q.compact()
    conn = sqlite3.connect(tmp_path / "data.db")
    assert conn.execute("SELECT COUNT(*) FROM ack_queue_default").fetchone()[0] == 0
    conn.close()
    q.close()


def test_reading_a_missing_queue_is_empty(tmp_path):
    assert read_items(tmp_path / "nothing") == []
    shutil.rmtree(tmp_path, ignore_errors=True)
