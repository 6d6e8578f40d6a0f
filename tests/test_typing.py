"""The whole package type-checks for Windows, where most users run offsite, and for Linux:
`mypy --platform win32` with pywin32's stubs (types-pywin32) checks the Windows-only paths
that cannot run here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("platform", ["win32", "linux"])
def test_mypy_is_clean(platform):
    r = subprocess.run([sys.executable, "-m", "mypy", "--platform", platform, "offsite"], cwd=ROOT,
                       capture_output=True, text=True, check=False, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
    assert "Success: no issues found" in r.stdout
