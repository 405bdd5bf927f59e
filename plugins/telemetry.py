"""The telemetry plugin: OpenTelemetry traces of HTTP requests and service operations.

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
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Literal

import attrs

import userplane
from userplane import Settings, hookimpl
from userplane.errors import ConfigurationError, UserplaneError
from userplane.settings import section

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer


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


class _State:
    """The tracer of this process, once configured."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        self.lock = threading.Lock()


_state = _State()


def _exporter(cfg: OtelSettings) -> SpanExporter | None:
    try:
        if cfg.exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        if cfg.exporter == "otlp-http":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=cfg.endpoint) if cfg.endpoint else OTLPSpanExporter()
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


def configure(settings: Settings, span_exporter: SpanExporter | None = None) -> bool:
    """Set up tracing from ``settings``; ``span_exporter`` replaces the configured one (tests).

    Returns whether tracing is on.
    """
    cfg = section(OtelSettings, settings, "OTEL_")
    with _state.lock:
        if _state.provider is not None:
            _state.provider.shutdown()
        _state.provider = _state.tracer = None
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
        return True


def tracer_provider() -> TracerProvider | None:
    """This process's provider, or ``None`` when tracing is off."""
    return _state.provider


class ServerSpans:
    """Falcon middleware: one server span per request, child of an incoming ``traceparent``."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
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


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Configure tracing once per process."""
    configure(settings)


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
    provider = _state.provider
    if provider is not None:
        provider.force_flush()


@hookimpl(tryfirst=True)
def userplane_http_middleware(settings: Settings) -> list[Any]:
    """The server-span middleware, outermost, so every other layer runs inside the span."""
    tracer = _state.tracer
    return [] if tracer is None else [ServerSpans(tracer)]


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
