"""Alert rules (SPEC section 6): which alerts hold for a job, and what to send about them.

Pure: the facts about a job and `now` come in, alerts and messages go out. The agent
gathers the facts (agent/watch.py), this module decides, and `Book` remembers what was
sent, so an alert is sent once when it starts, again after `repeat` while it lasts, once
when it clears, and a restart neither repeats nor forgets it (the book is kept in the
state directory).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .config.options import AGENT_OPTIONS, JOB_OPTIONS
from .units import format_duration

NAMES = ("job-error", "lag", "queue", "source-inactive", "target-space", "deletes-held",
         "owner-mismatch", "agent-restarted", "source-corrupt", "verify-failed", "source-changed",
         "source-unreadable", "restorable", "lock-not-enforced", "falling-behind")
HISTORY = 200  # events kept in the book, newest last


@dataclass(frozen=True)
class Limits:
    """A job's thresholds; None is "off". The defaults are the options' (config/options.py)."""

    max_lag: float | None = JOB_OPTIONS["max_lag"].value
    max_rpo: float | None = JOB_OPTIONS["max_rpo"].value
    max_pending_files: int | None = JOB_OPTIONS["max_pending_files"].value
    max_pending_bytes: int | None = JOB_OPTIONS["max_pending_bytes"].value
    inactive_after: float | None = JOB_OPTIONS["inactive_after"].value
    min_free: int | None = JOB_OPTIONS["min_free"].value
    retry_for: float = AGENT_OPTIONS["retry_for"].value


@dataclass(frozen=True)
class Facts:
    """What the agent knows of one job at one moment."""

    state: str  # starting | idle | syncing | waiting | paused | error
    error: str | None = None  # a permanent failure
    trouble: str | None = None  # a transient failure being retried
    trouble_since: float | None = None  # epoch seconds the transient trouble began
    owner: str = "unknown"
    held_deletes: int = 0
    held_reason: str | None = None
    pending_files: int = 0
    pending_bytes: int = 0
    lag_seconds: float = 0.0
    newest_source: float | None = None  # epoch seconds of the newest backup file at the source
    free_bytes: int | None = None  # on the target, None where unknown
    target: str = ""
    corrupt: tuple[str, ...] = ()  # images at the source that do not match their .md5 sidecar
    verify_bad: tuple[str, ...] = ()  # copies the last verify found not as sent
    changed: tuple[str, ...] = ()  # ShadowProtect files changed at the source after they were sent
    unreadable: tuple[tuple[str, str], ...] = ()  # source folders that fail to read: (folder, error)
    # per volume or definition: (chain, newest restorable point or None, its time (None: not known),
    # first missing link)
    restorable: tuple[tuple[str, str | None, float | None, str | None], ...] = ()
    lock_problem: str | None = None  # what the last lock canary's store allowed (object_lock_days)
    falling_behind: str | None = None  # what the backlog forecast says the job needs (backlog.py)


def conditions(job: str, f: Facts, limits: Limits, now: dt.datetime) -> dict[str, str]:
    """The alerts that hold for `job`, each with what happened and what to do next."""
    out: dict[str, str] = {}
    t = now.timestamp()
    if f.owner == "mismatch":
        out["owner-mismatch"] = (f"the target folder {f.target} is owned by another job or agent. Nothing is "
                                 f"sent. If this agent should take it over, run 'offsite reinit {job}'.")
    elif f.error:
        out["job-error"] = f"{f.error}. Nothing is sent until this is fixed; 'offsite status' shows the details."
    elif f.trouble and f.trouble_since is not None and t - f.trouble_since >= limits.retry_for:
        out["job-error"] = (f"{f.trouble}, for {format_duration(t - f.trouble_since)}. offsite keeps retrying; check the "
                            f"server and the network.")
    if f.held_deletes:
        out["deletes-held"] = (f"{f.held_deletes} deletion(s) on the target are held back: {f.held_reason}. "
                               f"Check the source; if they are intended, run 'offsite sync {job} --allow-deletes'.")
    if limits.max_lag is not None and f.lag_seconds > limits.max_lag:
        out["lag"] = (f"the offsite copy is {format_duration(f.lag_seconds)} behind (limit {format_duration(limits.max_lag)}), with "
                      f"{f.pending_files} file(s) waiting. Check the job's windows, bandwidth and errors.")
    over = []
    if limits.max_pending_files is not None and f.pending_files > limits.max_pending_files:
        over.append(f"{f.pending_files} files (limit {limits.max_pending_files})")
    if limits.max_pending_bytes is not None and f.pending_bytes > limits.max_pending_bytes:
        over.append(f"{_size(f.pending_bytes)} (limit {_size(limits.max_pending_bytes)})")
    if over:
        out["queue"] = (f"the replication queue holds {' and '.join(over)}. The link may be too slow for the "
                        f"backups, or the windows too short.")
    if limits.inactive_after is not None and f.newest_source is not None \
            and t - f.newest_source > limits.inactive_after:
        out["source-inactive"] = (f"no new backup file at the source for {format_duration(t - f.newest_source)} (limit "
                                  f"{format_duration(limits.inactive_after)}). Check that the backups still run.")
    if f.corrupt:
        names = ", ".join(f.corrupt[:5]) + (f" and {len(f.corrupt) - 5} more" if len(f.corrupt) > 5 else "")
        out["source-corrupt"] = (f"{len(f.corrupt)} image(s) at the source do not match their .md5 sidecar: {names}. "
                                 f"The backup itself is damaged (the backup server's disk?) and is not sent. Check "
                                 f"it with ImageManager; once it is restored, 'offsite queue retry' sends it.")
    if f.changed:
        names = ", ".join(f.changed[:5]) + (f" and {len(f.changed) - 5} more" if len(f.changed) > 5 else "")
        out["source-changed"] = (
            f"{len(f.changed)} backup file(s) changed at the source after they were sent: {names}. ShadowProtect "
            f"writes a file once and never changes it, so this is damage or tampering (ransomware?). The copies "
            f"offsite are kept as they were, nothing is sent over them, and no deletion is mirrored until this is "
            f"resolved: restore the files at the source, or, if the change is intended, run 'offsite sync {job} "
            f"--accept-changes' (the offsite copies then go to the bin).")
    if f.unreadable:
        where = "; ".join(f"{folder or 'the source folder itself'}: {error}" for folder, error in f.unreadable[:5])
        more = f"; and {len(f.unreadable) - 5} more" if len(f.unreadable) > 5 else ""
        out["source-unreadable"] = (
            f"part of the source cannot be read ({where}{more}). Nothing under it is sent or deleted offsite until "
            f"it reads again. Check the disk or the share the backups are on.")
    if f.verify_bad:
        names = ", ".join(f.verify_bad[:5]) + (f" and {len(f.verify_bad) - 5} more" if len(f.verify_bad) > 5 else "")
        out["verify-failed"] = (f"the last verify found {len(f.verify_bad)} copy(ies) on the target not as sent: "
                                f"{names}. Check the target's storage; 'offsite verify {job}' lists them, and a "
                                f"copy deleted on the target is sent again at the next rescan.")
    stale = [(c, when, missing) for c, point, when, missing in f.restorable
             if limits.max_rpo is not None and (point is None or (when is not None and t - when > limits.max_rpo))]
    if stale:
        said = "; ".join(
            f"{c}: " + ("nothing restorable offsite" if when is None else
                        f"the newest point restorable offsite is {format_duration(t - when)} old")
            + (f", {missing} is missing there" if missing else "") for c, when, missing in stale[:5])
        more = f"; and {len(stale) - 5} more" if len(stale) > 5 else ""
        assert limits.max_rpo is not None
        out["restorable"] = (f"{said}{more} (max_rpo {format_duration(limits.max_rpo)}). A restore from the offsite "
                             f"copy alone would lose more than that: check the job's queue, errors and windows.")
    if f.falling_behind:
        out["falling-behind"] = f.falling_behind
    if f.lock_problem:
        out["lock-not-enforced"] = (
            f"{f.lock_problem}. object_lock_days is set, but the lock does not hold there: whoever has the "
            f"job's keys can destroy the backups. Check that the bucket has object lock and that the store "
            f"enforces it; the canary is tried again every hour, and this clears once it holds.")
    if limits.min_free is not None and f.free_bytes is not None and f.free_bytes < limits.min_free:
        out["target-space"] = (f"the target {f.target} has {_size(f.free_bytes)} free (limit "
                               f"{_size(limits.min_free)}). Free space there or raise the quota.")
    return out


@dataclass(frozen=True)
class Event:
    kind: str  # start | repeat | clear
    job: str  # "" for the agent itself
    name: str
    message: str
    since: str


@dataclass
class Book:
    """The alerts in force ("job/name" -> since, message, sent) and recent events."""

    active: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, data: object) -> Book:
        """From alerts.json; anything unreadable there is an empty book."""
        if not isinstance(data, dict) or not isinstance(data.get("active", {}), dict) \
                or not isinstance(data.get("history", []), list):
            return cls()
        return cls(dict(data.get("active", {})), list(data.get("history", [])))

    def to_json(self) -> dict:
        return {"active": self.active, "history": self.history[-HISTORY:]}

    def update(self, held: dict[tuple[str, str], str], judged: set[str], now: dt.datetime,
               repeat: float | None) -> list[Event]:
        """`held`: (job, name) -> message for every alert that holds now, among the jobs in
        `judged` (and "" for the agent). Alerts of jobs not judged this time (still starting)
        stay as they are. Returns what must be sent."""
        events: list[Event] = []
        stamp = now.isoformat(timespec="seconds")
        for (job, name), message in sorted(held.items()):
            key = f"{job}/{name}"
            a = self.active.get(key)
            if a is None:
                self.active[key] = {"since": stamp, "message": message, "sent": stamp}
                events.append(Event("start", job, name, message, stamp))
            else:
                a["message"] = message
                if repeat is not None and (now - dt.datetime.fromisoformat(a["sent"])).total_seconds() >= repeat:
                    a["sent"] = stamp
                    events.append(Event("repeat", job, name, message, a["since"]))
        for key in sorted(self.active):
            job, name = key.split("/", 1)
            if (job in judged) and (job, name) not in held:
                a = self.active.pop(key)
                events.append(Event("clear", job, name, a["message"], a["since"]))
        for e in events:
            self.history.append({"at": stamp, "kind": e.kind, "job": e.job, "alert": e.name})
        del self.history[:-HISTORY]
        return events

    def of_job(self, job: str) -> list[dict]:
        """The job's active alerts, as `status --json` shows them."""
        out = []
        for key, a in sorted(self.active.items()):
            j, name = key.split("/", 1)
            if j == job:
                out.append({"name": name, "since": a["since"], "message": a["message"]})
        return out


def subject(e: Event, host: str) -> str:
    what = {"start": "ALERT", "repeat": "STILL", "clear": "CLEARED"}[e.kind]
    return f"[offsite {host}] {what} {e.name}" + (f" on job {e.job}" if e.job else "")


def body(e: Event, host: str) -> str:
    where = f"job {e.job} on {host}" if e.job else f"the offsite agent on {host}"
    if e.kind == "clear":
        return f"{e.name} has cleared for {where} (it had started {e.since}). Was: {e.message}"
    lead = "still holds" if e.kind == "repeat" else "started"
    return f"{e.name} {lead} for {where} (since {e.since}): {e.message}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
