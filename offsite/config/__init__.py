"""agent.toml: parsed once into frozen, typed objects.

Each option is declared once below (name, parser, default, secret); the declarations drive
validation, secret resolution and redaction. Unknown keys, wrong types and impossible values
raise ConfigError naming the file, the key path and what is allowed: the agent never starts
on a config it does not fully understand.
"""
from __future__ import annotations

import datetime as dt
import os
import posixpath
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..system import folder_state
from ..units import parse_bandwidth, parse_duration, parse_size
from ..windows import DAYS, Window

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

REQUIRED = object()
TARGET_TYPES = ("local", "smb", "sftp", "ftp", "ftps", "s3")
MODES = ("all", "daily-only", "intra-daily-only", "daily-monthly")
FAMILIES = ("auto", "shadowprotect", "macrium")
LOG_LEVELS = ("debug", "info", "warning", "error")


class Secret:
    """A secret value that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# ---------------------------------------------------------------- value parsers
# Each takes the raw TOML value and returns the typed value, or raises ValueError whose
# text says what is allowed.


def _string(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"must be a non-empty string (got {v!r})")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false (got {v!r})")
    return v


def _integer(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi} (got {v!r})")
        return v

    return parse


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)} (got {v!r})")
        return v

    return parse


def _duration(lo: float) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        seconds = parse_duration(v)
        if seconds < lo:
            raise ValueError(f"must be at least {int(lo)}s (got {v!r})")
        return seconds

    return parse


def _off_or(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """"off" -> None, else `parse`."""
    def wrapped(v: Any) -> Any:
        return None if v == "off" else parse(v)

    return wrapped


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f'must be "off" or a whole number of files (got {v!r})')
    return v


def _clock_text(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", v):
        raise ValueError(f'must be a local time "HH:MM" (got {v!r})')
    return v


def _http_url(v: Any) -> str:
    v = _string(v)
    if not re.match(r"^https?://[^/\s]+", v):
        raise ValueError("must be an http:// or https:// URL")
    return v


def _hostport(v: Any) -> str:
    m = re.match(r"^(.+):(\d{1,5})$", v) if isinstance(v, str) else None
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f'must be "host:port", such as "127.0.0.1:9108" (got {v!r})')
    return v


def _host(v: Any) -> str:
    v = _string(v)
    if any(c.isspace() for c in v) or "/" in v:
        raise ValueError(f"must be a host name or address (got {v!r})")
    return v


def _unc(v: Any) -> str:
    v = _string(v)
    parts = [p for p in re.split(r"[\\/]", v) if p]
    if not (v.startswith("\\\\") or v.startswith("//")) or len(parts) < 2:
        raise ValueError(
            f"must be a UNC path such as \\\\server\\share\\folder or //server/share/folder (got {v!r})"
        )
    return v


def _absolute_posix(v: Any) -> str:
    v = _string(v)
    if not v.startswith("/"):
        raise ValueError(f"must be an absolute path on the server, starting with / (got {v!r})")
    return v


def _port(v: Any) -> int:
    return _integer(1, 65535)(v)


@dataclass(frozen=True)
class Opt:
    """One option: its parser, default, and whether it is a secret."""

    parse: Callable[[Any], Any]
    default: Any = None
    secret: bool = False
    path: bool = False  # a local file path, resolved against the config file's folder
    help: str = ""


AGENT_OPTIONS: dict[str, Opt] = {
    "state_dir": Opt(_string, None, path=True, help="queue, checkpoints, results, logs"),
    "log_level": Opt(_choice(*LOG_LEVELS), "info"),
    "settle": Opt(_duration(0), 30.0, help="quiet period before a file counts as complete"),
    "rescan": Opt(_duration(1), 3600.0, help="full reconciliation interval"),
    "max_connections": Opt(_integer(1, 256), 8),
    "bandwidth": Opt(parse_bandwidth, None),
    "retry_for": Opt(_duration(0), 600.0),
    "transfers": Opt(_integer(1, 64), 4, help="files in flight per job (a job may set its own)"),
    "metrics": Opt(_hostport, None),
}

# Options of each target type. Every secret also comes as <name>_env and <name>_file.
TARGET_OPTIONS: dict[str, dict[str, Opt]] = {
    "local": {"path": Opt(_string, REQUIRED, path=True)},
    "smb": {
        "path": Opt(_unc, REQUIRED),
        "username": Opt(_string),
        "domain": Opt(_string),
        "password": Opt(_string, secret=True),
        "port": Opt(_port, 445),
    },
    "sftp": {
        "host": Opt(_host, REQUIRED),
        "port": Opt(_port, 22),
        "path": Opt(_absolute_posix, REQUIRED),
        "username": Opt(_string, REQUIRED),
        "key_file": Opt(_string, path=True),
        "key_passphrase": Opt(_string, secret=True),
        "password": Opt(_string, secret=True),
        "known_hosts": Opt(_string, path=True),
        "host_key": Opt(_string),
        "accept_new_host_key": Opt(_boolean, False),
        "compress": Opt(_boolean, False),
    },
    "ftp": {
        "host": Opt(_host, REQUIRED),
        "port": Opt(_port, 21),
        "path": Opt(_absolute_posix, REQUIRED),
        "username": Opt(_string, "anonymous"),
        "password": Opt(_string, secret=True),
        "passive": Opt(_boolean, True),
    },
    "s3": {
        "bucket": Opt(_string, REQUIRED),
        "prefix": Opt(lambda v: v if isinstance(v, str) else _string(v), ""),
        "region": Opt(_string),
        "endpoint": Opt(_string),
        "addressing_style": Opt(_choice("auto", "path", "virtual"), "auto"),
        "access_key_id": Opt(_string),
        "secret_access_key": Opt(_string, secret=True),
        "storage_class": Opt(_string),
        "object_lock_days": Opt(_integer(1, 36500)),
        "sse": Opt(_choice("AES256", "aws:kms"), None, help="server-side encryption asked for on every object"),
        "sse_kms_key_id": Opt(_string, None, help="the KMS key for sse = \"aws:kms\" (default: the store's)"),
    },
}
TARGET_OPTIONS["ftps"] = {**TARGET_OPTIONS["ftp"], "ca_file": Opt(_string, path=True)}


def _job_name(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", v):
        raise ValueError(
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            f"(got {v!r})"
        )
    return v


def _folder(v: Any) -> str:
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


JOB_OPTIONS: dict[str, Opt] = {
    "name": Opt(_job_name, REQUIRED, help="unique; used on the command line"),
    "source": Opt(_string, REQUIRED, path=True, help="the managed folder"),
    "folder": Opt(_folder, None, help="created under the location's path; default: the job name"),
    "mode": Opt(_choice(*MODES), None, help="default: daily-monthly for s3, else all"),
    "include_intra_daily": Opt(_boolean, False),
    "replicate_base": Opt(_boolean, True),
    "mirror_deletes": Opt(_boolean, True),
    "max_deletes": Opt(_integer(0, 10_000_000), 100),
    "family": Opt(_choice(*FAMILIES), "auto"),
    "bandwidth": Opt(parse_bandwidth, None),
    "transfers": Opt(_integer(1, 64), None, help="files in flight for this job; default: [agent] transfers"),
    # Alert thresholds (SPEC section 6); "off" disables one.
    "max_lag": Opt(_off_or(_duration(1)), 26 * 3600.0, help="the offsite RPO: alert 'lag' past it"),
    "max_pending_files": Opt(_off_or(_count), None, help="alert 'queue' past this many files"),
    "max_pending_bytes": Opt(_off_or(parse_size), None, help="alert 'queue' past this many bytes"),
    "inactive_after": Opt(_off_or(_duration(1)), None, help="alert 'source-inactive': no new backup file"),
    "min_free": Opt(_off_or(parse_size), None, help="alert 'target-space' below this much free space"),
    "verify_every": Opt(_off_or(_duration(60)), None, help="verify a 10% sample of the copy this often"),
    "keep_deleted": Opt(_off_or(_duration(0)), 30 * 86400.0,
                        help="how long files deleted or replaced offsite stay in the bin; \"off\": deleted at once"),
}

NOTIFY_OPTIONS: dict[str, Opt] = {
    # urls (a list; also urls_env, urls_file) is read by _Parser.notify_urls: URLs carry secrets.
    "heartbeat_url": Opt(_http_url, secret=True, help="pinged while healthy; <url>/fail on error"),
    "heartbeat_every": Opt(_duration(10), 3600.0),
    "repeat": Opt(_off_or(_duration(60)), 24 * 3600.0, help="an alert still active is sent again after this"),
    "summary": Opt(_choice("off", "daily"), "off"),
    "summary_at": Opt(_clock_text, "08:00"),
}


@dataclass(frozen=True)
class AgentSettings:
    state_dir: Path
    log_level: str
    settle: float
    rescan: float
    max_connections: int
    bandwidth: float | None
    retry_for: float
    transfers: int
    metrics: str | None


@dataclass(frozen=True)
class NotifySettings:
    urls: tuple[Secret, ...] = ()
    heartbeat_url: Secret | None = None
    heartbeat_every: float = 3600.0
    repeat: float | None = 24 * 3600.0
    summary: str = "off"
    summary_at: str = "08:00"


@dataclass(frozen=True)
class Location:
    """Where a target lives: its type and validated options (secrets as Secret)."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def describe(self) -> str:
        """A short, secret-free description for messages: 'sftp backup@host:/srv'."""
        o = self.options
        if self.type == "local":
            return f"local {o['path']}"
        if self.type == "smb":
            return f"smb {o['path']}" + (f" port {o['port']}" if o["port"] != 445 else "")
        if self.type == "s3":
            return f"s3 bucket {o['bucket']}" + (f" prefix {o['prefix']}" if o.get("prefix") else "")
        return f"{self.type} {o.get('username')}@{o['host']}:{o['port']} path {o['path']}"


