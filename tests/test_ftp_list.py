"""The FTP listing fallback: on a server without MLSD (vsftpd, IIS 6, many NAS boxes) the
`ftp` target lists folders with `LIST -a` and parses the Unix `ls -l` lines it gets.

Everything the agent learns about the target comes through that parser: which files are
published and how big (so nothing is sent twice, and a file changed at the source is told
from its offsite copy), how much of an interrupted upload is staged (resume), what is in
the bin, and which subfolders hold another job's `.offsite/owner` (never touched). Tested
here on the lines real servers write, then against real servers that answer no MLSD:
ProFTPD (MLSD refused to the client) and pyftpdlib (MLSD removed from the server, LIST
taking `ls` options as vsftpd does).
"""
from __future__ import annotations

import ftplib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import toml_value, wait_until
from servers import PASSWORD, free_port

from offsite import config
from offsite.errors import Interrupted, PermanentError
from offsite.targets import make_target

MiB = 1024 * 1024
NO_MLSD = "500 'MLSD' not understood"


# ------------------------------------------------------------------ the lines real servers write

def proftpd(name: str, is_dir: bool, size: int) -> str:
    # ProFTPD 1.3 (mod_ls): owner name, numeric group, day padded with a space; older files a year.
    mode = "drwxr-xr-x   2" if is_dir else "-rw-r--r--   1"
    when = "Sep  9  2001" if size == 1000 else "Dec  1 18:58"
    return f"{mode} offsite  0        {size:>12} {when} {name}"


def pyftpdlib(name: str, is_dir: bool, size: int) -> str:
    # pyftpdlib (AbstractedFS.format_list): the day zero-padded, "%b %d  %Y" for older files.
    mode = "drwxr-xr-x   2" if is_dir else "-rw-r--r--   1"
    when = "Sep 09  2001" if size == 1000 else "Dec 01 18:58"
    return f"{mode} root     root     {size:>12} {when} {name}"


def vsftpd(name: str, is_dir: bool, size: int) -> str:
    # vsftpd 3 (ls.c): numeric owner and group, four spaces after the mode.
    mode = "drwxr-xr-x    2" if is_dir else "-rw-------    1"
    when = "Sep 09  2001" if size == 1000 else "Dec 01 18:58"
    return f"{mode} 1001     1001     {size:>12} {when} {name}"


def iis(name: str, is_dir: bool, size: int) -> str:
    # IIS FTP with "Directory listing style: UNIX": owner/group words, folders of size 0.
    mode = "drwxrwxrwx   1" if is_dir else "-rwxrwxrwx   1"
    when = "Sep  9  2001" if size == 1000 else "Dec  1 18:58"
    return f"{mode} owner    group    {0 if is_dir else size:>12} {when} {name}"


def gnu_ls(name: str, is_dir: bool, size: int) -> str:
    # Servers that run /bin/ls -la (wu-ftpd, BusyBox on NAS boxes): a "total" line comes first.
    mode = "drwxr-xr-x  2" if is_dir else "-rw-r--r--  1"
    when = "Sep  9  2001" if size == 1000 else "Dec  1 18:58"
    return f"{mode} admin administrators {size} {when} {name}"


def iis_dos(name: str, is_dir: bool, size: int) -> str:
    # IIS FTP's default "Directory listing style: MS-DOS" (IIS 6 has no MLSD).
    return f"12-01-26  06:58PM       {'<DIR>         ' if is_dir else f'{size:>14}'} {name}"


FORMATS = {"proftpd": proftpd, "pyftpdlib": pyftpdlib, "vsftpd": vsftpd, "iis-unix": iis, "gnu-ls": gnu_ls,
           "iis-dos": iis_dos}

