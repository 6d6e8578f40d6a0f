"""The value parsers of agent.toml's options.

Each takes the raw TOML value and returns the typed value, or raises ValueError whose text
says what is allowed; the parser (load.py) prefixes it with the file and the key path. The
declarations (options.py) pair each option with one of these.
"""
from __future__ import annotations

import base64
import re
from pathlib import PurePosixPath
from typing import Any, Callable

from ..units import parse_duration


def string(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"must be a non-empty string (got {v!r})")
    return v


def string_or_empty(v: Any) -> str:
    return v if isinstance(v, str) else string(v)


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false (got {v!r})")
    return v


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi} (got {v!r})")
        return v

    return parse


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)} (got {v!r})")
        return v

    return parse


def duration(lo: float) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        seconds = parse_duration(v)
        if seconds < lo:
            raise ValueError(f"must be at least {int(lo)}s (got {v!r})")
        return seconds

    return parse


def off_or(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """"off" -> None, else `parse`."""
    def wrapped(v: Any) -> Any:
        return None if v == "off" else parse(v)

    return wrapped


def count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f'must be "off" or a whole number of files (got {v!r})')
    return v


def clock_text(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", v):
        raise ValueError(f'must be a local time "HH:MM" (got {v!r})')
    return v


def http_url(v: Any) -> str:
    v = string(v)
    if not re.match(r"^https?://[^/\s]+", v):
        raise ValueError("must be an http:// or https:// URL")
    return v


def hostport(v: Any) -> str:
    m = re.match(r"^(.+):(\d{1,5})$", v) if isinstance(v, str) else None
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f'must be "host:port", such as "127.0.0.1:9108" (got {v!r})')
    return v


def host(v: Any) -> str:
    v = string(v)
    if any(c.isspace() for c in v) or "/" in v:
        raise ValueError(f"must be a host name or address (got {v!r})")
    return v


def unc(v: Any) -> str:
    v = string(v)
    parts = [p for p in re.split(r"[\\/]", v) if p]
    if not (v.startswith("\\\\") or v.startswith("//")) or len(parts) < 2:
        raise ValueError(
            f"must be a UNC path such as \\\\server\\share\\folder or //server/share/folder (got {v!r})"
        )
    return v


def absolute_posix(v: Any) -> str:
    v = string(v)
    if not v.startswith("/"):
        raise ValueError(f"must be an absolute path on the server, starting with / (got {v!r})")
    return v


def port(v: Any) -> int:
    return integer(1, 65535)(v)


def job_name(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", v):
        raise ValueError(
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(got {v!r})"
        )
    return v


def relative_folder(v: Any) -> str:
    """A folder below the location path: relative, no '..', never the agent's .offsite."""
    parts = PurePosixPath(v.replace("\\", "/")).parts if isinstance(v, str) else ()
    if (
        not parts
        or v.startswith(("/", "\\"))
        or ":" in v
        or any(p in ("..", ".") or p.casefold() == ".offsite" for p in parts)
    ):
        raise ValueError(f"must be a relative folder name without '..' (got {v!r})")
    return "/".join(parts)


def host_key(v: Any) -> str:
    """An SSH host key as known_hosts writes it: 'ssh-ed25519 AAAA...', with or without the
    host name in front (checked here for its shape; the key itself when a session opens)."""
    parts = string(v).split()
    if len(parts) >= 3 and not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        parts = parts[1:]
    try:
        ok = len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-", "sk-")) \
            and bool(base64.b64decode(parts[1], validate=True))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("must look like 'ssh-ed25519 AAAA...' (a line of known_hosts, with or without the host)")
    return v
