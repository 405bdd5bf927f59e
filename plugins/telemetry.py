"""The telemetry plugin: OpenTelemetry traces and metrics of requests and operations.

Spans: one server span per request (child of an incoming ``traceparent``), one
per service operation and CLI command (the ``userplane_operation`` wrapper),
and one per SQL statement (the psycopg and sqlite3 instrumentations, put on the
storage's connections through ``userplane_storage_opened``). Metrics: request
duration and in-flight requests, the PostgreSQL pool, each read replica's lag and
whether it is used, users created and deleted.

Off unless ``USERPLANE_OTEL_ENABLED=true`` (and it needs the ``otel`` extra).
When off, it registers nothing, adds no middleware and its operation wrapper
returns at once, so it costs nothing per request.

Per registry: each ``Registry`` with telemetry on has its own tracer and meter
providers, instruments and observed pool (the ``Telemetry`` service, see
``state_of``), built as it opens and shut down when it closes. None of it is
process-global (not OpenTelemetry's global providers either), so two
registries in one process never see each other's spans or metrics, and closing
one leaves the other tracing. ``Exporters`` sends one registry's spans and
metrics to exporters of your own (tests, embedders).

Settings (``USERPLANE_OTEL_*``): ``ENABLED``, ``EXPORTER`` (``none``,
``console``, ``otlp-http``, ``otlp-grpc``), ``ENDPOINT`` (else the exporter's
own ``OTEL_EXPORTER_OTLP_*`` variables; credentials in it, user info or a
secret query parameter, are masked wherever it is shown), ``SAMPLE_RATIO``
(0 to 1, of traces not already decided by an incoming ``traceparent``),
``SERVICE_NAME``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Literal

import attrs

import userplane
from userplane.plugin import (
    ConfigurationError,
    Settings,
    SettingsSection,
    UserplaneError,
    hookimpl,
    mask_text,
    mask_url,
    request_context,
    secret_values,
    section,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from userplane.plugin import (
        PooledStorage,
        PoolStats,
        RateLimitCounters,
        Registry,
        ReplicaState,
        Services,
        Storage,
    )

# OpenTelemetry, the storage protocols and the registry are imported where
# telemetry is on, not with the plugin: every userplane process loads this
# module, and the CLI's --help must not pay for them.


def _ratio(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"USERPLANE_OTEL_{attribute.name.upper()}: must be between 0 and 1")


@attrs.frozen
class OtelSettings:
    """This plugin's settings, from ``USERPLANE_OTEL_*``."""

    enabled: bool = False
    exporter: Literal["none", "console", "otlp-http", "otlp-grpc"] = "otlp-http"
    endpoint: str | None = None
    sample_ratio: float = attrs.field(default=1.0, validator=_ratio)
    service_name: str = "userplane"


SETTINGS = SettingsSection("OTEL_", OtelSettings)


def _settings(settings: Settings) -> OtelSettings:
    return section(OtelSettings, settings, "OTEL_")


@attrs.frozen
class Exporters:
    """Where one registry's spans and metrics go, instead of where ``USERPLANE_OTEL_EXPORTER`` says.

    Give it to that registry, and to no other, as a plugin::

        spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
        Registry(settings, plugins=[telemetry.Exporters(spans=spans, metrics=metrics)])

    It registers itself in the registry's services; the registry's providers
    are built with it. Spans reach ``spans`` as each one ends (a
    ``SimpleSpanProcessor``: a test sees them at once), metrics are read by
    ``metrics``; one left ``None`` goes to the configured exporter.
    ``USERPLANE_OTEL_ENABLED`` still decides whether there is telemetry, and
    the other settings (sampling, service name) apply. The registry shuts both
    down when it closes (an ``InMemorySpanExporter`` keeps what it received).
    The providers take their exporters when built, so this is the one way in:
    a registry's telemetry is never re-pointed once it is open.
    """

    spans: SpanExporter | None = None
    metrics: MetricReader | None = None

    @hookimpl(tryfirst=True)
    def userplane_register_services(self, registry: Registry) -> None:
        """Before the telemetry plugin builds this registry's providers (it runs last)."""
        registry.services.register_value(Exporters, self, name="telemetry exporters")


