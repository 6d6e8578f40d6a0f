"""The `smb` target: smbprotocol's smbclient.

Writes are raw SMB WRITE requests of up to 4 MiB with several in flight at once (sent
without waiting, their responses read in order), so the link never idles between two
writes; a short write (a raw SMB write may take fewer bytes than given, silently:
reference/servers.md) is completed before going on. `port=` is passed to every call, and the session is dropped at close and made anew at open, because smbprotocol
neither re-authenticates an expired session (#90) nor notices new credentials for a
server it has a session with.
"""
from __future__ import annotations

import re
from collections import deque
from typing import Any, BinaryIO, Callable, Mapping

import smbclient
from smbprotocol.connection import Connection
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBException,
    SMBOSError,
    SMBResponseException,
)

from ..errors import PermanentError, TargetFull, TransientError
from .base import Progress, cause, chunk_size
from .filesystem import Entry
from .ranged import RangedTarget

CHUNK = 4 * 1024 * 1024
# Seconds the server's answer to one request may take. smbprotocol waits for ever when none
# comes (a request the server dropped, a link that went silent): the transfer would hang, the
# job "syncing" for good. A FLUSH of 128 MiB on a slow disk answers well inside this.
TIMEOUT = 120.0


def _answers_in_time() -> None:
    """Give smbprotocol's wait for an answer a timeout where its caller (smbclient, for every
    file operation) gives none; the SMBException it then raises is a broken connection to
    `_call`. smbclient has no option for it, hence this wrapper (applied once)."""
    real = Connection.receive
    if getattr(real, "offsite_timeout", False):
        return

    def receive(self: Connection, request: Any, wait: bool = True, timeout: float | None = None,
                resolve_symlinks: bool = True) -> Any:
        return real(self, request, wait, TIMEOUT if timeout is None else timeout, resolve_symlinks)

    receive.offsite_timeout = True  # type: ignore[attr-defined]
    Connection.receive = receive  # type: ignore[method-assign]


_answers_in_time()
IN_FLIGHT = 4  # write requests sent and not yet answered
_ACCESS_DENIED, _DISK_FULL, _LOGON_FAILURE = 0xC0000022, 0xC000007F, 0xC000006D
_QUOTA = 0xC0000044
_SHARING = 0xC0000043  # STATUS_SHARING_VIOLATION: a handle of a connection that broke is still open


def parse_unc(path: str) -> tuple[str, str, str]:
    """'\\\\server\\share\\a\\b' or '//server/share/a/b' -> (server, share, '/a/b')."""
    parts = [p for p in re.split(r"[\\/]", path) if p]
    return parts[0], parts[1], "/" + "/".join(parts[2:]) if len(parts) > 2 else "/"


