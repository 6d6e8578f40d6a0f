"""`offsite service`: install, remove, inspect and (on Windows) host the system service."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .. import config as config_mod
from ..config import Config
from ..errors import (
    OffsiteError,
    UsageError,
)

log = logging.getLogger("offsite")


def _service_config(args: argparse.Namespace) -> tuple[Path, Config | None, Path]:
    """(agent.toml of the service, its config when it reads, the state directory)."""
    path = Path(args.config) if args.config else config_mod.system_config_path()
    from ..install import EXAMPLE

    try:  # a missing agent.toml is written from the example: the unit is made for that
        cfg = config_mod.load(path if path.exists() else EXAMPLE, check_sources=False)
    except OffsiteError:
        cfg = None  # the install's own check says what is wrong with it
    return path, cfg, Path(cfg.agent.state_dir) if cfg else config_mod.default_state_dir()


def cmd_service_install(args: argparse.Namespace) -> int:
    path, cfg, state_dir = _service_config(args)
    if os.name == "nt":  # pragma: no cover - exercised with fakes in tests/test_windows_service.py
        from ..install import windows

        return windows.install(path, state_dir, args.account, args.password, args.dry_run)
    from ..install import linux, offsite_command

    return linux.install(offsite_command(), path, cfg, state_dir, args.dry_run)


def cmd_service_uninstall(args: argparse.Namespace) -> int:
    path, _cfg, state_dir = _service_config(args)
    if os.name == "nt":  # pragma: no cover
        from ..install import windows

        return windows.uninstall(args.purge, state_dir, path)
    from ..install import linux

    return linux.uninstall(args.purge, state_dir, path)


def cmd_service_run(args: argparse.Namespace) -> int:
    if os.name != "nt":
        raise UsageError("'offsite service run' is what the Windows service manager starts; use 'offsite run'")
    from ..install import windows  # pragma: no cover

    return windows.host(Path(args.config) if args.config else config_mod.system_config_path())  # pragma: no cover


def cmd_service_status(args: argparse.Namespace) -> int:
    if os.name == "nt":  # pragma: no cover
        from ..install import windows

        return windows.status()
    from ..install import linux

    return linux.status()
