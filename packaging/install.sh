#!/usr/bin/env bash
# Install offsite into ./.venv (from this checkout) and prepare the example folders that
# agent.toml uses: example/source gets a small sample managed folder (offsite/sample.py).
# Works on a fresh Debian machine as root; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"   # e.g. "[test]"

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # A minimal Debian has no python3; Debian's python3 lacks venv until python3-venv is in.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
mkdir -p example/offsite-drive
.venv/bin/python -m offsite.sample example/source   # a sample managed folder, unless it holds files
echo "offsite installed: $(pwd)/.venv/bin/offsite" >&2
