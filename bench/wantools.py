"""The WAN side of bench/run.py: wan.py as a context of its own per table, an FTP server whose
data connections go through it too, each target type's single-stream reference tool, and the
rclone flag sets tried to find its best for a case.

FTP through wan.py: a passive data connection goes to whatever port the server announces, so
mapping the control port alone would carry the commands through the proxy and the data around
it. `WanFTPD` runs pyftpdlib on 127.0.0.2 with its passive ports in a fixed range and
127.0.0.1 as its NAT address (`-n`); wan.py listens on 127.0.0.1 at the same port numbers and
forwards each to 127.0.0.2, all of them sharing the one link. Whatever the client asks
(EPSV: a port on the control connection's address, 127.0.0.1; PASV: 127.0.0.1, the NAT
address, and a port; Python's ftplib, offsite's, keeps PASV's port and ignores its address),
the data connection lands on the proxy: nothing listens on 127.0.0.1 at those ports but wan.py. A port outside the range
(pyftpdlib falls back to a kernel port when the range is exhausted) is refused, never
carried around the proxy. The bench also compares wan.py's count of bytes carried with the
bytes the runs sent.
"""
from __future__ import annotations

import hashlib
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import FTPD, PASSWORD, SERVERS, SMB_USER, VERSIONS  # noqa: E402

WAN = HERE.parent.parent / "shared" / "tools" / "wan.py"
Pair = tuple[tuple[str, int], tuple[str, int]]


