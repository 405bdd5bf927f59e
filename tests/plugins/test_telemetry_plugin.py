"""The telemetry plugin: span trees, W3C trace context, errors, trace ids on log lines."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from clients import client_for
from falcon import testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from userplane import ConfigurationError, Registry, Settings, hookimpl
from userplane.plugins import telemetry
from userplane.plugins.logging import add_trace_ids
from userplane.plugins.rate_limits.limiter import Limiter

USERS = "/api/v1/users/"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def settings_for(database_url: str, **extra: str) -> Settings:
    return Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            "USERPLANE_OTEL_ENABLED": "true",
            "USERPLANE_OTEL_EXPORTER": "none",
            **extra,
        }
    )


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@contextlib.contextmanager
def traced_registry(
    database_url: str,
    exporter: InMemorySpanExporter,
    reader: InMemoryMetricReader | None = None,
    **extra: str,
) -> Iterator[Registry]:
    """A migrated registry with telemetry on, its spans into ``exporter``, metrics to ``reader``.

    The exporters go in as the plugin documents (``telemetry.Exporters``, a
    plugin of this registry only); the registry's own hooks do the rest, as in
    any process.
    """
    settings = settings_for(database_url, **extra)
    exporters = telemetry.Exporters(spans=exporter, metrics=reader)
    with Registry(settings, plugins=[exporters]) as registry:
        registry.migrate()
        yield registry


@pytest.fixture
def traced(
    database_url: str, exporter: InMemorySpanExporter
) -> Iterator[tuple[testing.TestClient, Registry]]:
    with traced_registry(database_url, exporter) as registry:
        yield client_for(registry), registry


def test_off_by_default_adds_nothing(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/o.db"})
    # Exporters given, but USERPLANE_OTEL_ENABLED is not set: still off.
    with Registry(settings, plugins=[telemetry.Exporters(spans=exporter)]) as registry:
        registry.migrate()
        assert telemetry.Telemetry not in registry.services
        assert telemetry.state_of(registry) is None
        assert telemetry.tracer_provider(registry) is None
        middleware = registry.hooks.http_middleware(settings, registry)
        assert not any(isinstance(m, telemetry.ServerTelemetry) for m in middleware)
        client = client_for(registry)
        assert client.simulate_post(USERS, json={"email": "o@example.org"}).status_code == 201
    assert exporter.get_finished_spans() == ()


def test_the_settings_section_is_declared(tmp_path: Path) -> None:
    with Registry(settings_for(f"sqlite:///{tmp_path}/s.db")) as registry:
        sections = registry.hooks.settings_sections()
    assert telemetry.SETTINGS in sections
    assert set(telemetry.SETTINGS.names()) == {
        "USERPLANE_OTEL_ENABLED",
        "USERPLANE_OTEL_EXPORTER",
        "USERPLANE_OTEL_ENDPOINT",
        "USERPLANE_OTEL_SAMPLE_RATIO",
        "USERPLANE_OTEL_SERVICE_NAME",
    }


def test_closing_the_registry_shuts_its_providers_down(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    with traced_registry(f"sqlite:///{tmp_path}/c.db", exporter) as registry:
        provider = telemetry.tracer_provider(registry)
        assert provider is not None
        provider.get_tracer("test").start_span("while open").end()
    provider.get_tracer("test").start_span("after close").end()
    names = [s.name for s in exporter.get_finished_spans()]
    assert "while open" in names
    assert "after close" not in names


def test_a_create_is_one_trace_http_then_service(
    traced: tuple[testing.TestClient, Registry], exporter: InMemorySpanExporter
) -> None:
    client, _ = traced
    assert client.simulate_post(USERS, json={"email": "t@example.org"}).status_code == 201
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["POST /api/v1/users"]
    operation = spans["users.create"]
    assert server.kind == SpanKind.SERVER
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/api/v1/users"
    assert server.attributes["http.response.status_code"] == 201
    assert operation.parent is not None
    assert operation.parent.span_id == server.context.span_id
    assert operation.context.trace_id == server.context.trace_id
    assert server.resource.attributes["service.name"] == "userplane"


def test_an_incoming_traceparent_is_the_parent(
    traced: tuple[testing.TestClient, Registry], exporter: InMemorySpanExporter
) -> None:
    client, _ = traced
    header = f"00-{TRACE_ID}-{PARENT_ID}-01"
    client.simulate_get(USERS, headers={"traceparent": header})
    (server,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID


def test_the_record_of_a_change_carries_the_trace_and_the_request(
    traced: tuple[testing.TestClient, Registry], exporter: InMemorySpanExporter
) -> None:
    """An audit event names the trace and the request it came from (records of changes)."""
    client, _ = traced
    header = f"00-{TRACE_ID}-{PARENT_ID}-01"
    created = client.simulate_post(
        USERS,
        json={"email": "traced@example.org"},
        headers={"traceparent": header, "X-Request-ID": "req-traced-1"},
    )
    assert created.status_code == 201, created.text
    page = client.simulate_get("/api/v1/audit", params={"target_id": created.json["id"]})
    assert page.status_code == 200, page.text
    (event,) = page.json["items"]
    assert event["action"] == "user.created"
    assert event["trace_id"] == TRACE_ID
    assert event["request_id"] == "req-traced-1"
    assert event["client_address"]  # the test client's address, as the request came


class Explodes:
    """A bug in ``users.create``: the innermost wrapper, inside the span, fails in its place.

    (Not a failing event listener: listeners run isolated, and the answer stays 201.)
    """

    @hookimpl(wrapper=True, trylast=True)
    def userplane_operation(self, operation: str) -> Generator[None, Any, Any]:
        if operation == "users.create":
            raise RuntimeError("boom")
        return (yield)


def test_a_failing_request_records_the_error(
    traced: tuple[testing.TestClient, Registry], exporter: InMemorySpanExporter
) -> None:
    client, registry = traced
    registry.pm.register(Explodes())
    assert client.simulate_post(USERS, json={"email": "x@example.org"}).status_code == 500
    spans = {s.name: s for s in exporter.get_finished_spans()}
    operation = spans["users.create"]
    assert operation.status.status_code == StatusCode.ERROR
    assert [e.name for e in operation.events] == ["exception"]
    assert spans["POST /api/v1/users"].status.status_code == StatusCode.ERROR


class LeaksAUrl:
    __name__ = "leaks_a_url"

    @hookimpl(wrapper=True, trylast=True)
    def userplane_operation(self, operation: str) -> Generator[None, Any, Any]:
        if operation == "users.create":
            raise RuntimeError("cannot reach postgresql://app:Zq8#w?X3kPm@db/users")
        return (yield)


def test_an_exception_in_a_span_never_carries_a_password(
    traced: tuple[testing.TestClient, Registry], exporter: InMemorySpanExporter
) -> None:
    """A driver's message can quote a URL with its password; spans leave the process."""
    client, registry = traced
    registry.pm.register(LeaksAUrl())
    assert client.simulate_post(USERS, json={"email": "x@example.org"}).status_code == 500
    (operation,) = [s for s in exporter.get_finished_spans() if s.name == "users.create"]
    (event,) = operation.events
    attributes = dict(event.attributes or {})
    assert "Zq8" not in str(attributes)
    assert "X3kPm" not in str(attributes)
    assert "postgresql://app:" in str(attributes["exception.message"])
    assert attributes["exception.type"] == "builtins.RuntimeError"
    assert "exception.stacktrace" not in attributes


