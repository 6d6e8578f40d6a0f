"""Queue operations a user asks for (`queue retry`, `queue drop`), done the same way by the
running agent (on a request from its mailbox) and by a command when no agent runs."""
from __future__ import annotations

from typing import Sequence

from ..errors import OffsiteError, UsageError
from ..queue import CHANGED, QueueItem, WorkQueue
from ..state import StateDir


def retry(queue: WorkQueue, state: StateDir, ids: list[int] | None) -> list[QueueItem]:
    """Make the named items (or, with None, every failed one but those changed at the source)
    ready now. A file changed at the source after it was sent (source-changed), named by its
    ID, is accepted in its present version: it is sent, its previous offsite copy going to
    the bin (SPEC section 8)."""
    items = queue.items()
    if ids is None:
        # Not the files changed at the source: "retry every failed file" after a read error
        # is routine, accepting a tampered backup must never be (sync --accept-changes, or
        # queue retry ID, a person naming the file).
        chosen = [i for i in items if i.state == "failed" and i.cause != CHANGED]
    else:
        known = {i.id: i for i in items}
        missing = [i for i in ids if i not in known]
        if missing:
            raise UsageError(f"no queue item with ID {missing[0]}")
        chosen = [known[i] for i in ids]
    accept(state, [(i.job, i.path, i.size, i.mtime_ns) for i in chosen if i.cause == CHANGED])
    queue.retry(i.id for i in chosen)
    return chosen


def accept(state: StateDir, versions: Sequence[tuple[str, str, int | None, int | None]]) -> None:
    """Record that a person let these (job, path, size, mtime_ns) versions replace their offsite
    copies (accepted.json): the planner sends exactly these versions, and no other."""
    if not versions:
        return

    def add(d: dict) -> None:
        for job, path, size, mtime_ns in versions:
            d.setdefault(job, {})[path] = [size, mtime_ns]

    state.update_json("accepted.json", add)


def drop(queue: WorkQueue, state: StateDir, item_id: int) -> QueueItem:
    """Remove an item, and remember not to queue the same operation on the same file version.
    The check that it is not in flight and the removal are one step under the queue's lock,
    so the agent's coordinator cannot lease it in between."""
    def remember(it: QueueItem) -> None:
        state.update_json("dropped.json", lambda d: d.setdefault(it.job, {}).__setitem__(
            it.path, {"op": it.op, "size": it.size, "mtime_ns": it.mtime_ns}))

    try:
        return queue.drop(item_id, remember)
    except KeyError:
        raise UsageError(f"no queue item with ID {item_id}") from None
    except ValueError:
        raise UsageError(f"queue item {item_id} is being transferred right now; try again when it is not") from None


def undelete(target, state: StateDir, job, paths: list[str], day: str | None) -> list[dict]:
    """`offsite undelete`: put files of the bin back under their final names (the newest day
    unless `day` is given), never over a file that is there; and remember not to delete
    them again (as a dropped deletion), or the agent would mirror the same deletion anew.
    One result per path: {"path", "day", "size", "ok", "error"}."""
    binned: dict[str, list] = {}
    for b in target.bin_list():
        binned.setdefault(b.path, []).append(b)
    out = []
    for path in paths:
        choices = sorted(binned.get(path, []), key=lambda b: (b.day, b.version))  # the newest last
        if day is not None:
            choices = [b for b in choices if b.day == day]
        if not choices:
            out.append({"path": path, "day": day, "size": 0, "ok": False,
                        "error": f"the bin holds no {path}" + (f" of {day}" if day else "")})
            continue
        b = choices[-1]
        try:
            target.from_bin(path, b.day, b.version)
        except OffsiteError as e:
            out.append({"path": path, "day": b.day, "size": b.size, "ok": False, "error": str(e)})
            continue
        def keep(d: dict, path: str = path, size: int = b.size) -> None:
            d.setdefault(job.name, {})[path] = {"op": "delete", "size": size, "mtime_ns": None}

        state.update_json("dropped.json", keep)
        out.append({"path": path, "day": b.day, "size": b.size, "ok": True, "error": None})
    return out