# A job folder as a tree: path -> size for files, None for folders.
TREE = {
    ".offsite": None, ".offsite/owner": 38, ".offsite/staging": None,
    ".offsite/staging/0123abcd-6291456-1764615480.part": 2 * MiB,
    ".offsite/deleted": None, ".offsite/deleted/2026-12-01": None,
    ".offsite/deleted/2026-12-01/C_VOL-b000.spf": 4096,
    "C_VOL-b001.spf": 6 * MiB,
    "C_VOL-b001.md5": 1000,  # an old file: the listing shows a year, not a time
    "C_VOL-b001-i001-cd.spi": 107_374_182_400,  # 100 GB: more than 32 bits
    "Macrium Repository Information.txt": 64,  # spaces in the name
    "PC1": None, "PC1/{1F6E2A3B-AAAA}": None,
    "PC1/{1F6E2A3B-AAAA}/4F6F6CACA58B077D-00-00.mrimgx": 3 * MiB,
    "PC1/{1F6E2A3B-AAAA}/two  spaces-00-00.mrimg": 7,  # a run of spaces inside a name
    "other": None, "other/.offsite": None, "other/.offsite/owner": 38,  # another job's folder inside
    "other/D_VOL-b001.spf": 99,
}
PUBLISHED = {p: s for p, s in TREE.items() if s is not None and not p.startswith((".offsite/", "other/"))}


class ListOnlyServer:
    """What FtpTarget asks of ftplib's FTP object, answered from TREE under `root` the way a
    server without MLSD answers: MLSD is not understood, LIST -a gives `ls -l` lines."""

    def __init__(self, root: str, line, total: bool = False) -> None:
        self.root, self.line, self.total = root, line, total
        self.commands: list[str] = []
        self.paths = {root: None, **{f"{root}/{p}": s for p, s in TREE.items()}}

    def cwd(self, path: str) -> str:
        if path in self.paths and self.paths[path] is None:
            return "250 OK"
        raise ftplib.error_perm(f"550 {path}: No such file or directory")

    def voidcmd(self, cmd: str) -> str:
        return "200 OK"

    def size(self, path: str) -> int:
        if self.paths.get(path) is None:
            raise ftplib.error_perm(f"550 {path}: not a plain file")
        return self.paths[path]

    def mlsd(self, path: str = "", facts=()):
        self.commands.append(f"MLSD {path}")
        raise ftplib.error_perm(NO_MLSD)

    def retrlines(self, cmd: str, callback) -> str:
        self.commands.append(cmd)
        verb, _, rest = cmd.partition(" ")
        assert verb == "LIST"
        flags, _, path = rest.rpartition(" ") if rest.startswith("-") else ("", "", rest)
        assert flags in ("", "-a")
        if self.paths.get(path, 0) is not None:
            raise ftplib.error_perm(f"550 {path}: No such file or directory")
        inside = sorted(p for p in self.paths if p.startswith(path + "/") and "/" not in p[len(path) + 1:])
        if self.total:
            callback("total 24")
        if flags == "-a":
            callback(self.line(".", True, 4096))
            callback(self.line("..", True, 4096))
        for p in inside:
            size, name = self.paths[p], p.rsplit("/", 1)[1]
            if name.startswith(".") and flags != "-a":
                continue  # as ls: dot files only with -a
            callback(self.line(name, size is None, 4096 if size is None else size))
        return "226 Transfer complete"


