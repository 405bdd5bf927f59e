"""The telemetry plugin: OpenTelemetry traces and metrics of requests and operations.

Spans: one server span per request (child of an incoming ``traceparent``), one
per service operation and CLI command (the ``userplane_operation`` wrapper),
and one per SQL statement (the psycopg and sqlite3 instrumentations, put on the
storage's connections through ``userplane_storage_opened``). Metrics: request
duration and in-flight requests, the PostgreSQL pool, users created and deleted.

Off unless ``USERPLANE_OTEL_ENABLED=true`` (and it needs the ``otel`` extra).
When off, it adds no middleware and its operation wrapper returns at once, so
it costs nothing per request. It keeps its own ``TracerProvider`` rather than
the process-global one, so tests and embedders can run several side by side.

Settings (``USERPLANE_OTEL_*``): ``ENABLED``, ``EXPORTER`` (``none``,
``console``, ``otlp-http``, ``otlp-grpc``), ``ENDPOINT`` (else the exporter's
own ``OTEL_EXPORTER_OTLP_*`` variables), ``SAMPLE_RATIO`` (0 to 1, of traces
not already decided by an incoming ``traceparent``), ``SERVICE_NAME``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Literal

import attrs

import userplane
from userplane import Settings, hookimpl
from userplane.errors import ConfigurationError, UserplaneError
from userplane.settings import section

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from userplane.storage import PooledStorage, Storage


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


class _Instruments:
    """The metrics userplane records."""

    def __init__(self, meter: Meter) -> None:
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
        # The database pool, as OpenTelemetry's database-client conventions name it.
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[_pool_counts],
            unit="{connection}",
            description="Pool connections by state (idle, used).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[_pool_max],
            unit="{connection}",
            description="The most connections the pool may open.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[_pool_waiting],
            unit="{request}",
            description="Callers waiting for a pool connection.",
        )


class _State:
    """The tracer and meters of this process, once configured."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.meter_provider: MeterProvider | None = None
        self.tracer: Tracer | None = None
        self.instruments: _Instruments | None = None
        #: The storage whose pool the gauges observe (weak: the Registry owns it).
        self.pooled: weakref.ref[PooledStorage] | None = None
        self.lock = threading.Lock()


_state = _State()

_POOL = {"db.client.connection.pool.name": "userplane"}


def _pool_stats() -> Any:
    storage = _state.pooled() if _state.pooled is not None else None
    return storage.pool_stats() if storage is not None else None


def _pool_counts(options: CallbackOptions) -> list[Observation]:
    from opentelemetry.metrics import Observation

    stats = _pool_stats()
    if stats is None:
        return []
    return [
        Observation(stats.size - stats.in_use, {**_POOL, "db.client.connection.state": "idle"}),
        Observation(stats.in_use, {**_POOL, "db.client.connection.state": "used"}),
    ]


def _pool_max(options: CallbackOptions) -> list[Observation]:
    from opentelemetry.metrics import Observation

    stats = _pool_stats()
    return [] if stats is None else [Observation(stats.max_size, _POOL)]


def _pool_waiting(options: CallbackOptions) -> list[Observation]:
    from opentelemetry.metrics import Observation

    stats = _pool_stats()
    return [] if stats is None else [Observation(stats.waiting, _POOL)]


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


def configure(
    settings: Settings,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> bool:
    """Set up traces and metrics from ``settings``; the arguments replace the exporters (tests).

    Returns whether telemetry is on.
    """
    cfg = section(OtelSettings, settings, "OTEL_")
    with _state.lock:
        if _state.provider is not None:
            _state.provider.shutdown()
        if _state.meter_provider is not None:
            _state.meter_provider.shutdown()
        _state.provider = _state.tracer = None
        _state.meter_provider = _state.instruments = None
        _state.pooled = None
        if not cfg.enabled:
            return False
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise ConfigurationError(
                f"USERPLANE_OTEL_ENABLED needs pip install 'userplane[otel]' ({exc})"
            ) from None
        resource = Resource.create(
            {
                "service.name": cfg.service_name,
                "service.version": userplane.__version__,
                "deployment.environment.name": settings.env,
            }
        )
        provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio))
        )
        if span_exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        else:
            exporter = _exporter(cfg)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
        _state.provider = provider
        _state.tracer = provider.get_tracer("userplane", userplane.__version__)

        from opentelemetry.sdk.metrics import MeterProvider

        reader = metric_reader if metric_reader is not None else _metric_reader(cfg)
        meters = MeterProvider(resource=resource, metric_readers=[reader] if reader else [])
        _state.meter_provider = meters
        _state.instruments = _Instruments(meters.get_meter("userplane", userplane.__version__))
        return True


def tracer_provider() -> TracerProvider | None:
    """This process's provider, or ``None`` when tracing is off."""
    return _state.provider


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
def userplane_startup(settings: Settings) -> None:
    """Configure tracing once per process."""
    configure(settings)


@hookimpl
def userplane_storage_opened(storage: Storage, settings: Settings) -> None:
    """Trace every SQL statement and observe the connection pool, when telemetry is on."""
    provider = _state.provider
    if provider is None:
        return
    # Imported here, not with the plugin: --help must not pay for the storage
    # module and the users module it needs.
    from userplane.storage import InstrumentableStorage, PooledStorage

    if isinstance(storage, InstrumentableStorage):
        wrapper = _statement_tracing(storage.system, provider)
        if wrapper is not None:
            storage.wrap_connections(wrapper)
    if isinstance(storage, PooledStorage):
        _state.pooled = weakref.ref(storage)


@hookimpl
def userplane_describe(settings: Settings) -> dict[str, str]:
    """Where traces go."""
    cfg = section(OtelSettings, settings, "OTEL_")
    if not cfg.enabled or cfg.exporter == "none":
        return {"traces": "off"}
    where = cfg.endpoint or "the OTEL_EXPORTER_OTLP_* default"
    target = "stdout" if cfg.exporter == "console" else f"{cfg.exporter} to {where}"
    return {"traces": f"{target}, sampling {cfg.sample_ratio:g}"}


@hookimpl
def userplane_shutdown() -> None:
    """Flush spans still buffered."""
    if _state.provider is not None:
        _state.provider.force_flush()
    if _state.meter_provider is not None:
        _state.meter_provider.force_flush()


@hookimpl(tryfirst=True)
def userplane_http_middleware(settings: Settings) -> list[Any]:
    """The server-span middleware, outermost, so every other layer runs inside the span."""
    tracer, instruments = _state.tracer, _state.instruments
    if tracer is None or instruments is None:
        return []
    return [ServerTelemetry(tracer, instruments)]


@hookimpl
def userplane_user_created(user: Any) -> None:
    """Count creations."""
    if _state.instruments is not None:
        _state.instruments.created.add(1)


@hookimpl
def userplane_user_deleted(user: Any) -> None:
    """Count deletions."""
    if _state.instruments is not None:
        _state.instruments.deleted.add(1)


@hookimpl(wrapper=True)
def userplane_operation(operation: str, call: Callable[[], Any]) -> Generator[None, Any, Any]:
    """One span per service operation, recording its error."""
    tracer = _state.tracer
    if tracer is None:
        return (yield)
    from opentelemetry.trace import Status, StatusCode

    with tracer.start_as_current_span(
        operation, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            return (yield)
        except UserplaneError as exc:
            # A refused request is an outcome, not a fault, unless a dependency failed.
            span.set_attribute("userplane.error.kind", exc.kind)
            if exc.kind == "unavailable":
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, exc.kind))
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