_POOL = {"db.client.connection.pool.name": "userplane"}


class _Instruments:
    """The metrics userplane records, on one registry's meter."""

    def __init__(
        self,
        meter: Meter,
        pool_stats: Callable[[], PoolStats | None],
        limits: Callable[[], RateLimitCounters | None],
        replicas: Callable[[], list[ReplicaState]],
    ) -> None:
        from opentelemetry.metrics import Observation

        self.duration = meter.create_histogram(
            "http.server.request.duration", unit="s", description="Duration of HTTP requests."
        )
        self.active = meter.create_up_down_counter(
            "http.server.active_requests", unit="{request}", description="Requests in flight."
        )
        self.created = meter.create_counter(
            "userplane.users.created", unit="{user}", description="Users created."
        )
        self.deleted = meter.create_counter(
            "userplane.users.deleted", unit="{user}", description="Users (softly) deleted."
        )

        def counts(options: CallbackOptions) -> list[Observation]:
            stats = pool_stats()
            if stats is None:
                return []
            return [
                Observation(
                    stats.size - stats.in_use, {**_POOL, "db.client.connection.state": "idle"}
                ),
                Observation(stats.in_use, {**_POOL, "db.client.connection.state": "used"}),
            ]

        def most(options: CallbackOptions) -> list[Observation]:
            stats = pool_stats()
            return [] if stats is None else [Observation(stats.max_size, _POOL)]

        def waiting(options: CallbackOptions) -> list[Observation]:
            stats = pool_stats()
            return [] if stats is None else [Observation(stats.waiting, _POOL)]

        def replica_lag(options: CallbackOptions) -> list[Observation]:
            return [
                Observation(r.lag_ms, {"userplane.db.replica": r.name})
                for r in replicas()
                if r.lag_ms is not None
            ]

        def replica_usable(options: CallbackOptions) -> list[Observation]:
            states = replicas()
            return [Observation(int(r.usable), {"userplane.db.replica": r.name}) for r in states]

        # Read replicas (USERPLANE_DATABASE_REPLICA_URLS), as this process last checked them.
        meter.create_observable_gauge(
            "userplane.db.replica.lag",
            callbacks=[replica_lag],
            unit="ms",
            description="How far each read replica is behind the primary.",
        )
        meter.create_observable_gauge(
            "userplane.db.replica.usable",
            callbacks=[replica_usable],
            unit="1",
            description="1 while reads may go to the replica, 0 while it is skipped.",
        )

        def limited(field: str) -> Callable[[CallbackOptions], list[Observation]]:
            def observe(options: CallbackOptions) -> list[Observation]:
                counters = limits()
                return [] if counters is None else [Observation(getattr(counters, field))]

            return observe

        # The rate limiter's own counts (a RateLimitCounters service), when limits are on.
        for field, name, unit, description in (
            ("store_checks", "checks", "{statement}", "Rate-limit statements sent to the store."),
            ("refused", "refused", "{request}", "Requests refused by a rate limit (429)."),
            (
                "store_failures",
                "store_failures",
                "{statement}",
                "Rate-limit statements that failed: their requests were served unlimited.",
            ),
        ):
            meter.create_observable_counter(
                f"userplane.rate_limit.{name}",
                callbacks=[limited(field)],
                unit=unit,
                description=description,
            )

        # The database pool, as OpenTelemetry's database-client conventions name it.
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[counts],
            unit="{connection}",
            description="Pool connections by state (idle, used).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[most],
            unit="{connection}",
            description="The most connections the pool may open.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[waiting],
            unit="{request}",
            description="Callers waiting for a pool connection.",
        )


