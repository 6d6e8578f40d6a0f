"""Who owns a target folder: the owner ID a job writes into its folder on the target
(`.offsite/owner`), checked before anything is written there, so two agents or two jobs
never share one folder (SPEC section 7). One check, used by the job's sessions and by
`offsite check`; `offsite reinit` takes a folder over.
"""
from __future__ import annotations

from typing import Any

from .errors import OwnerMismatch
from .state import StateDir


def check_owner(target: Any, state: StateDir, job: str, claim: bool) -> str:
    """"ok" when the folder carries this job's owner ID; "unset" when it carries none (and,
    with `claim`, this job's ID is written, making it "ok"). Raises OwnerMismatch when it
    carries another's."""
    mine, theirs = state.owner_id(job), target.read_owner()
    if theirs is None:
        if not claim:
            return "unset"
        target.write_owner(mine or state.new_owner_id(job))
        return "ok"
    if theirs != mine:
        raise OwnerMismatch(
            f"target folder is owned by another job: {target.describe()} carries another owner ID; "
            f"run 'offsite reinit {job}' to take it over"
        )
    return "ok"


def take_over(job: Any, state: StateDir) -> str:
    """`offsite reinit`: write this job's owner ID into its target folder, replacing another's.
    Returns the target's description."""
    from .targets import make_target

    target = make_target(job)
    target.open()
    try:
        target.write_owner(state.owner_id(job.name) or state.new_owner_id(job.name))
        return target.describe()
    finally:
        target.close()