@dataclass(frozen=True)
class Job:
    name: str
    source: Path
    location: Location
    folder: str
    mode: str
    include_intra_daily: bool
    replicate_base: bool
    mirror_deletes: bool
    max_deletes: int
    family: str
    bandwidth: float | None
    windows: tuple[Window, ...]
    transfers: int | None = None  # None: the agent's
    max_lag: float | None = 26 * 3600.0
    max_pending_files: int | None = None
    max_pending_bytes: int | None = None
    inactive_after: float | None = None
    min_free: int | None = None
    verify_every: float | None = None
    keep_deleted: float | None = 30 * 86400.0  # None: "off", deleted at once


@dataclass(frozen=True)
class Config:
    path: Path
    agent: AgentSettings
    locations: Mapping[str, Location]
    jobs: tuple[Job, ...]
    notify: NotifySettings = NotifySettings()

    def job(self, name: str) -> Job | None:
        return next((j for j in self.jobs if j.name == name), None)


# ---------------------------------------------------------------- loading


def default_config_path() -> Path:
    """-c PATH, else $OFFSITE_CONFIG, else ./agent.toml, else the system location."""
    env = os.environ.get("OFFSITE_CONFIG")
    if env:
        return Path(env)
    local = Path("agent.toml")
    if local.exists():
        return local
    return system_config_path()


