"""Bandwidth caps: a token bucket shared by every transfer it covers.

Transfers call `consume(n)` after each chunk they write; the bucket sleeps just long enough
to keep the average at the configured rate. The bucket holds at most `burst` seconds of
tokens, so an idle period does not turn into a burst later.
"""
from __future__ import annotations

import threading
import time

from ..errors import Interrupted

MAX_CHUNK = 1024 * 1024
MIN_CHUNK = 16 * 1024


class Throttle:
    def __init__(self, rate: float | None, burst: float = 0.25) -> None:
        self.rate = rate  # bytes per second; None = unlimited
        self.burst = burst
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._stamp = time.monotonic()

    def chunk(self) -> int:
        """The largest write between two calls: a tenth of a second's worth, so a slow
        rate is paced in small steps instead of long pauses between big bursts."""
        if self.rate is None:
            return MAX_CHUNK
        return int(min(MAX_CHUNK, max(MIN_CHUNK, self.rate / 10)))

    def consume(self, n: int, stop: threading.Event | None = None) -> None:
        """Account for `n` bytes written; sleep while the bucket is in debt."""
        if self.rate is None:
            return
        with self._lock:
            now = time.monotonic()
            # Up to `burst` seconds of tokens, or one chunk's worth when that is more: the
            # time spent writing a chunk bigger than the burst (16 KiB at 1 Kbps) is credited.
            cap = max(self.rate * self.burst, n)
            self._tokens = min(cap, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            if stop is not None:
                if stop.wait(wait):
                    raise Interrupted("the agent is stopping")
            else:
                time.sleep(wait)
