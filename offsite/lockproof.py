"""The record of each job's last lock canary (`object_lock_days`; the canary itself is
targets/s3_lock.py): lock.json in the state directory, written by the agent's upkeep (or a
standalone `offsite sync`, which runs the same turn) and read for `status` with or without
an agent. `offsite check` runs a canary of its own and records nothing.
"""
from __future__ import annotations

from .config import Job
from .state import StateDir

LOCK_FILE = "lock.json"


def where(job: Job) -> str:
    """The target a canary proved, as the record names it: a canary of another bucket,
    prefix, folder or endpoint says nothing of this one."""
    o = job.location.options
    return f"{job.location.describe()} folder {job.folder}" + (f" at {o['endpoint']}" if o.get("endpoint") else "")


def record(state: StateDir, job: Job, checked: str, problem: str | None) -> dict:
    """Keep a canary's result: when (`checked`, ISO), whether the lock held, what the store
    allowed. Returns it as kept."""
    kept = {"checked": checked, "ok": problem is None, "problem": problem, "target": where(job)}
    state.update_json(LOCK_FILE, lambda d: d.__setitem__(job.name, kept))
    return kept


def last(state: StateDir, job: Job) -> dict | None:
    """The job's last canary as `record` kept it; None without object_lock_days, or when none
    was made on the job's present target."""
    if not job.location.options.get("object_lock_days"):
        return None
    kept = state.read_json(LOCK_FILE, {})
    found = kept.get(job.name) if isinstance(kept, dict) else None
    if not isinstance(found, dict) or found.get("target") != where(job) or not isinstance(found.get("checked"), str):
        return None
    return found
