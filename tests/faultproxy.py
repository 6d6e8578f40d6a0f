"""A TCP proxy on loopback in front of a real server, that fails on demand the ways a link
or a server fails between the agent and its target:

- `refuse()`: every connection closed and the listening socket gone (the server is down:
  connection refused); `allow()` listens again on the same port.
- `blackhole(after=N)`: once N more bytes went to the server (at once without N),
  connections are accepted and nothing is forwarded or answered, in either direction, on
  the connections open then and on new ones (a dead server behind a load balancer, a
  firewall that drops the packets of an established flow).
- `stall(after=N)`: once N more bytes went to the server, the connections open at that
  moment stop forwarding anything, and stay open (a transfer that hangs mid-way); later
  connections work.
- `reset(after=N)`: once N more bytes went to the server, the connections open at that
  moment are reset, both ways (SO_LINGER 0, then close: an RST); later connections work.
- `slow(rate)`: every byte, each way, goes through at `rate` bytes per second at most,
  all connections together.
- `clear()`: the link is fine again: no black hole, no cap, no trigger waiting; the
  connections that were frozen are closed (each side gave up on them long ago or will).

It counts what it forwards (`up_bytes` to the server, `down_bytes` back, `connections`
accepted), so a test bounds the work a transfer cost, resent bytes included, instead of
timing it. With `ftp=True` it also carries FTP data connections: each passive-mode reply
(227, 229) on a control connection is rewritten to a port of the proxy that forwards to
the server's, so the data goes through the same faults and counters.

Threads, no asyncio: a test starts it, points a target at `port`, and stops it at the end
(every thread it started has ended when stop() returns).
"""
from __future__ import annotations

import re
import socket
import struct
import threading
import time

CHUNK = 1 << 16
_PASV = re.compile(rb"^227 .*?\(?(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)?")
_EPSV = re.compile(rb"^229 .*\(\|\|\|(\d+)\|\)")


