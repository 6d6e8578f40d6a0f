"""offsite against the reference tools, in the same run, on the same file.

    .venv/bin/python bench/run.py [--size-mb 400] [--runs 3]

For each target it times `offsite sync` (the real command, standalone, one new file) and the
reference tool copying the same file to the same server: cp for `local`, OpenSSH's sftp for
`sftp`, Samba's smbclient for `smb`. It prints MB/s (10^6 bytes per second; medians of the
runs) and offsite's speed as a ratio of the reference. Servers come from tests/servers.py.
Loopback on a shared 2-core machine: compare the ratios, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import PASSWORD, SMB_USER, Servers  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def offsite_sync(work: Path, src_file: Path, target: dict) -> None:
    """One standalone `offsite sync` of a source folder holding only src_file."""
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    os.link(src_file, src / "C_VOL-b001.spf")
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    folder = f"bench{time.monotonic_ns()}"
    inline = ", ".join(f"{k} = {v}" if isinstance(v, int) else f"{k} = '{v}'" for k, v in target.items())
    cfg = work / "agent.toml"
    cfg.write_text(f"[agent]\nstate_dir = '{state}'\nsettle = '0s'\n[[jobs]]\nname = 'b'\nsource = '{src}'\n"
                   f"folder = '{folder}'\nmode = 'all'\ntarget = {{ {inline} }}\n")
    os.chmod(cfg, 0o600)
    r = subprocess.run([sys.executable, "-m", "offsite", "-c", str(cfg), "sync", "b"], capture_output=True, text=True)
    if r.returncode != 0 or "1 sent" not in r.stderr:  # the one file was sent
        raise SystemExit(f"offsite sync failed: {r.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offsite-bench-"))
    servers = Servers(work / "servers")
    size = args.size_mb * 1_000_000
    src_file = work / "image.bin"
    with open(src_file, "wb") as f:
        for _ in range(args.size_mb):
            f.write(os.urandom(1_000_000))
    rows = []
    try:
        # local: cp
        drive = work / "drive"
        drive.mkdir()
        ref = lambda: subprocess.run(["cp", str(src_file), str(drive / f"cp{time.monotonic_ns()}")], check=True)  # noqa: E731
        ours = lambda: offsite_sync(work, src_file, {"type": "local", "path": str(drive)})  # noqa: E731
        rows.append(("local", "cp", ref, ours))

        sftp = servers.get("sftp")
        sloc = sftp.new_location()
        ssh_cfg = work / "ssh_config"
        ssh_cfg.write_text(f"Host bench\n HostName 127.0.0.1\n Port {sftp.port}\n User root\n"
                           f" IdentityFile {sftp.base}/client_ed25519\n IdentitiesOnly yes\n"
                           f" UserKnownHostsFile {sftp.base}/known_hosts\n StrictHostKeyChecking yes\n BatchMode yes\n")

        def sftp_put() -> None:
            batch = work / "batch"
            batch.write_text(f"put {src_file} {sloc['path']}/sftp{time.monotonic_ns()}\n")
            subprocess.run(["sftp", "-q", "-F", str(ssh_cfg), "-b", str(batch), "bench"], check=True,
                           capture_output=True)

        rows.append(("sftp", "OpenSSH sftp", sftp_put, lambda: offsite_sync(work, src_file, sloc)))

        smb = servers.get("smb")
        mloc = smb.new_location()
        inside = mloc["path"].split("/share/", 1)[1]

        def smbclient_put() -> None:
            subprocess.run(["smbclient", "//127.0.0.1/share", "-p", str(smb.port), "-U", f"{SMB_USER}%{PASSWORD}",
                            "-c", f"put {src_file} {inside}/smb{time.monotonic_ns()}"], check=True, capture_output=True)

        rows.append(("smb", "smbclient", smbclient_put, lambda: offsite_sync(work, src_file, mloc)))

        tiny = work / "tiny.bin"
        tiny.write_bytes(b"x")
        targets = {"local": {"type": "local", "path": str(drive)}, "sftp": sloc, "smb": mloc}
        print(f"file: {args.size_mb} MB random, {args.runs} runs each, medians; MB/s = 10^6 B/s")
        print("offsite = the whole `offsite sync` command; streaming = the same without its fixed cost")
        print("(start-up, config, queue, listings, connection), measured as a sync of a 1-byte file")
        print(f"{'target':<7} {'reference':<13} {'ref MB/s':>8} {'offsite':>8} {'ratio':>6} "
              f"{'fixed s':>8} {'streaming':>10} {'ratio':>6}")
        for name, refname, ref, ours in rows:
            ref_times, our_times, fixed = [], [], []
            for _ in range(args.runs):  # alternate, so drift hits both alike
                ref_times.append(timed(ref))
                our_times.append(timed(ours))
                fixed.append(timed(lambda name=name: offsite_sync(work, tiny, targets[name])))
            r_mbs = size / statistics.median(ref_times) / 1e6
            o_mbs = size / statistics.median(our_times) / 1e6
            f = statistics.median(fixed)
            s_mbs = size / max(1e-6, statistics.median(our_times) - f) / 1e6
            print(f"{name:<7} {refname:<13} {r_mbs:>8.0f} {o_mbs:>8.0f} {o_mbs / r_mbs:>6.2f} "
                  f"{f:>8.2f} {s_mbs:>10.0f} {s_mbs / r_mbs:>6.2f}")
    finally:
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
