"""How bench/run.py measures and shows: one command under /usr/bin/time (wall, CPU, peak RSS
and the command as the tables print it), contenders run alternately with a failure kept as
a row's reason, medians and spreads, the Markdown tables, and rclone pointed at a test
server through RCLONE_CONFIG_T_* variables.
"""
from __future__ import annotations

import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

GiB = 1024 ** 3
RCLONE = str(Path(sys.executable).with_name("rclone"))
SHOWN: list[tuple[str, str]] = []  # (text, shown as): the scratch folder, secrets; filled in by main()


def display(argv: list[str], text: str = "") -> str:
    text = text or " ".join(shlex.quote(a) for a in argv)
    for old, new in SHOWN:
        text = text.replace(old, new)
    return text


class Measure:
    def __init__(self, wall: float, cpu: float, rss_kb: int, cmd: str = "") -> None:
        self.wall, self.cpu, self.rss_kb, self.cmd = wall, cpu, rss_kb, cmd


def measured(argv: list[str], env: dict | None = None, check: Callable[[subprocess.CompletedProcess], None] | None = None,
             timeout: float | None = None, cwd: Path | None = None, show: str = "") -> Measure:
    """Run a command under /usr/bin/time: wall seconds, user+system CPU seconds, peak RSS, and
    the command as the tables show it (`show`, or argv with the scratch folder and secrets hidden)."""
    r = subprocess.run(["/usr/bin/time", "-f", "@@time %e %U %S %M", *argv], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)
    if r.returncode != 0:
        said = "\n".join(x for x in r.stderr.splitlines() if not x.startswith(("@@time ", "Command exited with")))
        raise SystemExit(f"{Path(argv[0]).name} failed ({r.returncode}): {said[-2000:]}")
    if check:
        check(r)
    line = [x for x in r.stderr.splitlines() if x.startswith("@@time ")][-1].split()
    return Measure(float(line[1]), float(line[2]) + float(line[3]), int(line[4]), display(argv, show))



# ---------------------------------------------------------------- reference tools
def rclone_env(kind: str, o: dict) -> dict:
    def obscure(pw: str) -> str:
        return subprocess.run([RCLONE, "obscure", pw], capture_output=True, text=True, check=True).stdout.strip()

    p = "RCLONE_CONFIG_T_"
    env = {"RCLONE_CONFIG": "/dev/null"}
    if kind == "sftp":
        env.update({p + "TYPE": "sftp", p + "HOST": o["host"], p + "PORT": str(o["port"]), p + "USER": o["username"],
                    p + "KEY_FILE": o["key_file"]})
    elif kind in ("smb", "ftp"):
        env.update({p + "TYPE": kind, p + "HOST": "127.0.0.1", p + "PORT": str(o["port"]), p + "USER": o["username"],
                    p + "PASS": obscure(o["password"])})
    elif kind == "s3":
        env.update({p + "TYPE": "s3", p + "PROVIDER": "SeaweedFS", p + "ENDPOINT": o["endpoint"],
                    p + "ACCESS_KEY_ID": o["access_key_id"], p + "SECRET_ACCESS_KEY": o["secret_access_key"],
                    p + "REGION": "us-east-1", p + "FORCE_PATH_STYLE": "true"})
    return env


def rclone_dest(kind: str, o: dict, name: str) -> str:
    if kind == "local":
        return f"{o['path']}/{name}"
    if kind == "s3":
        return f"T:{o['bucket']}/{name}"
    if kind == "smb":
        return f"T:share/{o['path'].split('/share/', 1)[1]}/{name}"
    return f"T:{o['path']}/{name}"


def rclone(kind: str, o: dict, src: Path, single: bool = False, flags: list[str] | tuple = ()) -> Measure:
    name = f"rc{time.monotonic_ns()}"
    dest = rclone_dest(kind, o, name + ("/" + src.name if single else ""))
    return measured([RCLONE, "copyto" if single else "copy", "-q", *flags, str(src), dest], env=rclone_env(kind, o))


# ---------------------------------------------------------------- scenario helpers
def table(title: str, header: list[str], rows: list[list], out: list[str], notes: list[str] = ()) -> None:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if notes:
        lines += [""] + list(notes)
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    out.append(text)


def med(ms: list[Measure]) -> tuple[float, float, float, float, int]:
    walls = [m.wall for m in ms]
    return (statistics.median(walls), min(walls), max(walls), statistics.median(m.cpu for m in ms),
            max(m.rss_kb for m in ms))


class Got(dict):
    """Each contender's measures; `failed` says why a contender stopped (its row reads "failed")."""

    def __init__(self, keys) -> None:
        super().__init__({k: [] for k in keys})
        self.failed: dict[str, str] = {}


def attempt(fn: Callable[[], Measure]) -> Measure | str:
    """A measure, or why there is none: one tool failing does not end a long run."""
    try:
        return fn()
    except (SystemExit, subprocess.TimeoutExpired) as e:
        return " ".join(str(e).split())[-300:] or type(e).__name__


def alternate(runs: int, contenders: dict[str, Callable[[], Measure]]) -> Got:
    got = Got(contenders)
    for _ in range(runs):
        for k, fn in contenders.items():  # alternate, so drift hits all alike
            if k not in got.failed:
                m = attempt(fn)
                if isinstance(m, str):
                    got.failed[k] = m
                    print(f"{k} failed: {m}", file=sys.stderr, flush=True)
                else:
                    got[k].append(m)
    return got


def rate_rows(got: dict[str, list[Measure]], amount: float, unit: str, ref: str, gib: float | None) -> list[list]:
    rows = []
    ref_rate = amount / med(got[ref])[0] if got[ref] else math.nan
    for k, ms in got.items():
        if not ms:
            rows.append([k, "failed"] + ["-"] * 4)
            continue
        wall, lo, hi, cpu, rss = med(ms)
        rate = amount / wall
        rows.append([k, f"{rate:,.1f} {unit}", f"{amount / hi:,.1f}-{amount / lo:,.1f}", f"{rate / ref_rate:.2f}",
                     f"{cpu:.2f}" + (f" ({cpu / gib:.2f}/GiB)" if gib else ""), f"{rss / 1024:.0f} MB"])
    return rows


HEADER = ["who", "rate (median)", "spread", "ratio to ref", "client CPU s", "peak RSS"]


def made(make: Callable[[], tuple[list[str], str]]) -> Measure:
    """Measure a reference tool's command as wantools.single_stream makes it for this run."""
    argv, show = make()
    return measured(argv, show=show)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