def system_config_path() -> Path:
    """Where the service's agent.toml lives."""
    if os.name == "nt":
        return Path(os.environ.get("ProgramData", r"C:\ProgramData")) / "offsite" / "agent.toml"
    return Path("/etc/offsite/agent.toml")


def default_state_dir() -> Path:
    if os.name == "nt":
        return Path(os.environ.get("ProgramData", r"C:\ProgramData")) / "offsite" / "state"
    return Path("/var/lib/offsite")


def load(path: Path, check_sources: bool = True) -> Config:
    """Read and validate `path`; raise ConfigError with one clear line on any problem.
    `check_sources=False` is for commands that must work while a source disk is unplugged
    (status, queue): they skip the check that each job's source folder exists."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _Parser(path, check_sources).config(raw)


class _Parser:
    def __init__(self, path: Path, check_sources: bool = True) -> None:
        self.path = path
        self.check_sources = check_sources
        self.base = path.resolve().parent
        self._owner_only: bool | None = None

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {what}")

    def table(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table (got {value!r})")
        return value

    def options(self, raw: dict, decl: dict[str, Opt], key: str, extra: tuple[str, ...] = ()) -> dict:
        """Validate `raw` against `decl`; resolve secrets; return name -> value."""
        allowed = set(decl) | set(extra)
        for name, opt in decl.items():
            if opt.secret:
                allowed |= {f"{name}_env", f"{name}_file"}
        for name in raw:
            if name not in allowed:
                raise self.fail(
                    f"{key}.{name}", f"unknown key (allowed: {', '.join(sorted(allowed))})"
                )
        out: dict[str, Any] = {}
        for name, opt in decl.items():
            if opt.secret:
                out[name] = self.secret(raw, name, key)
                continue
            if name not in raw:
                if opt.default is REQUIRED:
                    raise self.fail(f"{key}.{name}", "is required")
                out[name] = opt.default
                continue
            try:
                value = opt.parse(raw[name])
            except ValueError as e:
                raise self.fail(f"{key}.{name}", str(e)) from None
            out[name] = self.resolve(value) if opt.path else value
        return out

    def resolve(self, value: str) -> Path:
        p = Path(os.path.expandvars(os.path.expanduser(value)))
        return p if p.is_absolute() else self.base / p

    def secret(self, raw: dict, name: str, key: str) -> Secret | None:
        given = [k for k in (name, f"{name}_env", f"{name}_file") if k in raw]
        if len(given) > 1:
            raise self.fail(f"{key}.{name}", f"give only one of {', '.join(given)}")
        if not given:
            return None
        k = given[0]
        value = raw[k]
        if not isinstance(value, str) or not value:
            raise self.fail(f"{key}.{k}", "must be a non-empty string")
        if k == name:
            self.require_owner_only(f"{key}.{k}")
            return Secret(value)
        if k.endswith("_env"):
            if value not in os.environ:
                raise self.fail(f"{key}.{k}", f"environment variable {value} is not set")
            return Secret(os.environ[value])
        file = self.resolve(value)
        try:
            return Secret(file.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as e:
            raise self.fail(f"{key}.{k}", f"cannot read {file} ({e.strerror})") from None

    def require_owner_only(self, key: str) -> None:
        """Secrets may stand in agent.toml only when no one but its owner can read it."""
        if os.name == "nt":  # ACLs, not mode bits: not checked on Windows
            return
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise self.fail(
                key,
                f"a secret may be written in the config file only when the file is readable by "
                f"its owner only (its mode is {mode:04o}; chmod 600 it, or use the _env or _file form)",
            )

    def config(self, raw: dict) -> Config:
        for name in raw:
            if name not in ("agent", "locations", "jobs", "notify"):
                raise self.fail(name, "unknown key (allowed: agent, jobs, locations, notify)")
        agent_raw = self.table(raw.get("agent", {}), "agent")
        a = self.options(agent_raw, AGENT_OPTIONS, "agent")
        agent = AgentSettings(
            state_dir=a["state_dir"] or default_state_dir(), **{k: v for k, v in a.items() if k != "state_dir"}
        )
        locations = {}
        for name, loc_raw in self.table(raw.get("locations", {}), "locations").items():
            locations[name] = self.location(name, self.table(loc_raw, f"locations.{name}"), f"locations.{name}")
        jobs_raw = raw.get("jobs", [])
        if not isinstance(jobs_raw, list):
            raise self.fail("jobs", "must be an array of tables, written [[jobs]]")
        if not jobs_raw:
            raise self.fail("jobs", "at least one [[jobs]] table is required")
        jobs: list[Job] = []
        for i, job_raw in enumerate(jobs_raw):
            job = self.job(self.table(job_raw, f"jobs[{i}]"), f"jobs[{i}]", locations)
            if any(j.name == job.name for j in jobs):
                raise self.fail(f"jobs[{i}].name", f"duplicate job name {job.name!r}")
            jobs.append(job)
        for i, job in enumerate(jobs):
            for other in jobs[:i]:
                clash = nested(target_folder(job), target_folder(other))
                if clash:
                    raise self.fail(
                        f"jobs.{job.name}.folder",
                        f"its target folder {job.location.describe()} folder {job.folder} {clash} the target folder "
                        f"of job {other.name!r}; jobs never share or nest target folders (give each its own folder)",
                    )
            for other in jobs:  # a local target in a source would be copied into itself, and back
                source = (("local",), _local_parts(str(other.source)))
                clash = nested(target_folder(job), source)
                if clash and clash != "holds":
                    raise self.fail(f"jobs.{job.name}.folder", f"its target folder {clash} the source of job "
                                    f"{other.name!r}: it would be copied into itself (give it a folder elsewhere)")
                if clash:
                    raise self.fail(f"jobs.{other.name}.source", f"{other.source} lies inside the target folder of "
                                    f"job {job.name!r}: a source must not be where offsite writes")
        notify = self.notify(self.table(raw.get("notify", {}), "notify"))
        return Config(self.path, agent, MappingProxyType(locations), tuple(jobs), notify)

    def notify(self, raw: dict) -> NotifySettings:
        urls_raw = {k: raw[k] for k in ("urls", "urls_env", "urls_file") if k in raw}
        o = self.options({k: v for k, v in raw.items() if k not in urls_raw}, NOTIFY_OPTIONS, "notify",
                         extra=())
        return NotifySettings(urls=self.notify_urls(urls_raw), **o)

    def notify_urls(self, raw: dict) -> tuple[Secret, ...]:
        """Apprise URLs from urls (a list), urls_env (separated by spaces or new lines) or
        urls_file (one a line, # comments): one of the three, like every secret."""
        if len(raw) > 1:
            raise self.fail("notify.urls", f"give only one of {', '.join(raw)}")
        if not raw:
            return ()
        (k, value), = raw.items()
        if k == "urls":
            if not isinstance(value, list) or not value or not all(isinstance(u, str) and u for u in value):
                raise self.fail("notify.urls", "must be a non-empty list of Apprise URLs (strings)")
            self.require_owner_only("notify.urls")
            urls = value
        else:
            secret = self.secret({k: value}, "urls", "notify")
            assert secret is not None
            text = secret.reveal()
            lines = [ln.split("#", 1)[0] if ln.lstrip().startswith("#") else ln for ln in text.splitlines()]
            urls = [u for ln in lines for u in ln.split()]
            if not urls:
                raise self.fail(f"notify.{k}", "holds no URL")
        for i, u in enumerate(urls):
            if not re.match(r"^[a-z][a-z0-9+.-]*://", u, re.I):
                raise self.fail(f"notify.urls[{i}]", "is not an Apprise URL (scheme://...)")
        return tuple(Secret(u) for u in urls)

    def location(self, name: str, raw: dict, key: str) -> Location:
        kind = raw.get("type")
        if kind not in TARGET_TYPES:
            if kind is None:
                raise self.fail(f"{key}.type", f"is required (one of {', '.join(TARGET_TYPES)})")
            raise self.fail(f"{key}.type", f"must be one of {', '.join(TARGET_TYPES)} (got {kind!r})")
        opts = self.options(raw, TARGET_OPTIONS[kind], key, extra=("type",))
        if kind == "sftp":
            if not opts["key_file"] and not opts["password"]:
                raise self.fail(key, "an sftp location needs key_file or password")
            if opts["host_key"] and opts["known_hosts"]:
                raise self.fail(key, "give known_hosts or host_key, not both")
        if kind == "smb":
            opts.update(_smb_identity(opts))
        if kind == "s3" and opts["sse_kms_key_id"] and opts["sse"] != "aws:kms":
            raise self.fail(f"{key}.sse_kms_key_id", 'applies to sse = "aws:kms" only')
        return Location(name, kind, MappingProxyType(opts))

    def job(self, raw: dict, key: str, locations: dict[str, Location]) -> Job:
        o = self.options(raw, JOB_OPTIONS, key, extra=("location", "target", "windows"))
        source: Path = o["source"]
        if self.check_sources and folder_state(source) == "missing":  # unreadable: the job says so
            raise self.fail(f"{key}.source", f"{source} is not an existing folder")
        if ("location" in raw) == ("target" in raw):
            raise self.fail(key, "give either location (a name under [locations]) or target (an inline table)")
        if "location" in raw:
            loc_name = raw["location"]
            if loc_name not in locations:
                known = ", ".join(sorted(locations)) or "none are defined"
                raise self.fail(f"{key}.location", f"no location named {loc_name!r} (known: {known})")
            location = locations[loc_name]
        else:
            location = self.location(o["name"], self.table(raw["target"], f"{key}.target"), f"{key}.target")
        folder = o["folder"] or o["name"]
        mode = o["mode"] or ("daily-monthly" if location.type == "s3" else "all")
        if o["include_intra_daily"] and mode != "all":
            raise self.fail(f"{key}.include_intra_daily", f'applies to mode "all" only (mode is "{mode}")')
        return Job(
            name=o["name"], source=source, location=location, folder=folder, mode=mode,
            include_intra_daily=o["include_intra_daily"], replicate_base=o["replicate_base"],
            mirror_deletes=o["mirror_deletes"], max_deletes=o["max_deletes"], family=o["family"],
            bandwidth=o["bandwidth"], windows=self.windows(raw.get("windows"), f"{key}.windows"),
            transfers=o["transfers"], max_lag=o["max_lag"], max_pending_files=o["max_pending_files"],
            max_pending_bytes=o["max_pending_bytes"], inactive_after=o["inactive_after"], min_free=o["min_free"],
            verify_every=o["verify_every"], keep_deleted=o["keep_deleted"],
        )

    def windows(self, raw: Any, key: str) -> tuple[Window, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list) or not raw:
            raise self.fail(key, "must be a non-empty list of tables such as { days = [\"mon\"], start = \"19:00\", end = \"07:00\" }")
        out = []
        for i, w in enumerate(raw):
            k = f"{key}[{i}]"
            w = self.table(w, k)
            for name in w:
                if name not in ("days", "start", "end"):
                    raise self.fail(f"{k}.{name}", "unknown key (allowed: days, end, start)")
            days = w.get("days", list(DAYS))
            if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
                raise self.fail(f"{k}.days", f"must be a non-empty list of {', '.join(DAYS)} (got {days!r})")
            start = self.clock(w.get("start", "00:00"), f"{k}.start", allow_24=False)
            end = self.clock(w["end"], f"{k}.end", allow_24=True) if "end" in w else None
            out.append(Window(frozenset(DAYS.index(d) for d in days), start, end))
        return tuple(out)

    def clock(self, v: Any, key: str, allow_24: bool) -> dt.time:
        m = re.match(r"^([01]\d|2[0-4]):([0-5]\d)$", v) if isinstance(v, str) else None
        if m and m.group(1) == "24":
            if allow_24 and m.group(2) == "00":
                return dt.time(0, 0)  # 24:00 ends at midnight: the next day's 00:00
            m = None
        if not m:
            raise self.fail(key, f'must be a local time "HH:MM" from 00:00 to 23:59 (got {v!r})')
        return dt.time(int(m.group(1)), int(m.group(2)))


def target_folder(job: Job) -> tuple[tuple, tuple[str, ...]]:
    """Where a job's target folder is: (the namespace it lives in, its path as parts),
    normalised so that two jobs writing to the same place compare equal: the same drive or
    server, and the path with `.`, `..` and doubled separators resolved, casefolded where
    the target compares names without case (SMB; a local drive on Windows)."""
    o, kind = job.location.options, job.location.type

    def parts(path: str, fold: bool) -> tuple[str, ...]:
        norm = posixpath.normpath("/" + path.replace("\\", "/")).strip("/")
        return tuple(p.casefold() if fold else p for p in norm.split("/") if p)

    folder = job.folder
    if kind == "local":
        return ("local",), _local_parts(os.path.join(str(o["path"]), *folder.split("/")))
    if kind == "smb":
        unc = [p for p in re.split(r"[\\/]", o["path"]) if p]
        return ("smb", _server(unc[0]), o["port"]), parts("/".join(unc[1:] + [folder]), True)
    if kind in ("sftp", "ftp", "ftps"):
        family = "sftp" if kind == "sftp" else "ftp"  # FTP and FTPS on one port are one server
        return (family, _server(str(o["host"])), o["port"]), parts(f"{o['path']}/{folder}", False)
    # S3: bucket names are global on AWS (whatever the region or endpoint written); elsewhere
    # the endpoint's host and port, with the default port and loopback names made one.
    endpoint = o.get("endpoint") or ""
    url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if not endpoint or (url.hostname or "").casefold().endswith("amazonaws.com"):
        store = "aws"
    else:
        store = f"{_server(url.hostname or '')}:{url.port or (80 if url.scheme == 'http' else 443)}"
    return ("s3", store, o["bucket"]), parts(f"{o.get('prefix') or ''}/{folder}", False)


def _server(name: str) -> str:
    """A host name as one server is known by: casefolded, the loopback names made one."""
    name = name.strip("[]").rstrip(".").casefold()  # "host." is the same host
    return "127.0.0.1" if name in ("localhost", "::1", "127.0.0.1") else name


def _local_parts(path: str) -> tuple[str, ...]:
    norm = Path(os.path.realpath(path)).as_posix()
    return tuple(p.casefold() if os.name == "nt" else p for p in norm.split("/") if p)


def nested(a: tuple[tuple, tuple[str, ...]], b: tuple[tuple, tuple[str, ...]]) -> str | None:
    """How target folder `a` meets `b`: "is the same as", "lies inside", "holds", or None."""
    if a[0] != b[0]:
        return None
    if a[1] == b[1]:
        return "is the same as"
    if a[1][: len(b[1])] == b[1]:
        return "lies inside"
    if b[1][: len(a[1])] == a[1]:
        return "holds"
    return None


def _smb_identity(opts: dict) -> dict:
    """DOMAIN\\user and user@domain fill in the domain when it is not given."""
    user, domain = opts.get("username"), opts.get("domain")
    if user and "\\" in user:
        d, user = user.split("\\", 1)
        domain = domain or d
    elif user and "@" in user:
        user, d = user.split("@", 1)
        domain = domain or d
    return {"username": user, "domain": domain}