class Telemetry:
    """This plugin's state in one registry: its providers, tracer, instruments and pool.

    A service of the registry (``registry.services``), registered only when
    telemetry is on; the registry's close shuts its providers down.
    """

    def __init__(self, settings: Settings, cfg: OtelSettings, exporters: Exporters | None) -> None:
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise ConfigurationError(
                f"USERPLANE_OTEL_ENABLED needs pip install 'userplane[otel]' ({exc})"
            ) from None
        given = exporters or Exporters()
        # Everything that can fail first, the span exporter before the metric
        # reader (which starts a thread): a failure leaves nothing running.
        span_exporter = given.spans if given.spans is not None else _exporter(cfg)
        reader = given.metrics if given.metrics is not None else _metric_reader(cfg)
        resource = Resource.create(
            {
                "service.name": cfg.service_name,
                "service.version": userplane.__version__,
                "deployment.environment.name": settings.env,
            }
        )
        self.meter_provider: MeterProvider = MeterProvider(
            resource=resource, metric_readers=[reader] if reader else []
        )
        # The SDK's own metrics (when OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED)
        # go to this registry's meters too, not to the process-global provider.
        self.tracer_provider: TracerProvider = TracerProvider(
            resource=resource,
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
            meter_provider=self.meter_provider,
        )
        if given.spans is not None:
            self.tracer_provider.add_span_processor(
                SimpleSpanProcessor(given.spans, meter_provider=self.meter_provider)
            )
        elif span_exporter is not None:
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(span_exporter, meter_provider=self.meter_provider)
            )
        self.tracer: Tracer = self.tracer_provider.get_tracer("userplane", userplane.__version__)
        #: The storage whose pool the gauges observe (weak: the registry owns it).
        self._pooled: weakref.ref[PooledStorage] | None = None
        meter = self.meter_provider.get_meter("userplane", userplane.__version__)
        #: The meter plugins make their own metrics on (``userplane_instruments``).
        self.meter: Meter = meter
        #: Where the rate limiter's counters are looked up (``observe_limits``).
        self._services: weakref.ref[Services] | None = None
        self.instruments = _Instruments(
            meter, self._pool_stats, self._limit_counters, self._replica_states
        )
        #: What exception messages in spans must never show (``record_exception``).
        self._secrets = secret_values(settings)

    def record_exception(self, span: Any, exc: BaseException) -> None:
        """An ``exception`` event on ``span``, its message masked, without a stack trace.

        The SDK's ``record_exception`` exports the message and the stack trace
        as they are: a driver's message can quote a database URL with its
        password. Traces leave the process; the traceback stays in the logs,
        which are redacted.
        """
        span.add_event(
            "exception",
            {
                "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "exception.message": mask_text(str(exc), self._secrets),
            },
        )

    def _limit_counters(self) -> RateLimitCounters | None:
        from userplane.plugin import RateLimitCounters

        services = self._services() if self._services is not None else None
        if services is None or RateLimitCounters not in services:
            return None
        return services.get(RateLimitCounters)

    def observe_limits(self, services: Services) -> None:
        """Report the rate limiter's counters (``RateLimitCounters``) found in ``services``."""
        self._services = weakref.ref(services)

    def _pool_stats(self) -> PoolStats | None:
        storage = self._pooled() if self._pooled is not None else None
        return storage.pool_stats() if storage is not None else None

    def _replica_states(self) -> list[ReplicaState]:
        storage = self._pooled() if self._pooled is not None else None
        replicas = getattr(storage, "read_replicas", None)
        return [] if replicas is None else list(replicas.states())

    def observe_pool(self, storage: PooledStorage) -> None:
        """Report ``storage``'s pool in the ``db.client.connection.*`` gauges."""
        self._pooled = weakref.ref(storage)

    def flush(self) -> None:
        """Export the spans and metrics still buffered."""
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def close(self) -> None:
        """Flush and shut both providers down (their exporters and reader threads with them)."""
        self._pooled = None
        try:
            self.tracer_provider.shutdown()
        finally:
            self.meter_provider.shutdown()


def state_of(registry: Registry) -> Telemetry | None:
    """This plugin's state in ``registry``, or ``None`` when its telemetry is off."""
    services = registry.services
    return services.get(Telemetry) if Telemetry in services else None


