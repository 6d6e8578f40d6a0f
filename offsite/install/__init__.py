"""`offsite service install | uninstall | status`: the agent as a system service.

linux.py writes a hardened systemd unit; windows.py registers a Windows service through
pywin32. Both install this installation's `offsite` (a venv, pipx or system install alike).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "example.toml"  # a new agent.toml


def offsite_command() -> Path:
    """The `offsite` executable of this installation."""
    here = Path(sys.executable).with_name("offsite.exe" if os.name == "nt" else "offsite")
    if here.exists():
        return here
    return Path(sys.argv[0]).resolve()
