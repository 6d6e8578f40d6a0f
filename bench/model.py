"""The model-based test of SPEC section 8 (tests/test_model.py), for longer than the suite.

    .venv/bin/python bench/model.py [--examples 100] [--steps 30]

The suite runs the state machine for a few derandomized examples; this runs it with as
many examples and steps as asked, with Hypothesis' random exploration (not derandomized:
each run looks at new cases), on both targets (local, S3 on moto). A failure prints the
steps that led to it; it then belongs in the suite as an ordinary regression test.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    env = {**os.environ, "OFFSITE_MODEL_EXAMPLES": str(args.examples), "OFFSITE_MODEL_STEPS": str(args.steps),
           "OFFSITE_MODEL_RANDOM": "1"}
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_model.py"],
                       cwd=ROOT, env=env)
    print(f"{args.examples} examples of up to {args.steps} steps per target: "
          f"{'passed' if r.returncode == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
