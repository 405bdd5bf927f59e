"""The logging plugin: structlog for userplane and the stdlib loggers it pulls in.

Console output for people in dev on a terminal, JSON lines everywhere else;
one access line per HTTP request. Disable it (``USERPLANE_DISABLED_PLUGINS=logging``)
and userplane still runs, logging through whatever the host configured.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from userplane.plugin import MASK, Settings, current_principal, hookimpl

if TYPE_CHECKING:
    from userplane.plugin import Registry


@functools.cache
def _span_lookup() -> Callable[[], Any] | None:
    """The OpenTelemetry API's current-span lookup, or ``None`` without the otel extra.

    Found on first use, not with the plugin: the CLI's --help must not pay
    for importing it.
    """
    try:
        from opentelemetry.trace import get_current_span
    except ImportError:  # pragma: no cover - depends on the installed extras
        return None
    return get_current_span


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|api_?key|authorization|cookie|credential", re.I
)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/\s@]*:)[^\s/]+@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&;\s](?:password|passwd|secret|token)=)[^&\s]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;]+")


# One scan says whether a text can hold any of the secrets above: most values
# (paths, ids, routes, numbers as text) cannot, and skip the three rewrites.
# (Two substring tests and a regex with a literal start: a third of the time
# of one alternation, measured.)
_MAYBE_CREDENTIALS = re.compile(r"(?i:b(?:earer|asic))\s")


class _DeclaredSecrets:
    """Values of settings that plugins declared secret, masked wherever they appear.

    Process-wide, as logging itself is: every registry of the process adds its own.
    """

    values: tuple[str, ...] = ()

    @classmethod
    def add(cls, values: set[str]) -> None:
        # Longest first, so that a secret containing another is masked whole.
        cls.values = tuple(sorted({*cls.values, *values}, key=len, reverse=True))


def _maybe_secret_text(text: str) -> bool:
    return (
        "://" in text
        or "=" in text
        or _MAYBE_CREDENTIALS.search(text) is not None
        or any(secret in text for secret in _DeclaredSecrets.values)
    )


# Whether a key names a secret, by key: keys come from a small set of call
# sites, so each is matched once. Bounded, because nested dicts may carry
# keys from data.
_secret_keys: dict[str, bool] = {}


def _is_secret_key(key: object) -> bool:
    name = key if isinstance(key, str) else str(key)
    secret = _secret_keys.get(name)
    if secret is None:
        secret = _SECRET_KEY.search(name) is not None
        if len(_secret_keys) < 4096:
            _secret_keys[name] = secret
    return secret


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        if not _maybe_secret_text(value):
            return value
        for secret in _DeclaredSecrets.values:
            value = value.replace(secret, MASK)
        if "://" in value or "=" in value:
            # URLs anywhere in the text, not only a value that is one URL.
            value = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", value)
            value = _QUERY_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", value)
        return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", value)
    if isinstance(value, dict):
        return {k: MASK if _is_secret_key(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Mask secrets wherever they appear: by key name, in URLs, and in bearer credentials.

    The last line of defence: code should not log secrets, but a header dump or
    a database URL in an error message must still never reach the log.
    """
    if _plainly_clean(event_dict):
        return event_dict
    return {k: MASK if _is_secret_key(k) else _redact_value(v) for k, v in event_dict.items()}


_SCALARS = frozenset({int, float, bool, type(None)})

# Per set of keys (a call site, in practice): whether none names a secret.
_clean_key_sets: dict[tuple[str, ...], bool] = {}


def _plainly_clean(event_dict: dict[str, Any]) -> bool:
    """Whether a line has nothing to mask, decided in two cheap steps (the common case).

    No key names a secret (remembered per set of keys), every value is text
    or a scalar, and one scan of the texts together finds nothing that a
    secret in text starts with. Joining cannot hide a match, which lies
    within one value; it can only make a spurious one, which costs the full
    pass below.
    """
    keys = tuple(event_dict)
    clean = _clean_key_sets.get(keys)
    if clean is None:
        clean = not any(_is_secret_key(k) for k in keys)
        if len(_clean_key_sets) < 1024:
            _clean_key_sets[keys] = clean
    if not clean:
        return False
    texts = []
    for value in event_dict.values():
        kind = type(value)
        if kind is str:
            texts.append(value)
        elif kind not in _SCALARS:
            return False
    return not _maybe_secret_text("\n".join(texts))


def add_trace_ids(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """``trace_id`` and ``span_id`` of the current span, when there is one."""
    current_span = _span_lookup()
    if current_span is None:
        return event_dict
    span_context = current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", format(span_context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(span_context.span_id, "016x"))
    return event_dict


#: What every stdlib ``LogRecord`` has, and what formatting adds: not a caller's ``extra``.
_RECORD_KEYS = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"}
)


