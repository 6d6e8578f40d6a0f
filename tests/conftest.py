"""Shared fixtures: run the real `offsite` command, write configs, start and stop agents.

Every agent a test starts is stopped at teardown, and a test that leaves one running, or
leaves threads behind, fails.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

OFFSITE = [sys.executable, "-m", "offsite"]


def wait_until(pred: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_offsite(cfg: Path, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*OFFSITE, "-c", str(cfg), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def opened_target(tmp_path: Path, opts: dict, job: str = ""):
    """The target of a job on these location options, opened: what one transfer session holds."""
    from offsite import config
    from offsite.targets import make_target

    (tmp_path / "src").mkdir(exist_ok=True)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml_table("t", opts) + f"\n[[jobs]]\nname = 'j'\nsource = '{tmp_path / 'src'}'\nlocation = 't'\n{job}")
    os.chmod(cfg, 0o600)
    t = make_target(config.load(cfg).jobs[0])
    t.open()
    return t


def locations_config(tmp_path: Path, locs: dict[str, dict]) -> Path:
    """agent.toml with a location and a job on it for each of `locs` (name -> options)."""
    text = "".join(toml_table(n, o) for n, o in locs.items())
    text += "".join(f"[[jobs]]\nname = '{n}'\nsource = '{tmp_path / 'src'}'\nlocation = '{n}'\n" for n in locs)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"[agent]\nstate_dir = '{tmp_path / 'state'}'\n" + text)
    os.chmod(cfg, 0o600)
    return cfg


def finished_file(path: Path, size: int | None = None, data: bytes | None = None, age: float = 60) -> Path:
    """A backup file written `age` seconds ago (a minute: it has settled): random bytes, or `data`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        path.write_bytes(data)
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(size or 0))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if isinstance(v, int) else "'" + str(v) + "'"


def toml_table(name: str, opts: dict) -> str:
    """A [locations.NAME] table from location options."""
    return f"[locations.{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in opts.items())


class Site:
    """A source folder, a location folder and a state directory under one tmp folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "source"
        self.location = root / "drive"
        self.state = root / "state"
        self.source.mkdir()
        self.location.mkdir()
        self.cfg = root / "agent.toml"

    @property
    def target(self) -> Path:
        return self.location / "job1"

    def config(self, job: str = "", agent: str = "", extra: str = "", target: dict | None = None) -> Path:
        """Write agent.toml for one job `job1` from source to location/job1 (or to `target`,
        location options of a server). `agent` lines replace the defaults of the same key."""
        settings = {"state_dir": f'"{self.state}"', "settle": '"1s"', "rescan": '"1h"', "retry_for": '"30s"'}
        for line in filter(None, (x.strip() for x in agent.splitlines())):
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = value
        agent_lines = "\n        ".join(f"{k} = {v}" for k, v in settings.items())
        opts = target or {"type": "local", "path": str(self.location)}
        inline = ", ".join(f"{k} = {toml_value(v)}" for k, v in opts.items())
        text = f"""
        [agent]
        {agent_lines}

        [[jobs]]
        name = "job1"
        source = "{self.source}"
        target = {{ {inline} }}
        {job}
        {extra}
        """
        self.cfg.write_text(textwrap.dedent(text))
        os.chmod(self.cfg, 0o600)
        return self.cfg

    def offsite(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_offsite(self.cfg, *args, **kw)

    def target_files(self) -> dict[str, int]:
        """Published files under the job folder (not .offsite), relative path -> size."""
        out = {}
        if not self.target.exists():
            return out
        for p in self.target.rglob("*"):
            rel = p.relative_to(self.target).as_posix()
            if p.is_file() and not rel.startswith(".offsite/"):
                out[rel] = p.stat().st_size
        return out

    def status(self) -> dict:
        r = self.offsite("status", "--json")
        return json.loads(r.stdout)

    def job_status(self) -> dict:
        return self.status()["jobs"][0]


class AgentProcess:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.log = site.root / f"agent-{time.monotonic_ns()}.log"
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen([*OFFSITE, "-c", str(site.cfg), "run"], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: self._running() or self.proc.poll() is not None, timeout=20,
                       what="the agent to start")
            assert self.proc.poll() is None, self.output()
        except BaseException:
            self.kill()  # never leave a half-started agent behind
            raise

    def _running(self) -> bool:
        r = self.site.offsite("status", "--json")
        try:
            return json.loads(r.stdout)["agent"]["running"]
        except (ValueError, KeyError):
            return False

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class TargetWatcher(threading.Thread):
    """Lists a target continuously while the agent works and records every violation: a
    file under its final name whose size is not its final size (half-written), or a chain
    whose visible files are not a prefix of the chain order. `listing` returns the published
    files (relative path -> size) of the job folder."""

    def __init__(self, listing: Callable[[], dict[str, int]], final_sizes: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.listing, self.final_sizes = listing, final_sizes
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.snapshots = 0

    def run(self) -> None:
        from offsite.backupfiles import classify

        while not self.stop.is_set():
            first = self.listing()
            # A second listing: everything published before it started is in it, so for each
            # file of the first, every earlier file of its chain must be in the second.
            second = self.listing()
            self.snapshots += 1
            for path, size in first.items():
                if size != self.final_sizes.get(path, size):
                    self.problems.append(f"half-written: {path} has {size} of {self.final_sizes[path]}")
                f = classify(path)
                for other in self.final_sizes:
                    g = classify(other)
                    if g.chain == f.chain and g.key < f.key and other not in second:
                        self.problems.append(f"out of order: {path} visible before {other}")
            time.sleep(0.01)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def start_agent(site: Site, request):
    started: list[AgentProcess] = []

    def start() -> AgentProcess:
        a = AgentProcess(site)
        started.append(a)
        return a

    yield start
    leaked = [a for a in started if a.proc.poll() is None]
    for a in leaked:
        a.kill()
    passed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed
    if leaked and passed:
        pytest.fail("a test left an agent running")
    for a in started:
        if not passed:
            print(f"--- agent log {a.log.name} ---\n{a.output()[-4000:]}")


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """Real servers on loopback, started on first use, stopped at the end."""
    from servers import Servers

    s = Servers(tmp_path_factory.mktemp("servers"))
    yield s
    s.stop()


def pytest_terminal_summary(terminalreporter):
    from servers import VERSIONS

    if VERSIONS:
        terminalreporter.write_sep("-", "servers used")
        for kind, version in sorted(VERSIONS.items()):
            terminalreporter.write_line(f"{kind}: {version}")


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"threads left running: {extra}"