class Link:
    """`50ms/100Mbps`: the round trip and the rate wan.py is given."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.rtt, _, self.rate = text.partition("/")
        m = re.fullmatch(r"([\d.]+)\s*([KMG]?)bps", self.rate, re.I)
        if not re.fullmatch(r"[\d.]+m?s", self.rtt) or not m:
            raise SystemExit(f"a link is RTT/RATE like 50ms/100Mbps, not {text!r}")
        self.bytes_per_s = float(m[1]) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m[2].upper()] / 8
        self.label = f"{self.rtt}, {self.rate}"
        self.default_mb = 150 if self.bytes_per_s <= 25e6 else 500  # about 12 s and 4 s of the link


def wan_version() -> str:
    data = WAN.read_bytes()
    return f"sha256 {hashlib.sha256(data).hexdigest()[:12]}, modified {time.strftime('%Y-%m-%d', time.localtime(WAN.stat().st_mtime))}"


class Wan:
    """wan.py between the clients and one target's server; stop() returns the bytes it carried."""

    def __init__(self, link: Link, pairs: list[Pair], log: Path) -> None:
        argv = [sys.executable, str(WAN), "--rtt", link.rtt, "--rate", link.rate]
        for (lh, lp), (th, tp) in pairs:
            argv += ["--listen", f"{lh}:{lp}", "--to", f"{th}:{tp}"]
        self.log = log
        # Its output goes to a file: a pipe nobody reads would stall it on a long run's tracebacks.
        with open(log, "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while log.read_text().count("\nwan: ") + log.read_text().startswith("wan: ") < len(pairs):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"wan.py did not start: {log.read_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> tuple[int, int]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        text = self.log.read_text()
        self.other = [x for x in text.splitlines() if x.strip() and not x.startswith("wan: ")]
        m = re.search(r"carried (\d+) bytes up, (\d+) bytes down", text)
        return (int(m[1]), int(m[2])) if m else (-1, -1)


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def passive_range(n: int, hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")) -> int:
    """The first of n consecutive ports free on every host, below the kernel's ephemeral range
    (so no outgoing connection takes one of them while the bench runs)."""
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        base = random.randrange(10000, low - n)
        if all(_free(h, p) for p in range(base, base + n) for h in hosts):
            return base
    raise SystemExit(f"no {n} consecutive free ports below {low} for the FTP passive range")


class WanFTPD(FTPD):
    """pyftpdlib for the WAN rows: see the module's docstring. Reached only through wan.py."""

    name = "ftp-wan"
    HOST = "127.0.0.2"
    PASSIVE = 128  # data connections open at once: rclone --transfers 32 needs 32

    def start(self) -> None:
        b = self.base
        self.root = b / "root"
        self.root.mkdir(exist_ok=True)
        if not getattr(self, "port", None):
            with socket.socket() as s:
                s.bind((self.HOST, 0))
                self.port = s.getsockname()[1]
            self.passive = passive_range(self.PASSIVE)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.proxy_port = s.getsockname()[1]
        p = self.spawn([sys.executable, "-m", "pyftpdlib", "-i", self.HOST, "-n", "127.0.0.1", "-p", str(self.port),
                        "-w", "-d", str(self.root), "-u", SMB_USER, "-P", PASSWORD,
                        "-r", f"{self.passive}-{self.passive + self.PASSIVE - 1}"])
        deadline = time.monotonic() + 20
        while True:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pyftpdlib on {self.HOST} did not start: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.HOST, self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        import pyftpdlib

        VERSIONS[self.name] = (f"pyftpdlib {pyftpdlib.__ver__} on {self.HOST}, NAT address 127.0.0.1, passive ports "
                               f"{self.passive}-{self.passive + self.PASSIVE - 1} through wan.py")

    def pairs(self) -> list[Pair]:
        """wan.py's listen -> to pairs: the control port, and each passive port onto itself."""
        return [(("127.0.0.1", self.proxy_port), (self.HOST, self.port))] + [
            (("127.0.0.1", p), (self.HOST, p)) for p in range(self.passive, self.passive + self.PASSIVE)]

    def options(self, path: Path | None = None) -> dict:
        return {**super().options(path), "type": "ftp", "port": self.proxy_port}


SERVERS.setdefault("ftp-wan", WanFTPD)


def ssh_config(path: Path, o: dict) -> Path:
    """An OpenSSH client config for host `bench` at the location's port (the proxy's, or sshd's)."""
    known = (f" UserKnownHostsFile {o['known_hosts']}\n StrictHostKeyChecking yes\n" if o.get("known_hosts") else
             " UserKnownHostsFile /dev/null\n StrictHostKeyChecking no\n LogLevel ERROR\n")
    path.write_text(f"Host bench\n HostName 127.0.0.1\n Port {o['port']}\n User {o['username']}\n"
                    f" IdentityFile {o['key_file']}\n IdentitiesOnly yes\n{known} BatchMode yes\n"
                    " Ciphers aes128-gcm@openssh.com\n")
    return path


def single_stream(kind: str, o: dict, img: Path, work: Path) -> tuple[str, Callable[[], tuple[list[str], str]]] | None:
    """The target type's own one-session tool: its label and a maker of (argv, how to show it)
    that writes to a new name each run. None for a type without one."""
    if kind == "sftp":
        conf = ssh_config(work / f"ssh_config_{o['port']}", o)

        def sftp() -> tuple[list[str], str]:
            batch = work / "batch"
            line = f"put {img} {o['path']}/sftp{time.monotonic_ns()}"
            batch.write_text(line + "\n")
            argv = ["sftp", "-q", "-F", str(conf), "-b", str(batch), "bench"]
            return argv, f"{' '.join(argv)}  # the batch: {line}"
        return "OpenSSH sftp", sftp
    if kind == "smb":
        inside = o["path"].split("/share/", 1)[1]
        return "smbclient", lambda: (["smbclient", "//127.0.0.1/share", "-p", str(o["port"]), "-U",
                                      f"{SMB_USER}%{PASSWORD}", "-c", f"put {img} {inside}/smb{time.monotonic_ns()}"], "")
    if kind == "ftp":
        return "curl", lambda: (["curl", "-sS", "-T", str(img), "--user", f"{SMB_USER}:{PASSWORD}",
                                 f"ftp://127.0.0.1:{o['port']}{o['path']}/curl{time.monotonic_ns()}"], "")
    if kind == "s3":  # one PUT of the whole file: one stream
        return "curl", lambda: (["curl", "-sS", "-f", "-T", str(img), "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                                 f"{o['access_key_id']}:{o['secret_access_key']}",
                                 "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                                 f"{o['endpoint']}/{o['bucket']}/curl{time.monotonic_ns()}"], "")
    return None


# rclone's flag sets tried for a case, one run each; the fastest is "rclone best" (the smoke
# runs on a busy machine could not tell them apart: the lead's run picks). One big file: only
# backends with OpenWriterAt or OpenChunkWriter can send it over several streams
# (rclone's fs/operations/multithread.go; `rclone backend features` says which: in 1.75 SMB
# has OpenWriterAt, S3 OpenChunkWriter, SFTP and FTP neither). SMB's streams write through
# a buffer of --multi-thread-write-buffer-size: 1Mi instead of the default 128Ki took 8
# streams from 21 to 31 MB/s at 20 ms in a smoke run, hence 1Mi. For S3 the parts in flight are
# the larger of --s3-upload-concurrency and --multi-thread-streams (when that is set), and a
# file under --s3-upload-cutoff (200Mi) goes in one PUT. SFTP can only widen its one session's
# window: --sftp-chunk-size (255k works with OpenSSH, the docs say) x --sftp-concurrency.
RCLONE_BEST: dict[str, list[str]] = {
    "sftp/big": [f"--sftp-chunk-size 255k --sftp-concurrency {n}" for n in (32, 64, 128)] + ["--sftp-concurrency 256"],
    "smb/big": [f"--multi-thread-streams {n} --multi-thread-cutoff 1Mi --multi-thread-chunk-size 4Mi "
                "--multi-thread-write-buffer-size 1Mi" for n in (4, 8, 16)],
    "ftp/big": [],
    "s3/big": [f"--s3-upload-cutoff 16Mi --s3-chunk-size 16Mi --s3-upload-concurrency {n}" for n in (4, 8, 16)]
    + ["--s3-upload-cutoff 8Mi --s3-chunk-size 8Mi --s3-upload-concurrency 16"],
    "sftp/small": [f"--transfers {n} --sftp-chunk-size 255k" for n in (8, 16, 32)],
    "smb/small": [f"--transfers {n}" for n in (8, 16, 32)],
    "ftp/small": [f"--transfers {n}" for n in (8, 16, 32)],
    "s3/small": [f"--transfers {n}" for n in (8, 16, 32)],
}
WHY_NONE = {"ftp/big": "rclone's FTP backend has neither OpenWriterAt nor OpenChunkWriter, so one file goes over "
                       "one data connection whatever the flags: its best is its defaults"}


def rclone_features(rclone: str, env: dict) -> str:
    """What `rclone backend features` says of multi-stream uploads to the remote T:."""
    import json
    import os

    r = subprocess.run([rclone, "backend", "features", "T:"], capture_output=True, text=True, env={**os.environ, **env})
    try:
        f = json.loads(r.stdout)["Features"]
    except (ValueError, KeyError):
        return "rclone backend features: no answer"
    return "rclone backend features: " + ", ".join(f"{k} {'yes' if f.get(k) else 'no'}"
                                                   for k in ("OpenWriterAt", "OpenChunkWriter"))