def ftp_target(tmp_path: Path, opts: dict, folder: str = "job1"):
    """The `ftp` target of a job at `opts` (location options), as the agent makes it."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    cfg = tmp_path / "agent.toml"
    lines = "\n".join(f"{k} = {toml_value(v)}" for k, v in opts.items())
    cfg.write_text(f"[locations.t]\n{lines}\n\n[[jobs]]\nname = 'job1'\nsource = '{src}'\nlocation = 't'\n"
                   f"folder = '{folder}'\n")
    os.chmod(cfg, 0o600)
    return make_target(config.load(cfg).jobs[0])


@pytest.mark.parametrize("total", [False, True], ids=["", "total-line"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_list_only_server_is_listed_from_its_ls_lines(fmt, total, tmp_path):
    t = ftp_target(tmp_path, {"type": "ftp", "host": "127.0.0.1", "port": 21, "path": "/backups",
                              "username": "u", "password": "p"})
    server = ListOnlyServer("/backups/job1", FORMATS[fmt], total)
    t.ftp = server  # connected: the server answers as above
    got = {p: f.size for p, f in t.list().items()}
    assert got == PUBLISHED
    assert t.foreign == frozenset({"other"})  # never listed, never touched
    assert [b.path for b in t.bin_list()] == ["C_VOL-b000.spf"] and t.bin_list()[0].size == 4096
    assert server.commands[0] == "MLSD /backups/job1" and server.commands[1].startswith("LIST ")


def test_a_listing_line_of_no_known_format_is_an_error_never_an_empty_folder(tmp_path):
    """Absence is not evidence: a folder whose listing cannot be read is not empty (the agent
    would send everything again, and a changed file would replace its offsite copy)."""
    t = ftp_target(tmp_path, {"type": "ftp", "host": "127.0.0.1", "port": 21, "path": "/backups",
                              "username": "u", "password": "p"})
    t.ftp = ListOnlyServer("/backups/job1", lambda name, is_dir, size: f"{name};{size};modify=20261201")
    with pytest.raises(PermanentError, match="has a line offsite cannot read"):
        t.list()


def test_a_folder_that_answers_mlsd_with_550_is_an_error_never_empty(tmp_path):
    class Refusing(ListOnlyServer):
        def mlsd(self, path: str = "", facts=()):
            self.commands.append(f"MLSD {path}")
            raise ftplib.error_perm(f"550 {path}: Permission denied")

    t = ftp_target(tmp_path, {"type": "ftp", "host": "127.0.0.1", "port": 21, "path": "/backups",
                              "username": "u", "password": "p"})
    t.ftp = Refusing("/backups/job1", proftpd)
    with pytest.raises(PermanentError, match="cannot be listed"):
        t.list()


# ------------------------------------------------------------------ real servers without MLSD

PYFTPDLIB_WITHOUT_MLSD = textwrap.dedent("""
    import sys
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    class WithoutMLSD(FTPHandler):
        # No MLSD, no MLST (FEAT stops offering them), as vsftpd.
        proto_cmds = {k: v for k, v in FTPHandler.proto_cmds.items() if k not in ("MLSD", "MLST")}
        LS_OPTIONS = {FLAGS}

        def pre_process_command(self, line, cmd, arg):
            # vsftpd takes ls options before the path ("LIST -a /x"); stock pyftpdlib only
            # takes one alone ("LIST -a").
            if cmd == "LIST" and self.LS_OPTIONS and arg.startswith("-"):
                flags, _, arg = arg.partition(" ")
            return super().pre_process_command(line, cmd, arg)

    root, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    users = DummyAuthorizer()
    users.add_user(user, password, root, perm="elradfmwMT")
    WithoutMLSD.authorizer = users
    WithoutMLSD.passive_ports = range(port + 1, port + 41)
    FTPServer(("127.0.0.1", port), WithoutMLSD).serve_forever()
