"""Real receivers on loopback for notifications: an SMTP server (aiosmtpd) that keeps the
mails it is sent, and an HTTP server that keeps the requests (JSON webhooks, heartbeat
pings), and can be told to hang instead of answering."""
from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from servers import free_port


@dataclass
class Mail:
    sender: str
    to: list[str]
    subject: str
    body: str
    raw: str


class _Handler:
    def __init__(self, box: list[Mail]) -> None:
        self.box = box

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        raw = envelope.content.decode("utf-8", "replace")
        msg = email.message_from_string(raw, policy=email.policy.default)
        part = msg.get_body(("plain", "html")) if msg.is_multipart() else msg
        body = part.get_content() if part is not None else ""
        self.box.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), str(msg["Subject"]), body, raw))
        return "250 OK"


class SMTPReceiver:
    """aiosmtpd on 127.0.0.1, with AUTH LOGIN/PLAIN for one user (no TLS: loopback only)."""

    def __init__(self, user: str = "offsite", password: str = "Smtp-Secret-77") -> None:
        self.user, self.password = user, password
        self.mails: list[Mail] = []
        self.port = free_port()

        def auth(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and data.login.decode() == user \
                and data.password.decode() == password
            return AuthResult(success=ok)

        self.controller = Controller(_Handler(self.mails), hostname="127.0.0.1", port=self.port,
                                     authenticator=auth, auth_require_tls=False, auth_required=True)
        self.controller.start()
        self.stopped = False

    def url(self, to: str = "ops@example.net") -> str:
        return (f"mailto://{self.user}:{self.password}@127.0.0.1:{self.port}?to={to}"
                f"&from=offsite@example.net&mode=insecure")

    def stop(self) -> None:
        if not self.stopped:  # a test may have stopped it already
            self.stopped = True
            self.controller.stop()


@dataclass
class Hit:
    method: str
    path: str
    body: bytes
    at: float

    def json(self):
        return json.loads(self.body)


class HTTPReceiver:
    """Records every request; answers 200, or hangs (never answers) when `hang` is set."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.hits.append(Hit(self.command, self.path, body, time.time()))
                if outer.hang.is_set():
                    outer.release.wait(120)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _any

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def of(self, prefix: str) -> list[Hit]:
        return [h for h in self.hits if h.path.startswith(prefix)]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
