"""Real notification receivers on 127.0.0.1 for the alert tests: a webhook (HTTP server) and an SMTP server
(aiosmtpd), each recording what arrives so a test can read it back."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import free_port

SECRET_PATH = "/services/T000/B000/SECRETTOKEN"  # like a Slack incoming webhook: the secret is the path


class _Recorder:
    """What arrived, with a wait for the n-th arrival (receivers record from their own threads)."""

    def __init__(self):
        self._arrived = threading.Condition()
        self._records: list[dict] = []

    def _record(self, record: dict) -> None:
        with self._arrived:
            self._records.append(record)
            self._arrived.notify_all()

    def wait_for(self, n: int, timeout_s: float = 10) -> list[dict]:
        """The first n records, once n have arrived; AssertionError after timeout_s with fewer."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while len(self._records) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self._records)} of {n} arrived within {timeout_s}s")
                self._arrived.wait(left)
            return list(self._records[:n])


class WebhookReceiver(_Recorder):
    """An HTTP server recording each request as {"method", "path", "headers", "body" (decoded JSON or None),
    "raw"} in `requests`, answering `status` (200 unless a test changes it) with the text `reply`.

    `with WebhookReceiver() as hook: hook.url`; or reserve a port, `WebhookReceiver(port=p)`, and `start()`
    it later: its `url` is known before it listens."""

    def __init__(self, port: int = 0, status: int = 200, reply: str = "ok"):
        super().__init__()
        self.port, self.status, self.reply = port, status, reply
        self._server: ThreadingHTTPServer | None = None

    @property
    def requests(self) -> list[dict]:
        return self._records

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the receiver has no port until it starts (or give it one)")
        return f"http://127.0.0.1:{self.port}{SECRET_PATH}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                receiver._record({"method": self.command, "path": self.path, "headers": self.headers,
                                  "body": body, "raw": raw})
                answer = receiver.reply.encode()
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_PUT = do_GET = _any

            def log_message(self, format, *args):  # quiet: pytest shows what the test asserts
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # a short poll: stop() waits for the serving loop to notice, and tests start and stop many receivers
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SmtpReceiver(_Recorder):
    """An SMTP server (aiosmtpd) recording each message as {"mail_from", "rcpt_tos", "message" (a parsed
    `email.message.EmailMessage`), "raw"} in `messages`. With `user` and `password` it requires AUTH (LOGIN or
    PLAIN, without TLS) and refuses any other credentials, repeating them in its 535 answer (as a careless
    server might); `logins` lists who logged in. Addresses in `refuse`
    are refused at RCPT (550)."""

    def __init__(self, port: int = 0, user: str | None = None, password: str | None = None,
                 refuse: tuple[str, ...] = ()):
        super().__init__()
        self.port, self.user, self.password, self.refuse = port, user, password, set(refuse)
        self.logins: list[str] = []
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[dict]:
        return self._records

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the receiver has no port until it starts (or give it one)")
        login = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@" if self.user else ""
        return f"smtp://{login}127.0.0.1:{self.port}"

    # aiosmtpd calls these hooks on its own event-loop thread
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        # SMTP carries lines as CRLF; parsed from LF lines, the body reads back as the text that was sent
        lines = envelope.content.replace(b"\r\n", b"\n")
        self._record({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                      "message": email.message_from_bytes(lines, policy=email.policy.default),
                      "raw": envelope.content})
        return "250 Message accepted for delivery"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == self.user.encode()
              and auth_data.password == (self.password or "").encode())
        if ok:
            self.logins.append(self.user)
            return AuthResult(success=True, auth_data=auth_data)
        # a careless server's refusal, repeating the credentials it was given: the client must not show them
        given = (f"{auth_data.login.decode(errors='replace')}/{auth_data.password.decode(errors='replace')}"
                 if isinstance(auth_data, LoginPassword) else "?")
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 not a valid login: {given}")

    def start(self) -> SmtpReceiver:
        self.port = self.port or free_port()  # aiosmtpd's Controller needs an explicit port
        # AUTH without TLS is what a loopback test wants; aiosmtpd warns about it at each connection
        warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
        auth = {"authenticator": self._authenticate, "auth_required": True, "auth_require_tls": False}
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                      **(auth if self.user else {}))
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
