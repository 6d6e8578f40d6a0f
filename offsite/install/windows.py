"""The Windows service `offsite`, through pywin32.

The service process is this installation's offsite.exe run as `offsite -c CONFIG service
run`: it hosts OffsiteService, whose start runs the agent (Agent.run) and whose stop request
calls Agent.request_stop, the very function SIGTERM calls on Linux, so a stop ends at a
resumable point the same way on both. LocalSystem by default, as ImageManager's own service
runs, so it can read the managed folders; automatic (delayed) start; restarted 30 s after a
crash; config in %ProgramData%\\offsite\\agent.toml and state in %ProgramData%\\offsite\\state,
both readable by SYSTEM and Administrators only (and by --account when given); errors also
go to the Application event log.

Written against pywin32's documented API; on this Linux machine it runs only with the win32
modules replaced by fakes (tests/test_windows_service.py).
"""
from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import EXAMPLE, offsite_command, remove_state

log = logging.getLogger(__name__)
NAME = "offsite"
DISPLAY = "offsite backup replication"
DESCRIPTION = "Replicates ShadowProtect/ImageManager and Macrium backup images offsite."
RESTART_AFTER_MS = 30_000
SYSTEM_SID, ADMINS_SID = "*S-1-5-18", "*S-1-5-32-544"


def service_class() -> Any:
    """OffsiteService, built when pywin32 is importable (so this module imports anywhere)."""
    import servicemanager
    import win32service
    import win32serviceutil

    from .. import config as config_mod
    from .. import logs
    from ..agent.service import Agent

    class OffsiteService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = NAME
        _svc_display_name_ = DISPLAY
        _svc_description_ = DESCRIPTION
        config_path: Path = config_mod.system_config_path()

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.agent: Agent | None = None
            self._stop_early = threading.Event()  # a stop that came before the agent existed

        def SvcStop(self) -> None:  # pywin32's name
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=RESTART_AFTER_MS)
            self._stop_early.set()
            if self.agent is not None:
                self.agent.request_stop()  # what SIGTERM calls

        def SvcDoRun(self) -> None:  # pywin32's name
            servicemanager.LogMsg(servicemanager.EVENTLOG_INFORMATION_TYPE, servicemanager.PYS_SERVICE_STARTED,
                                  (self._svc_name_, ""))
            try:
                cfg = config_mod.load(self.config_path)
                logs.to_stderr(cfg.agent.log_level)
                logs.to_event_log()
                self.agent = Agent(cfg)
                if self._stop_early.is_set():
                    self.agent.request_stop()
                code = self.agent.run()
            except Exception as e:  # noqa: BLE001 - told to the event log, then the service stops
                servicemanager.LogErrorMsg(f"offsite could not run: {e}")
                raise SystemExit(2) from None
            servicemanager.LogMsg(servicemanager.EVENTLOG_INFORMATION_TYPE, servicemanager.PYS_SERVICE_STOPPED,
                                  (self._svc_name_, ""))
            if code:
                raise SystemExit(code)

    return OffsiteService


def host(config_path: Path) -> int:
    """`offsite service run`: what the service control manager starts."""
    import servicemanager

    cls = service_class()
    cls.config_path = config_path
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(cls)
    servicemanager.StartServiceCtrlDispatcher()
    return 0


def _acl(path: Path, account: str | None) -> list[str]:
    grants = [f"{SYSTEM_SID}:(OI)(CI)F", f"{ADMINS_SID}:(OI)(CI)F"] + ([f"{account}:(OI)(CI)M"] if account else [])
    return ["icacls", str(path), "/inheritance:r", *(x for g in grants for x in ("/grant:r", g))]


def install(config_path: Path, state_dir: Path, account: str | None, password: str | None, dry_run: bool,
            say=print) -> int:
    exe = offsite_command()
    steps: list[str] = [
        f"create {state_dir} and {config_path.parent}, for SYSTEM and Administrators only",
        *([f"write {config_path} from the example: edit its jobs"] if not config_path.exists() else []),
        (f"register the service {NAME}: {exe} -c {config_path} service run, as {account or 'LocalSystem'}, "
         f"automatic (delayed) start, restarted {RESTART_AFTER_MS // 1000} s after a crash"),
        f"check the configuration: {exe} -c {config_path} check",
        f"start the service {NAME}",
    ]
    if dry_run:
        for s in steps:
            say(f"# {s}")
        for d in (state_dir, config_path.parent):
            say(" ".join(_acl(d, account)))
        return 0
    import win32service
    import win32serviceutil

    for d in (state_dir, config_path.parent):
        d.mkdir(parents=True, exist_ok=True)
        _run(_acl(d, account))
    if not config_path.exists():
        config_path.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    say(f"done: {steps[0]}")
    win32serviceutil.InstallService(
        None, NAME, DISPLAY, startType=win32service.SERVICE_AUTO_START, userName=account, password=password,
        exeName=str(exe), exeArgs=f'-c "{config_path}" service run', description=DESCRIPTION, delayedstart=True)
    scm = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
    try:
        svc = win32service.OpenService(scm, NAME, win32service.SERVICE_ALL_ACCESS)
        try:
            win32service.ChangeServiceConfig2(svc, win32service.SERVICE_CONFIG_FAILURE_ACTIONS, {
                "ResetPeriod": 86400, "RebootMsg": "", "Command": "",
                "Actions": [(win32service.SC_ACTION_RESTART, RESTART_AFTER_MS)] * 3})
        finally:
            win32service.CloseServiceHandle(svc)
    finally:
        win32service.CloseServiceHandle(scm)
    say(f"done: {steps[-3]}")
    r = subprocess.run([str(exe), "-c", str(config_path), "check"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        say(f"the configuration check failed:\n{(r.stdout + r.stderr).strip()}\nnot started: fix {config_path}, "
            f"then run: sc start {NAME}")
        return 1
    win32serviceutil.StartService(NAME)
    say(f"done: {steps[-1]}")
    return 0


def uninstall(purge: bool, state_dir: Path, config_path: Path, say=print) -> int:
    import win32serviceutil

    try:
        win32serviceutil.StopService(NAME)
    except Exception:  # noqa: BLE001 - not running is fine
        pass
    win32serviceutil.RemoveService(NAME)
    say(f"removed the service {NAME}")
    remove_state(purge, state_dir, config_path, say)
    return 0


def status() -> int:
    import win32service
    import win32serviceutil

    try:
        state = win32serviceutil.QueryServiceStatus(NAME)[1]
    except Exception as e:  # noqa: BLE001 - pywin32 raises pywintypes.error
        raise UsageError(f"the service {NAME} is not installed ({e})") from None
    names = {win32service.SERVICE_RUNNING: "running", win32service.SERVICE_STOPPED: "stopped",
             win32service.SERVICE_START_PENDING: "starting", win32service.SERVICE_STOP_PENDING: "stopping"}
    print(f"service {NAME}: {names.get(state, state)}")
    return 0 if state == win32service.SERVICE_RUNNING else 1


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise UsageError(f"{' '.join(argv)} failed: {(r.stderr or r.stdout).strip()}")
