"""What other threads hand a job: the watcher's hints (paths that changed at the source) and
people's requests (`sync`, `queue retry`, `reinit`, `undelete`, from the agent's mailbox or a
standalone command). The job's coordinator takes them at the start of each turn; the
requests that must not wait for a long transfer to end (a retry, an undelete) it also takes
while transfers run.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

URGENT = ("retry", "undelete")


@dataclass
class Request:
    kind: str  # "sync" | "retry" | "reinit" | "undelete"
    allow_deletes: bool = False
    reply: Callable[[dict], None] | None = None
    accept_changes: bool = False  # sync: files changed at the source go, their copies to the bin
    paths: list[str] = field(default_factory=list)  # undelete
    day: str | None = None  # undelete


class Mailbox:
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self._lock = threading.Lock()
        self._hints: set[str] = set()
        self._requests: list[Request] = []

    def hint(self, rel: str) -> None:
        with self._lock:
            self._hints.add(rel)
        self.wake.set()

    def request(self, req: Request) -> None:
        with self._lock:
            self._requests.append(req)
        self.wake.set()

    def take(self) -> tuple[list[Request], set[str]]:
        """Everything handed in since the last look."""
        with self._lock:
            requests, self._requests = self._requests, []
            hints, self._hints = self._hints, set()
        return requests, hints

    def take_hints(self) -> set[str]:
        with self._lock:
            hints, self._hints = self._hints, set()
        return hints

    def take_urgent(self) -> list[Request]:
        """The requests that must not wait for the round's end (a large image can take hours);
        a sync is answered when the job is idle anyway, and a reinit waits for the round,
        whose sessions it closes."""
        with self._lock:
            urgent = [r for r in self._requests if r.kind in URGENT]
            self._requests = [r for r in self._requests if r.kind not in URGENT]
        return urgent

    def refuse_all(self, why: str) -> None:
        """The job stops: whoever waits for an answer gets this one."""
        with self._lock:
            left, self._requests = self._requests, []
        for r in left:
            if r.reply:
                r.reply({"ok": False, "error": why})
