"""The `ftp` and `ftps` targets: the standard library's ftplib.

FTPS is explicit TLS (AUTH TLS) with the server certificate verified (`ca_file` for a
private CA) and the TLS session reused on the data channel, which strict servers require
(CPython #63699). publish() checks the size with SIZE (a peer can drop the tail of a TLS
stream without an error) and, where the server offers a hash command (HASH with MD5, or
XMD5: ProFTPD's mod_digest, FileZilla Server, Serv-U), the MD5 of the staged copy against
the bytes read from the source. Uploads resume with REST + STOR.
"""
from __future__ import annotations

import ftplib
import io
import posixpath
import re
import socket
import ssl
import threading
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable, Mapping

from ..errors import PermanentError, TargetFull, TransientError
from .base import Progress, cause, chunk_size, md5_hex
from .filesystem import Entry
from .ranged import RangedTarget, probe_ranges

TIMEOUT = 30.0
HASH_TIMEOUT = 3600.0  # the server reads the whole file before it answers
BLOCK = 1024 * 1024  # read from the source at once
SEND = 64 * 1024  # sent at once: the timeout bounds each send


class _FTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that reuses the control connection's TLS session on data connections."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


class _Limited(io.RawIOBase):
    """Reads at most `left` bytes of `src`: what was there when the upload started."""

    def __init__(self, src: BinaryIO, left: int) -> None:
        self.src, self.left = src, left

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.src.read(n) if n else b""
        self.left -= len(data)
        return data


