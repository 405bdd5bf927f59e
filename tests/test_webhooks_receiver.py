"""A webhook receiver for the webhook tests: a small HTTP server in a thread that records.

Not a test module of its own beyond the checks of the receiver itself: the
webhook tests import ``Receiver`` from here. Each request is recorded with
its path, headers and body; what the receiver answers is up to ``respond``
(200 by default), so tests can make it fail, stall, redirect or flood.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Received:
    """One request the receiver read."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> Any:
        """The payload, once its signature verified with ``secret`` (raises otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)


Respond = Callable[[http.server.BaseHTTPRequestHandler, Received], None]


def answer(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"ok") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def ok(handler: http.server.BaseHTTPRequestHandler, _: Received) -> None:
    answer(handler, 200)


class Receiver:
    """``with Receiver() as r:`` a server on 127.0.0.1 recording what is POSTed to it."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        #: TCP connections accepted (keep-alive: fewer than requests).
        self.connections = 0
        #: The server names (SNI) TLS clients asked for.
        self.server_names: list[str | None] = []
        self._tls = tls
        self.respond: Respond = ok
        self._lock = threading.Condition()
        self._port = port
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self._port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver.connections += 1

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                seen = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver.requests.append(seen)
                    receiver._lock.notify_all()
                # The sender may have given up on us: that is what some tests want.
                with contextlib.suppress(OSError):
                    receiver.respond(self, seen)

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self._port), Handler)
        if self._tls is not None:

            def sni(sock: Any, name: str | None, context: Any) -> None:
                self.server_names.append(name)

            self._tls.sni_callback = sni
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The requests once there are at least ``count`` (fails after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.requests)} webhook requests arrived, {count} expected"
                    )
                self._lock.wait(left)
            return list(self.requests)


def reserved_port() -> int:
    """A free port on 127.0.0.1 (nothing listens on it until a Receiver does)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_receiver_records_and_answers() -> None:
    with Receiver() as receiver:
        conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        conn.request("POST", "/hook?x=1", body=b'{"a":1}', headers={"Webhook-Id": "msg_1"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == b"ok"
        conn.close()
        [seen] = receiver.wait_for(1)
        assert seen.path == "/hook?x=1"
        assert seen.body == b'{"a":1}'
        assert seen.webhook_id == "msg_1"
