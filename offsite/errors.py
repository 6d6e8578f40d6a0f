"""offsite's own error tree.

Every error a user can meet is one of these: its message is one sentence that says what
and where, and its class says what happens next (the exit code of a command, or what the
dispatcher does with a failed item). Library exceptions are translated into these once, at
the target boundary, so nothing above the targets knows about paramiko, boto3 or errno.
"""
from __future__ import annotations

# Exit codes of SPEC section 3.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3


class OffsiteError(Exception):
    """Base of every error offsite reports to a user as one line."""

    exit_code = EXIT_FAILED


class ConfigError(OffsiteError):
    """agent.toml is invalid: the message names the file, the key path and what is allowed."""

    exit_code = EXIT_USAGE


class UsageError(OffsiteError):
    """The command line asks for something that does not exist or cannot be done."""

    exit_code = EXIT_USAGE


class LockedError(OffsiteError):
    """Another agent (or a standalone sync) already holds the state directory."""

    exit_code = EXIT_LOCKED


class StateError(OffsiteError):
    """The state directory cannot be created, read or written."""

    exit_code = EXIT_USAGE


# --- Errors raised by targets, sorted by what the dispatcher does next. ---


class TargetError(OffsiteError):
    """A target operation failed."""


class TransientError(TargetError):
    """Will probably heal by itself (connection lost, timeout, server busy): retry with backoff."""


class PermanentError(TargetError):
    """Needs a person (authentication, missing path, permission, full disk): the job goes to error."""


class TargetFull(PermanentError):
    """The target has no room left for the file being written."""


class OwnerMismatch(PermanentError):
    """The target folder carries another job's owner ID."""


class SourceError(OffsiteError):
    """One source file cannot be read: an error for that file only."""


class Interrupted(OffsiteError):
    """The transfer was stopped at a resumable point (agent stopping, window closed)."""