def add_record_extras(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The ``extra`` of a stdlib record as keys (``_events.exception(…, extra={"plugin": …})``)."""
    record = event_dict.get("_record")
    if record is not None:
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS and not key.startswith("_"):
                event_dict.setdefault(key, value)
    return event_dict


def add_principal(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """``principal``: who the current request or command acts as, when known (audit)."""
    principal = current_principal()
    if principal is not None:
        event_dict.setdefault("principal", principal.id)
    return event_dict


def _extras_then_redact() -> list[Any]:
    return [add_record_extras, redact]


def _shared_processors(*, redacted: bool = True) -> list[Any]:
    import structlog

    return [
        # Context first: request id and friends bound per request reach every line.
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        add_principal,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *([redact] if redacted else []),
    ]


def _use_json(settings: Settings) -> bool:
    if settings.log_format != "auto":
        return settings.log_format == "json"
    return settings.env == "prod" or not sys.stderr.isatty()


class LineWriter:
    """structlog's last step for JSON lines: one ``write(2)`` per line, straight to a descriptor.

    No buffered writer: its lock is held across the system call, and a
    worker's threads then queue on it, each giving up the GIL and fighting
    for it again (measured: a line cost 4 times as much CPU with 4 threads
    as with one). A single write per line also keeps lines whole among
    processes sharing the descriptor (pipes: up to PIPE_BUF bytes).
    """

    __slots__ = ("_fd", "name")

    def __init__(self, fd: int, name: str | None = None) -> None:
        self._fd = fd
        self.name = name

    def msg(self, message: bytes) -> None:
        """Write ``message`` and a newline; a short write is completed, not dropped."""
        line = memoryview(message + b"\n")
        while line:
            line = line[os.write(self._fd, line) :]

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _line_writer_factory() -> Callable[..., Any] | None:
    """``LineWriter``s on stderr's descriptor; else structlog's bytes logger on its buffer.

    Only a stand-in stderr (a test's capture) has no descriptor; ``None`` if
    it takes no bytes either.
    """
    import structlog

    try:
        sys.stderr.flush()
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        buffer = getattr(sys.stderr, "buffer", None)
        return None if buffer is None else structlog.BytesLoggerFactory(buffer)

    def factory(*args: Any) -> LineWriter:
        return LineWriter(fd, args[0] if args else None)

    return factory


def _dumps(event_dict: dict[str, Any], default: Any = None) -> bytes:
    """orjson, for speed; the stdlib encoder for what orjson refuses (lone surrogates)."""
    try:
        return orjson.dumps(event_dict, default=default, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        # ensure_ascii escapes what orjson will not encode: the line is still JSON.
        return json.dumps(event_dict, default=default or repr).encode()


def configure(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger from ``settings``."""
    # Imported here, as everywhere in this module: loading the plugin (which
    # the CLI does for --help) must not pay for structlog.
    import structlog

    level = _LEVELS[settings.log_level]
    renderer: Any
    exc: list[Any]
    json_lines = _use_json(settings)
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
        # Without frame locals: they hold request data (addresses, keys) a log must not.
        exc = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer()
        exc = []
    factory = _line_writer_factory() if json_lines else None
    if factory is not None:
        # The hot path: every request writes an access line. orjson and one
        # write per line take a fraction of the time the stdlib route takes
        # (LogRecord, handler, formatter, json, a locked buffer).
        # Redaction runs last, so exception texts are masked too.
        processors: list[Any] = [
            *_shared_processors(redacted=False),
            structlog.processors.StackInfoRenderer(),
            *exc,
            redact,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
        structlog.configure(
            processors=processors,
            logger_factory=factory,
            wrapper_class=structlog.make_filtering_bound_logger(level),
            cache_logger_on_first_use=True,
        )
    else:
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
        # A stdlib record's ``extra`` (the plugin of a failed listener) becomes keys, masked too.
        foreign_pre_chain=[*_shared_processors(redacted=False), *_extras_then_redact()],
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
        import structlog

        self._log = structlog.get_logger("userplane.access")
        self._clear = structlog.contextvars.clear_contextvars
        self._bind = structlog.contextvars.bind_contextvars

    def process_request(self, req: Any, resp: Any) -> None:
        self._clear()
        self._bind(
            request_id=getattr(req.context, "request_id", None),
            method=req.method,
        )
        req.context.started = time.perf_counter()

    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        duration = 0.0 if started is None else (time.perf_counter() - started) * 1000
        body = resp.render_body()
        # Read from the request: the auth middleware, inner to this one, has
        # already reset the current principal by the time this runs.
        principal = req.context.get("principal")
        self._log.info(
            "request",
            principal=None if principal is None else principal.id,
            route=req.uri_template or None,
            path=req.path,
            status=resp.status_code,
            bytes=0 if body is None else len(body),
            duration_ms=round(duration, 2),
        )
        self._clear()


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Configure logging once per process."""
    configure(settings)


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """Mask, in every line, the values of the settings plugins declare secret."""
    extra = registry.settings.extra
    names = {name for s in registry.hooks.settings_sections() for name in s.secrets()}
    # Very short values would mask ordinary words; no real secret is that short.
    _DeclaredSecrets.add({extra[n] for n in names if len(extra.get(n) or "") >= 6})


@hookimpl
def userplane_describe(settings: Settings) -> dict[str, str]:
    """Where log lines go."""
    kind = "JSON lines" if _use_json(settings) else "console lines"
    return {"logs": f"stderr as {kind} at {settings.log_level}"}


@hookimpl
def userplane_http_middleware(settings: Settings) -> list[Any]:
    """The access-log middleware."""
    return [AccessLog()]
