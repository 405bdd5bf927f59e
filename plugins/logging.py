"""The logging plugin: structlog for userplane and the stdlib loggers it pulls in.

Console output for people in dev on a terminal, JSON lines everywhere else;
one access line per HTTP request. Disable it (``USERPLANE_DISABLED_PLUGINS=logging``)
and userplane still runs, logging through whatever the host configured.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

from userplane import Settings, hookimpl

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def _shared_processors() -> list[Any]:
    return [
        # Context first: request id and friends bound per request reach every line.
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _use_json(settings: Settings) -> bool:
    if settings.log_format != "auto":
        return settings.log_format == "json"
    return settings.env == "prod" or not sys.stderr.isatty()


def configure(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger from ``settings``."""
    level = _LEVELS[settings.log_level]
    renderer: Any
    if _use_json(settings):
        renderer = structlog.processors.JSONRenderer()
        exc = [structlog.processors.dict_tracebacks]
    else:
        renderer = structlog.dev.ConsoleRenderer()
        exc = []
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            *exc,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    # gunicorn, yoyo and friends log through stdlib: render them the same way.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exc,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_userplane", False)]:
        root.removeHandler(old)
    handler._userplane = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # yoyo narrates every step at INFO; `userplane migrate` reports what it applied.
    logging.getLogger("yoyo").setLevel(max(level, logging.WARNING))


class AccessLog:
    """Falcon middleware: bind request context, then one access line per request."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("userplane.access")

    def process_request(self, req: Any, resp: Any) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=getattr(req.context, "request_id", None),
            method=req.method,
        )
        req.context.started = time.perf_counter()

    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        duration = 0.0 if started is None else (time.perf_counter() - started) * 1000
        self._log.info(
            "request",
            route=req.uri_template or None,
            path=req.path,
            status=resp.status_code,
            duration_ms=round(duration, 2),
        )
        structlog.contextvars.clear_contextvars()


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Configure logging once per process."""
    configure(settings)


@hookimpl
def userplane_http_middleware(settings: Settings) -> list[Any]:
    """The access-log middleware."""
    return [AccessLog()]
