"""The state directory: queue, owner IDs, results, status and the control mailbox.

Layout (created owner-only):
    agent.lock        held by the one process that may write (the agent, or a standalone sync)
    queue/            the durable queue (persist-queue, SQLite)
    owners.json       each job's owner ID, as written into its target folder
    results.json      each job's last sync result
    dropped.json      operations the user dropped with `queue drop`, by file version
    accepted.json     versions of files changed at the source that a person let replace
                      their offsite copies (`queue retry`, `sync --accept-changes`)
    mirrored.json     when each job's recent mirrored image deletions were made (max_deletes
                      counts the last 24 hours)
    status.json       the running agent's view, rewritten every second
    control/          requests from commands to the running agent, and its replies
    logs/offsite.log  the agent's log
    alerts.json       the alerts in force and recent alert events
    hashes.db         the MD5 of every file as it was published (SQLite), for `offsite verify`
    verify.json       each job's last verify result
    lock.json         each job's last lock canary (object_lock_days)
    format.json       the state format: a newer agent migrates an older state in place, an
                      older agent refuses a newer one (SPEC section 7)
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import OffsiteError, StateError
from .system import FileLock, make_private_dir, open_private

# The state format this offsite writes. Format 0 is a state written before formats were
# recorded (offsite 0.1): the same layout, without format.json. A migration from format n
# to n + 1 is MIGRATIONS[n]; each leaves the state readable by the version after it.
FORMAT = 2
# 1 -> 2 (offsite 0.3): queue items may carry a `cause`, hashes.db records each published
# file's modification time, and accepted.json and mirrored.json appear: nothing to rewrite
# (the new fields have defaults; hashes.db gains its column when it is opened), but an
# older offsite would not read the new items, so it must refuse this state.
MIGRATIONS: dict[int, Callable[["StateDir"], None]] = {0: lambda state: None, 1: lambda state: None}
LOCK_WAIT = 2.0  # seconds an agent or sync tries for the state lock (a status probe holds it an instant)


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.queue_dir = self.root / "queue"
        self.control_dir = self.root / "control"
        self.log_dir = self.root / "logs"
        self.lock = FileLock(self.root / "agent.lock")
        self._write_lock = threading.Lock()

    def ensure(self) -> None:
        """Create the state directory, or bring an older one to this version's format."""
        existing = self.format(write=False)
        try:
            make_private_dir(self.root)
            for d in (self.queue_dir, self.control_dir, self.log_dir):
                make_private_dir(d)
        except OSError as e:
            raise StateError(f"{self.root}: cannot create the state directory ({e.strerror})") from None
        if existing is None or existing < FORMAT:
            self.format(write=True)

    def format(self, write: bool) -> int | None:
        """The state's format (None: no state yet); a newer one than this offsite reads is a
        StateError. With `write`, an older state is migrated in place, one format at a time,
        each step recorded atomically, so an interrupted migration resumes where it stopped."""
        doc = self.root / "format.json"
        data: dict = {}
        if doc.exists():
            data = self.read_json("format.json", None)
            if not isinstance(data, dict) or not isinstance(data.get("format"), int):
                raise StateError(f"{doc}: unreadable; it should say which state format this is")
            found: int | None = data["format"]
        elif (self.queue_dir / "data.db").exists() or (self.root / "owners.json").exists():
            found = 0  # written before formats were recorded
        else:
            found = None
        if found is not None and found > FORMAT:
            raise StateError(
                f"{self.root} was written by a newer offsite ({data.get('written_by', 'unknown version')}, state "
                f"format {found}); this offsite {__version__} reads formats up to {FORMAT}: upgrade offsite")
        if write:
            n = FORMAT if found is None else found
            while n < FORMAT:
                MIGRATIONS[n](self)
                n += 1
                self.write_json("format.json", {"format": n, "written_by": f"offsite {__version__}"})
            if found is None:
                self.write_json("format.json", {"format": FORMAT, "written_by": f"offsite {__version__}"})
        return found

    def agent_running(self) -> bool:
        return self.lock.held_by_other()

    def take_lock(self, kind: str) -> bool:
        """Become the one writer; `kind` ("agent" or "sync") tells others who holds it."""
        if not self.lock.acquire(wait=LOCK_WAIT):
            return False
        self.write_json("holder.json", {"kind": kind, "pid": os.getpid()})
        return True

    def holder(self) -> dict:
        """Who holds the lock, as written by take_lock (meaningful while it is held)."""
        return self.read_json("holder.json", {})

    # -- small JSON documents, replaced atomically
    def read_json(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.root / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except (OSError, ValueError):
            return default

    def write_json(self, name: str, data: Any) -> None:
        path = self.root / name
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open_private(tmp) as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise StateError(f"{path}: cannot write ({e.strerror})") from None

    def update_json(self, name: str, change: Callable[[dict], None]) -> dict:
        with self._write_lock:
            data = self.read_json(name, {})
            change(data)
            self.write_json(name, data)
            return data

    # -- owner IDs
    def size_bytes(self) -> int:
        """The state directory's size: queue, logs, results, alerts."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    def owner_id(self, job: str) -> str | None:
        return self.read_json("owners.json", {}).get(job)

    def new_owner_id(self, job: str) -> str:
        owner = f"{job}:{uuid.uuid4().hex}"
        self.update_json("owners.json", lambda d: d.__setitem__(job, owner))
        return owner

    # -- control mailbox: commands ask the running agent to act
    def submit(self, request: dict) -> str:
        rid = uuid.uuid4().hex
        tmp = self.control_dir / f".{rid}.tmp"
        with open_private(tmp) as f:
            json.dump(request, f)
        os.replace(tmp, self.control_dir / f"{rid}.request")
        return rid

    def requests(self) -> list[tuple[str, dict]]:
        out = []
        for p in sorted(self.control_dir.glob("*.request")):
            try:
                out.append((p.stem, json.loads(p.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                pass
            p.unlink(missing_ok=True)
        return out

    def reply(self, rid: str, data: dict) -> None:
        self.write_json(f"control/{rid}.reply", data)

    def wait_reply(self, rid: str, timeout: float | None = None) -> dict:
        """Wait for the agent's reply; fail if the agent stops before answering."""
        path = self.control_dir / f"{rid}.reply"
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if path.exists():
                data = json.loads(path.read_text(encoding="utf-8"))
                path.unlink(missing_ok=True)
                return data
            if not self.agent_running():
                (self.control_dir / f"{rid}.request").unlink(missing_ok=True)
                raise OffsiteError("the agent stopped before it answered")
            if deadline is not None and time.monotonic() > deadline:
                raise OffsiteError("the agent did not answer in time")
            time.sleep(0.2)


class Hashes:
    """The MD5 of every published file, as computed from the bytes sent (state/hashes.db).
    One row per job and path, replaced when a new version is published, removed when the
    file is deleted on the target; written by the job coordinators, read by `verify`."""

    def __init__(self, root: Path, readonly: bool = False) -> None:
        db = Path(root) / "hashes.db"
        try:
            if readonly:
                self._db = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10,
                                           check_same_thread=False) if db.exists() else None
            else:
                self._db = sqlite3.connect(str(db), timeout=30, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS published (job TEXT, path TEXT, size INTEGER, "
                                 "md5 TEXT, at REAL, mtime_ns INTEGER, PRIMARY KEY (job, path))")
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(published)")}
                if "mtime_ns" not in columns:  # written by offsite 0.2
                    self._db.execute("ALTER TABLE published ADD COLUMN mtime_ns INTEGER")
                self._db.commit()
        except sqlite3.Error as e:
            raise StateError(f"{db}: cannot open the hash records ({e})") from None
        self._lock = threading.Lock()

    def record(self, job: str, path: str, size: int, md5: str, mtime_ns: int | None = None) -> None:
        assert self._db is not None
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO published (job, path, size, md5, at, mtime_ns) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (job, path, size, md5, time.time(), mtime_ns))
            self._db.commit()

    def versions(self, job: str) -> dict[str, tuple[int, int, float]]:
        """path -> (size, mtime_ns, when published) of each file as the agent published it
        (where its time was recorded)."""
        if self._db is None:
            return {}
        with self._lock:
            try:
                rows = self._db.execute("SELECT path, size, mtime_ns, at FROM published WHERE job = ? AND "
                                        "mtime_ns IS NOT NULL", (job,)).fetchall()
            except sqlite3.OperationalError:
                return {}  # a read-only look at a hashes.db of offsite 0.2
        return {p: (size, mtime, at) for p, size, mtime, at in rows}

    def forget(self, job: str, path: str) -> None:
        assert self._db is not None
        with self._lock:
            self._db.execute("DELETE FROM published WHERE job = ? AND path = ?", (job, path))
            self._db.commit()

    def of_job(self, job: str) -> dict[str, tuple[int, str, float]]:
        """path -> (size, md5, when published)."""
        if self._db is None:
            return {}
        with self._lock:
            rows = self._db.execute("SELECT path, size, md5, at FROM published WHERE job = ?", (job,)).fetchall()
        return {p: (size, md5, at) for p, size, md5, at in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