""")


class PyftpdlibWithoutMLSD:
    """A real pyftpdlib FTP server whose handler has no MLSD and no MLST."""

    def __init__(self, base: Path, ls_options: bool = True) -> None:
        self.root = base / "root"
        self.root.mkdir(parents=True)
        script = base / "server.py"
        script.write_text(PYFTPDLIB_WITHOUT_MLSD.replace("{FLAGS}", str(ls_options)))
        self.port = free_port()
        self.log = open(base / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.root), str(self.port), "srvtest",
                                      PASSWORD], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            assert self.proc.poll() is None, (base / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            except OSError:
                return False
            return True

        wait_until(up, timeout=20, what="pyftpdlib without MLSD to listen")
        with ftplib.FTP() as f:
            f.connect("127.0.0.1", self.port)
            f.login("srvtest", PASSWORD)
            assert "MLS" not in f.sendcmd("FEAT")
            with pytest.raises(ftplib.error_perm, match="^500"):
                list(f.mlsd("/"))

    def location(self, name: str) -> dict:
        (self.root / name).mkdir()
        return {"type": "ftp", "host": "127.0.0.1", "port": self.port, "path": f"/{name}", "username": "srvtest",
                "password": PASSWORD}

    def folder(self, opts: dict) -> Path:
        return self.root / opts["path"].lstrip("/")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def pyftpd(tmp_path_factory):
    s = PyftpdlibWithoutMLSD(tmp_path_factory.mktemp("pyftpdlib-without-mlsd"))
    yield s
    s.stop()


class Spy:
    """Counts what the target asks the server (ftplib's MLSD and LIST)."""

    def __init__(self, monkeypatch, refuse_mlsd: bool) -> None:
        self.mlsd = self.list = 0
        real_mlsd, real_retrlines = ftplib.FTP.mlsd, ftplib.FTP.retrlines

        def mlsd(ftp, *a, **kw):
            self.mlsd += 1
            if refuse_mlsd:  # what a server without MLSD answers
                raise ftplib.error_perm(NO_MLSD)
            return real_mlsd(ftp, *a, **kw)

        def retrlines(ftp, cmd, *a, **kw):
            self.list += cmd.startswith("LIST")
            return real_retrlines(ftp, cmd, *a, **kw)

        monkeypatch.setattr(ftplib.FTP, "mlsd", mlsd)
        monkeypatch.setattr(ftplib.FTP, "retrlines", retrlines)


def file_with(tmp_path: Path, name: str, size: int) -> Path:
    p = tmp_path / "data" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(os.urandom(size))
    return p


@pytest.mark.parametrize("kind", ["proftpd", "pyftpdlib"])
def test_a_real_server_without_mlsd_lists_resumes_bins_and_spots_another_jobs_folder(kind, servers, request,
                                                                                     tmp_path, monkeypatch):
    if kind == "proftpd":
        server = servers.get("ftp-proftpd")
        opts = server.new_location()
        top = Path(opts["path"])
    else:
        server = request.getfixturevalue("pyftpd")
        opts = server.location(tmp_path.name)
        top = server.folder(opts)
    spy = Spy(monkeypatch, refuse_mlsd=kind == "proftpd")
    big = file_with(tmp_path, "C_VOL-b001.spf", 5 * MiB)
    files = {"C_VOL-b001.spf": big,
             "Macrium Repository Information.txt": file_with(tmp_path, "info.txt", 64),
             "PC1/{1F6E2A3B-AAAA}/two  spaces-00-00.mrimg": file_with(tmp_path, "m.mrimg", 3000)}
    # Another job's folder inside this one, written by that job.
    (top / "job1" / "other" / ".offsite").mkdir(parents=True)
    (top / "job1" / "other" / ".offsite" / "owner").write_text("someone-else:1\n")
    (top / "job1" / "other" / "D_VOL-b001.spf").write_bytes(b"theirs")

    # An upload cut once the server holds a MiB of it (the window closed), its session closed.
    staging = top / "job1" / ".offsite" / "staging"

    def held() -> int:
        return sum(p.stat().st_size for p in staging.iterdir()) if staging.exists() else 0

    t = ftp_target(tmp_path, opts)
    t.open()
    st = big.stat()
    cut = {"sent": 0}

    def progress(n: int) -> None:
        cut["sent"] += n
        if cut["sent"] >= 2 * MiB:
            wait_until(lambda: held() >= MiB, what="a MiB of the upload on the server's disk")
            raise Interrupted("the job's window closed")

    with open(big, "rb") as f, pytest.raises(Interrupted):
        t.upload("C_VOL-b001.spf", f, st.st_size, st.st_mtime_ns, progress)
    t.close()
    staged = held()  # at least this much (the server may still write some it had read)
    assert MiB <= staged < st.st_size

    # A new session learns what is staged from the staging folder's listing, and resumes.
    t = ftp_target(tmp_path, opts)
    t.open()
    try:
        for rel, p in files.items():
            s = p.stat()
            with open(p, "rb") as f:
                sent = t.upload(rel, f, s.st_size, s.st_mtime_ns, lambda n: None)
            if rel == "C_VOL-b001.spf":
                assert sent <= s.st_size - staged  # resumed, not started over
            t.publish(rel, s.st_size, s.st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
        assert {r: f.size for r, f in t.list().items()} == {r: p.stat().st_size for r, p in files.items()}
        assert t.foreign == frozenset({"other"})
        t.to_bin("C_VOL-b001.spf", "2026-12-01")
        assert [(b.day, b.path, b.size) for b in t.bin_list()] == [("2026-12-01", "C_VOL-b001.spf", 5 * MiB)]
        assert "C_VOL-b001.spf" not in t.list()
        # A staged upload of a file no longer queued is tidied away, found by the listing.
        with open(files["Macrium Repository Information.txt"], "rb") as f:
            t.upload("gone.spi", f, 64, 1, lambda n: None)
        assert len(list(staging.iterdir())) == 1
        t.tidy(keep=[])
        assert list(staging.iterdir()) == []
    finally:
        t.close()
    assert spy.mlsd > 0 and spy.list > 0  # every listing went the LIST way
    assert (top / "job1" / "other" / "D_VOL-b001.spf").read_bytes() == b"theirs"


def test_the_agent_over_a_server_without_mlsd_sends_each_file_once_and_keeps_a_changed_one(pyftpd, tmp_path):
    """End to end with `offsite sync` on pyftpdlib without MLSD: a second sync finds
    everything there (nothing sent again), and a backup file rewritten at the source (as
    ransomware does) is not sent over its offsite copy (SPEC section 8)."""
    opts = pyftpd.location(tmp_path.name)
    src = tmp_path / "source"
    src.mkdir()
    for name, size in (("C_VOL-b001.spf", 3 * MiB), ("C_VOL-b001-i001-cd.spi", 200_000)):
        (src / name).write_bytes(os.urandom(size))
        os.utime(src / name, (time.time() - 120, time.time() - 120))
    cfg = tmp_path / "agent.toml"
    target = ", ".join(f"{k} = {toml_value(v)}" for k, v in opts.items())
    cfg.write_text(f"[agent]\nstate_dir = '{tmp_path / 'state'}'\nsettle = '1s'\n\n"
                   f"[[jobs]]\nname = 'job1'\nsource = '{src}'\ntarget = {{ {target} }}\n")
    os.chmod(cfg, 0o600)

    def sync() -> dict:
        r = subprocess.run([sys.executable, "-m", "offsite", "-c", str(cfg), "sync", "job1", "--json"],
                           capture_output=True, text=True, timeout=120)
        assert "Traceback" not in r.stderr, r.stderr
        return json.loads(r.stdout)

    first = sync()["result"]
    assert first["ok"] and first["files_sent"] == 2
    on_target = pyftpd.folder(opts) / "job1"
    assert (on_target / "C_VOL-b001.spf").read_bytes() == (src / "C_VOL-b001.spf").read_bytes()
    again = sync()["result"]
    assert (again["files_sent"], again["bytes_on_wire"]) == (0, 0)  # listed: nothing sent twice

    kept = (on_target / "C_VOL-b001-i001-cd.spi").read_bytes()
    (src / "C_VOL-b001-i001-cd.spi").write_bytes(os.urandom(200_512))  # encrypted in place
    os.utime(src / "C_VOL-b001-i001-cd.spi", (time.time() - 120, time.time() - 120))
    reply = sync()
    assert reply["changed"] == ["C_VOL-b001-i001-cd.spi"] and reply["result"]["files_sent"] == 0
    assert (on_target / "C_VOL-b001-i001-cd.spi").read_bytes() == kept  # the offsite copy as it was


@pytest.fixture(scope="module")
def stock_pyftpd(tmp_path_factory):
    """Stock pyftpdlib without MLSD: LIST takes its whole argument as a path (RFC 959), so
    `LIST -a /path` is 550; the target then lists inside the folder."""
    s = PyftpdlibWithoutMLSD(tmp_path_factory.mktemp("stock-pyftpdlib-without-mlsd"), ls_options=False)
    yield s
    s.stop()


def test_a_server_that_takes_list_options_as_a_path_is_listed_all_the_same(stock_pyftpd, tmp_path):
    test_the_agent_over_a_server_without_mlsd_sends_each_file_once_and_keeps_a_changed_one(stock_pyftpd, tmp_path)