class FtpTarget(RangedTarget):
    keeps_mtime = False  # MFMT is not universal; sizes decide
    # Servers found to write at a REST offset without cutting the file there (pyftpdlib;
    # ProFTPD with AllowStoreRestart on), or not: asked once per server and agent run.
    _ranges_ok: dict[tuple, bool] = {}
    _probing = threading.Lock()  # one probe at a time: they share one file name

    def __init__(self, options: Mapping[str, Any], folder: str, tls: bool) -> None:
        super().__init__(options["path"], folder)
        self.o = options
        self.tls = tls
        self.ftp: ftplib.FTP | None = None
        self._hash_cmd: str | None = None  # "HASH" (MD5 chosen) or "XMD5", where the server has one
        self._binary = False  # the session is in TYPE I (listings switch it to ASCII)

    def endpoint(self) -> tuple[str, int] | None:
        return self.o["host"], self.o["port"]

    def describe_server(self) -> str:
        return f"{'ftps' if self.tls else 'ftp'} {self.o['username']}@{self.o['host']}:{self.o['port']}"

    @property
    def conn(self) -> ftplib.FTP:
        """The open control connection (a TransientError when there is none)."""
        if self.ftp is None:
            raise TransientError(f"not connected to {self.describe_server()}")
        return self.ftp

    def _connect(self) -> None:
        where = f"{self.o['host']}:{self.o['port']}"
        if self.tls:
            try:
                ctx = ssl.create_default_context(cafile=str(self.o["ca_file"]) if self.o.get("ca_file") else None)
            except (OSError, ssl.SSLError) as e:
                raise PermanentError(f"cannot load ca_file {self.o.get('ca_file')}: {e}") from None
            ftp: ftplib.FTP = _FTP_TLS(context=ctx, timeout=TIMEOUT)
        else:
            ftp = ftplib.FTP(timeout=TIMEOUT)
        ftp.encoding = "utf-8"
        password = self.o.get("password")
        try:
            ftp.connect(self.o["host"], self.o["port"])
            assert ftp.sock is not None
            ftp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # long STORs idle the control link
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.auth()
            ftp.login(self.o["username"], password.reveal() if password else "")
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.set_pasv(bool(self.o["passive"]))  # the parser fills it in (config/options.py)
            ftp.voidcmd("TYPE I")
            self._binary = True
            self._hash_cmd = _hash_command(ftp)
        except ssl.SSLCertVerificationError as e:
            ftp.close()
            raise PermanentError(f"the TLS certificate of {where} could not be verified ({e.verify_message}); "
                                 "set ca_file for a private CA") from None
        except ftplib.error_perm as e:
            ftp.close()
            if str(e).startswith("530"):
                raise PermanentError(f"authentication failed for {self.o['username']}@{where}") from None
            raise PermanentError(f"{where} refused the session: {_reply(e)}") from None
        except ConnectionRefusedError:
            ftp.close()
            raise TransientError(f"the connection to {where} was refused") from None
        except (OSError, EOFError, ftplib.Error) as e:
            ftp.close()
            raise TransientError(f"cannot connect to {where}: {cause(e)}") from None
        self.ftp = ftp

    def close(self) -> None:
        if self.ftp is not None:
            try:
                self.ftp.quit()
            except Exception:  # noqa: BLE001 - closing never fails the caller
                self.ftp.close()
        self.ftp = None

    def _call(self, what: str, fn: Callable, *args, missing_ok: bool = False, **kw):
        if self.ftp is None:
            raise TransientError(f"not connected to {self.describe_server()}")
        try:
            return fn(*args, **kw)
        except ftplib.error_perm as e:
            if missing_ok and str(e).startswith("550"):
                return None
            if str(e).startswith("552"):
                raise TargetFull(f"the storage of {self.describe_server()} is full while writing {what}") from None
            raise PermanentError(f"{what} failed on {self.describe_server()}: {_reply(e)}") from None
        except ftplib.error_temp as e:
            raise TransientError(f"{what} on {self.describe_server()}: {_reply(e)}") from None
        except (OSError, EOFError, ftplib.Error) as e:
            raise TransientError(f"the connection to {self.describe_server()} broke during {what}: {cause(e)}") from None

    # ---------------------------------------------------------------- primitives
    def _size(self, path: str) -> int | None:
        def size() -> int | None:
            self._binary_mode()
            return self.conn.size(path)
        return self._call(path, size, missing_ok=True)

    def _binary_mode(self) -> None:
        """Listings switch the session to ASCII, where SIZE and REST are refused."""
        if not self._binary:
            self.conn.voidcmd("TYPE I")
            self._binary = True

    def _is_dir(self, path: str) -> bool:
        ok = self._call(path, self.conn.cwd, path, missing_ok=True)
        return ok is not None

    def _listdir(self, path: str) -> list[Entry]:
        self._binary = False
        try:
            rows = self._call(path, lambda: list(self.conn.mlsd(path, facts=["type", "size", "modify"])),
                              missing_ok=True)
        except PermanentError:
            return self._list_unix(path)  # no MLSD (vsftpd): the classic LIST
        if rows is None:  # 550: no such folder, or one that cannot be listed (never taken as empty)
            if self._is_dir(path):
                raise PermanentError(f"the folder {path} on {self.describe_server()} cannot be listed")
            rows = []
        out = []
        for name, facts in rows:
            kind = facts.get("type", "file")
            if kind in ("cdir", "pdir"):
                continue
            out.append(Entry(name, kind == "dir", int(facts.get("size", 0) or 0), _mtime(facts.get("modify"))))
        return out

    def _list_unix(self, path: str) -> list[Entry]:
        """The classic LIST, on servers without MLSD. `-a`, or ProFTPD hides `.offsite` (and
        another job's folder would pass for ours). A server that reads `-a <path>` as one path
        answers 550: then the listing is taken inside the folder. A folder that exists never
        lists as empty because its listing could not be had or read (absence is not evidence)."""
        self._binary = False
        lines: list[str] = []
        if self._call(path, self.conn.retrlines, f"LIST -a {path}", lines.append, missing_ok=True) is None:
            if not self._is_dir(path):  # no such folder: nothing in it (and the CWD made, if it is)
                return []
            lines = []
            if self._call(path, self.conn.retrlines, "LIST -a", lines.append, missing_ok=True) is None:
                lines = []
                self._call(path, self.conn.retrlines, "LIST", lines.append)
        out = []
        for line in lines:
            entry = _list_line(line)
            if entry is None:
                raise PermanentError(f"the listing of {path} on {self.describe_server()} has a line offsite cannot "
                                     f"read ({line[:120]!r}); the server's listing format is not supported")
            if entry.name not in (".", ".."):
                out.append(entry)
        return out

    def _mkdir(self, path: str) -> None:
        try:
            self._call(path, self.conn.mkd, path)
        except PermanentError:
            if not self._is_dir(path):
                raise

    def _write(self, path: str, offset: int, src: BinaryIO, size: int, progress: Progress) -> int:
        if offset:
            try:
                self._call(path, self._binary_mode)
                self._call(path, self.conn.sendcmd, f"REST {offset}")
                self.conn.sendcmd("REST 0")  # only probing: storbinary sends its own REST
            except PermanentError:
                offset = 0  # no resume on this server: start over
        src.seek(offset)
        reader = _Limited(src, size - offset)
        self._call(path, self._store, f"STOR {path}", reader, chunk_size(progress, BLOCK), progress, offset or None)
        return size - offset

    def ranges(self) -> bool:
        key = (self.o["host"], self.o["port"], self.o["username"], self.tls)
        with self._probing:
            if key not in self._ranges_ok:
                self._ranges_ok[key] = probe_ranges(self, posixpath.join(self.staging, "ranges-probe"))
        return self._ranges_ok[key]

    def _write_range(self, path: str, start: int, src: BinaryIO, end: int, progress: Progress) -> None:
        if start <= 0:  # REST 0 (or none) makes STOR cut the file: ranged.py never starts one at 0
            raise PermanentError(f"a range of {path} cannot start at offset 0 over FTP")
        src.seek(start)
        self._call(path, self._store, f"STOR {path}", _Limited(src, end - start), chunk_size(progress, BLOCK),
                   progress, start)

    def _store(self, cmd: str, src: BinaryIO, block: int, progress: Progress, rest: int | None) -> str:
        """ftplib's storbinary, but each send() at most SEND bytes: the socket's timeout bounds
        a whole sendall(), so a block of 1 MiB timed out on a link slower than 1 MiB per
        timeout although bytes moved all along (below about 280 kbps)."""
        self.conn.voidcmd("TYPE I")
        self._binary = True
        with self.conn.transfercmd(cmd, rest) as data:
            while buf := src.read(block):
                view = memoryview(buf)
                for at in range(0, len(view), SEND):
                    piece = view[at:at + SEND]
                    data.sendall(piece)
                    progress(len(piece))
            if isinstance(data, ssl.SSLSocket):
                data.unwrap()  # as storbinary: the TLS layer closed before the reply
        return self.conn.voidresp()

    def _rename(self, src: str, dst: str) -> None:
        self._call(dst, self.conn.rename, src, dst)  # a server that will not replace: filesystem._move

    def _rmdir(self, path: str) -> None:
        self._call(path, self.conn.rmd, path, missing_ok=True)

    def _remove(self, path: str) -> None:
        if self._size(path) is not None:
            self._call(path, self.conn.delete, path, missing_ok=True)

    def _read_into(self, path: str, sink: Callable[[bytes], None]) -> bool:
        return self._call(path, self.conn.retrbinary, f"RETR {path}", sink, BLOCK, missing_ok=True) is not None

    def _md5(self, path: str) -> str | None:
        if self._hash_cmd is None or (self._hash_cmd == "XMD5" and " " in path):
            return None  # XMD5 takes "path [start end]": ProFTPD refuses a name with a space

        def ask() -> str:
            self._binary_mode()  # a digest of the bytes as stored, never of an ASCII view
            sock = self.conn.sock
            assert sock is not None
            sock.settimeout(HASH_TIMEOUT)
            try:
                return self.conn.sendcmd(f"{self._hash_cmd} {path}")
            finally:
                sock.settimeout(TIMEOUT)

        try:
            answer = self._call(path, ask, missing_ok=True)
        except PermanentError:
            return None  # the server will not hash this file: the size is what is proven
        if answer is None:
            return None  # no such file
        reply = answer.splitlines()[-1].split()
        # HASH: "213 MD5 0-11000 <hex> <path>"; XMD5: "250 <HEX>"
        value = reply[3] if self._hash_cmd == "HASH" and len(reply) > 3 else reply[1] if len(reply) > 1 else ""
        return md5_hex(value)

    def _get_small(self, path: str) -> bytes | None:
        buf = io.BytesIO()
        done = self._call(path, self.conn.retrbinary, f"RETR {path}", buf.write, missing_ok=True)
        return None if done is None else buf.getvalue()