def tracer_provider(registry: Registry) -> TracerProvider | None:
    """``registry``'s tracer provider, or ``None`` when its telemetry is off."""
    state = state_of(registry)
    return state.tracer_provider if state is not None else None


def _statement_tracing(system: str, provider: TracerProvider) -> Callable[[Any], Any] | None:
    """A connection wrapper that puts a span on every statement, for a database ``system``."""
    try:
        if system == "postgresql":
            from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

            return lambda conn: PsycopgInstrumentor.instrument_connection(
                conn, tracer_provider=provider
            )
        if system == "sqlite":
            from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

            return lambda conn: SQLite3Instrumentor.instrument_connection(
                conn, tracer_provider=provider
            )
    except ImportError as exc:
        raise ConfigurationError(
            f"USERPLANE_OTEL_ENABLED traces SQL with pip install 'userplane[otel]' ({exc})"
        ) from None
    return None  # a database no instrumentation knows: its statements go untraced


def _exporter(cfg: OtelSettings) -> SpanExporter | None:
    try:
        if cfg.exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        if cfg.exporter == "otlp-http":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # The setting is the collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is.
            endpoint = f"{cfg.endpoint.rstrip('/')}/v1/traces" if cfg.endpoint else None
            return OTLPSpanExporter(endpoint=endpoint)
        if cfg.exporter == "otlp-grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter(endpoint=cfg.endpoint) if cfg.endpoint else GrpcExporter()
    except ImportError as exc:
        raise ConfigurationError(
            f"USERPLANE_OTEL_EXPORTER={cfg.exporter} needs its exporter: "
            f"pip install 'userplane[otel]' ({exc})"
        ) from None
    return None


def _metric_reader(cfg: OtelSettings) -> MetricReader | None:
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    try:
        if cfg.exporter == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            return PeriodicExportingMetricReader(ConsoleMetricExporter())
        if cfg.exporter == "otlp-http":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            endpoint = f"{cfg.endpoint.rstrip('/')}/v1/metrics" if cfg.endpoint else None
            return PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint))
        if cfg.exporter == "otlp-grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )

            return PeriodicExportingMetricReader(GrpcMetricExporter(endpoint=cfg.endpoint))
    except ImportError as exc:
        raise ConfigurationError(
            f"USERPLANE_OTEL_EXPORTER={cfg.exporter} needs its exporter: "
            f"pip install 'userplane[otel]' ({exc})"
        ) from None
    return None


class ServerTelemetry:
    """Falcon middleware: a server span, a duration and an in-flight count per request.

    The span is the child of an incoming W3C ``traceparent``.
    """

    def __init__(self, tracer: Tracer, instruments: _Instruments) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._instruments = instruments
        self._propagator = TraceContextTextMapPropagator()

    def process_request(self, req: Any, resp: Any) -> None:
        from opentelemetry import context, trace

        carrier = {k.lower(): v for k, v in req.headers.items()}
        parent = self._propagator.extract(carrier=carrier)
        span = self._tracer.start_span(
            req.method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": req.method, "url.path": req.path},
        )
        req.context.otel_span = span
        req.context.otel_token = context.attach(trace.set_span_in_context(span, parent))
        req.context.otel_started = time.perf_counter()
        self._instruments.active.add(1, {"http.request.method": req.method})

    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span = getattr(req.context, "otel_span", None)
        if span is None:
            return
        route = req.uri_template
        if route:
            span.update_name(f"{req.method} {route}")
            span.set_attribute("http.route", route)
        status = resp.status_code
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(req.context.otel_token)
        attributes: dict[str, Any] = {
            "http.request.method": req.method,
            "http.response.status_code": status,
        }
        if route:
            attributes["http.route"] = route
        elapsed = time.perf_counter() - req.context.otel_started
        self._instruments.duration.record(elapsed, attributes)
        self._instruments.active.add(-1, {"http.request.method": req.method})


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_OTEL_*``."""
    return SETTINGS


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Fail at start-up, naming the variable, on a bad setting."""
    _settings(settings)


