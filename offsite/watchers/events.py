"""Filesystem events (watchdog) turned into hints: "look at this path again".

The handler does nothing but record the relative path; settling, coalescing and
reconciliation happen in the job's worker. Events are never trusted to be complete
(watchdog #654, #1019): the agent rescans at start, every `rescan`, and whenever the
observer had to be restarted.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

_IGNORED = {"opened", "closed_no_write"}


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, hint: Callable[[str], None]) -> None:
        self.root = os.fspath(root)
        self.hint = hint

    def _rel(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        rel = os.path.relpath(path, self.root)
        if rel == ".":
            return ""
        if rel.startswith(".."):
            return None
        return Path(rel).as_posix()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED:
            return
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if p:
                rel = self._rel(p)
                if rel is not None:
                    self.hint(rel)


class SourceWatcher:
    """Watches one managed folder recursively; falls back to polling if events fail."""

    def __init__(self, root: Path, hint: Callable[[str], None]) -> None:
        self.root = Path(root)
        self.hint = hint
        self._observer: BaseObserver | None = None
        self.polling = False

    def start(self) -> None:
        handler = _Handler(self.root, self.hint)
        try:
            obs = Observer()
            obs.schedule(handler, os.fspath(self.root), recursive=True)
            obs.start()
        except OSError as e:
            # inotify watch or instance limits (watchdog #673): say so once, then poll.
            log.warning(
                "%s: filesystem events are unavailable (%s); watching by polling instead "
                "(raise fs.inotify.max_user_watches to use events)", self.root, e.strerror or e,
            )
            obs = PollingObserver(timeout=5)
            obs.schedule(handler, os.fspath(self.root), recursive=True)
            obs.start()
            self.polling = True
        self._observer = obs

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except Exception:  # noqa: BLE001 - stopping must never fail the agent
                log.debug("observer stop failed", exc_info=True)
            self._observer = None
