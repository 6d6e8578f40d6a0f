"""Which queued item runs next, and when a staged upload may be published.

Chain order (reference/backup-files.md section 2): within a chain, files become VISIBLE in
chain order. Several files of a chain may upload to staging at once, but each is published
only after every earlier file of its chain that was started is published; a file whose
upload failed holds the later ones back until the next attempt. A file that failed for lack
of room on the target is started again in the same round (`again`), and the later files of
its chain that are staged give their room back to it. Deletions run only once
their chain has nothing left to upload. Chains are independent of each other.

`Dispatch` keeps a job's queued work indexed by chain, in chain order, so picking the next
item looks at the head of each chain instead of sorting the whole queue; an entry is checked
against the queue when it is picked, so an item dropped or retried by the user meanwhile is
never acted on stale. It is shared by the job's coordinator (which picks and starts items)
and its transfer threads (which stage and publish), under one lock.
"""
from __future__ import annotations

import bisect
import datetime as dt
import threading
from typing import Any, Callable

from ..backupfiles import classify
from ..queue import QueueItem

Entry = tuple[int, tuple, int]  # (0 upload | 1 delete, key in chain, item id)


def order(path: str, family: str) -> tuple[tuple, tuple]:
    """The chain of a queued path and its key inside the chain."""
    f = classify(path, family)
    if f is None:  # not a backup file (should not be queued): its own chain, no order
        return ("other", path), ()
    return f.chain, f.key


