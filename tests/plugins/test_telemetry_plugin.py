"""The telemetry plugin: span trees, W3C trace context, errors, trace ids on log lines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from falcon import testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from userplane import ConfigurationError, Registry, Settings, User, hookimpl
from userplane.frontends.http import create_app
from userplane.plugins import telemetry
from userplane.plugins.logging import add_trace_ids

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
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()
    telemetry.configure(Settings.from_mapping({}))  # off again for the other tests


@pytest.fixture
def traced(
    database_url: str, exporter: InMemorySpanExporter
) -> Iterator[tuple[testing.TestClient, Registry]]:
    settings = settings_for(database_url)
    with Registry(settings) as registry:
        registry.storage.migrate()
        assert telemetry.configure(settings, span_exporter=exporter)
        yield testing.TestClient(create_app(registry)), registry


def test_off_by_default_adds_nothing(tmp_path: Path) -> None:
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/o.db"})
    assert telemetry.configure(settings) is False
    assert telemetry.tracer_provider() is None
    assert telemetry.userplane_http_middleware(settings=settings) == []


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


class Explodes:
    @hookimpl
    def userplane_user_created(self, user: User) -> None:
        raise RuntimeError("boom")


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
    settings = settings_for(database_url, USERPLANE_OTEL_SAMPLE_RATIO="0")
    with Registry(settings) as registry:
        registry.storage.migrate()
        telemetry.configure(settings, span_exporter=exporter)
        client = testing.TestClient(create_app(registry))
        client.simulate_get(USERS)
        assert exporter.get_finished_spans() == ()
        client.simulate_get(USERS, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert len(exporter.get_finished_spans()) == 2  # the server span and users.list


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USERPLANE_OTEL_SAMPLE_RATIO", "2"),
        ("USERPLANE_OTEL_SAMPLE_RATIO", "lots"),
        ("USERPLANE_OTEL_EXPORTER", "zipkin"),
        ("USERPLANE_OTEL_ENABLED", "maybe"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        telemetry.configure(Settings.from_mapping({name: value}))


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
    settings = settings_for(database_url)
    reader = InMemoryMetricReader()
    with Registry(settings) as registry:
        registry.storage.migrate()
        telemetry.configure(settings, span_exporter=exporter, metric_reader=reader)
        client = testing.TestClient(create_app(registry))
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
