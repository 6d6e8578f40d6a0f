"""Queue operations a user asks for (`queue retry`, `queue drop`), done the same way by the
running agent (on a request from its mailbox) and by a command when no agent runs."""
from __future__ import annotations

from typing import Mapping

from ..errors import UsageError
from ..queue import QueueItem, WorkQueue
from ..selection import Plan
from ..state import StateDir


def retry(queue: WorkQueue, ids: list[int] | None) -> list[QueueItem]:
    """Make the named items (or, with None, every failed one) ready now."""
    items = queue.items()
    if ids is None:
        chosen = [i for i in items if i.state == "failed"]
    else:
        known = {i.id: i for i in items}
        missing = [i for i in ids if i not in known]
        if missing:
            raise UsageError(f"no queue item with ID {missing[0]}")
        chosen = [known[i] for i in ids]
    queue.retry(i.id for i in chosen)
    return chosen


def drop(queue: WorkQueue, state: StateDir, item_id: int) -> QueueItem:
    """Remove an item, and remember not to queue the same operation on the same file version."""
    it = queue.get(item_id)
    if it is None:
        raise UsageError(f"no queue item with ID {item_id}")
    if it.state == "in-flight":
        raise UsageError(f"queue item {item_id} is being transferred right now; try again when it is not")

    def remember(d: dict) -> None:
        d.setdefault(it.job, {})[it.path] = {"op": it.op, "size": it.size, "mtime_ns": it.mtime_ns}

    state.update_json("dropped.json", remember)
    queue.drop(item_id)
    return it


def take_over(job, state: StateDir) -> str:
    """`offsite reinit`: write this job's owner ID into its target folder, replacing another's.
    Returns the target's description."""
    from ..targets import make_target

    target = make_target(job)
    target.open()
    try:
        target.write_owner(state.owner_id(job.name) or state.new_owner_id(job.name))
        return target.describe()
    finally:
        target.close()


def without_dropped(p: Plan, dropped: Mapping[str, dict], entries: Mapping) -> Plan:
    """The plan less the operations the user dropped: a dropped upload only for the same
    version of the file (size and mtime), so a changed file is sent again."""
    def is_dropped(op: str, path: str) -> bool:
        d = dropped.get(path)
        if not d or d.get("op") != op:
            return False
        e = entries.get(path)
        return op == "delete" or (e is not None and [e.size, e.mtime_ns] == [d.get("size"), d.get("mtime_ns")])

    if dropped:
        p.uploads = [u for u in p.uploads if not is_dropped("upload", u)]
        p.deletes = [d for d in p.deletes if not is_dropped("delete", d)]
        p.mirrored = [d for d in p.mirrored if not is_dropped("delete", d)]
    return p
