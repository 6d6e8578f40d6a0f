"""Chaos soak: the real agent on a live ImageManager history, attacked for a while.

    .venv/bin/python bench/chaos.py [--minutes 30] [--seed 1] [--out bench/chaos.json]

One `offsite run` with three jobs, to a local drive (a small tmpfs, so it can fill up), to
SFTP (OpenSSH) and to S3 (SeaweedFS), each job's source a machine folder of a FUSE mount that
fails on demand (tests/faultfs.py). A simulated ShadowProtect + ImageManager writes a backup
every few seconds of real time (a 15-minute step, consolidations, retention) into each
machine's folder. Meanwhile, at random (seeded) moments, one of:
  sigkill     the agent is killed (SIGKILL) and started again
  crashpoint  the agent is killed at a named crash point (OFFSITE_CRASH) and started again
  reload      SIGHUP
  server      the SFTP or S3 server is stopped for a while, then started again
  readfault   a machine's folder answers EIO (or ESTALE, EACCES) for a while
  full        the local target fills up (a ballast file) for a while
  encrypt     ransomware rewrites a few backup files in place, 512 bytes longer
  rename      ransomware renames a whole machine's folder content to *.locked
Every few seconds the three targets are read on the server side and checked:
  replaced    a ShadowProtect file under its final name whose bytes changed
  partial     a file under its final name whose bytes are not those of a version the
              source held (half a file, or a mix)
  wrongly deleted  a file gone from its final name while the source still had it, or that
              only the ransomware removed, or that is not in the bin
  duplicated  a file published twice for one source version ("sent X" twice in the log)
At the end the faults are healed and the agent left to settle; then
  lost        a file the mode selects, complete at the source and not attacked, that is
              not on the target.
Prints what was injected and every count (all must be 0), writes them as JSON with --out.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from faultfs import FaultFS  # noqa: E402
from imagemanager import ImageManager, write_events  # noqa: E402
from servers import Servers  # noqa: E402

from offsite.backupfiles import classify  # noqa: E402
from offsite.crashpoints import POINTS  # noqa: E402
from offsite.selection import Rules, SourceFile, plan  # noqa: E402

JOBS = {"local": "PC1", "sftp": "PC2", "s3": "PC3"}
VOLUMES = {"PC1": "C_VOL", "PC2": "D_VOL", "PC3": "E_VOL"}


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Soak:
    def __init__(self, work: Path, minutes: float, seed: int) -> None:
        self.work, self.deadline, self.rng = work, time.monotonic() + minutes * 60, random.Random(seed)
        self.servers = Servers(work / "servers")
        # SeaweedFS keeps its objects on disk across a restart (moto would start empty).
        self.sftp, self.s3 = self.servers.get("sftp"), self.servers.get("s3-seaweedfs")
        self.quiet_until: dict[str, float] = {}  # a job's target just restarted: not listed yet
        self.locs = {"sftp": self.sftp.new_location(), "s3": self.s3.new_location()}
        self.drive = work / "drive"
        self.drive.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(self.drive)], check=True)
        self.fs = FaultFS(work / "backing", work / "source", work / "faultfs.log")
        self.ims = {pc: ImageManager(volumes=(vol,), base_size=256 * 1024, inc_size=8 * 1024,
                                     start=dt.datetime(2026, 10, 1)) for pc, vol in VOLUMES.items()}
        for pc, im in self.ims.items():
            (self.fs.backing / pc).mkdir()
            write_events(self.fs.backing / pc, im.start() + im.run(dt.timedelta(days=2)))
        self.versions: dict[str, set[str]] = collections.defaultdict(set)  # path -> digests the source held
        self.attacked: set[str] = set()
        self.seen: dict[tuple[str, str], str] = {}  # (job, path) -> digest first published
        self.before: dict[str, dict[str, str]] = {job: {} for job in JOBS}
        self.counts = collections.Counter()
        self.injected = collections.Counter()
        self.problems: list[str] = []
        self.cfg = work / "agent.toml"
        self.cfg.write_text(self.config())
        os.chmod(self.cfg, 0o600)
        self.log = open(work / "agent.log", "a")
        self.agent: subprocess.Popen | None = None
        self.note_source()

    def config(self) -> str:
        def inline(opts: dict) -> str:
            return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in opts.items()) + " }"
        jobs = []
        for job, pc in JOBS.items():
            target = inline({"type": "local", "path": str(self.drive)}) if job == "local" else inline(self.locs[job])
            jobs.append(f'[[jobs]]\nname = "{job}"\nsource = "{self.fs.mount / pc}"\ntarget = {target}\n'
                        f'mode = "all"\ninclude_intra_daily = true\nmax_deletes = 1000\n')
        return (f'[agent]\nstate_dir = "{self.work / "state"}"\nsettle = "2s"\nrescan = "20s"\n'
                f'retry_for = "30s"\ntransfers = 3\n\n' + "\n".join(jobs))

    # ---------------------------------------------------------------- the agent
    def start(self, crash: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "OFFSITE_CRASH"}
        if crash:
            env["OFFSITE_CRASH"] = crash
        self.agent = subprocess.Popen([sys.executable, "-m", "offsite", "-c", str(self.cfg), "run"], stdout=self.log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def kill(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait(30)

    # ---------------------------------------------------------------- the source
    def note_source(self) -> None:
        for p in self.fs.backing.rglob("*"):
            if p.is_file():
                try:
                    self.versions[p.relative_to(self.fs.backing).as_posix()].add(digest(p.read_bytes()))
                except OSError:
                    pass

    def backups(self) -> None:
        for pc, im in self.ims.items():
            folder = self.fs.backing / pc
            if any(folder.glob("*.spf")):
                write_events(folder, im.step())
        self.note_source()

    # ---------------------------------------------------------------- the targets
    def target(self, job: str) -> dict[str, bytes]:
        if job == "local":
            top = self.drive / job
            out = {}
            for p in top.rglob("*") if top.exists() else ():
                if p.is_file():
                    try:
                        out[p.relative_to(top).as_posix()] = p.read_bytes()
                    except OSError:
                        pass
            return out
        server = self.sftp if job == "sftp" else self.s3
        try:
            return server.files(self.locs[job], job)
        except Exception:  # noqa: BLE001 - the server may be down right now: look next time
            return {}

    def check(self, final: bool = False) -> None:
        for job, pc in JOBS.items():
            if time.monotonic() < self.quiet_until.get(job, 0) and not final:
                continue  # a server just restarted may list only part of what it holds for a moment
            everything = self.target(job)
            if not everything and self.before[job] and not final:
                continue  # a server that is down answers nothing: not a deletion
            now = {p: digest(b) for p, b in everything.items() if not p.startswith(".offsite/")}
            binned: dict[str, set[str]] = collections.defaultdict(set)
            for p, b in everything.items():
                if p.startswith(".offsite/deleted/"):
                    binned[p[len(".offsite/deleted/"):].partition("/")[2]].add(digest(b))
            for p, d in now.items():
                key = f"{pc}/{p}"
                if d not in self.versions.get(key, ()):
                    self.problem("partial", f"{job}: {p} holds bytes the source never had")
                f = classify(p)
                if f is not None and f.family == "shadowprotect" and self.seen.setdefault((job, p), d) != d:
                    self.problem("replaced", f"{job}: {p} changed offsite")
            source = {p.relative_to(self.fs.backing / pc).as_posix() for p in (self.fs.backing / pc).rglob("*")
                      if p.is_file()}
            for p, d in self.before[job].items():
                if p not in now:
                    if p in source or f"{pc}/{p}" in self.attacked or d not in binned.get(p, ()):
                        self.problem("wrongly deleted", f"{job}: {p} left the target (source has it: {p in source}, "
                                                        f"attacked: {f'{pc}/{p}' in self.attacked}, in the bin: "
                                                        f"{d in binned.get(p, ())})")
            self.before[job] = now

    def problem(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if len(self.problems) < 200:
            self.problems.append(f"{kind}: {text}")
        print(f"PROBLEM {kind}: {text}", flush=True)

    # ---------------------------------------------------------------- faults
    def inject(self) -> None:
        what = self.rng.choice(["sigkill", "crashpoint", "reload", "server", "readfault", "full", "encrypt",
                                "rename", "sigkill", "readfault", "server"])
        self.injected[what] += 1
        print(f"{time.strftime('%H:%M:%S')} inject {what}", flush=True)
        if what == "sigkill":
            self.kill()
            self.start()
        elif what == "crashpoint":
            self.kill()
            self.start(f"{self.rng.choice(POINTS)}:{self.rng.randint(1, 5)}")
            self.wait(self.rng.uniform(5, 20))
            if self.agent is not None and self.agent.poll() is not None:
                self.injected["crashpoint reached"] += 1
            self.kill()
            self.start()
        elif what == "reload":
            if self.agent is not None:
                self.agent.send_signal(signal.SIGHUP)
        elif what == "server":
            job = self.rng.choice(["sftp", "s3"])
            server = self.sftp if job == "sftp" else self.s3
            self.quiet_until[job] = float("inf")
            server.stop()
            self.wait(self.rng.uniform(5, 40))
            server.restart()
            self.quiet_until[job] = time.monotonic() + 10
        elif what == "readfault":
            pc = self.rng.choice(sorted(VOLUMES))
            self.fs.fail(pc, self.rng.choice(["EIO", "ESTALE", "EACCES"]))
            self.wait(self.rng.uniform(5, 40))
            self.fs.heal()
        elif what == "full":
            ballast = self.drive / "ballast"
            free = os.statvfs(self.drive).f_bavail * os.statvfs(self.drive).f_frsize
            with open(ballast, "wb") as f:
                f.truncate(0)
                try:
                    f.write(b"\0" * max(0, free - 64 * 1024))
                except OSError:
                    pass
            self.wait(self.rng.uniform(5, 30))
            ballast.unlink()
        elif what == "encrypt":
            files = sorted(p for p in self.fs.backing.rglob("*") if p.is_file() and classify(p.name))
            for p in self.rng.sample(files, min(3, len(files))):
                p.write_bytes(os.urandom(p.stat().st_size + 512))
            self.note_source()
        elif what == "rename":
            pc = self.rng.choice(sorted(VOLUMES))
            for p in sorted((self.fs.backing / pc).iterdir()):
                if p.is_file() and not p.name.endswith(".locked"):
                    self.attacked.add(f"{pc}/{p.name}")
                    p.rename(p.with_name(p.name + ".locked"))

    def wait(self, seconds: float) -> None:
        """Time passes: backups go on, the targets are checked."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.backups()
            self.check()
            time.sleep(min(3.0, max(0.0, end - time.monotonic())))

    # ---------------------------------------------------------------- the run
    def run(self) -> dict:
        self.start()
        try:
            while time.monotonic() < self.deadline:
                self.wait(self.rng.uniform(10, 40))
                self.inject()
            self.fs.heal()
            if self.agent is None or self.agent.poll() is not None:
                self.start()
            settle_until = time.monotonic() + 180
            while time.monotonic() < settle_until:  # no new backups: the agent catches up
                time.sleep(5)
                self.check()
            self.check(final=True)
            self.count_lost()
            self.count_duplicates()
        finally:
            self.kill()
            self.fs.stop()
            subprocess.run(["umount", "-l", str(self.drive)], capture_output=True)
            self.servers.stop()
        return {"injected": dict(self.injected), "problems": dict(self.counts), "examples": self.problems[:50],
                "published": {job: len(files) for job, files in self.before.items()}}

    def count_lost(self) -> None:
        for job, pc in JOBS.items():
            folder = self.fs.backing / pc
            src = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
            wanted = plan({p: SourceFile(s, 0) for p, s in src.items()}, {}, Rules(include_intra_daily=True)).uploads
            for p in wanted:
                if p not in self.before[job]:
                    self.problem("lost", f"{job}: {p} is selected at the source and not on the target")

    def count_duplicates(self) -> None:
        text = (self.work / "agent.log").read_text(errors="replace")
        sent = collections.Counter(m.group(1, 2) for m in re.finditer(r"INFO job (\S+): sent (.+?) \(\d+ bytes\)", text))
        for p, n in sent.items():
            if n > 1:  # sent again for one version? an encrypted file is never sent, so any repeat is one
                self.problem("duplicated", f"{p} was published {n} times")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offsite-chaos-"))
    print(f"working in {work}", flush=True)
    result = Soak(work, args.minutes, args.seed).run()
    result.update(minutes=args.minutes, seed=args.seed)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
