"""Which queued item may run next, and how long to wait after a failure: pure rules.

Chain order (reference/backup-files.md section 2): within a chain, files become visible in
chain order, so only the first upload of a chain may run, and only when no earlier file of
that chain is still being written at the source; deletions run only once their chain has
nothing left to upload. Chains are independent of each other.
"""
from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from typing import Iterable

from ..backupfiles import classify
from ..queue import QueueItem

BACKOFF_FIRST = 2.0
BACKOFF_MAX = 120.0


def _order(item: QueueItem, family: str) -> tuple[tuple, tuple]:
    f = classify(item.path, family)
    if f is None:  # not a backup file (should not be queued): its own chain, no order
        return ("other", item.path), ()
    return f.chain, f.key


def next_item(
    items: Iterable[QueueItem], blockers: dict[tuple, tuple], now: dt.datetime, family: str = "auto"
) -> QueueItem | None:
    """The item to run now, or None when every chain waits."""
    chains: dict[tuple, list[tuple[tuple, QueueItem]]] = defaultdict(list)
    for it in items:
        chain, key = _order(it, family)
        chains[chain].append((key, it))
    best: tuple[tuple, QueueItem] | None = None
    for chain, members in chains.items():
        members.sort(key=lambda m: (m[1].op != "upload", m[0], m[1].id))
        uploads = [m for m in members if m[1].op == "upload"]
        if uploads:
            key, first = uploads[0]
            if first.state != "ready" or not first.due(now):
                continue  # the chain waits for its first file: nothing may overtake it
            if chain in blockers and blockers[chain] <= key:
                continue  # this file, or an earlier one of its chain, is still being written
            candidate = (key, first)
        else:
            if chain in blockers:
                continue
            ready = [m for m in members if m[1].state == "ready" and m[1].due(now)]
            if not ready:
                continue
            candidate = ready[0]
        # Uploads before deletions across chains too, then oldest item first.
        rank = (candidate[1].op != "upload", candidate[1].id)
        if best is None or rank < (best[1].op != "upload", best[1].id):
            best = candidate
    return best[1] if best else None


def backoff(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the n-th consecutive transient failure: exponential, jittered."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** max(0, failures - 1)))
    return base * (0.5 + (rng or random).random() / 2)
