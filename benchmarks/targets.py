"""The HTTP targets (``userplane serve``, the bare stack) and the OTLP sink."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks import processes

#: Above this, a server's log file is emptied between runs (it is kept for failures).
MAX_LOG_BYTES = 64 * 1024 * 1024


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request to ``127.0.0.1:port``: its status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class HttpTarget:
    """A server process group on a free port, with its master and workers in /proc."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, str],
        port: int,
        log_path: Path,
        description: str,
        ready_path: str = "/health/ready",
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.env = dict(env)
        self.port = port
        self.log_path = log_path
        self.description = description
        #: The path that answers 200 once the server is ready.
        self.ready_path = ready_path
        self.proc: Any = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL wrk is pointed at."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until its ready path answers 200; the seconds it took."""
        self._log = self.log_path.open("ab")
        started = time.monotonic()
        self.proc = processes.start(self.cmd, self.env, self._log)
        wait_ready(self.proc, self.port, timeout, self.log_path, self.ready_path)
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the whole process group (gracefully first)."""
        if self.proc is not None:
            processes.kill_group(self.proc, grace=15)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def workers(self) -> list[int]:
        """The gunicorn workers' pids."""
        return processes.children(self.proc.pid) if self.proc is not None else []

    def cpu(self) -> float:
        """CPU seconds used so far by the master and its workers."""
        return processes.tree_cpu(self.proc.pid) if self.proc is not None else 0.0

    def settle(self, timeout: float = 5.0, idle_s: float = 0.01) -> None:
        """Wait (``timeout`` at most) until the server is idle: under ``idle_s`` CPU per 100 ms.

        wrk stops with requests in flight; the server may still be answering
        them (and writing) when wrk has exited.
        """
        deadline = time.monotonic() + timeout
        quiet, before = 0, self.cpu()
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.cpu()
            quiet = quiet + 1 if now - before < idle_s else 0
            before = now

    def peak_rss_kib(self) -> list[int]:
        """``VmHWM`` of each worker, in KiB."""
        return [kib for pid in self.workers() if (kib := processes.peak_rss_kib(pid)) is not None]

    def alive(self) -> bool:
        """Whether the master still runs."""
        return self.proc is not None and self.proc.poll() is None

    def trim_log(self) -> None:
        """Empty the log file if it grew past ``MAX_LOG_BYTES`` (it is opened for appending)."""
        with contextlib.suppress(FileNotFoundError):
            if self.log_path.stat().st_size > MAX_LOG_BYTES:
                self.log_path.open("r+b").truncate(0)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output, for error messages."""
        return log_tail(self.log_path, lines)

    def page_path(self, page: int, headers: Mapping[str, str]) -> tuple[str, str | None]:
        """The URL path of list page ``page`` (1-based), found by following ``next`` cursors."""
        path, cursor = "/api/v1/users", None
        for _ in range(page - 1):
            status, body = request(self.port, "GET", path, headers)
            if status != 200:
                raise RuntimeError(f"{self.name}: GET {path} answered {status}: {body[:300]!r}")
            cursor = json.loads(body)["next"]
            if cursor is None:
                raise RuntimeError(f"{self.name}: the list has fewer than {page} pages")
            path = f"/api/v1/users?cursor={cursor}"
        return path, cursor

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of ``path``."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(
    proc: Any,
    port: int,
    timeout: float,
    log_path: Path | None = None,
    path: str = "/health/ready",
) -> None:
    """Poll ``GET path`` every 10 ms until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            tail = log_tail(log_path) if log_path else ""
            raise RuntimeError(f"the server exited with {code} before it was ready:\n{tail}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if request(port, "GET", path, timeout=2.0)[0] == 200:
                return
        if time.monotonic() > deadline:
            tail = log_tail(log_path) if log_path else ""
            raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{tail}")
        time.sleep(0.01)


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OtlpSink

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.record(self.path, len(body))
        self.send_response(200)
        # An empty protobuf message is a valid Export*ServiceResponse.
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OtlpSink(http.server.ThreadingHTTPServer):
    """A no-op OTLP/HTTP collector in this process: it accepts and counts exports.

    The telemetry target exports through the production exporter
    (``otlp-http``: protobuf encoding, batching, an HTTP POST per batch) to it,
    so the benchmark pays the real export cost except the collector's own work.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.counts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name="otlp-sink", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for ``USERPLANE_OTEL_ENDPOINT``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, path: str, size: int) -> None:
        """Count one export request of ``size`` bytes to ``path``."""
        with self._lock:
            entry = self.counts.setdefault(path, [0, 0])
            entry[0] += 1
            entry[1] += size

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
