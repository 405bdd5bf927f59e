"""Two registries in one process share nothing, and one that fails to open leaves nothing open.

Each registry here has telemetry on, into in-memory exporters of its own
(``telemetry.Exporters``), and a database of its own: two SQLite files, or
two fresh PostgreSQL databases. What they must not share is checked by what
each one's exporters, keys and services show, never by looking inside.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from clients import new_key
from falcon import testing
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from userplane import Registry, Settings, hookimpl
from userplane.frontends.http import create_app
from userplane.plugin import InstrumentableStorage
from userplane.plugins import api_keys, telemetry

USERS = "/api/v1/users/"


@pytest.fixture
def two_urls(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """Two empty databases on ``backend``, one for each registry."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    create = request.getfixturevalue("create_postgresql_database")
    return create(), create()


def traced_settings(url: str, service_name: str) -> Settings:
    return Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": url,
            "USERPLANE_OTEL_ENABLED": "true",
            "USERPLANE_OTEL_EXPORTER": "none",
            "USERPLANE_OTEL_SERVICE_NAME": service_name,
        }
    )


@attrs.define
class Traced:
    """A registry, its exporters, and an admin client of its HTTP app."""

    registry: Registry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    client: testing.TestClient

    def span_names(self) -> list[str]:
        return [s.name for s in self.spans.get_finished_spans()]

    def created(self) -> int:
        """The ``userplane.users.created`` count this registry's meter reports."""
        data = self.metrics.get_metrics_data()
        assert data is not None
        total: float = 0
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "userplane.users.created":
                        points = metric.data.data_points
                        total += sum(p.value for p in points if isinstance(p, NumberDataPoint))
        return int(total)


@contextlib.contextmanager
def traced(url: str, service_name: str) -> Iterator[Traced]:
    """A migrated registry traced into exporters of its own; closed at the end."""
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    exporters = telemetry.Exporters(spans=spans, metrics=metrics)
    with Registry(traced_settings(url, service_name), plugins=[exporters]) as registry:
        registry.migrate()
        client = testing.TestClient(
            create_app(registry), headers={"Authorization": f"Bearer {new_key(registry)}"}
        )
        yield Traced(registry, spans, metrics, client)


def create_user(side: Traced, email: str) -> None:
    assert side.client.simulate_post(USERS, json={"email": email}).status_code == 201


def services_of(spans: tuple[ReadableSpan, ...]) -> set[Any]:
    return {s.resource.attributes["service.name"] for s in spans}


def test_spans_and_metrics_of_one_never_reach_the_other(two_urls: tuple[str, str]) -> None:
    url_a, url_b = two_urls
    with traced(url_a, "alpha") as a, traced(url_b, "beta") as b:
        create_user(a, "a1@example.org")
        create_user(a, "a2@example.org")
        assert "users.create" not in b.span_names()
        create_user(b, "b1@example.org")

        assert a.span_names().count("users.create") == 2
        assert b.span_names().count("users.create") == 1
        assert a.span_names().count("POST /api/v1/users") == 2
        assert b.span_names().count("POST /api/v1/users") == 1
        assert (a.created(), b.created()) == (2, 1)

        a_spans, b_spans = a.spans.get_finished_spans(), b.spans.get_finished_spans()
        # Each registry's own settings, not the last one opened's.
        assert services_of(a_spans) == {"alpha"}
        assert services_of(b_spans) == {"beta"}
        assert not {s.context.span_id for s in a_spans} & {s.context.span_id for s in b_spans}
        assert telemetry.tracer_provider(a.registry) is not telemetry.tracer_provider(b.registry)


@pytest.mark.parametrize("closed", ["first", "second"])
def test_closing_one_leaves_the_other_tracing(two_urls: tuple[str, str], closed: str) -> None:
    url_a, url_b = two_urls
    with traced(url_a, "first") as first, traced(url_b, "second") as second:
        gone, kept = (first, second) if closed == "first" else (second, first)
        provider = telemetry.tracer_provider(kept.registry)
        create_user(gone, "gone@example.org")
        create_user(kept, "kept-1@example.org")
        gone.registry.close()
        spans_of_gone = gone.span_names()

        create_user(kept, "kept-2@example.org")
        assert kept.span_names().count("users.create") == 2
        assert kept.span_names().count("POST /api/v1/users") == 2
        assert kept.created() == 2
        assert telemetry.tracer_provider(kept.registry) is provider
        assert gone.span_names() == spans_of_gone


