"""Queue items and the queue they live in.

Semantics (at-least-once): an item is leased (in-flight), then acknowledged once its effect
is complete on the target, or released with its last error and a not-before time (parked),
or marked failed. Nothing is removed when it is handed out; after a crash the writer's
open turns in-flight items back to ready. Repeated events for one path coalesce into one
ready item per (job, path).
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable

import persistqueue
import persistqueue.serializers.json as pq_json
from persistqueue.sqlackqueue import AckStatus

from ..errors import StateError

_TABLE = "ack_queue_default"  # persist-queue's table for name="default"
_STATES = {AckStatus.inited: "ready", AckStatus.ready: "ready", AckStatus.unack: "in-flight",
           AckStatus.ack_failed: "failed"}


CHANGED = "source-changed"  # a failed item's cause (the alert that tells a person): changed after it was sent
CORRUPT = "source-corrupt"  # ...: an image that does not match its .md5 sidecar


@dataclass(frozen=True)
class QueueItem:
    id: int
    job: str
    op: str  # "upload" | "delete"
    path: str  # relative to the job's source
    size: int | None
    state: str  # "ready" | "in-flight" | "failed"
    attempts: int = 0
    last_error: str | None = None
    enqueued: str = ""  # ISO 8601 with offset
    next_attempt: str | None = None
    mtime_ns: int | None = None
    cause: str | None = None  # a failed item's alert: CHANGED or CORRUPT

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("mtime_ns")
        return d

    def due(self, now: dt.datetime) -> bool:
        return self.next_attempt is None or dt.datetime.fromisoformat(self.next_attempt) <= now


_STORED = tuple(f.name for f in fields(QueueItem) if f.name not in ("id", "state"))


def _data(item: QueueItem) -> dict:
    """An item as stored: its plain values but id and state (asdict deep-copied: 5% of a seeding)."""
    return {k: getattr(item, k) for k in _STORED}


def _item(pqid: int, data: dict, status) -> QueueItem:
    return QueueItem(id=pqid, state=_STATES.get(str(status), "ready"), **data)


def _attempts_after(it: QueueItem, count_attempt: bool) -> int:
    if count_attempt and it.state != "in-flight":
        return it.attempts + 1  # failed before its lease
    if not count_attempt and it.state == "in-flight":
        return it.attempts - 1  # the lease did not count
    return it.attempts


def summary(items: Iterable[QueueItem]) -> dict:
    """The counts `offsite status` shows for one job's items."""
    c = [0, 0, 0]
    for it in items:
        _count(c, it, 1)
    return {"pending_files": c[0], "pending_bytes": c[1], "failed_files": c[2]}


def oldest_upload(items: Iterable[QueueItem]) -> int | None:
    """The modification time (ns) of the oldest file still to send among `items`, failed
    ones included: what a job's lag is measured from."""
    return min((it.mtime_ns for it in items if it.op == "upload" and it.mtime_ns), default=None)


def _count(c: list[int], it: QueueItem, sign: int) -> None:
    if it.state == "failed":
        c[2] += sign
    else:
        c[0] += sign
        if it.op == "upload":
            c[1] += sign * (it.size or 0)


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