class SmbTarget(RangedTarget):
    keeps_mtime = True
    case_sensitive = False  # SMB compares names without case
    CHUNK = CHUNK

    def __init__(self, options: Mapping[str, Any], folder: str) -> None:
        self.server, self.share, inside = parse_unc(options["path"])
        super().__init__(inside, folder)
        self.o = options
        self.port = options["port"]
        self.connected = False
        self.cache: dict = {}  # smbclient's connection cache: this session's own connection

    def endpoint(self) -> tuple[str, int] | None:
        return self.server, self.port

    def describe_server(self) -> str:
        user = self.o.get("username") or "guest"
        return f"smb {user}@//{self.server}:{self.port}/{self.share}"

    def _unc(self, path: str) -> str:
        return f"\\\\{self.server}\\{self.share}" + path.replace("/", "\\").rstrip("\\")

    def free_space(self) -> int | None:
        st = self._call("the share's free space", smbclient.stat_volume, self._unc(self.root))
        return int(st.caller_available_size)

    def _connect(self) -> None:
        password = self.o.get("password")
        where = f"{self.server}:{self.port}"
        try:
            # A connection of its own (smbclient would share one per server and process): the
            # streams of one file and the transfers of a job each fill a window of their own,
            # and closing one session never tears down another's mid-transfer.
            self.cache = {}
            self.connected = True
            smbclient.register_session(
                self.server, username=self.o.get("username"), password=password.reveal() if password else None,
                port=self.port, connection_timeout=30, connection_cache=self.cache,
                **({"auth_protocol": "ntlm"} if self.o.get("username") else {}),
            )
            smbclient.stat(self._unc("/"), port=self.port, connection_cache=self.cache)  # the share itself
        except SMBAuthenticationError as e:
            self.close()
            raise PermanentError(f"authentication failed for {self.o.get('username')}@{where}: {e}") from None
        except SMBOSError as e:
            self.close()
            if e.ntstatus == _LOGON_FAILURE:
                raise PermanentError(f"authentication failed for {self.o.get('username')}@{where}") from None
            if e.ntstatus == _ACCESS_DENIED:
                raise PermanentError(f"access to the share //{self.server}/{self.share} is denied") from None
            raise PermanentError(f"the share //{self.server}/{self.share} cannot be opened: {e.strerror}") from None
        except SMBResponseException as e:
            self.close()
            if e.status == _LOGON_FAILURE:
                raise PermanentError(f"authentication failed for {self.o.get('username')}@{where}") from None
            raise PermanentError(f"the SMB session with {where} was refused: {e.status:#x}") from None
        except ValueError as e:  # smbprotocol reports a failed TCP connection this way
            self.close()
            raise TransientError(f"cannot connect to {where}: {_tail(e)}") from None
        except (SMBException, OSError) as e:
            self.close()
            raise TransientError(f"the SMB session with {where} failed: {cause(e)}") from None

    def close(self) -> None:
        if not self.connected:
            return
        self.connected = False
        try:
            smbclient.reset_connection_cache(connection_cache=self.cache)  # its own warning would log a traceback
        except Exception:  # noqa: BLE001 - closing never fails the caller
            pass

    def _call(self, what: str, fn: Callable, *args, missing_ok: bool = False, **kw):
        if not self.connected:
            raise TransientError(f"not connected to {self.describe_server()}")
        try:
            return fn(*args, port=self.port, connection_cache=self.cache, **kw)
        except SMBOSError as e:
            if isinstance(e, FileNotFoundError) or e.errno == 2:
                if missing_ok:
                    return None
                raise PermanentError(f"{what} does not exist on {self.describe_server()}") from None
            if e.ntstatus in (_DISK_FULL, _QUOTA):
                raise TargetFull(f"the share {self.describe_server()} is full while writing {what}") from None
            if e.ntstatus == _ACCESS_DENIED:
                raise PermanentError(f"permission denied on {what} on {self.describe_server()}") from None
            if e.ntstatus == _SHARING:  # the server lets it go once it notices that connection is gone
                raise TransientError(f"{what} is still open on {self.describe_server()} by a connection that "
                                     f"broke") from None
            raise PermanentError(f"{what} failed on {self.describe_server()}: {e.strerror}") from None
        except SMBResponseException as e:  # an answer, not a broken connection: a write's status
            if e.status in (_DISK_FULL, _QUOTA):
                raise TargetFull(f"the share {self.describe_server()} is full while writing {what}") from None
            if e.status == _ACCESS_DENIED:
                raise PermanentError(f"permission denied on {what} on {self.describe_server()}") from None
            raise TransientError(f"{what} failed on {self.describe_server()}: {_tail(e)}") from None
        except (SMBException, OSError, ValueError) as e:
            raise TransientError(f"the connection to {self.describe_server()} broke during {what}: {cause(e)}") from None

    # ---------------------------------------------------------------- primitives
    def _size(self, path: str) -> int | None:
        st = self._call(path, smbclient.stat, self._unc(path), missing_ok=True)
        return None if st is None or st.st_file_attributes & 0x10 else st.st_size

    def _is_dir(self, path: str) -> bool:
        st = self._call(path, smbclient.stat, self._unc(path), missing_ok=True)
        return st is not None and bool(st.st_file_attributes & 0x10)

    def _listdir(self, path: str) -> list[Entry]:
        def entries(**where) -> list[Entry]:
            out = []
            for e in smbclient.scandir(self._unc(path), **where):
                info = e.smb_info  # what the listing carried: e.stat() would call again without port=
                mtime = int(info.last_write_time.timestamp() * 1e9) if info.last_write_time else None
                out.append(Entry(e.name, bool(info.file_attributes & 0x10), info.end_of_file, mtime))
            return out

        return self._call(path, entries, missing_ok=True) or []

    def _mkdir(self, path: str) -> None:
        try:
            self._call(path, smbclient.mkdir, self._unc(path))
        except PermanentError:
            if not self._is_dir(path):
                raise

    def _write(self, path: str, offset: int, src: BinaryIO, size: int, progress: Progress) -> int:
        self._send(path, offset, src, size, progress, truncate=True)
        return size - offset

    def _write_range(self, path: str, start: int, src: BinaryIO, end: int, progress: Progress) -> None:
        self._send(path, start, src, end, progress, truncate=False)

    def _flush(self, path: str) -> None:
        """SMB2 FLUSH of the staged file: the server writes what it acknowledged to disk."""
        def body(**where) -> None:
            with smbclient.open_file(self._unc(path), mode="r+b", buffering=0, **where, share_access="rw") as f:
                f.fd.flush()

        self._call(path, body)

    def _send(self, path: str, offset: int, src: BinaryIO, size: int, progress: Progress, truncate: bool) -> None:
        """src[offset:size] at `offset` of `path`: created or cut at `offset` first unless
        only a range of an existing file is written."""
        def body(**where) -> None:
            # Other streams write other ranges of the same file at once: share it with them.
            with smbclient.open_file(self._unc(path), mode="wb" if truncate and not offset else "r+b",
                                     buffering=0, **where, share_access=None if truncate else "rw") as dst:
                if offset and truncate:
                    dst.truncate(offset)
                fd = dst.fd  # the smbprotocol Open under the file object
                step = min(chunk_size(progress, CHUNK), fd.connection.max_write_size or CHUNK)
                sid, tid = fd.tree_connect.session.session_id, fd.tree_connect.tree_connect_id
                pending: deque = deque()  # (request, receive, offset, data), in the order sent
                src.seek(offset)
                pos = offset

                def settle_one() -> None:
                    request, receive, at, data = pending.popleft()
                    done = receive(request)
                    again = 0
                    while done < len(data):  # short: write the rest before anything else counts
                        again += len(data) - done  # the rest goes over the wire once more
                        done += fd.write(data[done:], at + done)
                    if again:
                        progress(again)

                conn = fd.connection
                try:
                    while pos < size:
                        data = src.read(min(step, size - pos))
                        if not data:
                            raise TransientError(f"the source ended at {pos} of {size} bytes")
                        message, receive = fd.write(data, pos, send=False)
                        charge = conn._calculate_credit_charge(message)
                        # Credits come back with the responses: wait for earlier ones while the
                        # window is short, and ask for more while it is smaller than the pipeline.
                        while pending and _credits(conn) < charge:
                            settle_one()
                        grow = charge * 2 if _credits(conn) < IN_FLIGHT * charge else charge
                        pending.append((conn.send(message, sid, tid, credit_request=grow), receive, pos, data))
                        pos += len(data)
                        # Counted when sent, not when answered: a write still in flight when the
                        # transfer stops may reach the server, and the resume starts after it,
                        # so counting at the answer left it out of bytes_on_wire.
                        progress(len(data))
                        if len(pending) >= IN_FLIGHT:
                            settle_one()
                    while pending:
                        settle_one()
                finally:
                    for request, receive, _, _ in pending:  # never leave answers unread on the connection
                        try:
                            receive(request)
                        except Exception:  # noqa: BLE001 - the first error is the one reported
                            break

        self._call(path, body)

    def _set_mtime(self, path: str, mtime_ns: int) -> None:
        self._call(path, smbclient.utime, self._unc(path), ns=(mtime_ns, mtime_ns))

    def _rename(self, src: str, dst: str) -> None:
        self._call(dst, smbclient.replace, self._unc(src), self._unc(dst))

    def _remove(self, path: str) -> None:
        self._call(path, smbclient.remove, self._unc(path), missing_ok=True)

    def _rmdir(self, path: str) -> None:
        self._call(path, smbclient.rmdir, self._unc(path), missing_ok=True)

    def _read_into(self, path: str, sink: Callable[[bytes], None]) -> bool:
        def read(**where) -> bool:
            with smbclient.open_file(self._unc(path), mode="rb", buffering=0, **where) as f:
                while chunk := f.read(CHUNK):
                    sink(chunk)
            return True

        return bool(self._call(path, read, missing_ok=True))

    def _get_small(self, path: str) -> bytes | None:
        def read(**where) -> bytes:
            with smbclient.open_file(self._unc(path), mode="rb", **where) as f:
                return f.read()

        return self._call(path, read, missing_ok=True)


def _credits(conn) -> int:
    """Credits the connection may spend now (smbprotocol keeps them as a sequence window)."""
    with conn.sequence_lock:
        return conn.sequence_window["high"] - conn.sequence_window["low"]


def _tail(e: Exception) -> str:
    text = str(e)
    return text.split(": ", 1)[-1] if ": " in text else text
