"""`offsite sync` when no agent runs: the job's own turn (job.py), run once in the command's
process, with the state directory's lock held by the command.

Absence is not evidence (SPEC section 8): a file the target holds that this one look at the
source missed is gone only when a look `settle` later misses it too. So when the first turn
leaves such files, the sync waits out `settle` and takes one more turn.
"""
from __future__ import annotations

import time

from .job import JobRunner
from .mailbox import Request


def sync_once(runner: JobRunner, allow_deletes: bool, accept_changes: bool, settle: float) -> dict:
    """The sync's answer, as the agent gives it to `offsite sync` (ok, error, held, result,
    waiting_files, changed); ok False when it was stopped (runner.stop) before the end."""
    result: dict = {}
    runner.stop_reason = "the sync was interrupted"

    def turn() -> None:
        runner.request(Request("sync", allow_deletes, result.update, accept_changes=accept_changes))
        runner.step()
        runner.remember()

    try:
        turn()
        due = runner.view.first_missed([p for p in runner.view.unknown_paths()
                                        if p in (runner.plan.target_files or {})])
        if due is not None and not runner.stopping.is_set():
            runner.stopping.wait(max(0.0, due + settle - time.monotonic()))
            if not runner.stopping.is_set():
                turn()
    finally:
        runner.close()
    if runner.stopping.is_set():
        result["ok"] = False
        result["error"] = "interrupted; the transfer resumes at the next sync"
    return result