class Dispatch:
    def __init__(self, family: str, max_waiting: int = 16) -> None:
        self.family = family
        self.max_waiting = max_waiting  # staged uploads waiting for their turn, all chains
        self._lock = threading.Lock()
        self._chains: dict[tuple, list[Entry]] = {}
        self._where: dict[int, tuple[tuple, Entry]] = {}
        # In flight: started and not finished, per chain in chain order, with the caller's
        # payload; which of them are staged, being published, or hold their chain back.
        self._flight: dict[tuple, list[tuple[tuple, int]]] = {}
        self._payload: dict[int, Any] = {}
        self._staged: set[int] = set()
        self._publishing: set[int] = set()
        self._blocked: set[int] = set()
        self._again: set[int] = set()  # blocked, but may start again in this round
        self._paths: dict[str, int] = {}  # path -> the item in flight for it
        self.looked = 0  # entries examined by pick(): the work a pick costs, for tests

    # ---------------------------------------------------------------- the index
    def add(self, it: QueueItem) -> None:
        chain, key = order(it.path, self.family)
        # Uploads in chain order; deletions newest first, so what a chain keeps on the target
        # while its deletions run is always a prefix of it.
        entry = (0, key, it.id) if it.op == "upload" else (1, tuple(-k for k in key), it.id)
        with self._lock:
            if it.id in self._where:
                return
            bisect.insort(self._chains.setdefault(chain, []), entry)
            self._where[it.id] = (chain, entry)

    def discard(self, item_id: int) -> None:
        with self._lock:
            self._discard(item_id)

    def _discard(self, item_id: int) -> None:
        where = self._where.pop(item_id, None)
        if where is None:
            return
        chain, entry = where
        entries = self._chains.get(chain, [])
        i = bisect.bisect_left(entries, entry)
        if i < len(entries) and entries[i] == entry:
            del entries[i]
        if not entries:
            self._chains.pop(chain, None)

    def clear(self) -> None:
        with self._lock:
            self._chains.clear()
            self._where.clear()

    def pick(self, get: Callable[[int], QueueItem | None], blockers: dict[tuple, tuple],
             now: dt.datetime) -> QueueItem | None:
        """The item to start now, or None when every chain waits. Uploads before deletions,
        then the oldest item first."""
        with self._lock:
            best: QueueItem | None = None
            for chain in list(self._chains):
                it = self._candidate(chain, get, blockers, now)
                if it is not None and (best is None or (it.op != "upload", it.id) < (best.op != "upload", best.id)):
                    best = it
            return best

    def _candidate(self, chain: tuple, get: Callable[[int], QueueItem | None], blockers: dict[tuple, tuple],
                   now: dt.datetime) -> QueueItem | None:
        entries = self._chains[chain]
        uploads_left = False
        ahead = False  # an earlier upload of this chain is in flight
        i = 0
        while i < len(entries):
            self.looked += 1
            rank, key, item_id = entries[i]
            it = get(item_id)
            if it is None or (it.op == "upload") != (rank == 0):  # dropped or replaced meanwhile
                self._discard(item_id)
                continue
            i += 1
            if it.path in self._paths and item_id not in self._payload:
                return None  # its path is in flight (another item): never twice at once
            if rank == 0:
                uploads_left = True
                if item_id in self._blocked:
                    if item_id not in self._again:
                        return None  # failed in this round: later files wait for its next attempt
                elif item_id in self._payload:
                    ahead = True
                    continue
                if it.state != "ready" or not it.due(now):
                    return None  # the chain waits for this file: nothing may overtake it
                if chain in blockers and blockers[chain] <= key:
                    return None  # this file, or an earlier one, is still being written
                if ahead and len(self._staged) >= self.max_waiting:
                    return None  # enough staged work waits for its turn already
                return it
            if uploads_left or chain in blockers:
                return None
            if item_id not in self._payload and it.state == "ready" and it.due(now):
                return it
        if not entries:
            self._chains.pop(chain, None)
        return None

    # ---------------------------------------------------------------- in flight
    def started(self, it: QueueItem, payload: Any) -> list[Any]:
        """The item starts. When it starts again after running out of room, the later files of
        its chain that are staged leave the flight and are returned: the caller discards what
        they staged, to make room, and releases them; they upload again after it."""
        chain, key = order(it.path, self.family)
        with self._lock:
            self._payload[it.id] = payload
            self._paths[it.path] = it.id
            self._blocked.discard(it.id)
            if it.id not in self._again:
                if it.op == "upload":
                    bisect.insort(self._flight.setdefault(chain, []), (key, it.id))
                return []
            self._again.discard(it.id)  # still in its place in the flight
            flight = [i for _, i in self._flight.get(chain, [])]
            later = [i for i in flight[flight.index(it.id) + 1:] if i in self._staged]
            out = [self._payload[i] for i in later]
            for i in later:
                self._drop_flight(i)
            return out

    def staged(self, item_id: int) -> list[Any]:
        """An upload is staged: the payloads that may be published now, in order (this one
        among them when every earlier started file of its chain is published)."""
        with self._lock:
            self._staged.add(item_id)
            return self._turn(item_id)

    def finished(self, item_id: int) -> list[Any]:
        """Done with an item (published, deleted, or gone at the source): what may be
        published now that it no longer holds its chain back."""
        with self._lock:
            chain = self._chain_of(item_id)
            self._drop_flight(item_id)
            self._discard(item_id)
            return self._run(chain) if chain is not None else []

    def hold(self, item_id: int) -> None:
        """The item failed or was interrupted: later started files of its chain stay staged
        (and are released at the end of the round), never published before it."""
        with self._lock:
            publisher = item_id in self._publishing
            self._blocked.add(item_id)
            self._staged.discard(item_id)
            self._publishing.discard(item_id)
            chain = self._chain_of(item_id)
            if publisher and chain is not None:
                # The rest of the failed publisher's run goes back to waiting, staged.
                flight = [i for _, i in self._flight.get(chain, [])]
                for other in flight[flight.index(item_id) + 1:]:
                    self._publishing.discard(other)

    def again(self, item_id: int) -> None:
        """The item failed for lack of room on the target: it may start again in this round,
        still ahead of the later files of its chain."""
        with self._lock:
            self._again.add(item_id)

    def in_flight(self) -> list[Any]:
        with self._lock:
            return list(self._payload.values())

    def end_round(self) -> None:
        """Forget everything in flight (the caller released the items)."""
        with self._lock:
            self._flight.clear()
            self._payload.clear()
            self._paths.clear()
            self._staged.clear()
            self._publishing.clear()
            self._blocked.clear()
            self._again.clear()

    def _chain_of(self, item_id: int) -> tuple | None:
        where = self._where.get(item_id)
        return where[0] if where else None

    def _drop_flight(self, item_id: int) -> None:
        self._payload.pop(item_id, None)
        for path in [p for p, i in self._paths.items() if i == item_id]:
            del self._paths[path]
        self._staged.discard(item_id)
        self._publishing.discard(item_id)
        self._blocked.discard(item_id)
        self._again.discard(item_id)
        for chain, flight in self._flight.items():
            for i, (_, other) in enumerate(flight):
                if other == item_id:
                    del flight[i]
                    if not flight:
                        del self._flight[chain]
                    return

    def _turn(self, item_id: int) -> list[Any]:
        chain = self._chain_of(item_id)
        return self._run(chain) if chain is not None else []

    def _run(self, chain: tuple) -> list[Any]:
        """The staged files at the head of the chain's flight, not yet being published: the
        caller publishes them, in this order."""
        out: list[int] = []
        for _, item_id in self._flight.get(chain, []):
            if item_id in self._publishing:
                if out:
                    break
                return []  # someone is publishing the head: they go on with what follows
            if item_id not in self._staged or item_id in self._blocked:
                break
            out.append(item_id)
        self._publishing.update(out)
        return [self._payload[i] for i in out]
