"""One SFTP WRITE request, sent without paramiko's copies of its data (issue 17).

paramiko's SFTPClient builds a request in a message buffer, copies it into the packet, then
copies the rest of the packet again after each 32 KiB the channel takes: five copies of every
byte before the channel's own. Here the request's header goes with the first piece of data
and the rest is handed to the channel as a view. The answers are read through `Answers`:
paramiko hands an answer that arrives before the one waited for to its request's owner, and
drops it when the owner is nobody, so a server answering out of order (SFTP allows it) would
have lost a refused write's status.
"""
from __future__ import annotations

import struct

import paramiko
from paramiko.sftp import CMD_STATUS, CMD_WRITE


class Answers:
    """The answers to one file's WRITE requests, in whatever order the server sends them."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.early: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, t: int, msg: paramiko.Message, number: int) -> None:  # paramiko calls it
        self.early[number] = (t, msg)

    def wait(self, number: int) -> int:
        """The type of request `number`'s answer; a refusal raises as paramiko's own would."""
        if number not in self.early:
            return self.sftp._read_response(number)[0]  # type: ignore[attr-defined]
        t, msg = self.early.pop(number)
        if t == CMD_STATUS:
            self.sftp._convert_status(msg)  # type: ignore[attr-defined]
        return t


def send_write(sftp: paramiko.SFTPClient, f: paramiko.SFTPFile, offset: int, data: bytes | memoryview,
               answers: Answers) -> int:
    """Send `data` to be written at `offset` of the open file `f`; return the request's number.
    What the channel raises (socket.timeout, an SSHException) passes through."""
    handle: bytes = f.handle  # type: ignore[assignment]
    with sftp._lock:  # type: ignore[attr-defined]
        number = sftp.request_number  # type: ignore[attr-defined]
        sftp._expecting[number] = answers  # type: ignore[attr-defined]
        sftp.request_number += 1  # type: ignore[attr-defined]
    n = len(data)
    head = (struct.pack(">IBII", 21 + len(handle) + n, CMD_WRITE, number, len(handle)) + handle
            + struct.pack(">QI", offset, n))
    channel = sftp.get_channel()
    assert channel is not None
    first = max(0, channel.out_max_packet_size - len(head))  # one full SSH packet, header included
    view = memoryview(data)
    channel.sendall(head + view[:first].tobytes())
    if n > first:
        channel.sendall(view[first:])  # type: ignore[arg-type]  # paramiko takes any buffer
    return number
