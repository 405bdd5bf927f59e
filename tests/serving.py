"""Running a real ``userplane serve`` for end-to-end tests, and talking to it over HTTP."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any

import pytest

SCRIPT = Path(sys.executable).parent / "userplane"
GRACEFUL_TIMEOUT = 10
#: Safety limits, not expectations.
STARTUP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0
PROBLEM_JSON = "application/problem+json"
USER_ROUTE = "/api/v1/users/{user_id:uuid}"
USER_PATH = re.compile(r"/api/v1/users/[0-9a-fA-F-]{36}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


@dataclass
class Sent:
    """A request whose response arrived: the server must have logged it."""

    request_id: str
    method: str
    path: str
    status: int


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    directory: Path
    env: dict[str, str]
    logs: tuple[Path, Path]
    backend: str
    #: An admin API key, sent with every request unless the caller sets Authorization.
    key: str = ""
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str | None] | None = None,
        content_type: str = "application/json",
    ) -> Response:
        request_id = uuid.uuid4().hex
        all_headers = {"X-Request-ID": request_id, "Connection": "close"}
        if self.key:
            all_headers["Authorization"] = f"Bearer {self.key}"
        all_headers.update(headers or {})
        # None removes a default header: an anonymous request.
        all_headers = {k: v for k, v in all_headers.items() if v is not None}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers["Content-Type"] = content_type
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request(method, path, body=data, headers=all_headers)
            raw = conn.getresponse()
            response = Response(raw.status, raw.headers, raw.read())
        finally:
            conn.close()
        assert response.headers["X-Request-ID"] == request_id
        with self.lock:
            self.sent.append(Sent(request_id, method, path, response.status))
        return response

    def log(self) -> str:
        """stdout and stderr of the server, together."""
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in self.logs)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI as a process over the server's database."""
        return subprocess.run(
            [str(SCRIPT), *args],
            env=self.env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def create_key(env: dict[str, str], directory: Path, role: str = "admin") -> str:
    """Migrate the database and create an API key with ``role``, through the CLI."""
    for args in (("migrate",), ("keys", "create", "--name", f"e2e {role}", "--role", role)):
        done = subprocess.run(
            [str(SCRIPT), *args, "--format", "json"],
            env=env,
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    key: str = json.loads(done.stdout)["key"]
    return key


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=GRACEFUL_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        # Our own session: the master and any worker it left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        code = server.proc.poll()
        if code is not None:
            pytest.fail(f"userplane serve exited with {code} before it was ready:\n{server.log()}")
        with contextlib.suppress(OSError):
            if server.request("GET", "/health/ready").status == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"userplane serve was not ready within {STARTUP_TIMEOUT}s:\n{server.log()}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_server(
    directory: Path,
    database_url: str,
    backend: str,
    extra_env: dict[str, str] | None = None,
    *,
    with_key: bool = True,
) -> Iterator[Server]:
    """``userplane serve --migrate`` with two workers on a free port, stopped afterwards.

    With ``with_key``, an admin key is made first and sent with every request.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env.update(
        USERPLANE_DATABASE_URL=database_url,
        USERPLANE_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT),
        USERPLANE_ENV_FILE=str(directory / "no-such.env"),
        # Where gunicorn would put its control socket (serve disables it): never ~/.gunicorn.
        XDG_RUNTIME_DIR=str(directory),
    )
    env.update(extra_env or {})  # which may name another env file
    key = create_key(env, directory) if with_key else ""
    logs = (directory / "server.stdout", directory / "server.stderr")
    files: list[IO[bytes]] = [p.open("wb") for p in logs]
    proc = subprocess.Popen(
        [
            *(str(SCRIPT), "serve", "--migrate", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", "2"),
        ],
        cwd=directory,
        env=env,
        stdout=files[0],
        stderr=files[1],
        start_new_session=True,
    )
    srv = Server(
        proc=proc, port=port, directory=directory, env=env, logs=logs, backend=backend, key=key
    )
    try:
        _wait_ready(srv)
        yield srv
    finally:
        _stop(proc)
        for f in files:
            f.close()


def assert_problem(resp: Response, status: int, kind: str | None = None) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem with ``status``; ``kind`` names a domain error type."""
    assert resp.status == status, resp.body
    assert resp.content_type == PROBLEM_JSON
    assert b"Traceback" not in resp.body
    problem: dict[str, Any] = resp.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["request_id"] == resp.headers["X-Request-ID"]
    if kind is not None:
        assert problem["type"] == f"urn:userplane:problem:{kind}"
    return problem


def unique_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.org"


def raw_exchange(port: int, data: bytes, *, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """Send ``data`` as it is on a fresh connection; every byte answered until the server closes.

    The server may refuse a request before reading all of it: a reset on either
    side of the exchange ends it, with what arrived so far.
    """
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def parse_response(data: bytes) -> Response:
    """The first HTTP/1.x response in ``data``: its body framed by Content-Length, else the rest."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, _, fields = head.partition(b"\r\n")
    headers = http.client.parse_headers(io.BytesIO(fields + b"\r\n\r\n"))
    length = headers.get("Content-Length")
    body = rest[: int(length)] if length is not None else rest
    return Response(int(status_line.split(b" ", 2)[1]), headers, body)
