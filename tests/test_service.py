"""offsite as a service: the systemd unit (checked by systemd-analyze), the refusal where
systemd is not running, and the Windows service with pywin32 replaced by fakes (Windows
itself cannot run here)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import types

import pytest
from conftest import finished_file, wait_until

MiB = 1024 * 1024


def unit_from_dry_run(text: str) -> str:
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("cat > /etc/systemd/system/offsite.service"):
            inside = True
            continue
        if inside and line == "EOF":
            break
        if inside:
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_dry_run_prints_a_hardened_unit_that_systemd_accepts(site, tmp_path):
    site.config()
    r = site.offsite("service", "install", "--dry-run")
    assert r.returncode == 0, r.stderr
    unit = unit_from_dry_run(r.stdout)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    command = exec_start.split("=", 1)[1].split()[0]
    assert os.access(command, os.X_OK) and command.endswith("/offsite")  # this installation's offsite
    assert exec_start.endswith(f" -c {site.cfg} run")
    assert f"ReadWritePaths={site.state} -{site.location}" in unit  # the state and the local target
    for key in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=",
                "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
                "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE", "Restart=on-failure"):
        assert key in unit
    for command in ("systemctl daemon-reload", "systemctl enable offsite.service", "systemctl start offsite.service",
                    f"-c {site.cfg} check"):
        assert command in r.stdout
    path = tmp_path / "offsite.service"
    path.write_text(unit)
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: tests/run installs systemd for it")
    v = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    assert v.returncode == 0 and not v.stderr.strip(), v.stderr
    s = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)], capture_output=True, text=True,
                       check=False)
    assert "Overall exposure level for offsite.service: " in s.stdout
    score = float(s.stdout.split("Overall exposure level for offsite.service: ")[1].split()[0])
    assert score <= 3.0, s.stdout[-500:]


def test_install_without_systemd_refuses_in_one_line_and_says_what_to_run(site):
    site.config()
    assert not os.path.isdir("/run/systemd/system")  # this machine: a container
    r = site.offsite("service", "install")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "systemd is not running" in r.stderr and f"-c {site.cfg} run" in r.stderr
    assert not os.path.exists("/etc/systemd/system/offsite.service")


def test_version_comes_from_the_package():
    import offsite

    r = subprocess.run([sys.executable, "-m", "offsite", "--version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == f"offsite {offsite.__version__}"


# ---------------------------------------------------------------- Windows, with fakes
class FakeFramework:
    def __init__(self, args) -> None:
        self.reported: list = []

    def ReportServiceStatus(self, state, waitHint=0) -> None:  # pywin32's name
        self.reported.append(state)


@pytest.fixture
def win32(monkeypatch):
    """pywin32's modules as fakes that record what they are asked."""
    calls: list = []
    serviceutil = types.ModuleType("win32serviceutil")
    serviceutil.ServiceFramework = FakeFramework
    serviceutil.InstallService = lambda *a, **kw: calls.append(("InstallService", a, kw))
    serviceutil.StartService = lambda name: calls.append(("StartService", name))
    service = types.ModuleType("win32service")
    for i, n in enumerate(("SERVICE_STOP_PENDING", "SERVICE_AUTO_START", "SC_MANAGER_ALL_ACCESS", "SERVICE_ALL_ACCESS",
                           "SERVICE_CONFIG_FAILURE_ACTIONS", "SC_ACTION_RESTART", "SERVICE_RUNNING")):
        setattr(service, n, 100 + i)
    service.OpenSCManager = lambda *a: "scm"
    service.OpenService = lambda *a: "svc"
    service.ChangeServiceConfig2 = lambda h, kind, info: calls.append(("ChangeServiceConfig2", kind, info))
    service.CloseServiceHandle = lambda h: None
    sm = types.ModuleType("servicemanager")
    sm.EVENTLOG_INFORMATION_TYPE, sm.PYS_SERVICE_STARTED, sm.PYS_SERVICE_STOPPED = 1, 2, 3
    sm.LogMsg = lambda *a: calls.append(("LogMsg", a))
    sm.LogErrorMsg = lambda msg: calls.append(("LogErrorMsg", msg))
    for name, mod in (("win32serviceutil", serviceutil), ("win32service", service), ("servicemanager", sm)):
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_a_windows_stop_request_takes_the_sigterm_path_and_stops_at_a_resumable_point(site, win32, monkeypatch):
    from offsite import logs
    from offsite.agent.service import Agent
    from offsite.install import windows

    site.config(agent='bandwidth = "2MB/s"')
    finished_file(site.source / "C_VOL-b001.spf", 40 * MiB)
    stops = []
    real = Agent.request_stop
    monkeypatch.setattr(Agent, "request_stop", lambda self, *a: (stops.append(a), real(self, *a)))
    monkeypatch.setattr(logs, "to_event_log", lambda: win32.append(("to_event_log",)))
    monkeypatch.setattr(logs, "to_stderr", lambda level: None)  # keep pytest's own log handlers
    cls = windows.service_class()
    cls.config_path = site.cfg
    svc = cls(["offsite"])
    result: list = []

    def run() -> None:
        try:
            svc.SvcDoRun()
            result.append(0)
        except SystemExit as e:
            result.append(e.code)

    t = threading.Thread(target=run)
    t.start()
    staging = site.target / ".offsite" / "staging"
    wait_until(lambda: staging.exists() and sum(p.stat().st_size for p in staging.glob("*.part")) > 2 * MiB,
               what="the upload under way")
    svc.SvcStop()
    t.join(30)
    assert not t.is_alive() and result == [0]
    assert stops == [()]  # Agent.request_stop: the function SIGTERM is bound to
    assert svc.reported == [sys.modules["win32service"].SERVICE_STOP_PENDING]
    assert site.target_files() == {}  # nothing half-published
    staged = sum(p.stat().st_size for p in staging.glob("*.part"))
    assert 0 < staged < 40 * MiB  # the part stays, to resume from
    assert ("to_event_log",) in win32 and any(c[0] == "LogMsg" for c in win32)
    # The same function is what SIGTERM calls on Linux:
    agent = Agent.__new__(Agent)
    agent._stop = threading.Event()
    agent._reload = threading.Event()
    old = signal.getsignal(signal.SIGTERM)
    try:
        Agent._install_signals(agent)
        assert signal.getsignal(signal.SIGTERM) == agent.request_stop
    finally:
        signal.signal(signal.SIGTERM, old)
    r = site.offsite("sync", "job1", "--json")  # and it resumes from there
    assert r.returncode == 0 and site.target_files() == {"C_VOL-b001.spf": 40 * MiB}


