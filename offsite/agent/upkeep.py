"""A job's looks after its target besides sending: the bin (its size for status, and days
older than `keep_deleted` purged), the target's free space (for the `target-space` alert),
the scheduled verify (`verify_every`) and, with `object_lock_days`, the lock canary (the
`lock-not-enforced` alert). The job's coordinator calls these with the time of its turn; each
takes an open target session.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading

from ..config import Job
from ..errors import OffsiteError
from ..lockproof import last as last_lock
from ..lockproof import record as record_lock
from ..state import Hashes, StateDir
from ..targets import Target
from ..verify import last, record, verify
from .report import Tally, epoch, iso
from .throttle import Throttle
from .transfer import Sessions

log = logging.getLogger(__name__)

SPACE_EVERY = 300.0  # seconds between looks at the target's free space, besides reconciliations
VERIFY_SAMPLE = 10.0  # percent of the copy a scheduled verify (verify_every) reads back
LOCK_EVERY = 86400.0  # seconds from a lock canary that held to the next (object_lock_days)
LOCK_RETRY = 3600.0  # seconds from one that did not hold, or got no answer, to the next


class Upkeep:
    def __init__(self, job: Job, state: StateDir, hashes: Hashes, throttle: Throttle, stopping: threading.Event,
                 tally: Tally) -> None:
        self.job, self.state, self.hashes, self.throttle, self.stopping = job, state, hashes, throttle, stopping
        self.tally = tally
        self.free_bytes: int | None = None  # on the target, where the protocol tells
        self._free_at = 0.0  # next look at the target's free space (monotonic)
        self._verify_at: float | None = None  # next scheduled verify (epoch seconds), once known
        # The last lock canary, as lock.json keeps it (read at start: an alert it raised holds
        # through a restart), and the next one (epoch seconds): a day after one that held, an
        # hour after one that did not, at the first look when none was made on this target.
        self.lock: dict | None = last_lock(state, job)
        checked = epoch(self.lock["checked"]) if self.lock else None
        self._lock_at = 0.0 if self.lock is None or checked is None else (
            checked + (LOCK_EVERY if self.lock["ok"] else LOCK_RETRY))

    def turn(self, sessions: Sessions, mono: float, now: dt.datetime, may_verify: bool, listed: bool) -> None:
        """After a round: a scheduled verify when due and `may_verify` (inside the window), a
        look at the free space when due and the target was `listed`."""
        if may_verify and self.verify_due(now):
            # Not reused: ProFTPD's mod_digest caches a file's hash in the session by path,
            # size and second, so a file replaced since could be answered from the cache.
            with sessions.session(reuse=False) as target:
                self.verify(target, now)
        if self.space_due(mono) and listed:
            with sessions.session() as target:
                self.look_at_space(target, mono)
        if listed and self.lock_due(now) and not self.stopping.is_set():
            with sessions.session() as target:
                self.prove_lock(target, now)

    # ---------------------------------------------------------------- the bin
    def tend_bin(self, target: Target, now: dt.datetime) -> None:
        """The bin's size, for status, and days older than keep_deleted purged."""
        binned = target.bin_list()
        keep = self.job.keep_deleted or 0
        expired = set()
        for b in binned:
            try:
                ended = dt.datetime.fromisoformat(b.day).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
            except ValueError:
                continue  # not a day the agent wrote: left alone
            if (now - ended).total_seconds() >= keep:
                expired.add(b.day)
        for day in sorted(expired):
            target.purge_bin(day)
            log.info("job %s: purged the bin's files of %s (keep_deleted)", self.job.name, day)
        kept = [b for b in binned if b.day not in expired]
        self.tally.bin_bytes, self.tally.bin_files = sum(b.size for b in kept), len(kept)

    # ---------------------------------------------------------------- free space
    def space_due(self, mono: float) -> bool:
        return self.job.min_free is not None and mono >= self._free_at

    def look_at_space(self, target: Target, mono: float) -> None:
        """The target's free space, for the target-space alert: at each reconciliation and
        every few minutes while transfers run, only when the job watches it."""
        if self.job.min_free is None:
            return
        self._free_at = mono + SPACE_EVERY
        try:
            self.free_bytes = target.free_space()
        except OffsiteError as e:
            log.debug("job %s: free space unknown (%s)", self.job.name, e)
            self.free_bytes = None

    # ---------------------------------------------------------------- scheduled verify
    def verify_due(self, now: dt.datetime) -> bool:
        """Is a scheduled verify due: verify_every after the last one recorded (read once;
        then kept as verifies run)?"""
        if self.job.verify_every is None:
            return False
        if self._verify_at is None:
            finished = epoch((last(self.state, self.job.name) or {}).get("finished"))
            self._verify_at = (finished or 0.0) + self.job.verify_every
        return now.timestamp() >= self._verify_at

    def verify(self, target: Target, now: dt.datetime) -> None:
        """A sampled verify of the offsite copy, in the job's window (verify_every)."""
        assert self.job.verify_every is not None
        result = record(self.state, self.job.name, verify(
            target, self.job.family, self.hashes.of_job(self.job.name), VERIFY_SAMPLE, None, now,
            consume=lambda n: self.throttle.consume(n, self.stopping)))
        self._verify_at = now.timestamp() + self.job.verify_every
        self.tally.counters["verified_files"] += result["files_checked"]
        self.tally.counters["verify_mismatches"] += len(result["mismatches"])
        (log.error if result["mismatches"] else log.info)(
            "job %s: verified %d file(s) on the target (%d bytes read): %s", self.job.name, result["files_checked"],
            result["bytes_read"], "; ".join(f"{m['path']} {m['problem']}" for m in result["mismatches"]) or "all good")

    # ---------------------------------------------------------------- the lock canary
    def lock_due(self, now: dt.datetime) -> bool:
        """Is a lock canary due (only with object_lock_days)?"""
        return bool(self.job.location.options.get("object_lock_days")) and now.timestamp() >= self._lock_at

    def prove_lock(self, target: Target, now: dt.datetime) -> None:
        """The lock canary (s3_lock.py): its result kept in lock.json, for status and the
        lock-not-enforced alert; no answer leaves the last result as it was."""
        try:
            problem = target.lock_canary()
        except OffsiteError as e:
            self._lock_at = now.timestamp() + LOCK_RETRY
            log.warning("job %s: the lock canary got no answer (%s); trying again in an hour", self.job.name, e)
            return
        self.lock = record_lock(self.state, self.job, str(iso(now)), problem)
        self._lock_at = now.timestamp() + (LOCK_RETRY if problem else LOCK_EVERY)
        if problem:
            log.error("job %s: the object lock does not hold: %s", self.job.name, problem)
        else:
            log.info("job %s: the object lock holds: the store refused to overwrite, delete or unlock the lock "
                     "canary", self.job.name)
