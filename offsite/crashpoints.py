"""Named points where a test may kill the agent on purpose, the way a power loss or a
SIGKILL would: `OFFSITE_CRASH=<point>[:<n>]` in the environment ends the process, at once
and without cleaning up, the n-th time (default the first) it reaches that point.

The points sit where a kill is worst: between a step on the target and the queue's record
of it. Without the variable, `reach` is one comparison. Used by the model-based test
(tests/test_model.py) and the chaos soak (bench/chaos.py); never set in production.
"""
from __future__ import annotations

import os
import threading

POINTS = ("staged", "published", "binned", "deleted")
_SPEC = os.environ.get("OFFSITE_CRASH", "")
_POINT, _, _N = _SPEC.partition(":")
_count = 0
_lock = threading.Lock()


def reach(point: str) -> None:
    """The process is at `point`: die here if told to."""
    global _count
    if point != _POINT:
        return
    with _lock:
        _count += 1
        if _count >= int(_N or 1):
            os._exit(137)
