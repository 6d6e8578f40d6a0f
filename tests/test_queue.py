"""The durable queue: coalescing, leases, parking, failures, crash recovery, inspection."""
from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from offsite.queue import QueueItem, WorkQueue, read_items


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


LEASER = """
import sys
from offsite.queue import WorkQueue
q = WorkQueue(sys.argv[1])
for name in ("a.spi", "b.spi", "c.spi"):
    q.put("j", "upload", name, 10, 1)
q.lease(q.items()[0].id)
q.lease(q.items()[2].id)
print("leased", flush=True)
sys.stdin.read()  # working on them, until it is killed
"""


def test_in_flight_items_run_again_after_a_crash(tmp_path):
    """A writer SIGKILLed with two items in flight: the next writer finds them ready again, each
    with its attempt counted, and the item it had not leased untouched."""
    proc = subprocess.Popen([sys.executable, "-c", LEASER, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "leased\n"
        assert {i.path: i.state for i in read_items(tmp_path)} == {"a.spi": "in-flight", "b.spi": "ready",
                                                                    "c.spi": "in-flight"}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    q = WorkQueue(tmp_path)
    try:
        assert {i.path: (i.state, i.attempts) for i in q.items()} == {
            "a.spi": ("ready", 1), "b.spi": ("ready", 0), "c.spi": ("ready", 1)}
        assert q.lease(q.items()[0].id).attempts == 2  # handed out again
    finally:
        q.close()


# ---------------------------------------------------------------- a writer killed mid-write
SINCE = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)  # not_before times: fixed, so a replay matches
WRITES_ONE_ITEM = ("lease", "release", "fail")  # one UPDATE of one item's data and state


def churn(folder: Path, seed: int, ops: int, kill_at: tuple[int, str] | None = None, report=None) -> WorkQueue:
    """The agent's writes to a queue, as a seeded stream: puts (new items, newer versions),
    batches of puts (a reconciliation), leases, releases, failures, acks and retries, each
    a write the queue makes in one transaction. `report(n)` is called once operation n has
    returned. With `kill_at` (n, kind), the process SIGKILLs itself in the middle of the
    first batch from operation n on that comes right after a `kind` operation (one of
    WRITES_ONE_ITEM): three of the batch's rows written, none committed."""
    rng = random.Random(seed)
    q = WorkQueue(folder)
    last = ""
    for n in range(ops):
        items = q.items()
        live = {it.path for it in items}
        ready = [it for it in items if it.state == "ready"]
        flying = [it for it in items if it.state == "in-flight"]
        failed = [it for it in items if it.state == "failed"]
        fresh = [p for p in (f"C_VOL-b001-i{k:03d}-cd.spi" for k in range(12)) if p not in live]
        newer = [it for it in ready if it.op == "upload"]
        batch = [p for p in (f"D_VOL-b001-i{k:03d}-cd.spi" for k in range(40)) if p not in live][:5]
        choices = (["put"] * bool(fresh) + ["newer"] * bool(newer) + ["batch"] * bool(batch)
                   + ["lease"] * 3 * bool(ready) + ["release", "fail", "ack", "ack"] * bool(flying)
                   + ["retry"] * bool(failed))
        op = rng.choice(choices)
        if kill_at is not None and n >= kill_at[0] and op == "batch" and last == kill_at[1]:
            die_after_rows(q._conn(), 3)
        if op == "put":
            q.put("j", rng.choice(("upload", "delete")), rng.choice(fresh), n, n)
        elif op == "newer":
            it = rng.choice(newer)
            q.put("j", "upload", it.path, n, n)
        elif op == "batch":
            q.put_many("j", [("upload", p, n, n) for p in batch])
        elif op == "lease":
            q.lease(rng.choice(ready).id)
        elif op == "release":
            q.release(rng.choice(flying).id, f"error {n}", SINCE + dt.timedelta(minutes=n))
        elif op == "fail":
            q.fail(rng.choice(flying).id, f"cannot read {n}", rng.choice((None, "source-corrupt")))
        elif op == "ack":
            q.ack(rng.choice(flying).id)
        else:
            q.retry([rng.choice(failed).id])
        last = op
        if report is not None:
            report(n)
    return q


def die_after_rows(conn: sqlite3.Connection, rows: int) -> None:
    """SIGKILL this process inside SQLite, at the first step after `rows` more rows changed on
    the queue's writing connection: in the middle of a transaction, before its commit."""
    start = conn.total_changes
    conn.set_progress_handler(lambda: conn.total_changes >= start + rows and os.kill(os.getpid(), signal.SIGKILL), 1)


def as_kept(items: list[QueueItem]) -> dict[int, tuple]:
    """What must survive a crash, item by item: everything but the time it was queued, and an
    item in flight counts as ready (the next writer hands it out again, its attempt counted)."""
    return {it.id: (it.job, it.op, it.path, it.size, it.mtime_ns, "ready" if it.state == "in-flight" else it.state,
                    it.attempts, it.last_error, it.next_attempt, it.cause) for it in items}


def replay(folder: Path, seed: int, ops: int) -> dict[int, tuple]:
    """The queue after the first `ops` operations of the stream, written by a writer that lived."""
    q = churn(folder, seed, ops)
    try:
        return as_kept(q.items())
    finally:
        q.close()


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_queue import churn
kill_at = (int(sys.argv[5]), sys.argv[6]) if sys.argv[5] != "-" else None
churn(Path(sys.argv[2]), int(sys.argv[3]), 5000, kill_at, lambda n: print(n, flush=True))
"""


def killed_writer(folder: Path, seed: int, after: int, kill_at: tuple[int, str] | None) -> int:
    """Run the stream in a process of its own and SIGKILL it while it writes: at once after it
    reported `after` operations done (or, with `kill_at`, it kills itself mid-batch). Returns
    how many operations it reported done."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(Path(__file__).parent), str(folder), str(seed),
                             str(after), *(("-", "-") if kill_at is None else (str(kill_at[0]), kill_at[1]))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    done = 0
    try:
        for line in proc.stdout:
            done = int(line) + 1
            if kill_at is None and done >= after:
                proc.send_signal(signal.SIGKILL)  # it goes on writing until the signal lands
                break
        done = max([done] + [int(line) + 1 for line in proc.stdout])  # what it reported before it died
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"the writer ended by itself ({proc.returncode})"
    return done


def reopened(folder: Path) -> dict[int, tuple]:
    """The queue as the next writer finds it, checked whole; and as `offsite queue list` reads it."""
    conn = sqlite3.connect(folder / "data.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    q = WorkQueue(folder)
    try:
        items = q.items()
        assert all(it.state != "in-flight" for it in items)  # what was in flight is handed out again
        assert as_kept(read_items(folder)) == as_kept(items)
        return as_kept(items)
    finally:
        q.close()


def test_a_writer_killed_mid_write_loses_nothing_it_reported_done(tmp_path):
    """A real process writes the queue and is SIGKILLed while it writes. The next writer opens a
    sound database holding every operation the dead one reported done, and at most the one it
    was in the middle of, whole: never part of one (a batch of new items is all there or not
    at all), never one it finished lost."""
    for seed, after in ((1, 150), (2, 300), (3, 450)):  # killed by another process, wherever it was
        folder = tmp_path / f"killed-{seed}"
        done = killed_writer(folder, seed, after, None)
        assert done >= after
        got = reopened(folder)
        before, with_next = replay(tmp_path / f"replay-{seed}-a", seed, done), \
            replay(tmp_path / f"replay-{seed}-b", seed, done + 1)
        assert got in (before, with_next), f"seed {seed}: the queue after a kill at operation {done} is " \
            f"neither the queue after it nor the one before it ({sorted(set(got.items()) ^ set(before.items()))[:4]})"
    for seed, kind in zip((4, 5, 6), WRITES_ONE_ITEM):  # killing itself mid-batch, right after a `kind`
        folder = tmp_path / f"mid-batch-{seed}"
        done = killed_writer(folder, seed, 0, (100, kind))
        assert done >= 100
        got, expected = reopened(folder), replay(tmp_path / f"replay-{seed}", seed, done)
        assert got == expected, f"seed {seed}: killed in the middle of operation {done}, a batch after a " \
            f"{kind}; the queue differs from the one after operation {done - 1}: " \
            f"{sorted(set(got.items()) ^ set(expected.items()))[:4]}"


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


NEWER_OF_FAILED = """
import os
import signal
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from offsite.queue import WorkQueue
from test_queue import die_after_rows
q = WorkQueue(Path(sys.argv[2]))
it = q.put("j", "upload", "C_VOL-b001.spf", 10, 10)
q.lease(it.id)
q.fail(it.id, "does not match its .md5", "source-corrupt")
die_after_rows(q._conn(), 2)  # killed inside the write of a second row, if there is one
q.put("j", "upload", "C_VOL-b001.spf", 20, 20)  # a newer version of the failed file
os.kill(os.getpid(), signal.SIGKILL)  # else right after it
"""


def test_a_newer_version_of_a_failed_file_is_one_write(tmp_path):
    """Killed in the middle of queuing a newer version of a failed file, the queue holds the
    old version failed with its cause, or the new one ready: never a failed item that has
    lost its cause and error (which nothing would retry but a person)."""
    proc = subprocess.run([sys.executable, "-c", NEWER_OF_FAILED, str(Path(__file__).parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [it] = reopened(tmp_path).values()
    assert it[3:] in [(10, 10, "failed", 1, "does not match its .md5", None, "source-corrupt"),
                      (20, 20, "ready", 1, None, None, None)], it
