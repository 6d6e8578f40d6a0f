"""What the commands share: reading the config and the state directory, asking a running
agent, holding the state directory's lock for a change without one, printing JSON, and a
progress bar."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..config import Config, Job
from ..errors import (
    LockedError,
    UsageError,
)
from ..queue import WorkQueue
from ..state import StateDir
from ..units import format_bytes

log = logging.getLogger("offsite")


def config_of(args: argparse.Namespace, check_sources: bool = True) -> Config:
    path = Path(args.config) if args.config else config_mod.default_config_path()
    return config_mod.load(path, check_sources)


def job_of(cfg: Config, name: str) -> Job:
    job = cfg.job(name)
    if job is None:
        raise UsageError(f"no job named {name!r} in {cfg.path} (jobs: {', '.join(j.name for j in cfg.jobs)})")
    return job


def state_of(cfg: Config) -> StateDir:
    """The state directory, refused in one line when a newer offsite wrote it."""
    state = StateDir(cfg.agent.state_dir)
    state.format(write=False)
    return state


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def ask_agent(state: StateDir, request: dict) -> dict:
    rid = state.submit(request)
    return state.wait_reply(rid)


class Writer:
    """Hold the state directory's lock for a command that changes state without an agent."""

    def __init__(self, cfg: Config) -> None:
        self.state = state_of(cfg)
        self.queue: WorkQueue | None = None

    def __enter__(self) -> "Writer":
        self.state.ensure()
        if not self.state.take_lock("sync"):
            holder = self.state.holder()
            raise LockedError(
                f"another offsite process (pid {holder.get('pid', '?')}) holds the state directory "
                f"{self.state.root}; try again when it is done"
            )
        self.queue = WorkQueue(self.state.queue_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.queue is not None:
            self.queue.close()
        self.state.lock.release()


def agent_answers(state: StateDir) -> bool:
    """An agent (not a standalone sync) holds the lock and reads the mailbox."""
    return state.agent_running() and state.holder().get("kind") == "agent"


class ProgressBar:
    def __init__(self) -> None:
        self._last = 0.0

    def update(self, path: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.2 and done < total:
            return
        self._last = now
        pct = 100 * done // total if total else 100
        bar = "#" * (pct // 5)
        name = path if len(path) <= 40 else "..." + path[-37:]
        sys.stderr.write(f"\r[{bar:<20}] {pct:3d}% {format_bytes(done)} of {format_bytes(total)} {name}\x1b[K")
        sys.stderr.flush()
