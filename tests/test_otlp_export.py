"""Traces from real processes, and from registries in this one, reach an OTLP/HTTP collector.

A receiver in this process stands in for the collector: it accepts
``POST /v1/traces`` and ``/v1/metrics``, decodes the trace exports and keeps
their spans. The CLI and ``userplane serve`` run as real processes configured,
by ``USERPLANE_OTEL_*`` variables only, to export to it; two registries in
this process, configured the same way, each export to a receiver of its own.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from serving import SCRIPT, Server, running_server, unique_email

from userplane import NewUser, Registry, Settings

pytestmark = pytest.mark.e2e

#: Safety limits, not expectations.
COLLECT_TIMEOUT = 20.0
CLI_TIMEOUT = 60
PROTOBUF = "application/x-protobuf"

T = TypeVar("T")


@dataclass(frozen=True)
class CollectedSpan:
    name: str
    trace_id: str
    span_id: str
    #: ``""`` for a root span.
    parent_span_id: str
    #: The protobuf enum's name: ``"SPAN_KIND_SERVER"``, ``"SPAN_KIND_INTERNAL"``, …
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]

    def __str__(self) -> str:
        parent = self.parent_span_id or "-"
        return f"{self.name!r} {self.kind} trace={self.trace_id} span={self.span_id} <- {parent}"


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class Collector:
    """What the receiver has decoded so far; safe to use from any thread."""

    def __init__(self) -> None:
        self._spans: list[CollectedSpan] = []
        self._changed = threading.Condition()
        self.metric_posts = 0
        self.errors: list[str] = []
        self.url = ""

    def add_traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = [
            CollectedSpan(
                name=span.name,
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                kind=ProtoSpan.SpanKind.Name(span.kind),
                attributes=_attributes(span.attributes),
                resource=_attributes(resource_spans.resource.attributes),
            )
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def add_metrics(self) -> None:
        with self._changed:
            self.metric_posts += 1

    def add_error(self, error: str) -> None:
        with self._changed:
            self.errors.append(error)
            self._changed.notify_all()

    @property
    def spans(self) -> list[CollectedSpan]:
        with self._changed:
            return list(self._spans)

    def dump(self) -> str:
        spans = self.spans
        lines = [f"{len(spans)} spans collected:", *(f"  {s}" for s in spans)]
        if self.errors:
            lines += ["receiver errors:", *(f"  {e}" for e in self.errors)]
        return "\n".join(lines)

    def wait_until(self, predicate: Callable[[list[CollectedSpan]], T | None], what: str) -> T:
        """The first truthy ``predicate(spans)``, re-checked whenever spans arrive."""
        found: list[T] = []

        def check() -> bool:
            result = predicate(list(self._spans))
            if result:
                found.append(result)
            return bool(result) or bool(self.errors)

        with self._changed:
            self._changed.wait_for(check, timeout=COLLECT_TIMEOUT)
        if self.errors:
            pytest.fail(f"the receiver could not take an export\n{self.dump()}")
        if not found:
            pytest.fail(f"no {what} within {COLLECT_TIMEOUT}s\n{self.dump()}")
        return found[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding not in ("", "identity"):
            raise ValueError(f"unexpected Content-Encoding: {encoding}")
        return body

    def _reply(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", PROTOBUF)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        collector = self.server.collector
        try:
            body = self._body()
            if self.path == "/v1/traces":
                collector.add_traces(body)
            elif self.path == "/v1/metrics":
                collector.add_metrics()
            else:
                collector.add_error(f"POST to an unexpected path {self.path}")
                self._reply(404)
                return
        except Exception as exc:
            collector.add_error(f"POST {self.path}: {type(exc).__name__}: {exc}")
            self._reply(400)
            return
        self._reply(200)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the collected spans are what the tests look at


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, collector: Collector) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.collector = collector


@contextlib.contextmanager
def receiving() -> Iterator[Collector]:
    """An OTLP/HTTP receiver on a free port of 127.0.0.1, until the block ends."""
    collector = Collector()
    receiver = _Receiver(collector)
    collector.url = f"http://127.0.0.1:{receiver.server_port}"
    thread = threading.Thread(target=receiver.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join()


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/HTTP receiver for this test only."""
    with receiving() as collector:
        yield collector


def otel_env(collector: Collector) -> dict[str, str]:
    return {
        "USERPLANE_OTEL_ENABLED": "true",
        "USERPLANE_OTEL_EXPORTER": "otlp-http",
        "USERPLANE_OTEL_ENDPOINT": collector.url,
        "USERPLANE_OTEL_SAMPLE_RATIO": "1",
    }


def is_sql(span: CollectedSpan) -> bool:
    system = span.attributes.get("db.system.name", span.attributes.get("db.system"))
    return system == "sqlite"


def children(spans: list[CollectedSpan], parent: CollectedSpan) -> list[CollectedSpan]:
    return [
        s for s in spans if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id
    ]


def sql_inserts_under(spans: list[CollectedSpan], parent: CollectedSpan) -> list[CollectedSpan]:
    return [s for s in children(spans, parent) if is_sql(s) and s.name.startswith("INSERT")]


def assert_resource(span: CollectedSpan) -> None:
    assert span.resource.get("service.name") == "userplane", span.resource


