"""The `sftp` target: paramiko, host keys always verified.

Tuning from reference/servers.md: AES-GCM preferred (the CTR and CBC ciphers are disabled),
pipelined writes of 255 KiB for OpenSSH servers (32 KiB, the protocol's guarantee, for
others), 64 in flight, and the default channel window (a large one makes paramiko slow).
Publishing uses posix-rename@openssh.com where the server offers it (elsewhere the old copy
is moved aside, never removed first: filesystem.py), and, where the server
offers the check-file extension (ProFTPD's mod_sftp; not OpenSSH), compares the staged copy's
MD5 with the bytes read from the source first.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import os
import socket
import stat
from collections import deque
from typing import Any, BinaryIO, Callable, Mapping

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_STATUS, int64

from ..errors import PermanentError, TargetFull, TransientError
from .base import Progress, cause, chunk_size, md5_hex
from .filesystem import Entry
from .ranged import RangedTarget
from .sftp_wire import Answers, send_write

_SLOW_CIPHERS = ["aes128-ctr", "aes192-ctr", "aes256-ctr", "aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc"]
OPENSSH_REQUEST = 261120  # what OpenSSH's sftp-server advertises (limits@openssh.com)
TIMEOUT = 30.0
IN_FLIGHT = 64  # write requests unanswered at most (16 MiB of 255 KiB requests)
HASH_TIMEOUT = 3600.0  # check-file: the server reads the whole file before it answers


class SftpTarget(RangedTarget):
    keeps_mtime = True

    def __init__(self, options: Mapping[str, Any], folder: str) -> None:
        super().__init__(options["path"], folder)
        self.o = options
        self.client: paramiko.SSHClient | None = None
        self.sftp: paramiko.SFTPClient | None = None
        self.request_size = 32768
        self.check_file = True  # until the server says it has no check-file extension
        self.posix_rename = True  # until the server says it has no posix-rename extension
        self.fsync = True  # until the server says it has no fsync@openssh.com extension

    def endpoint(self) -> tuple[str, int] | None:
        return self.o["host"], self.o["port"]

    def describe_server(self) -> str:
        return f"sftp {self.o['username']}@{self.o['host']}:{self.o['port']}"

    # ---------------------------------------------------------------- connection
    def _connect(self) -> None:
        client = paramiko.SSHClient()
        where = f"{self.o['host']}:{self.o['port']}"
        try:
            if self.o.get("host_key"):
                key = _parse_host_key(self.o["host_key"])
                name = self.o["host"] if self.o["port"] == 22 else f"[{self.o['host']}]:{self.o['port']}"
                client.get_host_keys().add(name, key.get_name(), key)
            elif self.o.get("known_hosts") and not (self.o.get("accept_new_host_key")
                                                    and not os.path.exists(self.o["known_hosts"])):
                client.load_host_keys(str(self.o["known_hosts"]))  # (accepting new keys: created below)
            if self.o.get("accept_new_host_key"):
                client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            else:
                client.set_missing_host_key_policy(paramiko.RejectPolicy())
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise PermanentError(f"cannot read the host keys for {where}: {e}") from None
        passphrase = self.o.get("key_passphrase")
        password = self.o.get("password")
        try:
            client.connect(
                self.o["host"], self.o["port"], username=self.o["username"],
                key_filename=str(self.o["key_file"]) if self.o.get("key_file") else None,
                passphrase=passphrase.reveal() if passphrase else None,
                password=password.reveal() if password else None,
                look_for_keys=False, allow_agent=False, compress=bool(self.o.get("compress")),
                timeout=TIMEOUT, banner_timeout=TIMEOUT, auth_timeout=TIMEOUT,
                disabled_algorithms={"ciphers": _SLOW_CIPHERS},
            )
            if self.o.get("accept_new_host_key") and self.o.get("known_hosts"):
                client.save_host_keys(str(self.o["known_hosts"]))  # remember what was accepted
            self.sftp = client.open_sftp()
            channel = self.sftp.get_channel()
            if channel is not None:
                channel.settimeout(TIMEOUT)
        except paramiko.BadHostKeyException:
            client.close()
            raise PermanentError(
                f"the host key of {where} does not match the known one: refusing to connect "
                "(if the server was reinstalled, update known_hosts)") from None
        except paramiko.AuthenticationException:
            client.close()
            raise PermanentError(f"authentication failed for {self.o['username']}@{where}") from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise PermanentError(f"the key file {self.o.get('key_file')} needs key_passphrase") from None
        except paramiko.SSHException as e:
            client.close()
            if "known_hosts" in str(e):
                raise PermanentError(
                    f"the host key of {where} is unknown: add it to known_hosts, give host_key, "
                    "or set accept_new_host_key = true") from None
            raise TransientError(f"SSH connection to {where} failed: {cause(e)}") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise TransientError(f"the connection to {where} timed out") from None
        except (ConnectionRefusedError, paramiko.ssh_exception.NoValidConnectionsError):
            client.close()
            raise TransientError(f"the connection to {where} was refused") from None
        except OSError as e:
            client.close()
            if isinstance(e, FileNotFoundError) and self.o.get("key_file"):
                raise PermanentError(f"the key file {self.o['key_file']} does not exist") from None
            raise TransientError(f"cannot connect to {where}: {e.strerror or e}") from None
        self.client = client
        transport = client.get_transport()
        if transport is not None and "openssh" in (transport.remote_version or "").lower():
            self.request_size = OPENSSH_REQUEST

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing never fails the caller
                pass
        self.client, self.sftp = None, None

    @property
    def conn(self) -> paramiko.SFTPClient:
        """The open SFTP session (a TransientError when there is none)."""
        if self.sftp is None:
            raise TransientError(f"not connected to {self.describe_server()}")
        return self.sftp

    def free_space(self) -> int | None:
        """Through OpenSSH's statvfs@openssh.com extension; None on a server without it."""
        assert self.sftp is not None
        try:
            # paramiko has no statvfs call: its request primitive sends the extension.
            t, msg = self.sftp._request(CMD_EXTENDED, "statvfs@openssh.com", self.root)  # type: ignore[attr-defined]
        except (OSError, paramiko.SSHException):
            return None
        if t != CMD_EXTENDED_REPLY:
            return None
        _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
        return frsize * bavail

    def _alive(self) -> bool:
        """Is the SSH connection up? (An error on a live one is the server's answer.)"""
        transport = self.client.get_transport() if self.client else None
        return transport is not None and transport.is_active()

    def _call(self, what: str, fn, *args):
        """Run one SFTP call, translating failures into offsite's errors."""
        if self.sftp is None:
            raise TransientError(f"not connected to {self.describe_server()}")
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except PermissionError:
            raise PermanentError(f"permission denied on {what} on {self.describe_server()}") from None
        except (socket.timeout, TimeoutError, ConnectionError) as e:
            raise TransientError(f"{what} on {self.describe_server()}: {cause(e)}") from None
        except OSError as e:
            if not self._alive():
                raise TransientError(f"the connection to {self.describe_server()} broke during {what}") from None
            # SFTP v3 reports most server-side errors, a full disk among them, as "Failure".
            if e.errno == errno.ENOSPC:
                raise TargetFull(f"the disk of {self.describe_server()} is full while writing {what}") from None
            raise PermanentError(f"{what} failed on {self.describe_server()}: {cause(e)}") from None
        except (paramiko.SSHException, EOFError) as e:
            raise TransientError(f"the connection to {self.describe_server()} broke during {what}: {cause(e)}") from None

    # ---------------------------------------------------------------- primitives
    def _stat(self, path: str):
        try:
            return self._call(path, self.conn.stat, path)
        except FileNotFoundError:
            return None

    def _size(self, path: str) -> int | None:
        st = self._stat(path)
        return None if st is None or stat.S_ISDIR(st.st_mode or 0) else st.st_size

    def _is_dir(self, path: str) -> bool:
        st = self._stat(path)
        return st is not None and stat.S_ISDIR(st.st_mode or 0)

    def _listdir(self, path: str) -> list[Entry]:
        try:
            attrs = self._call(path, self.conn.listdir_attr, path)
        except FileNotFoundError:
            return []
        return [Entry(a.filename, stat.S_ISDIR(a.st_mode or 0), a.st_size or 0,
                      int(a.st_mtime) * 1_000_000_000 if a.st_mtime is not None else None) for a in attrs]

    def _mkdir(self, path: str) -> None:
        try:
            self._call(path, self.conn.mkdir, path)
        except (PermanentError, FileNotFoundError):
            if not self._is_dir(path):
                raise

    def _write(self, path: str, offset: int, src: BinaryIO, size: int, progress: Progress) -> int:
        self._send(path, offset, src, size, progress, truncate=True)
        return size - offset

    def _write_range(self, path: str, start: int, src: BinaryIO, end: int, progress: Progress) -> None:
        self._send(path, start, src, end, progress, truncate=False)

    def _send(self, path: str, offset: int, src: BinaryIO, size: int, progress: Progress, truncate: bool) -> None:
        """src[offset:size] at `offset` of `path`: created or cut at `offset` first unless
        only a range of an existing file is written. Every write's answer is read here: paramiko
        drops those still unread at close(), so a refused write (full disk) left a hole of zeros."""
        refused = False  # a write refused while the session lives: later ones may have landed past it

        def body() -> None:
            nonlocal refused
            sftp = self.conn
            dst = sftp.open(path, "wb" if truncate and not offset else "r+b")
            pending, answers = deque[int](), Answers(sftp)  # WRITE requests sent, their answers not yet read
            try:
                if offset and truncate:
                    dst.truncate(offset)
                src.seek(offset)
                pos, step, piece = offset, chunk_size(progress, self.CHUNK), self.request_size
                while pos < size:
                    data = src.read(min(step, size - pos))
                    if not data:
                        raise TransientError(f"the source ended at {pos} of {size} bytes")
                    view = memoryview(data)
                    for at in range(0, len(data), piece):
                        pending.append(send_write(sftp, dst, pos + at, view[at:at + piece], answers))
                    pos += len(data)
                    progress(len(data))
                    while len(pending) > (IN_FLIGHT if pos < size else 0):  # after the last: every one
                        if answers.wait(pending.popleft()) != CMD_STATUS:
                            raise paramiko.SFTPError("expected a status for a write")
                dst.close()
            except OSError:
                refused = self._alive()
                raise
            finally:
                _abandon(dst)

        try:
            self._call(path, body)
        except FileNotFoundError:
            raise PermanentError(f"the staging folder is missing on {self.describe_server()}") from None
        except PermanentError:
            if refused and truncate:  # one stream resumes from the staged size: never past a hole
                with contextlib.suppress(TransientError, PermanentError):
                    self._remove(path)
            free = self.free_space() if refused else None
            if free is not None and free < self.CHUNK:  # SFTP v3 says only "Failure" for a full disk
                raise TargetFull(f"the disk of {self.describe_server()} is full while writing {path}") from None
            raise

    def _flush(self, path: str) -> None:
        """fsync@openssh.com on the staged file, where the server offers it."""
        if not self.fsync:
            return

        def body() -> None:
            f = self.conn.open(path, "r+b")
            try:
                t, _msg = self.conn._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)  # type: ignore[attr-defined]
            except OSError as e:
                if e.errno is None and self._alive():
                    self.fsync = False  # "unsupported"
                    return
                raise
            finally:
                _abandon(f)

        try:
            self._call(path, body)
        except FileNotFoundError:
            raise TransientError(f"{path} vanished on {self.describe_server()}") from None

    def _md5(self, path: str) -> str | None:
        if not self.check_file:
            return None
        channel = self.conn.get_channel()
        assert channel is not None

        def ask():
            # check-file-name (draft-ietf-secsh-filexfer-extensions-00); paramiko's own
            # SFTPFile.check() sends the older name "check-file", which servers do not know.
            channel.settimeout(HASH_TIMEOUT)
            try:
                return self.conn._request(CMD_EXTENDED, "check-file-name",  # type: ignore[attr-defined]
                                          path, "md5", int64(0), int64(0), 0)
            except OSError as e:
                if e.errno is None and self._alive():
                    return None  # "unsupported": OpenSSH and most servers
                raise
            finally:
                channel.settimeout(TIMEOUT)

        try:
            reply = self._call(path, ask)
        except FileNotFoundError:
            return None
        if reply is None:
            self.check_file = False
            return None
        t, msg = reply
        if t != CMD_EXTENDED_REPLY or msg.get_text() != "md5":
            return None
        return md5_hex(msg.get_remainder().hex())

    def _set_mtime(self, path: str, mtime_ns: int) -> None:
        t = mtime_ns / 1e9
        try:
            self._call(path, self.conn.utime, path, (t, t))
        except FileNotFoundError:
            raise TransientError(f"{path} vanished on {self.describe_server()}") from None

    def _rename(self, src: str, dst: str) -> None:
        try:
            if self.posix_rename:
                try:
                    self._call(dst, self.conn.posix_rename, src, dst)
                    return
                except PermanentError:
                    if self._stat(src) is None:
                        raise
                    self.posix_rename = False  # not offered: the plain rename, which never replaces
            self._call(dst, self.conn.rename, src, dst)
        except FileNotFoundError:
            raise PermanentError(f"{src} does not exist on {self.describe_server()}") from None

    def _rmdir(self, path: str) -> None:
        try:
            self._call(path, self.conn.rmdir, path)
        except FileNotFoundError:
            pass

    def _remove(self, path: str) -> None:
        try:
            self._call(path, self.conn.remove, path)
        except FileNotFoundError:
            pass

    def _read_into(self, path: str, sink: Callable[[bytes], None]) -> bool:
        def read() -> None:
            f = self.conn.open(path, "rb")
            try:
                f.prefetch()  # pipelined reads: a WAN's round trip once, not per block
                while chunk := f.read(self.CHUNK):
                    sink(chunk)
            finally:
                _abandon(f)
        try:
            self._call(path, read)
        except FileNotFoundError:
            return False
        return True

    def _get_small(self, path: str) -> bytes | None:
        try:
            def read() -> bytes:
                f = self.conn.open(path, "rb")
                try:
                    return f.read()
                finally:
                    _abandon(f)
            return self._call(path, read)
        except FileNotFoundError:
            return None


def _abandon(f: paramiko.SFTPFile) -> None:
    """Close a remote file on every path. When the connection broke, close() itself fails
    before it marks the file closed, and paramiko's __del__ would try again from the garbage
    collector and print a traceback (issue 7): the file is dead with its connection anyway."""
    try:
        f.close()
    except Exception:  # noqa: BLE001 - the write's own error is what the caller reports
        f._closed = True  # type: ignore[attr-defined]


def _parse_host_key(text: str) -> paramiko.PKey:
    """'ssh-ed25519 AAAA...' (as in known_hosts, with or without the host name)."""
    parts = text.split()
    if len(parts) >= 3 and not parts[0].startswith(("ssh-", "ecdsa-")):
        parts = parts[1:]
    if len(parts) < 2:
        raise ValueError("host_key must look like 'ssh-ed25519 AAAA...'")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))

