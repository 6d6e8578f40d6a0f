"""agent.toml: parsed once into frozen, typed objects.

Each option is declared once (name, parser, default, secret, README text); the declarations
drive validation, secret resolution, redaction and the README's configuration tables.
Unknown keys, wrong types and impossible values raise ConfigError naming the file, the key
path and what is allowed: the agent never starts on a config it does not fully understand.

The package, one concern a module:
- options.py   the declarations (Opt, AGENT/TARGET/JOB/NOTIFY_OPTIONS): each default's one place
- parsers.py   the value parsers the declarations use
- model.py     the parsed objects: Config, AgentSettings, Location, Job, NotifySettings, Secret
- load.py      finding and reading agent.toml; the parser
- folders.py   where each job writes; jobs that would share or nest target folders are refused
- doc.py       the README's configuration tables, rendered from the declarations

This module re-exports what the rest of offsite imports: `from offsite.config import Job`.
"""
from __future__ import annotations

from ..errors import ConfigError
from .folders import nested, target_folder
from .load import default_config_path, default_state_dir, load, system_config_path
from .model import AgentSettings, Config, Job, Location, NotifySettings, Secret
from .options import (
    AGENT_OPTIONS,
    FAMILIES,
    JOB_OPTIONS,
    LOG_LEVELS,
    MODES,
    NOTIFY_OPTIONS,
    REQUIRED,
    TARGET_OPTIONS,
    TARGET_TYPES,
    Opt,
)

__all__ = [
    "AGENT_OPTIONS", "FAMILIES", "JOB_OPTIONS", "LOG_LEVELS", "MODES", "NOTIFY_OPTIONS", "REQUIRED",
    "TARGET_OPTIONS", "TARGET_TYPES", "AgentSettings", "Config", "ConfigError", "Job", "Location",
    "NotifySettings", "Opt", "Secret", "default_config_path", "default_state_dir", "load", "nested",
    "system_config_path", "target_folder",
]
