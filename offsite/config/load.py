"""Reading agent.toml: where it is found, and the parser that turns its TOML into a Config.

`load` reads the file; `_Parser` checks every table against the declarations (options.py),
resolves secrets (inline, `_env`, `_file`) and relative paths, builds the objects of
model.py, and refuses what it does not fully understand with one ConfigError line naming
the file, the key path and what is allowed. The refusal of jobs that share or nest target
folders is in folders.py.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import stat
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..system import folder_state
from ..windows import DAYS, Window
from .folders import clash
from .model import AgentSettings, Config, Job, Location, NotifySettings, Secret
from .options import (
    AGENT_OPTIONS,
    JOB_OPTIONS,
    JOB_ROWS,
    NOTIFY_OPTIONS,
    REQUIRED,
    STATE_DIR,
    TARGET_OPTIONS,
    TARGET_TYPES,
    Opt,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib


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
    return Path(STATE_DIR)


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
                out[name] = found = self.secret(raw, name, key)
                if found is not None:  # checked like any value, never echoed
                    try:
                        opt.parse(found.reveal())
                    except ValueError as e:
                        why = str(e) if found.reveal() not in str(e) else "is not a valid value"
                        raise self.fail(f"{key}.{name}", why) from None
                continue
            if name not in raw:
                if opt.default is REQUIRED:
                    raise self.fail(f"{key}.{name}", "is required")
                out[name] = opt.value
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
        refused = clash(jobs)
        if refused:
            raise self.fail(*refused)
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
        o = self.options(raw, JOB_OPTIONS, key, extra=tuple(k for row in JOB_ROWS for k in row.keys))
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
        mode = o["mode"] if "mode" in raw else JOB_OPTIONS["mode"].value_for(location.type)
        if o["include_intra_daily"] and mode != "all":
            raise self.fail(f"{key}.include_intra_daily", f'applies to mode "all" only (mode is "{mode}")')
        return Job(
            name=o["name"], source=source, location=location, folder=folder, mode=mode,
            include_intra_daily=o["include_intra_daily"], replicate_base=o["replicate_base"],
            mirror_deletes=o["mirror_deletes"], max_deletes=o["max_deletes"], family=o["family"],
            bandwidth=o["bandwidth"], windows=self.windows(raw.get("windows"), f"{key}.windows"),
            transfers=o["transfers"], streams=o["streams"], max_lag=o["max_lag"], max_rpo=o["max_rpo"],
            max_pending_files=o["max_pending_files"],
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
