"""The systemd service: a hardened unit for this installation's `offsite`.

The service runs as root, with its capabilities bounded to reading and writing files
whatever their owner (CAP_DAC_READ_SEARCH, CAP_DAC_OVERRIDE) and the file system read-only
except the state directory and the local targets. Why root rather than a dedicated user:
managed folders are written by backup software (or by Samba on behalf of Windows machines)
with owners and ACLs offsite does not control; a dedicated user would need read access
granted on every managed folder and kept through every change the backup software makes,
and a missed grant is a backup that silently stops going offsite. Root without the other
capabilities (no mounts, no ptrace, no raw network, no module loading) and with
ProtectSystem=strict keeps what a compromised agent could do small.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import UsageError
from . import EXAMPLE, remove_state

UNIT_PATH = Path("/etc/systemd/system/offsite.service")
CONFIG_PATH = Path("/etc/offsite/agent.toml")


def systemd_running() -> bool:
    """sd_booted(): systemd is the init system of this machine."""
    return Path("/run/systemd/system").is_dir()


def writable_paths(cfg: Config | None, state_dir: Path) -> list[str]:
    """The state directory, and each local target ("-": a drive not mounted yet does not
    keep the service from starting; the job says the location is missing instead)."""
    targets = {f"-{job.location.options['path']}" for job in (cfg.jobs if cfg else ())
               if job.location.type == "local"}
    return [str(state_dir), *sorted(targets)]


def under_home(cfg: Config | None) -> bool:
    if cfg is None:
        return False
    places = [j.source for j in cfg.jobs] + [Path(str(j.location.options["path"])) for j in cfg.jobs
                                             if j.location.type == "local"]
    return any(str(p).startswith(("/home/", "/root/", "/run/user/")) for p in places)


def unit(command: Path, config_path: Path, cfg: Config | None, state_dir: Path) -> str:
    home = "read-only" if under_home(cfg) else "yes"
    return f"""\
# offsite agent, written by 'offsite service install'. Reload the config: systemctl reload offsite
[Unit]
Description=offsite: replicate backup images offsite
Documentation=https://pypi.org/project/offsite/
After=network-online.target local-fs.target remote-fs.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={command} -c {config_path} run
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM: the agent stops at a resumable point and exits 0 within a few seconds.
KillSignal=SIGTERM
TimeoutStopSec=30
# Exit 2 (a config error, a source disk not mounted yet) is retried too: the agent starts
# by itself once the disk is there or agent.toml is fixed.
Restart=on-failure
RestartSec=30
UMask=0077
# Root, bounded to reading and writing files whatever their owner (see offsite/install/linux.py).
User=root
CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={" ".join(writable_paths(cfg, state_dir))}
ProtectHome={home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources

[Install]
WantedBy=multi-user.target
"""


@dataclass
class Step:
    what: str  # said to the user
    file: tuple[Path, str, int] | None = None  # (path, text, mode): written when missing/always
    command: list[str] | None = None
    mkdir: tuple[Path, int] | None = None


def install_steps(command: Path, config_path: Path, cfg: Config | None, state_dir: Path) -> list[Step]:
    steps = [Step(f"write the unit {UNIT_PATH}", file=(UNIT_PATH, unit(command, config_path, cfg, state_dir), 0o644)),
             Step(f"create the state directory {state_dir} (0700)", mkdir=(state_dir, 0o700))]
    if not config_path.exists():
        steps.append(Step(f"write {config_path} from the example (0600): edit its jobs",
                          file=(config_path, EXAMPLE.read_text(encoding="utf-8"), 0o600)))
    steps += [Step("check the configuration", command=[str(command), "-c", str(config_path), "check"]),
              Step("reload systemd", command=["systemctl", "daemon-reload"]),
              Step("enable the service at boot", command=["systemctl", "enable", "offsite.service"]),
              Step("start it", command=["systemctl", "start", "offsite.service"])]
    return steps


def install(command: Path, config_path: Path, cfg: Config | None, state_dir: Path, dry_run: bool,
            say=print) -> int:
    steps = install_steps(command, config_path, cfg, state_dir)
    if dry_run:
        for s in steps:
            say(f"# {s.what}")
            if s.file:
                say(f"cat > {s.file[0]} <<'EOF'  # mode {s.file[2]:04o}\n{s.file[1]}EOF")
            if s.mkdir:
                say(f"install -d -m {s.mkdir[1]:04o} {s.mkdir[0]}")
            if s.command:
                say(" ".join(s.command))
        return 0
    if not systemd_running():
        raise UsageError("systemd is not running on this machine (a container?), so there is no service to "
                         f"install; run the agent under your own supervisor instead: {command} -c {config_path} run")
    check_failed = False
    for s in steps:
        if s.mkdir:
            s.mkdir[0].mkdir(parents=True, exist_ok=True)
            os.chmod(s.mkdir[0], s.mkdir[1])
        if s.file:
            path, text, mode = s.file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        if s.command:
            if check_failed and s.command[-1] == "offsite.service" and s.command[1] == "start":
                say(f"not started: fix {config_path}, then run: systemctl start offsite")
                continue
            r = subprocess.run(s.command, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                if s.command[-1] == "check":
                    check_failed = True
                    say(f"{s.what}: failed:\n{(r.stdout + r.stderr).strip()}")
                    continue
                raise UsageError(f"{' '.join(s.command)} failed: {(r.stderr or r.stdout).strip()}")
        say(f"done: {s.what}")
    return 1 if check_failed else 0


def uninstall(purge: bool, state_dir: Path, config_path: Path, say=print) -> int:
    if not systemd_running():
        raise UsageError("systemd is not running on this machine: there is no offsite service to remove")
    subprocess.run(["systemctl", "disable", "--now", "offsite.service"], check=False)
    UNIT_PATH.unlink(missing_ok=True)
    subprocess.run(["systemctl", "daemon-reload"], check=False)
    say(f"removed the service and {UNIT_PATH}")
    remove_state(purge, state_dir, config_path, say)
    return 0


def status() -> int:
    if not systemd_running():
        raise UsageError("systemd is not running on this machine: there is no offsite service")
    return subprocess.run(["systemctl", "status", "--no-pager", "offsite.service"], check=False).returncode