def test_a_refused_request_is_not_an_error_span(
    traced: tuple[testing.TestClient, Registry], exporter: InMemorySpanExporter
) -> None:
    client, _ = traced
    assert client.simulate_post(USERS, json={"email": "nope"}).status_code == 422
    spans = {s.name: s for s in exporter.get_finished_spans()}
    operation = spans["users.create"]
    assert operation.status.status_code != StatusCode.ERROR
    assert operation.attributes is not None
    assert operation.attributes["userplane.error.kind"] == "invalid-input"


def test_the_access_line_carries_the_trace_id(
    traced: tuple[testing.TestClient, Registry], exporter: InMemorySpanExporter
) -> None:
    client, _ = traced
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars, add_trace_ids]
    ) as logs:
        client.simulate_get(USERS, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    (access,) = [e for e in logs if e["event"] == "request"]
    (server,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert access["trace_id"] == TRACE_ID
    assert access["span_id"] == format(server.context.span_id, "016x")


def test_sampling_zero_records_nothing_unless_the_caller_sampled(
    database_url: str, exporter: InMemorySpanExporter
) -> None:
    with traced_registry(database_url, exporter, USERPLANE_OTEL_SAMPLE_RATIO="0") as registry:
        client = client_for(registry)
        client.simulate_get(USERS)
        assert exporter.get_finished_spans() == ()
        client.simulate_get(USERS, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        names = [s.name for s in exporter.get_finished_spans()]
        # The server span, users.list and its statement.
        assert names[-2:] == ["users.list", "GET /api/v1/users"]
        assert len(names) == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USERPLANE_OTEL_SAMPLE_RATIO", "2"),
        ("USERPLANE_OTEL_SAMPLE_RATIO", "lots"),
        ("USERPLANE_OTEL_EXPORTER", "zipkin"),
        ("USERPLANE_OTEL_ENABLED", "maybe"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, tmp_path: Path) -> None:
    variables = {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/b.db", name: value}
    with pytest.raises(ConfigurationError, match=name):
        Registry(Settings.from_mapping(variables))


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, "off"),
        ({"USERPLANE_OTEL_ENABLED": "true", "USERPLANE_OTEL_EXPORTER": "none"}, "off"),
        (
            {"USERPLANE_OTEL_ENABLED": "true", "USERPLANE_OTEL_SAMPLE_RATIO": "0.1"},
            "otlp-http to the OTEL_EXPORTER_OTLP_* default, sampling 0.1",
        ),
        (
            {
                "USERPLANE_OTEL_ENABLED": "true",
                "USERPLANE_OTEL_EXPORTER": "otlp-grpc",
                "USERPLANE_OTEL_ENDPOINT": "http://collector:4317",
            },
            "otlp-grpc to http://collector:4317, sampling 1",
        ),
    ],
)
def test_serve_is_told_where_traces_go(variables: dict[str, str], expected: str) -> None:
    settings = Settings.from_mapping(variables)
    assert telemetry.userplane_describe(settings=settings) == {"traces": expected}


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("http://otel:hX7qP2kW@collector:4318", "http://otel:********@collector:4318"),
        ("http://otel:hX7#qP2kW@collector:4318", "http://otel:********@collector:4318"),
        ("http://collector:4318/?token=hX7qP2kW", "http://collector:4318/?token=********"),
    ],
)
def test_endpoint_credentials_are_masked_wherever_it_is_shown(
    endpoint: str, shown: str, tmp_path: Path
) -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/e.db",
            "USERPLANE_OTEL_ENABLED": "true",
            "USERPLANE_OTEL_ENDPOINT": endpoint,
        }
    )
    # The start-up line of `serve`.
    [traces] = telemetry.userplane_describe(settings=settings).values()
    assert traces == f"otlp-http to {shown}, sampling 1"
    # `userplane config`, with the plugin's declared settings.
    listed = settings.redacted([telemetry.SETTINGS])
    assert listed["USERPLANE_OTEL_ENDPOINT"] == shown
    for text in (traces, str(listed)):
        assert "hX7" not in text
        assert "qP2" not in text


