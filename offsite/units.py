"""Durations, bandwidths and byte counts: parsing what users write and printing it back."""
from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Bits are decimal (network convention); bytes come decimal (KB/s) and binary (KiB/s).
_BANDWIDTH = re.compile(r"^(\d+(?:\.\d+)?)\s*(Kbps|Mbps|Gbps|KB/s|MB/s|GB/s|KiB/s|MiB/s|GiB/s)$")
_BANDWIDTH_BYTES = {
    "Kbps": 1e3 / 8, "Mbps": 1e6 / 8, "Gbps": 1e9 / 8,
    "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9,
    "KiB/s": 1024.0, "MiB/s": 1024.0**2, "GiB/s": 1024.0**3,
}
BANDWIDTH_MIN = 1e3 / 8  # 1 Kbps
BANDWIDTH_MAX = 999e9 / 8  # 999 Gbps


def parse_duration(text: str) -> float:
    """'30s', '10m', '1h', '2d' -> seconds. Raises ValueError with what is allowed."""
    m = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f'must be a duration such as "30s", "10m", "1h" or "2d" (got {text!r})')
    return float(int(m.group(1)) * _DURATION_SECONDS[m.group(2)])


def parse_bandwidth(text: str) -> float | None:
    """'off' -> None; '20Mbps', '12MB/s', '512KiB/s' -> bytes per second."""
    if not isinstance(text, str):
        raise ValueError(f'must be a string such as "off", "20Mbps" or "12MB/s" (got {text!r})')
    if text.strip() == "off":
        return None
    m = _BANDWIDTH.match(text.strip())
    if not m:
        raise ValueError(
            'must be "off" or a rate with one of the units Kbps, Mbps, Gbps, KB/s, MB/s, GB/s, '
            f"KiB/s, MiB/s, GiB/s (got {text!r})"
        )
    rate = float(m.group(1)) * _BANDWIDTH_BYTES[m.group(2)]
    if not BANDWIDTH_MIN <= rate <= BANDWIDTH_MAX:
        raise ValueError(f"must be between 1Kbps and 999Gbps (got {text!r})")
    return rate


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
_SIZE_BYTES = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
               "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def parse_size(text: str) -> int:
    """'500GB', '1.5TiB', '0B' -> bytes. Raises ValueError with what is allowed."""
    m = _SIZE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f'must be "off" or a size such as "500GB" or "2TiB" (got {text!r})')
    return int(float(m.group(1)) * _SIZE_BYTES[m.group(2)])


def format_duration(seconds: float) -> str:
    """A duration for people: 45s, 12m 05s, 3h 07m, 2d 4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def format_bytes(n: float) -> str:
    """A byte count for people: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