def test_api_keys_of_one_do_not_authenticate_in_the_other(two_urls: tuple[str, str]) -> None:
    url_a, url_b = two_urls
    with traced(url_a, "alpha") as a, traced(url_b, "beta") as b:
        key_a, key_b = new_key(a.registry), new_key(b.registry)
        app_a, app_b = create_app(a.registry), create_app(b.registry)

        def status(app: Any, key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            return testing.TestClient(app).simulate_get(USERS, headers=headers).status_code

        # Each key works where it was made (and is now in that registry's cache) ...
        assert status(app_a, key_a) == 200
        assert status(app_b, key_b) == 200
        # ... and nowhere else.
        assert status(app_b, key_a) == 401
        assert status(app_a, key_b) == 401
        assert [k.name for k in api_keys.service(a.registry).list()].count("tests admin") == 2
        assert [k.name for k in api_keys.service(b.registry).list()].count("tests admin") == 2


def test_each_registry_has_services_of_its_own(two_urls: tuple[str, str]) -> None:
    url_a, url_b = two_urls
    with traced(url_a, "alpha") as a, traced(url_b, "beta") as b:
        ra, rb = a.registry, b.registry
        assert ra.services is not rb.services
        assert ra.services.get(api_keys.ApiKeys) is not rb.services.get(api_keys.ApiKeys)
        assert api_keys.state_of(ra).authenticator is not api_keys.state_of(rb).authenticator
        state_a, state_b = telemetry.state_of(ra), telemetry.state_of(rb)
        assert state_a is not None
        assert state_b is not None
        assert state_a is not state_b
        assert state_a.meter_provider is not state_b.meter_provider
        # Asked again, each gives the same object: one per registry, not one per call.
        assert telemetry.state_of(ra) is state_a
        assert ra.services.get(telemetry.Exporters).spans is a.spans
        assert rb.services.get(telemetry.Exporters).spans is b.spans


# -- a registry whose constructor fails part-way ----------------------------------------


class Probe:
    """A service of the failing plugin: it only records being closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FailsToOpen:
    """A plugin that opens real connections and builds a service, then fails at ``where``."""

    def __init__(self, where: str) -> None:
        self.where = where
        #: Every connection the storage opened, as the storage hands them out.
        self.connections: list[Any] = []
        self.probe = Probe()
        #: For each ``userplane_shutdown``: whether the probe was closed by then.
        self.shutdowns: list[bool] = []
        self.tracer_provider: Any = None
        #: Whether every connection it saw was open when it failed.
        self.open_at_failure: bool | None = None

    def _keep(self, connection: Any) -> Any:
        self.connections.append(connection)
        return connection

    def _fail(self, message: str) -> None:
        self.open_at_failure = bool(self.connections) and not any(
            is_closed(c) for c in self.connections
        )
        raise RuntimeError(message)

    @hookimpl(tryfirst=True)
    def userplane_register_services(self, registry: Registry) -> None:
        storage = registry.storage
        assert isinstance(storage, InstrumentableStorage)
        storage.wrap_connections(self._keep)
        storage.ping()  # a real connection is open before the failure
        registry.services.register_value(Probe, self.probe, close=Probe.close)
        if self.where == "userplane_register_services":
            self._fail("this plugin cannot register its services")

    @hookimpl
    def userplane_storage_opened(self, registry: Registry) -> None:
        # The telemetry plugin built this registry's providers (its registration runs last).
        self.tracer_provider = telemetry.tracer_provider(registry)
        assert self.tracer_provider is not None
        self.tracer_provider.get_tracer("test").start_span("before the failure").end()
        if self.where == "userplane_storage_opened":
            self._fail("this plugin cannot use the storage")

    @hookimpl
    def userplane_shutdown(self, registry: Registry) -> None:
        self.shutdowns.append(self.probe.closed)


def is_closed(connection: Any) -> bool:
    """Whether a DB-API connection (psycopg or sqlite3) was closed, by using it."""
    closed = getattr(connection, "closed", None)  # psycopg says so
    if isinstance(closed, bool):
        return closed
    try:
        connection.cursor().execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return True
    return False


@pytest.mark.parametrize("where", ["userplane_register_services", "userplane_storage_opened"])
def test_a_registry_that_fails_to_open_unwinds_what_it_opened(
    database_url: str, where: str
) -> None:
    with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})) as setup:
        setup.migrate()  # so that the failing registry's storage can run a statement
    spans = InMemorySpanExporter()
    failing = FailsToOpen(where)
    plugins = [telemetry.Exporters(spans=spans), failing]

    with pytest.raises(RuntimeError, match="this plugin cannot"):
        Registry(traced_settings(database_url, "failing"), plugins=plugins)

    # The plugins were told, before their services closed.
    assert failing.shutdowns == [False]
    # The services built so far are closed ...
    assert failing.probe.closed
    if where == "userplane_storage_opened":
        # ... the telemetry plugin's too: its provider exports no more.
        failing.tracer_provider.get_tracer("test").start_span("after the failure").end()
        names = [s.name for s in spans.get_finished_spans()]
        assert "before the failure" in names
        assert "after the failure" not in names
    # ... and the storage closed every connection it had opened (open when it failed).
    assert failing.open_at_failure
    assert all(is_closed(c) for c in failing.connections), failing.connections