def _hash_command(ftp: ftplib.FTP) -> str | None:
    """The server's MD5 command from its FEAT reply: HASH (after OPTS HASH MD5) or XMD5."""
    try:
        feat = [line.strip().upper() for line in ftp.sendcmd("FEAT").splitlines()[1:-1]]
    except ftplib.Error:
        return None  # no FEAT: no extensions we can rely on
    for line in feat:
        if line.startswith("HASH ") and "MD5" in line[5:].replace("*", "").split(";"):
            try:
                ftp.sendcmd("OPTS HASH MD5")
                return "HASH"
            except ftplib.Error:
                break
    return "XMD5" if "XMD5" in feat else None


def _reply(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _mtime(modify: str | None) -> int | None:
    if not modify:
        return None
    try:
        t = datetime.strptime(modify[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return int(t.timestamp()) * 1_000_000_000


_DOS = re.compile(r"^\d{2}-\d{2}-\d{2,4}\s+\d{1,2}:\d{2}\s*(?:[AaPp][Mm])?\s+(<DIR>|\d+)\s+(.+)$")


def _list_line(line: str) -> Entry | None:
    """One line of a LIST answer: Unix `ls -l` style (ProFTPD, vsftpd, pyftpdlib, most NAS)
    or MS-DOS style (IIS's default); "total N" and blank lines give an empty name. None for
    a line of neither kind."""
    if not line.strip() or re.match(r"^total \d+$", line.strip()):
        return Entry(".", True, 0)
    parts = line.split(None, 8)  # mode links owner group size month day time|year name
    if len(parts) == 9 and parts[0][:1] in "-dlbcps" and parts[4].isdigit():
        return Entry(parts[8], parts[0].startswith("d"), int(parts[4]))
    m = _DOS.match(line)
    if m:
        is_dir = m.group(1) == "<DIR>"
        return Entry(m.group(2), is_dir, 0 if is_dir else int(m.group(1)))
    return None
