"""What a parsed agent.toml is: frozen, typed objects (Config, AgentSettings, Location, Job,
NotifySettings) and Secret, a value that never prints itself.

The rest of offsite reads these, never the TOML. Where a field has a default, it is the
option's declared one (options.py), read from there and not written again here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..windows import Window
from .options import JOB_OPTIONS, NOTIFY_OPTIONS, TARGET_OPTIONS


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
    streams: int
    metrics: str | None


@dataclass(frozen=True)
class NotifySettings:
    urls: tuple[Secret, ...] = ()
    heartbeat_url: Secret | None = None
    heartbeat_every: float = NOTIFY_OPTIONS["heartbeat_every"].value
    repeat: float | None = NOTIFY_OPTIONS["repeat"].value
    summary: str = NOTIFY_OPTIONS["summary"].value
    summary_at: str = NOTIFY_OPTIONS["summary_at"].value


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
            default_port = TARGET_OPTIONS["smb"]["port"].value
            return f"smb {o['path']}" + (f" port {o['port']}" if o["port"] != default_port else "")
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
    transfers: int | None = JOB_OPTIONS["transfers"].value  # None: the agent's
    streams: int | None = JOB_OPTIONS["streams"].value  # None: the agent's
    max_lag: float | None = JOB_OPTIONS["max_lag"].value
    max_rpo: float | None = JOB_OPTIONS["max_rpo"].value
    max_pending_files: int | None = JOB_OPTIONS["max_pending_files"].value
    max_pending_bytes: int | None = JOB_OPTIONS["max_pending_bytes"].value
    inactive_after: float | None = JOB_OPTIONS["inactive_after"].value
    min_free: int | None = JOB_OPTIONS["min_free"].value
    verify_every: float | None = JOB_OPTIONS["verify_every"].value
    keep_deleted: float | None = JOB_OPTIONS["keep_deleted"].value  # None: "off", deleted at once


@dataclass(frozen=True)
class Config:
    path: Path
    agent: AgentSettings
    locations: Mapping[str, Location]
    jobs: tuple[Job, ...]
    notify: NotifySettings = NotifySettings()

    def job(self, name: str) -> Job | None:
        return next((j for j in self.jobs if j.name == name), None)