def test_cli_command_exports_its_trace(tmp_path: Path, collector: Collector) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env.update(
        USERPLANE_DATABASE_URL=f"sqlite:///{tmp_path}/otlp.db",
        USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
        **otel_env(collector),
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(SCRIPT), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    cli("migrate")
    created = cli("users", "create", "--email", "a@example.org", "--format", "json")
    [user] = [json.loads(line) for line in created.stdout.splitlines()]
    assert user["email"] == "a@example.org"

    # The process has exited: whatever it exported was stored before the receiver replied.
    spans = collector.spans
    dump = collector.dump()
    roots = [s for s in spans if s.name == "cli users create"]
    assert len(roots) == 1, dump
    [root] = roots
    assert root.parent_span_id == "", dump
    assert_resource(root)

    operations = [s for s in children(spans, root) if s.name == "users.create"]
    assert len(operations) == 1, dump
    [operation] = operations
    assert_resource(operation)

    inserts = sql_inserts_under(spans, operation)
    assert inserts, dump
    for insert in inserts:
        assert insert.trace_id == root.trace_id
        assert insert.kind == "SPAN_KIND_CLIENT", dump
        assert_resource(insert)
    assert not collector.errors, dump


@dataclass
class ServerTrace:
    server_span: CollectedSpan
    operation: CollectedSpan
    inserts: list[CollectedSpan]


def test_server_request_exports_its_trace_and_logs_its_id(
    tmp_path: Path, collector: Collector
) -> None:
    trace_id = secrets.token_hex(16)
    parent_id = secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent_id}-01"
    email = unique_email("otlp")

    def complete(spans: list[CollectedSpan]) -> ServerTrace | None:
        for server_span in spans:
            if not (
                server_span.name == "POST /api/v1/users"
                and server_span.trace_id == trace_id
                and server_span.parent_span_id == parent_id
                and server_span.kind == "SPAN_KIND_SERVER"
            ):
                continue
            for operation in children(spans, server_span):
                if operation.name != "users.create":
                    continue
                inserts = sql_inserts_under(spans, operation)
                if inserts:
                    return ServerTrace(server_span, operation, inserts)
        return None

    server: Server
    with running_server(
        tmp_path, f"sqlite:///{tmp_path}/otlp.db", "sqlite", extra_env=otel_env(collector)
    ) as server:
        resp = server.request(
            "POST", "/api/v1/users", {"email": email}, headers={"traceparent": traceparent}
        )
        assert resp.status == 201, resp.body
        request_id = resp.headers["X-Request-ID"]
        # Spans leave in batches (every few seconds): wait for this request's to arrive.
        found = collector.wait_until(complete, "POST /api/v1/users trace with its SQL")
    log = server.log()

    assert found.server_span.attributes.get("http.route") == "/api/v1/users"
    assert found.server_span.attributes.get("http.response.status_code") == 201
    for span in (found.server_span, found.operation, *found.inserts):
        assert span.trace_id == trace_id
        assert_resource(span)
    assert not collector.errors, collector.dump()

    access = [
        entry
        for entry in (json.loads(line) for line in log.splitlines() if line.startswith("{"))
        if entry.get("event") == "request" and entry.get("request_id") == request_id
    ]
    assert len(access) == 1, log
    assert access[0]["trace_id"] == trace_id, access[0]
    assert access[0]["span_id"] == found.server_span.span_id, access[0]
    assert "Traceback" not in log


def test_two_registries_in_one_process_export_each_to_its_own_collector(tmp_path: Path) -> None:
    """Each registry's spans and metrics reach its collector only; closing one flushes it.

    The production path (batching span processor, OTLP/HTTP exporters,
    periodic metric reader), set up by ``USERPLANE_OTEL_*`` settings alone.
    Spans leave in batches every few seconds: what a registry's ``close``
    exported is at its collector when ``close`` returns, without waiting.
    """
    with receiving() as alpha_collector, receiving() as beta_collector:

        def registry(name: str, collector: Collector) -> Registry:
            settings = Settings.from_mapping(
                {
                    "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/{name}.db",
                    "USERPLANE_OTEL_SERVICE_NAME": name,
                    **otel_env(collector),
                }
            )
            opened = Registry(settings)
            opened.migrate()
            return opened

        alpha = registry("alpha", alpha_collector)
        try:
            with registry("beta", beta_collector) as beta:
                alpha.users.create(NewUser(email="alpha@example.org"))
                beta.users.create(NewUser(email="beta-1@example.org"))
                alpha.close()  # the first closes while the second goes on

                alpha_spans = alpha_collector.spans
                assert alpha_collector.metric_posts >= 1, alpha_collector.dump()
                beta.users.create(NewUser(email="beta-2@example.org"))
        finally:
            alpha.close()
        beta_spans = beta_collector.spans

    for spans, name, creates in ((alpha_spans, "alpha", 1), (beta_spans, "beta", 2)):
        dump = "\n".join(str(s) for s in spans)
        assert spans, f"{name}: no spans"
        assert {s.resource.get("service.name") for s in spans} == {name}, dump
        operations = [s for s in spans if s.name == "users.create"]
        assert len(operations) == creates, dump
        for operation in operations:
            assert sql_inserts_under(spans, operation), dump
    assert beta_collector.metric_posts >= 1
    assert not {s.trace_id for s in alpha_spans} & {s.trace_id for s in beta_spans}
    assert alpha_collector.spans == alpha_spans  # nothing more after alpha closed
    assert not alpha_collector.errors
    assert not beta_collector.errors
