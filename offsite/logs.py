"""Logging set-up: stderr for every command, plus the state directory's log for the agent."""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from .system import open_private

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def to_stderr(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.handlers[:] = [handler]
    # Libraries' chatter (a line per SSH connection) stays out of the agent's log.
    for noisy in ("paramiko", "botocore", "boto3", "smbprotocol", "spnego", "urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # paramiko's transport thread logs a failed handshake as ERROR lines holding a traceback;
    # offsite reports the same failure itself, in one sentence.
    logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = _unraisable


def _unraisable(u: "sys.UnraisableHookArgs") -> None:
    """An error raised where Python cannot pass it on (a library object's __del__ after its
    connection broke): the failure itself was already reported, so one debug line, never
    the traceback Python would print to stderr."""
    logging.getLogger("offsite").debug("ignored while cleaning up %r: %s: %s", u.object,
                                       type(u.exc_value).__name__, u.exc_value)


def to_file(folder: Path) -> None:
    """Also log to folder/offsite.log (owner-only, rotated at 10 MiB, 3 kept)."""
    path = folder / "offsite.log"
    if not path.exists():
        open_private(path, "a").close()  # owner-only before the handler opens it
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=10 * 1024 * 1024,
                                                   backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)


def to_event_log() -> None:
    """Windows: errors also go to the Application event log, source "offsite" (pywin32)."""
    handler = logging.handlers.NTEventLogHandler("offsite")
    handler.setLevel(logging.ERROR)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
