"""SPEC section 8 checked by a machine that attacks it (Hypothesis' RuleBasedStateMachine).

One job against a real target (a local folder; S3 on moto, behind a proxy that can refuse),
its source a FUSE mount of a real folder that fails on demand. Rules change the world at
random: ShadowProtect writes and ImageManager consolidates and applies retention (the
simulation of tests/imagemanager.py), ransomware encrypts a file in place or renames a
volume, a machine's folder fails to read and recovers, the agent is stopped, or killed at a
named crash point (OFFSITE_CRASH, in a real `offsite sync` process) and started again, the
target refuses for a while. The job runs in this process between rules (its coordinator's
turns, as the agent takes them). After every rule the invariants are checked against the
target as the server holds it:
- no ShadowProtect file under a final name offsite ever changes its bytes;
- nothing leaves the target that the source still has, or that only an attacker removed,
  and everything that leaves it is in the bin with the bytes it had;
- each chain on the target is a prefix, in chain order, of what the mode selects of it;
- with the faults gone and the job idle, the target equals the plan: nothing to send,
  nothing to delete but what waits for a person.

The suite runs a small, derandomized number of examples; bench/model.py runs the same
machine longer (OFFSITE_MODEL_EXAMPLES, OFFSITE_MODEL_STEPS).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import OFFSITE
from faultfs import FaultFS
from faultproxy import FaultProxy
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from imagemanager import ImageManager, write_events

from offsite import config
from offsite.agent.job import JobRunner, Request
from offsite.backupfiles import classify
from offsite.cli import main
from offsite.crashpoints import POINTS
from offsite.queue import WorkQueue
from offsite.selection import Rules, SourceFile, plan
from offsite.state import StateDir

EXAMPLES = int(os.environ.get("OFFSITE_MODEL_EXAMPLES", "0"))  # 0: the suite's (local 8, s3 5)
STEPS = int(os.environ.get("OFFSITE_MODEL_STEPS", "15"))
RANDOM = bool(os.environ.get("OFFSITE_MODEL_RANDOM"))  # bench/model.py: new cases each run
PCS = {"PC1": "C_VOL", "PC2": "D_VOL"}
RETENTION = {"intra": dt.timedelta(days=1), "daily": dt.timedelta(days=8), "weekly": dt.timedelta(days=30)}


class World:
    """What the machine is built on, for one test: the FUSE source and the target's server."""

    def __init__(self, kind: str, tmp: Path, servers) -> None:
        self.kind, self.tmp = kind, tmp
        self.fs = FaultFS(tmp / "backing", tmp / "mount", tmp / "faultfs.log")
        self.server = servers.get("s3") if kind == "s3" else None
        self.proxy = FaultProxy(("127.0.0.1", int(self.server.endpoint.rsplit(":", 1)[1]))) if self.server else None
        self.count = itertools.count()
        self.crashes = 0  # `offsite sync` processes killed at their crash point, all examples

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.fs.stop()