@hookimpl(trylast=True)
def userplane_register_services(registry: Registry) -> None:
    """This registry's providers, when telemetry is on; built now, closed with the registry.

    Last of the plugins' registrations, so that ``Exporters`` given to this
    registry are registered before the providers that use them are built.
    """
    cfg = _settings(registry.settings)
    if not cfg.enabled:
        return
    services = registry.services
    exporters = services.get(Exporters) if Exporters in services else None
    state = Telemetry(registry.settings, cfg, exporters)
    state.observe_limits(services)
    try:
        services.register_value(Telemetry, state, close=Telemetry.close, name="telemetry")
    except BaseException:
        state.close()
        raise


@hookimpl
def userplane_storage_opened(storage: Storage, registry: Registry) -> None:
    """Trace every SQL statement and observe the connection pool, when telemetry is on."""
    state = state_of(registry)
    if state is None:
        return
    from userplane.plugin import InstrumentableStorage, PooledStorage

    registry.hooks.instruments(state.meter, registry)

    if isinstance(storage, InstrumentableStorage):
        wrapper = _statement_tracing(storage.system, state.tracer_provider)
        if wrapper is not None:
            storage.wrap_connections(wrapper)
    if isinstance(storage, PooledStorage):
        state.observe_pool(storage)


@hookimpl
def userplane_describe(settings: Settings) -> dict[str, str]:
    """Where traces go."""
    cfg = _settings(settings)
    if not cfg.enabled or cfg.exporter == "none":
        return {"traces": "off"}
    # The endpoint may carry credentials (``http://user:pw@collector:4318``, a
    # token in its query): this line is logged and printed at start-up.
    where = mask_url(cfg.endpoint) if cfg.endpoint else "the OTEL_EXPORTER_OTLP_* default"
    target = "stdout" if cfg.exporter == "console" else f"{cfg.exporter} to {where}"
    return {"traces": f"{target}, sampling {cfg.sample_ratio:g}"}


@hookimpl
def userplane_shutdown(registry: Registry) -> None:
    """Flush what ``registry`` still buffers; its providers shut down as its services close."""
    state = state_of(registry)
    if state is not None:
        state.flush()


@hookimpl(tryfirst=True)
def userplane_http_middleware(registry: Registry) -> list[Any]:
    """The server-span middleware, outermost, so every other layer runs inside the span."""
    state = state_of(registry)
    if state is None:
        return []
    return [ServerTelemetry(state.tracer, state.instruments)]


@hookimpl
def userplane_user_created(registry: Registry) -> None:
    """Count creations."""
    state = state_of(registry)
    if state is not None:
        state.instruments.created.add(1)


@hookimpl
def userplane_user_deleted(registry: Registry) -> None:
    """Count deletions."""
    state = state_of(registry)
    if state is not None:
        state.instruments.deleted.add(1)


@hookimpl(wrapper=True)
def userplane_operation(operation: str, registry: Registry) -> Generator[None, Any, Any]:
    """One span per service operation, recording its error."""
    services = registry.services
    if Telemetry not in services:  # off: one dict lookup, then straight to the operation
        return (yield)
    state = services.get(Telemetry)
    tracer = state.tracer
    from opentelemetry.trace import Status, StatusCode

    with (
        tracer.start_as_current_span(
            operation, record_exception=False, set_status_on_exception=False
        ) as span,
        # The records of what the operation changes carry its trace.
        request_context(trace_id=format(span.get_span_context().trace_id, "032x")),
    ):
        try:
            return (yield)
        except UserplaneError as exc:
            # A refused request is an outcome, not a fault, unless a dependency failed.
            span.set_attribute("userplane.error.kind", exc.kind)
            if exc.kind == "unavailable":
                state.record_exception(span, exc)
                span.set_status(Status(StatusCode.ERROR, exc.kind))
            raise
        except Exception as exc:
            state.record_exception(span, exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