def test_windows_install_registers_localsystem_delayed_start_and_restart_on_failure(tmp_path, win32, monkeypatch):
    from offsite.install import windows

    ran: list = []
    monkeypatch.setattr(windows.subprocess, "run",
                        lambda argv, **kw: (ran.append(argv), subprocess.CompletedProcess(argv, 0, "", ""))[1])
    cfg, state = tmp_path / "ProgramData" / "offsite" / "agent.toml", tmp_path / "ProgramData" / "offsite" / "state"
    said: list = []
    assert windows.install(cfg, state, None, None, dry_run=False, say=said.append) == 0
    [(_, args, kw)] = [c for c in win32 if c[0] == "InstallService"]
    assert args[1] == "offsite" and kw["userName"] is None and kw["delayedstart"] is True
    assert kw["exeArgs"] == f'-c "{cfg}" service run' and kw["startType"] == sys.modules["win32service"].SERVICE_AUTO_START
    [(_, _, actions)] = [c for c in win32 if c[0] == "ChangeServiceConfig2"]
    assert actions["Actions"][0] == (sys.modules["win32service"].SC_ACTION_RESTART, 30_000)
    assert ("StartService", "offsite") in win32
    acls = [a for a in ran if a[0] == "icacls"]
    assert [a[1] for a in acls] == [str(state), str(cfg.parent)]
    assert all("*S-1-5-18:(OI)(CI)F" in a and "*S-1-5-32-544:(OI)(CI)F" in a and "/inheritance:r" in a for a in acls)
    assert cfg.exists() and "[[jobs]]" in cfg.read_text()  # written from the example
    dry: list = []
    assert windows.install(cfg, state, "BACKUP\\svc-offsite", "pw", dry_run=True, say=dry.append) == 0
    assert any("as BACKUP\\svc-offsite" in line for line in dry) and any("svc-offsite:(OI)(CI)M" in x for x in dry)
