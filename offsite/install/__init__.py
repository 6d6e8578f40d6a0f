"""`offsite service install | uninstall | status`: the agent as a system service.

linux.py writes a hardened systemd unit; windows.py registers a Windows service through
pywin32. Both install this installation's `offsite` (a venv, pipx or system install alike).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "example.toml"  # a new agent.toml


def remove_state(purge: bool, state_dir: Path, config_path: Path, say) -> None:
    """After the service is gone: the state (the queue) and the config stay unless --purge."""
    if purge:
        shutil.rmtree(state_dir, ignore_errors=True)
        config_path.unlink(missing_ok=True)
        say(f"removed {state_dir} and {config_path}")
    else:
        say(f"kept {state_dir} (the queue) and {config_path}; --purge removes them")


def offsite_command() -> Path:
    """The `offsite` executable of this installation."""
    here = Path(sys.executable).with_name("offsite.exe" if os.name == "nt" else "offsite")
    if here.exists():
        return here
    return Path(sys.argv[0]).resolve()