class _Link:
    """One proxied connection: the client's socket and the server's (None while black-holed)."""

    def __init__(self, client: socket.socket, server: socket.socket | None) -> None:
        self.client, self.server = client, server
        self.frozen = False  # nothing more is forwarded, the sockets stay open
        self.dead = threading.Event()  # closed by the proxy: the pumps end without touching it


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], ftp: bool = False) -> None:
        self.upstream = upstream
        self.ftp = ftp
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._data_listeners: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._blackhole = False
        self._trigger: list | None = None  # [kind, bytes still to forward before it fires]
        self._rate: float | None = None
        self._next = {True: 0.0, False: 0.0}  # when the capped link is free again, per direction
        self.tripped = threading.Event()  # a black hole, stall or reset fired
        self.up_bytes = 0  # forwarded to the server, every connection, data connections included
        self.down_bytes = 0  # forwarded back to the client
        self.connections = 0  # accepted from clients (data connections included)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.allow()

    # ------------------------------------------------------------------ faults
    def allow(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(32)
            self._listener = s
        self._start(self._accept, s, None, name="faultproxy-accept")

    def refuse(self) -> None:
        with self._lock:
            s, self._listener = self._listener, None
            links, self._links = self._links, []
        if s is not None:
            _wake(s)
            s.close()
        for link in links:
            self._close(link)

    def blackhole(self, after: int = 0) -> None:
        self._arm("blackhole", after)

    def stall(self, after: int = 0) -> None:
        self._arm("stall", after)

    def reset(self, after: int = 0) -> None:
        self._arm("reset", after)

    def slow(self, rate: float) -> None:
        """At most `rate` bytes per second each way (None: no cap)."""
        with self._lock:
            self._rate = rate
            self._next = {True: 0.0, False: 0.0}

    def clear(self) -> None:
        with self._lock:
            self._blackhole, self._trigger, self._rate = False, None, None
            frozen = [link for link in self._links if link.frozen]
            self._links = [link for link in self._links if not link.frozen]
        for link in frozen:
            self._close(link)

    def stop(self) -> None:
        self.clear()
        self.refuse()
        with self._lock:
            listeners, self._data_listeners = self._data_listeners, []
        for s in listeners:
            _wake(s)
            s.close()
        for t in list(self._threads):
            t.join(10)

    # ------------------------------------------------------------------ the work
    def _arm(self, kind: str, after: int) -> None:
        with self._lock:
            self._trigger = [kind, after]
            self.tripped.clear()
        if after <= 0:
            self._fire(kind)

    def _fire(self, kind: str) -> None:
        with self._lock:
            self._trigger = None
            links = list(self._links)
            if kind in ("stall", "blackhole"):
                self._blackhole = self._blackhole or kind == "blackhole"
                for link in links:
                    link.frozen = True
            else:
                self._links = []
        if kind == "reset":
            for link in links:
                self._close(link, rst=True)
        self.tripped.set()

    def _start(self, target, *args, name: str) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=name)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket, to: tuple[str, int] | None) -> None:
        """Accept clients (`to`: a data connection's server address, for one client)."""
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                black = self._blackhole
            if black:  # accepted, never forwarded nor answered
                with self._lock:
                    link = _Link(client, None)
                    link.frozen = True
                    self._links.append(link)
                if to is not None:
                    return
                continue
            try:
                server = socket.create_connection(to or self.upstream)
            except OSError:
                client.close()
                if to is not None:
                    return
                continue
            with self._lock:
                if to is None and self._listener is not listener:
                    client.close()
                    server.close()
                    return
                link = _Link(client, server)
                self._links.append(link)
            control = self.ftp and to is None  # an FTP control connection: its replies are read
            self._start(self._pump, link, client, server, True, False, name="faultproxy-pump")
            self._start(self._pump, link, server, client, False, control, name="faultproxy-pump")
            if to is not None:
                return

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket, up: bool, rewrite: bool) -> None:
        pending = b""
        try:
            while not link.dead.is_set():
                data = src.recv(CHUNK)
                if not data:
                    break
                if rewrite:  # the FTP control connection's replies, line by line
                    pending += data
                    lines = pending.split(b"\r\n")
                    pending = lines.pop()
                    data = b"".join(self._passive(line) + b"\r\n" for line in lines)
                    if not data:
                        continue
                if not self._forward(link, dst, data, up):
                    return
        except OSError:
            pass
        if link.dead.is_set() or link.frozen:
            return  # the proxy closes it (or keeps it open, frozen)
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _forward(self, link: _Link, dst: socket.socket, data: bytes, up: bool) -> bool:
        """Send `data` on unless a fault says otherwise; False when the pump must end."""
        view = memoryview(data)
        while view:
            if link.frozen:
                link.dead.wait()  # frozen: nothing read, nothing sent, until the proxy closes it
                return False
            fire = None
            with self._lock:
                n = len(view)
                if self._rate is not None:
                    n = min(n, max(1, int(self._rate / 20)))
                if up and self._trigger is not None:
                    n = min(n, self._trigger[1])
                    self._trigger[1] -= n
                    if self._trigger[1] <= 0:
                        fire = self._trigger[0]
                wait = 0.0
                if self._rate is not None:
                    start = max(time.monotonic(), self._next[up])
                    self._next[up] = start + n / self._rate
                    wait = start - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if n:
                with self._lock:  # counted as handed on (what an RST loses was sent all the same)
                    if up:
                        self.up_bytes += n
                    else:
                        self.down_bytes += n
                dst.sendall(view[:n])
                view = view[n:]
            if fire is not None:
                self._fire(fire)
                return False
        return True

    def _passive(self, line: bytes) -> bytes:
        """A passive-mode reply pointing at the server's data port, made to point at a port
        of the proxy that forwards to it."""
        m = _PASV.match(line)
        e = _EPSV.match(line) if m is None else None
        if m is None and e is None:
            return line
        port = (int(m.group(5)) << 8 | int(m.group(6))) if m else int(e.group(1))  # type: ignore[union-attr]
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with self._lock:
            self._data_listeners = [s for s in self._data_listeners if s.fileno() != -1] + [listener]
        self._start(self._accept_data, listener, (self.upstream[0], port), name="faultproxy-data")
        mine = listener.getsockname()[1]
        if m:
            return b"227 Entering Passive Mode (127,0,0,1,%d,%d)." % (mine >> 8, mine & 0xFF)
        return b"229 Entering Extended Passive Mode (|||%d|)" % mine

    def _accept_data(self, listener: socket.socket, to: tuple[str, int]) -> None:
        listener.settimeout(60)  # a PASV whose data connection never comes
        try:
            self._accept(listener, to)
        finally:
            listener.close()

    def _close(self, link: _Link, rst: bool = False) -> None:
        link.dead.set()
        for s in (link.client, link.server):
            if s is None:
                continue
            if rst:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                try:
                    s.shutdown(socket.SHUT_RD)  # wakes a pump in recv(), sends nothing
                except OSError:
                    pass
            else:
                _wake(s)
            s.close()


def _wake(s: socket.socket) -> None:
    """Wake a thread blocked on the socket (accept, recv)."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