def machine(world: World):
    kind, fs = world.kind, world.fs

    class Offsite(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            n = next(world.count)
            self.root = world.tmp / f"ex{n}"
            self.root.mkdir()
            self.backing, self.source = fs.backing / f"ex{n}", fs.mount / f"ex{n}"
            self.rules = Rules(mode="all", include_intra_daily=kind == "local")
            job = f'mode = "all"\ninclude_intra_daily = {"true" if kind == "local" else "false"}'
            if kind == "local":
                self.drive = self.root / "drive"
                self.drive.mkdir()
                target = f'{{ type = "local", path = "{self.drive}" }}'
            else:
                loc = world.server.new_location()
                self.loc = loc
                opts = {**loc, "endpoint": f"http://127.0.0.1:{world.proxy.port}"}
                target = "{ " + ", ".join(f'{k} = "{v}"' for k, v in opts.items()) + " }"
            self.cfg = self.root / "agent.toml"
            self.cfg.write_text(f"""[agent]
state_dir = "{self.root / 'state'}"
settle = "0s"
rescan = "1h"
retry_for = "1s"
transfers = 3

[[jobs]]
name = "job1"
source = "{self.source}"
target = {target}
{job}
""")
            os.chmod(self.cfg, 0o600)
            self.ims = {}
            for pc, vol in PCS.items():
                (self.backing / pc).mkdir(parents=True)
                im = ImageManager(volumes=(vol,), step=dt.timedelta(hours=12), retention=RETENTION,
                                  base_size=4096, inc_size=512, start=dt.datetime(2026, 10, 1) + dt.timedelta(hours=n))
                self.ims[pc] = im
                write_events(self.backing / pc, im.start() + im.run(dt.timedelta(days=3)))
            self.seen: dict[str, bytes] = {}  # every ShadowProtect file ever published, as published
            self.attacked: set[str] = set()  # renamed away by ransomware: never mirrored without a person
            self.before: dict[str, bytes] = {}
            self.failing: str | None = None
            self.crashes = 0  # `offsite sync` processes that died at their crash point
            self.ticks_since_quiet = 0
            self.refusing = False
            self.life: tuple[WorkQueue, JobRunner] | None = None
            self.open()
            self.tick()

        # ---------------------------------------------------------------- the agent's lives
        def open(self) -> None:
            cfg = config.load(self.cfg, check_sources=False)
            state = StateDir(cfg.agent.state_dir)
            state.ensure()
            queue = WorkQueue(state.queue_dir)
            self.life = (queue, JobRunner(cfg.jobs[0], cfg.agent, queue, state, threading.BoundedSemaphore(4)))

        def close(self) -> None:
            assert self.life is not None
            queue, runner = self.life
            runner.close()
            queue.close()
            self.life = None

        def tick(self) -> None:
            """The coordinator's turns: a reconciliation (as at start and every rescan), then
            turns that fold in what changed since (confirm what vanished, plan, send)."""
            assert self.life is not None
            runner = self.life[1]
            self.ticks_since_quiet += 1
            runner.request(Request("sync"))
            for _ in range(3):
                runner.step()

        # ---------------------------------------------------------------- the world
        @rule(pc=st.sampled_from(sorted(PCS)), steps=st.integers(1, 3))
        def backup(self, pc: str, steps: int) -> None:
            """ShadowProtect writes, ImageManager consolidates and applies retention."""
            folder = self.backing / pc
            if not any(folder.glob("*.spf")):
                return  # the volume was renamed away: its backups stopped with it
            for _ in range(steps):
                write_events(folder, self.ims[pc].step())
            self.tick()

        @rule(what=st.sampled_from(["encrypt", "rename"]), pick=st.integers(0, 10**6))
        def ransomware(self, what: str, pick: int) -> None:
            """Ransomware rewrites a published file in place, 512 bytes longer, or renames a
            machine's every backup file to *.locked."""
            if what == "encrypt":
                # A pick among what is there now, never a draw from it: what is published
                # depends on threads and kills, and a draw must not depend on the world.
                published = sorted(p for p in self.seen if (self.backing / p).exists())
                if published:
                    p = published[pick % len(published)]
                    size = (self.backing / p).stat().st_size
                    (self.backing / p).write_bytes(os.urandom(size + 512))
            else:
                pc = sorted(PCS)[pick % len(PCS)]
                for f in sorted((self.backing / pc).iterdir()):
                    if f.is_file() and not f.name.endswith(".locked"):
                        self.attacked.add(f"{pc}/{f.name}")
                        f.rename(f.with_name(f.name + ".locked"))
            self.tick()

        @rule(what=st.sampled_from(["folder", "target"]), pc=st.sampled_from(sorted(PCS)),
              error=st.sampled_from(["EIO", "ESTALE", "EACCES"]))
        def fault(self, what: str, pc: str, error: str) -> None:
            """A machine's folder fails to read, or the target refuses; the same again heals it."""
            if what == "folder":
                if self.failing is None:
                    self.failing = pc
                    fs.fail(f"{self.backing.name}/{pc}", error)
                else:
                    self.failing = None
                    fs.heal()
            else:
                self.refusing = not self.refusing
                if kind == "local":
                    a, b = (self.drive, self.drive.with_name("drive.away"))
                    (a if self.refusing else b).rename(b if self.refusing else a)
                elif self.refusing:
                    world.proxy.refuse()
                else:
                    world.proxy.allow()
            self.tick()

        @rule(point=st.sampled_from(("stop",) + POINTS), n=st.integers(1, 3), pc=st.sampled_from(sorted(PCS)))
        def agent(self, point: str, n: int, pc: str) -> None:
            """The agent stops and starts; or, after a day of new backups, a real `offsite sync`
            is killed at a named point, and the agent's next life goes on from what it left."""
            self.close()
            if point != "stop":
                if any((self.backing / pc).glob("*.spf")):
                    write_events(self.backing / pc, self.ims[pc].run(dt.timedelta(days=1)))
                r = subprocess.run([*OFFSITE, "-c", str(self.cfg), "sync", "job1"], capture_output=True, text=True,
                                   timeout=120, env={**os.environ, "OFFSITE_CRASH": f"{point}:{n}"})
                assert "Traceback" not in r.stderr, r.stderr
                self.crashes += r.returncode == 137
            self.open()
            self.tick()

        @precondition(lambda self: self.ticks_since_quiet >= 3)
        @rule()
        def quiet(self) -> None:
            """Faults gone, the job idle: the target is what the plan says it should be."""
            self.ticks_since_quiet = 0
            if self.failing:
                self.fault("folder", self.failing, "")
            if self.refusing:
                self.fault("target", "", "")
            self.tick()
            self.tick()
            queue, _ = self.life  # type: ignore[misc]
            assert queue.summary("job1")["pending_files"] == 0, [i for i in queue.items("job1")]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(["-c", str(self.cfg), "plan", "job1", "--json"]) == 0
            p = json.loads(out.getvalue())
            assert p["uploads"] == [] and p["deletes"] == [], p

        # ---------------------------------------------------------------- the truth
        def target(self) -> dict[str, bytes]:
            """Everything under the job folder, read on the server's side."""
            if kind == "local":
                top = (self.drive if self.drive.exists() else self.drive.with_name("drive.away")) / "job1"
                return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()} \
                    if top.exists() else {}
            return world.server.files(self.loc, "job1")

        def at_source(self) -> dict[str, int]:
            return {p.relative_to(self.backing).as_posix(): p.stat().st_size
                    for p in self.backing.rglob("*") if p.is_file()}

        @invariant()
        def check(self) -> None:
            everything = self.target()
            now = {p: b for p, b in everything.items() if not p.startswith(".offsite/")}
            binned = {}
            for p, b in everything.items():
                if p.startswith(".offsite/deleted/"):
                    binned.setdefault(p[len(".offsite/deleted/"):].partition("/")[2], []).append(b)
            source = self.at_source()
            for p, b in now.items():
                f = classify(p)
                if f is not None and f.family == "shadowprotect":
                    assert self.seen.setdefault(p, b) == b, f"{p} changed offsite"
            for p, b in self.before.items():
                if p not in now:
                    assert b in binned.get(p, []), f"{p} left the target without going to the bin"
                    assert p not in source, f"{p} was deleted offsite while the source has it"
                    assert p not in self.attacked, f"{p}: an attacker's deletion was mirrored without a person"
            self.before = now
            selected = set(plan({p: SourceFile(s, 0) for p, s in source.items()}, {}, self.rules).uploads)
            chains: dict[tuple, list] = {}
            for p in now:
                f = classify(p)
                if f is not None:
                    chains.setdefault(f.chain, []).append(f.key)
            for p in selected - set(now):
                f = classify(p)
                assert f is not None
                later = [k for k in chains.get(f.chain, []) if k > f.key]
                assert not later, f"{p} is missing offsite while later files of its chain are there"

        def teardown(self) -> None:
            world.crashes += self.crashes
            try:
                if self.life is not None:
                    if not self.failing and not self.refusing:
                        self.quiet()
                        self.check()
                    self.close()
            finally:
                fs.heal()
                if kind == "s3":
                    world.proxy.allow()
                shutil.rmtree(self.backing, ignore_errors=True)

    return Offsite


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_offsite_copy_survives_whatever_happens_to_its_source(kind, tmp_path, servers):
    world = World(kind, tmp_path, servers)
    try:
        # No shrinking: the world has threads and kills in it, so a replay need not fail the
        # same way; the failing run's steps are printed as they were.
        examples = EXAMPLES or (8 if kind == "local" else 5)
        run_state_machine_as_test(machine(world), settings=settings(
            max_examples=examples, stateful_step_count=STEPS, deadline=None, derandomize=not RANDOM,
            suppress_health_check=list(HealthCheck), database=None,
            phases=(Phase.explicit, Phase.reuse, Phase.generate)))
        made = next(world.count)
        print(f"{made} examples, {world.crashes} kills at a crash point")
        assert made >= examples and world.crashes > 0  # it explored: kills reached their points
    finally:
        world.stop()