class WorkQueue:
    """The writer's view: all live items in memory, every change written through."""

    def __init__(self, folder: Path) -> None:
        try:
            # auto_resume: whatever was in flight when the last writer died runs again.
            self._q = persistqueue.SQLiteAckQueue(
                str(folder), auto_resume=True, multithreading=True,
                serializer=pq_json,
            )
        except sqlite3.DatabaseError as e:
            raise StateError(f"{folder}: the queue database cannot be opened ({e})") from None
        # WAL without an fsync per commit: a power loss may undo the last few changes but never
        # corrupts the database, and the reconciliation at start redoes what they did (the
        # source and the target listing are the truth). A commit per item no longer costs a
        # disk flush, which for small files cost more than the copy.
        self._conn().execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.RLock()
        self._items: dict[int, QueueItem] = {}
        self._by_path: dict[tuple[str, str], set[int]] = {}  # (job, path) -> item ids
        self._by_job: dict[str, set[int]] = {}
        self._counts: dict[str, list[int]] = {}  # job -> [pending files, pending bytes, failed]
        self._failed: dict[str, set[int]] = {}  # job -> its failed items
        try:
            rows = self._q.queue()
        except (sqlite3.DatabaseError, ValueError) as e:
            raise StateError(f"{folder}: the queue database cannot be read ({e})") from None
        for row in rows:
            if str(row["status"]) == AckStatus.acked:
                continue
            self._remember(_item(row["id"], row["data"], row["status"]))
        self._acked_since_clear = 0
        self._batch: list[QueueItem] | None = None

    def _conn(self) -> sqlite3.Connection:
        """persist-queue's writing connection (its own lock serialises writers)."""
        conn = self._q._putter
        assert conn is not None
        return conn

    def _remember(self, it: QueueItem) -> QueueItem:
        self._by_path.setdefault((it.job, it.path), set()).add(it.id)
        self._by_job.setdefault(it.job, set()).add(it.id)
        return self._store(it)

    def _store(self, it: QueueItem) -> QueueItem:
        """Every change of a live item goes through here, so the counts stay right."""
        c = self._counts.setdefault(it.job, [0, 0, 0])
        old = self._items.get(it.id)
        if old is not None:
            _count(c, old, -1)
        _count(c, it, 1)
        self._items[it.id] = it
        failed = self._failed.setdefault(it.job, set())
        if it.state == "failed":
            failed.add(it.id)
        else:
            failed.discard(it.id)
        return it

    def _forget(self, item_id: int) -> None:
        it = self._items.pop(item_id, None)
        if it is not None:
            _count(self._counts[it.job], it, -1)
            self._by_job[it.job].discard(item_id)
            self._failed.get(it.job, set()).discard(item_id)
            ids = self._by_path.get((it.job, it.path))
            if ids is not None:
                ids.discard(item_id)
                if not ids:
                    del self._by_path[(it.job, it.path)]

    def close(self) -> None:
        with self._lock:
            self._q.close()

    # -- reading
    def items(self, job: str | None = None) -> list[QueueItem]:
        with self._lock:
            if job is None:
                return list(self._items.values())
            return [self._items[i] for i in sorted(self._by_job.get(job, ()))]

    def at(self, job: str, path: str) -> list[QueueItem]:
        """The live items for one path of a job."""
        with self._lock:
            return [self._items[i] for i in sorted(self._by_path.get((job, path), ()))]

    def failed(self, job: str) -> list[QueueItem]:
        """The job's failed items (kept as items change: no walk of the queue)."""
        with self._lock:
            return [self._items[i] for i in sorted(self._failed.get(job, ()))]

    def summary(self, job: str) -> dict:
        """`summary(self.items(job))`, kept up to date as items change rather than counted."""
        with self._lock:
            c = self._counts.get(job, [0, 0, 0])
            return {"pending_files": c[0], "pending_bytes": c[1], "failed_files": c[2]}

    def oldest_upload(self, job: str) -> int | None:
        """`oldest_upload(self.items(job))`."""
        with self._lock:
            return oldest_upload(self._items[i] for i in self._by_job.get(job, ()))

    def get(self, item_id: int) -> QueueItem | None:
        return self._items.get(item_id)  # no lock: one dict read (a pick asks per chain)

    # -- writing
    def put(self, job: str, op: str, path: str, size: int | None = None,
            mtime_ns: int | None = None) -> QueueItem:
        """Queue `op` for `path`, coalescing with a ready or failed item for the same path.
        While an item of the path is in flight, nothing more is queued for it: it is returned,
        and its owner plans the path again once it is done (a path is never in flight twice,
        which would share one staged upload)."""
        with self._lock:
            ids = sorted(self._by_path.get((job, path), ()))
            for item_id in ids:
                if self._items[item_id].state == "in-flight":
                    return self._items[item_id]
            for item_id in ids:
                it = self._items[item_id]
                same_version = it.op == op and (it.size, it.mtime_ns) == (size, mtime_ns)
                if same_version:
                    return it
                if it.op == op:  # a newer version of the same file; a failed one is ready again
                    failed = it.state == "failed"
                    it = replace(it, size=size, mtime_ns=mtime_ns, last_error=None, cause=None,
                                 state="ready", next_attempt=None if failed else it.next_attempt)
                    self._write(it, AckStatus.ready)  # one commit: never failed without its cause
                    return self._store(it)
                self._ack(it.id)  # the newer event wins: upload then delete, or the reverse
            item = QueueItem(id=0, job=job, op=op, path=path, size=size, state="ready",
                             enqueued=now_iso(), mtime_ns=mtime_ns)
            if self._batch is not None:
                self._batch.append(item)
                return item  # id 0 until the batch is written
            pqid = self._q.put(_data(item))
            assert pqid is not None
            return self._remember(replace(item, id=pqid))

    def put_many(self, job: str, rows: Iterable[tuple[str, str, int | None, int | None]]) -> list[QueueItem]:
        """put() for many (op, path, size, mtime_ns) rows, with the new items written in ONE
        transaction: a reconciliation of a large folder queues thousands at once, and a
        commit per row would cost more than the copies. (persist-queue has no bulk put, so
        this writes its table directly, under its own lock, in its own format.)"""
        with self._lock:
            self._batch = []
            try:
                out = [self.put(job, *row) for row in rows]
                new, self._batch = self._batch, None
            finally:
                self._batch = None
            if not new:
                return out
            ids = []
            with self._q.tran_lock, self._conn() as conn:
                for it in new:
                    cur = conn.execute(self._q._sql_insert, (self._q._serializer.dumps(_data(it)), time.time()))
                    ids.append(cur.lastrowid)
            self._q.total += len(new)
            made = {id(it): self._remember(replace(it, id=int(pqid or 0))) for it, pqid in zip(new, ids)}
            return [made.get(id(it), it) for it in out]

    def lease(self, item_id: int) -> QueueItem | None:
        """Mark the item in flight and hand it out; None when it is no longer ready (dropped or
        failed by a person's command meanwhile)."""
        with self._lock:
            it = self._items.get(item_id)
            if it is None or it.state != "ready":
                return None
            it = replace(it, attempts=it.attempts + 1, state="in-flight")
            self._write(it, AckStatus.unack)  # the state is the row's status, not in its data
            return self._store(it)

    def ack(self, item_id: int) -> None:
        """The item's effect is complete on the target (or it no longer has one)."""
        with self._lock:
            self._ack(item_id)

    def release(self, item_id: int, error: str | None = None,
                not_before: dt.datetime | None = None, count_attempt: bool = True) -> None:
        """Back to ready, with its last error and a time before which it is not tried.
        `count_attempt`: whether what just happened was an attempt (a failed connection is,
        even before the item was leased; a pause at a window's end is not)."""
        with self._lock:
            it = self._items.get(item_id)
            if it is None:
                return
            it = replace(
                it, state="ready", last_error=error if error is not None else it.last_error,
                next_attempt=not_before.isoformat(timespec="seconds") if not_before else None,
                attempts=_attempts_after(it, count_attempt), cause=None,
            )
            self._write(it, AckStatus.ready)
            self._store(it)

    def fail(self, item_id: int, error: str, cause: str | None = None) -> None:
        """Needs a person: stays failed until `queue retry`. `cause` names the alert that
        tells the person about it."""
        with self._lock:
            it = self._items.get(item_id)
            if it is None:
                return
            it = replace(it, state="failed", last_error=error, next_attempt=None, cause=cause)
            self._write(it, AckStatus.ack_failed)
            self._store(it)

    def retry(self, item_ids: Iterable[int]) -> int:
        """Failed or parked items become ready now."""
        n = 0
        with self._lock:
            for item_id in item_ids:
                it = self._items.get(item_id)
                if it is None or it.state == "in-flight":
                    continue
                self.release(item_id, not_before=None, count_attempt=False)  # a user retry is no attempt
                n += 1
        return n

    def drop(self, item_id: int, before: Callable[[QueueItem], None] = lambda it: None) -> QueueItem:
        """Remove an item a person dropped: KeyError when there is none, ValueError while it is
        in flight. `before` runs first, under the queue's lock, so the check, what it records
        and the removal are one step that no lease can come between."""
        with self._lock:
            it = self._items[item_id]
            if it.state == "in-flight":
                raise ValueError(f"queue item {item_id} is in flight")
            before(it)
            self._ack(item_id)
            return it

    def _write(self, it: QueueItem, status: object) -> None:
        """An item's data and status in ONE statement: persist-queue's update() and then
        get()/nack()/ack_failed() would be two commits for one change."""
        with self._q.tran_lock, self._conn() as conn:
            conn.execute(f"UPDATE {_TABLE} SET data = ?, status = ? WHERE _id = ?",
                         (self._q._serializer.dumps(_data(it)), int(status), it.id))  # type: ignore[call-overload]

    def _ack(self, item_id: int) -> None:
        self._q.ack(id=item_id)
        self._forget(item_id)
        self._acked_since_clear += 1
        if self._acked_since_clear >= 1000:
            # persist-queue keeps acked rows until told (#77/#84/#150).
            self._q.clear_acked_data(keep_latest=0, clear_ack_failed=False)
            self._acked_since_clear = 0

    def compact(self) -> None:
        """Drop acknowledged rows and give the space back (at start and now and then)."""
        with self._lock:
            self._q.clear_acked_data(keep_latest=0, clear_ack_failed=False)
            self._q.shrink_disk_usage()
            self._acked_since_clear = 0


def count_rows(folder: Path) -> int:
    """Rows in the queue database, acknowledged ones not yet pruned included (for metrics)."""
    db = Path(folder) / "data.db"
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def read_items(folder: Path) -> list[QueueItem]:
    """Every live item, read through SQLite opened read-only: the writer is never disturbed."""
    db = Path(folder) / "data.db"
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                f"SELECT _id, data, status FROM {_TABLE} WHERE status != ? ORDER BY _id",
                (int(AckStatus.acked),),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise StateError(f"{db}: the queue database cannot be read ({e})") from None
    except sqlite3.DatabaseError as e:
        raise StateError(f"{db}: the queue database cannot be read ({e})") from None
    out = []
    for pqid, data, status in rows:
        raw = json.loads(data)
        out.append(_item(pqid, raw, status))
    return out