def _metrics(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_metrics_count_requests_durations_and_users(
    database_url: str, exporter: InMemorySpanExporter
) -> None:
    reader = InMemoryMetricReader()
    with traced_registry(database_url, exporter, reader) as registry:
        client = client_for(registry)
        created = client.simulate_post(USERS, json={"email": "m@example.org"})
        client.simulate_post(USERS, json={"email": "m@example.org"})  # 409
        client.simulate_delete(created.headers["Location"])
        client.simulate_get("/nowhere")
        metrics = _metrics(reader)
    durations = {
        (
            p.attributes["http.request.method"],
            p.attributes.get("http.route"),
            p.attributes["http.response.status_code"],
        ): p.count
        for p in metrics["http.server.request.duration"]
    }
    assert durations == {
        ("POST", "/api/v1/users", 201): 1,
        ("POST", "/api/v1/users", 409): 1,
        ("DELETE", "/api/v1/users/{user_id:uuid}", 204): 1,
        ("GET", None, 404): 1,
    }
    assert all(p.sum >= 0 for p in metrics["http.server.request.duration"])
    assert sum(p.value for p in metrics["http.server.active_requests"]) == 0  # all finished
    assert [p.value for p in metrics["userplane.users.created"]] == [1]
    assert [p.value for p in metrics["userplane.users.deleted"]] == [1]


def _statement_text(span: Any) -> str:
    """A statement span's SQL, its comment lines dropped and its spaces collapsed."""
    attributes = span.attributes or {}
    text = str(attributes.get("db.query.text", attributes.get("db.statement", "")))
    lines = (line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return " ".join(" ".join(lines).split())


#: The tables a user's creation inserts into, in its one transaction: the user, the
#: audit trail's event and the webhook deliveries of its subscriptions.
CREATE_WRITES = ("users", "audit_events", "webhook_deliveries")


def test_every_statement_is_a_span_under_its_operation(
    traced: tuple[testing.TestClient, Registry],
    exporter: InMemorySpanExporter,
    backend: str,
) -> None:
    client, _ = traced
    # The first user operation of a registry checks the encryption keys once: not this one.
    assert client.simulate_get(USERS).status_code == 200
    exporter.clear()
    assert client.simulate_post(USERS, json={"email": "s@example.org"}).status_code == 201
    spans = exporter.get_finished_spans()
    (operation,) = [s for s in spans if s.name == "users.create"]
    statements = [s for s in spans if s.parent and s.parent.span_id == operation.context.span_id]
    assert statements, [s.name for s in spans]
    for statement in statements:
        assert statement.kind == SpanKind.CLIENT
        assert statement.context.trace_id == operation.context.trace_id
        assert statement.attributes is not None
        system = statement.attributes.get("db.system.name", statement.attributes.get("db.system"))
        assert system == backend
        text = _statement_text(statement)
        assert text, statement.attributes
        # Values stay out of spans: the statement text has placeholders only.
        assert "s@example.org" not in text
    texts = [_statement_text(s) for s in statements]
    # The user's row, and every plugin's write in the same transaction, are among them.
    assert sum(t.startswith("INSERT INTO users ") for t in texts) == 1, texts
    for table in CREATE_WRITES:
        assert any(re.search(rf"\bINSERT INTO {table}\b", t) for t in texts), (table, texts)
    # And none of those inserts ran outside the operation.
    outside = [
        _statement_text(s)
        for s in spans
        if s not in statements
        and any(re.search(rf"\bINSERT INTO {t}\b", _statement_text(s)) for t in CREATE_WRITES)
    ]
    assert outside == []
    if backend == "sqlite":  # the transaction is explicit: it begins and commits in the operation
        assert texts[0].startswith("BEGIN"), texts
        assert texts[-1] == "COMMIT", texts


def test_pool_gauges_report_the_postgresql_pool(
    postgresql_url: str, exporter: InMemorySpanExporter
) -> None:
    reader = InMemoryMetricReader()
    with traced_registry(postgresql_url, exporter, reader) as registry:
        client = client_for(registry)
        assert client.simulate_get(USERS).status_code == 200
        pool = registry.storage.pool  # type: ignore[attr-defined]
        with pool.connection():  # one connection lent out while the gauges are read
            metrics = _metrics(reader)
    counts = {
        p.attributes["db.client.connection.state"]: p.value
        for p in metrics["db.client.connection.count"]
    }
    assert counts["used"] == 1
    assert counts["idle"] >= 0
    assert [p.value for p in metrics["db.client.connection.max"]] == [pool.max_size]
    assert [p.value for p in metrics["db.client.connection.pending_requests"]] == [0]
    for points in (metrics["db.client.connection.count"], metrics["db.client.connection.max"]):
        assert all(p.attributes["db.client.connection.pool.name"] == "userplane" for p in points)


def test_sqlite_has_no_pool_gauges(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    reader = InMemoryMetricReader()
    with traced_registry(f"sqlite:///{tmp_path}/g.db", exporter, reader) as registry:
        client_for(registry).simulate_get(USERS)
        metrics = _metrics(reader)
    assert "http.server.request.duration" in metrics  # read, and still no pool gauges
    assert "db.client.connection.count" not in metrics


def test_rate_limit_counters_are_metrics(database_url: str, exporter: InMemorySpanExporter) -> None:
    reader = InMemoryMetricReader()
    with traced_registry(
        database_url, exporter, reader, USERPLANE_RATE_LIMITS="read=2/60s"
    ) as registry:
        client = client_for(registry)
        statuses = [client.simulate_get(USERS).status_code for _ in range(4)]
        assert statuses == [200, 200, 429, 429]
        # The limiter's table goes away: requests are served, and the metric says so.
        store: Any = registry.storage
        store.execute("ALTER TABLE rate_limits RENAME TO rate_limits_away", {})
        try:
            registry.services.get(Limiter)._subjects.clear()  # forget the local refusal
            assert client.simulate_get(USERS).status_code == 200
        finally:
            store.execute("ALTER TABLE rate_limits_away RENAME TO rate_limits", {})
        metrics = _metrics(reader)
    assert [p.value for p in metrics["userplane.rate_limit.refused"]] == [2]
    assert [p.value for p in metrics["userplane.rate_limit.store_failures"]] == [1]
    assert metrics["userplane.rate_limit.checks"][0].value >= 2


def test_no_rate_limit_metrics_when_limits_are_off(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    reader = InMemoryMetricReader()
    with traced_registry(f"sqlite:///{tmp_path}/m.db", exporter, reader) as registry:
        client_for(registry).simulate_get(USERS)
        metrics = _metrics(reader)
    assert "userplane.rate_limit.refused" not in metrics
