"""The logging plugin: structlog for userplane and the stdlib loggers it pulls in.

Console output for people in dev on a terminal, JSON lines everywhere else;
one access line per HTTP request. Disable it (``USERPLANE_DISABLED_PLUGINS=logging``)
and userplane still runs, logging through whatever the host configured.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from userplane.plugin import (
    MASK,
    Settings,
    current_principal,
    hookimpl,
    mask_urls_in,
    password_pieces,
    secret_values,
)

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


# -- what a secret looks like -----------------------------------------------------------------
#
# By name: a key (a field, a header, a frame's local variable, a key of a nested
# dict) that says it holds a credential has its value masked whole, whatever
# the value. Names are read as their parts (split at ``_``, ``-``, ``.`` and
# camel case), never as substrings: ``monkey``, ``tokens_used`` and
# ``max_tokens`` hold no credential.
#
# Parts that say credential wherever they are in a name (``access_token``,
# ``client_secret``, ``set-cookie``), or end one (``accesstoken``, ``newpassword``).
_SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "apikey",
    "authorization",
    "authorisation",
    "cookie",
    "cookies",
    "credential",
    "credentials",
)
# ``key`` alone is a credential, and after these (``api_key``, ``x-api-key``,
# ``private_key``, ``signing_key``); after anything else it names data
# (``idempotency_key``, ``cache_key``, ``sort_key``, ``primary_key``).
_KEY_QUALIFIERS = frozenset(
    {
        *("api", "secret", "private", "signing", "access", "master", "encryption"),
        *("client", "session", "auth", "hmac", "shared", "ssh", "license", "sig"),
    }
)
# A last part that says the field is about a credential, not one: ``api_key_id``,
# ``token_count``, ``token_type``, ``password_changed_at``.
_NOT_SECRET_LAST = frozenset(
    {
        *("id", "ids", "count", "counts", "used", "type", "name", "names", "length", "size"),
        "at",
        # As the settings' own rule (``is_secret_name``): a duration, a size, a place or a
        # switch is never the secret (``USERPLANE_API_KEYS_CACHE_SECONDS: must be …``).
        *("seconds", "secs", "s", "ms", "minutes", "hours", "days", "ttl", "timeout"),
        *("file", "path", "dir", "bytes", "enabled", "max", "min", "limit"),
    }
)
_FIELD_PARTS = re.compile(r"[^a-z0-9]+")
# A lower-case letter or digit then a capital: where ``apiKey`` splits in two.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _names_secret(name: str) -> bool:
    """Whether a field's name says its value is a credential (see above)."""
    parts = [p for p in _FIELD_PARTS.split(_CAMEL.sub("_", name).lower()) if p]
    if not parts or parts[-1] in _NOT_SECRET_LAST:
        return False
    for i, part in enumerate(parts):
        if part.endswith(_SECRET_NAME_PARTS):
            return True
        if part in ("key", "keys") and (len(parts) == 1 or parts[i - 1] in _KEY_QUALIFIERS):
            return True
    return False


# By shape, anywhere in a text. An API key (``up_`` + 12 characters of public
# lookup id + 32 of secret, base62: ``userplane.plugins.api_keys.keys``) keeps
# its lookup id, which is what listings show and what finds the key's record.
# Longer runs are masked too, and shorter ones from 8 characters of secret: a
# mistyped key is still mostly the key.
_API_KEY = re.compile(r"(up_[A-Za-z0-9]{12})[A-Za-z0-9]{8,}")
# A JWT (or JWE): base64url of a JSON object (``eyJ``), then dot-separated parts.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)+")
# An ``Authorization`` value: the scheme stays, the credentials go. The few words
# that follow the scheme's name in prose ("bearer tokens", "basic auth") stay.
_BEARER = re.compile(
    r"(?i)\b(bearer|basic)\s+"
    r"(?!(?:tokens?|auth|authentication|credentials|scheme|realm|challenge)\b)"
    r"[^\s,;\"')}\]]+"
)
# ``name=value``, ``name: value`` and ``"name": "value"`` where the name says
# secret: a query string, a DSN, a header dump, a dict's repr, JSON in a message.
# A ``:`` counts only with a space or a quote around it, so ``key:<uuid>`` (a
# principal id) is left alone. The names this finds are only candidates: each
# is then read as ``_names_secret`` reads a field's (``cache_key=…`` stays).
# A quoted value is masked to its matching unescaped quote, spaces and all, and
# on to the next delimiter if that quote was not the end (escaping read in
# another syntax: a repr doubles the backslash of ``"hun\\"ter2"``); an
# unquoted one to the next whitespace (``p&ss;w,rd`` is one password, and a
# few characters of punctuation masked too are better than a credential's
# tail shown), except in a query string, where ``&`` ends it.
_SECRET_PAIR = re.compile(
    r"""(?ix)
    (?<![\w.-])
    (
      [\w.-]*?
      (?:passw(?:or)?d|pwd|passphrase|secret|token|authori[sz]ation|cookie|credentials?|api[_-]?key)
      [\w-]*
    | (?:[\w.-]*[_.-])?keys?
    )
    (
      ["']?\s*=\s*
    | ["']\s*:\s*
    | :\s+
    )
    (?!["']?\*{8})
    (
      "(?:[^"\\]|\\.)*(?:"|$)[^\s,;}\])]*
    | '(?:[^'\\]|\\.)*(?:'|$)[^\s,;}\])]*
    | (?:(?:bearer|basic|token|digest)\s+)?\S+
    )
    """
)
# A ``Cookie`` or ``Set-Cookie`` header holds several ``name=value`` pairs, any
# of which may be a session: its whole value goes, to the end of the line.
_COOKIE_HEADER = re.compile(r"(?i)(?<![\w-])((?:set-)?cookie:[ \t]*)(?!\*{8})[^\r\n]+")


def _mask_pair(match: re.Match[str]) -> str:
    name, separator, value = match.groups()
    if not _names_secret(name):
        return match.group(0)
    quote = value[0]
    if quote in "\"'":
        closed = len(value) > 1 and value.endswith(quote)
        return f"{name}{separator}{quote}{MASK}{quote if closed else ''}"
    before = match.string[match.start() - 1 : match.start()]
    if before in ("?", "&"):
        # A query string's parameter ends at the next one, which is masked on its own.
        end = min((i for i in (value.find("&"), value.find("#")) if i >= 0), default=-1)
        if end >= 0:
            rest = _SECRET_PAIR.sub(_mask_pair, value[end:])
            return f"{name}{separator}{MASK}{rest}"
    return f"{name}{separator}{MASK}"


# One scan says whether a text can hold any of the secrets above: most values
# (paths, ids, routes, numbers as text) cannot, and skip the rewrites. Only
# substring tests: one-character ones cost next to nothing; a case-blind regex
# for ``Bearer``/``Basic`` cost more than all the rest together (measured), so
# a space or tab stands for it, and for ``name: value``. A password in a URL
# needs a ``://`` (an ``@`` alone is a principal ``jwt:alice@example.com`` in
# every access line, and must not cost the slow path), a secret parameter an
# ``=``, a secret in JSON or a repr a quote. What follows a malformed
# password's ``#`` or ``?`` is ``…@host`` without its ``://``: with an ``@``, the
# pieces' starts are looked for too (none, unless such a password is set).
def _maybe_secret_text(text: str) -> bool:
    return (
        "=" in text
        or "://" in text
        or " " in text
        or "\t" in text
        or '"' in text
        or "'" in text
        or "up_" in text
        or "eyJ" in text
        or (_DeclaredSecrets.values != () and any(s in text for s in _DeclaredSecrets.values))
        or ("@" in text and _DeclaredSecrets.has_piece(text))
    )


class _DeclaredSecrets:
    """Values of settings that are secret, masked wherever they appear.

    ``values``: those plugins declare secret or whose name says so, and what
    ``userplane.settings.url_secrets`` finds in URL-valued settings (a database
    password). ``pieces``: what ``password_pieces`` finds, the runs of a
    malformed password a URL parser's error message may quote; there may be
    hundreds (one per pair of cut points), so they are looked for only in
    lines already past the cheap scan (such a message always is), and by
    their first three characters: one test per cut point, not per piece.
    Process-wide, as logging itself is: every registry of the process adds its own.
    """

    values: tuple[str, ...] = ()
    pieces: tuple[str, ...] = ()
    #: The pieces by their first three characters, each group longest first.
    by_start: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def add(cls, values: set[str], pieces: set[str] | frozenset[str] = frozenset()) -> None:
        # Longest first, so that a secret containing another is masked whole.
        cls.values = tuple(sorted({*cls.values, *values}, key=len, reverse=True))
        everything = {*cls.values, *cls.pieces, *pieces}
        cls.pieces = tuple(sorted(everything - set(cls.values), key=len, reverse=True))
        by_start: dict[str, list[str]] = {}
        for piece in cls.pieces:  # pieces are 3 characters or more
            by_start.setdefault(piece[:3], []).append(piece)
        cls.by_start = {start: tuple(group) for start, group in by_start.items()}

    @classmethod
    def has_piece(cls, text: str) -> bool:
        return any(start in text for start in cls.by_start)

    @classmethod
    def pieces_in(cls, text: str) -> list[str]:
        """The pieces ``text`` holds, longest first."""
        found = [p for start, group in cls.by_start.items() if start in text for p in group]
        return sorted((p for p in found if p in text), key=len, reverse=True)


# Whether a key names a secret, by key: keys come from a small set of call
# sites, so each is matched once. Bounded, because nested dicts may carry
# keys from data.
_secret_keys: dict[str, bool] = {}


def _is_secret_key(key: object) -> bool:
    name = key if isinstance(key, str) else str(key)
    secret = _secret_keys.get(name)
    if secret is None:
        secret = _names_secret(name)
        if len(_secret_keys) < 4096:
            _secret_keys[name] = secret
    return secret


def redact_text(text: str) -> str:
    """``text`` with every secret it holds masked, by shape and by the name before it."""
    if not _maybe_secret_text(text):
        return text
    for secret in _DeclaredSecrets.values:
        if secret in text:
            text = text.replace(secret, MASK)
    for piece in _DeclaredSecrets.pieces_in(text):
        if piece in text:  # a longer one masked before may have held it
            text = text.replace(piece, MASK)
    if "://" in text:
        # URLs anywhere in the text, not only a value that is one URL.
        text = mask_urls_in(text)
    if "up_" in text:
        text = _API_KEY.sub(rf"\1{MASK}", text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    if " " in text or "\t" in text:
        text = _BEARER.sub(rf"\1 {MASK}", text)
    if ":" in text:
        text = _COOKIE_HEADER.sub(rf"\1{MASK}", text)
    return _SECRET_PAIR.sub(_mask_pair, text)


#: Values rendered as they are, never holding text of their own to mask.
_OPAQUE = (int, float, bool, type(None), uuid.UUID, datetime.date, datetime.time)


#: How deep nested values are masked; deeper ones (or a value that contains itself)
#: are logged as a placeholder rather than risk a secret or a RecursionError.
_MAX_DEPTH = 16


def _redact_key(key: Any) -> Any:
    """A mapping's key, masked by shape like any text (a key can be a credential)."""
    if isinstance(key, str):
        return redact_text(key)
    if isinstance(key, bytes | bytearray):
        return redact_text(bytes(key).decode("utf-8", "replace"))
    return key


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return "<nested too deep to log>"
    if isinstance(value, dict):
        return {
            _redact_key(k): MASK if _is_secret_key(k) else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        # A (name, value) pair, as headers are often kept: the name says what the value is.
        if (
            len(items) == 2
            and isinstance(items[0], str | bytes)
            and _is_secret_key(
                items[0] if isinstance(items[0], str) else items[0].decode("utf-8", "replace")
            )
        ):
            return [_redact_key(items[0]), MASK]
        return [_redact_value(v, depth + 1) for v in items]
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, _OPAQUE):
        return value
    # Anything else (an exception, an object) is rendered as its repr after this
    # step: mask that text now, and keep the object when there is nothing to mask.
    # Never a dataclass itself: the JSON encoder writes its fields out whole, those
    # its repr hides (``repr=False`` on a password) included.
    text = repr(value)
    masked = redact_text(text)
    if masked == text and not dataclasses.is_dataclass(value):
        return value
    return masked


def redact(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Mask secrets wherever they appear: by key name, and by shape in any text.

    The last line of defence: code should not log secrets, but a header dump,
    a database URL in an error message, an API key in a path or a rendered
    traceback must still never reach the log.
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


#: The longest principal id a log line carries whole: a token's ``sub`` is the
#: identity provider's to choose, and a 10 KB one must not make every line 10 KB.
MAX_PRINCIPAL = 256


def principal_for_log(principal_id: str) -> str:
    """``principal_id``, or a bounded form of it: its start and a digest of the whole.

    The digest keeps two long ids that share a start apart in the logs.
    """
    if len(principal_id) <= MAX_PRINCIPAL:
        return principal_id
    digest = hashlib.sha256(principal_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{principal_id[: MAX_PRINCIPAL - 40]}…[{len(principal_id)} chars, sha256:{digest}]"


def add_principal(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """``principal``: who the current request or command acts as, when known (audit)."""
    principal = current_principal()
    if principal is not None:
        event_dict.setdefault("principal", principal_for_log(principal.id))
    return event_dict


def _shared_processors() -> list[Any]:
    import structlog

    return [
        # Context first: request id and friends bound per request reach every line.
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        add_principal,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _plain_traceback(sio: Any, exc_info: Any) -> None:
    """The console renderer's exception formatter: a plain traceback, no locals, masked.

    Only a fallback: exceptions are rendered before ``redact`` (see ``configure``).
    """
    text = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    sio.write("\n" + redact_text(text))


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
    # Exceptions are rendered to data or text *before* redaction, on every
    # route, so their messages and tracebacks are masked like any other text,
    # and never with frame locals: those hold what a function was handling (the
    # API key being checked, a password being used), and structlog's console
    # renderer would show them (rich tracebacks) after redaction had run.
    exc: Any
    json_lines = _use_json(settings)
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
        exc = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=_plain_traceback)
        exc = structlog.processors.format_exc_info
    # The exception, then redaction: on each route below.
    masked: list[Any] = [exc, redact]
    factory = _line_writer_factory() if json_lines else None
    if factory is not None:
        # The hot path: every request writes an access line. orjson and one
        # write per line take a fraction of the time the stdlib route takes
        # (LogRecord, handler, formatter, json, a locked buffer).
        processors: list[Any] = [
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            *masked,
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
                # Here too, not only in the formatter: other handlers on the root
                # logger (a host's, a test's capture) get the event as it is now.
                *masked,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.make_filtering_bound_logger(level),
            cache_logger_on_first_use=True,
        )
    # gunicorn, yoyo and friends log through stdlib: render them the same way.
    # A stdlib record's ``extra`` (the plugin of a failed listener) becomes keys.
    foreign: list[Any] = [*_shared_processors(), add_record_extras]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # A stdlib record's traceback is rendered here, and masked with the rest.
            *masked,
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
            principal=None if principal is None else principal_for_log(principal.id),
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
    """Mask, in every line, the values of secret settings and the secrets in URL settings."""
    settings = registry.settings
    sections = registry.hooks.settings_sections()
    # Very short values would mask ordinary words; no real secret is that short.
    # A URL's password is masked in URLs by shape; its value is masked on its own
    # too, for a library that quotes it outside a URL, and so are the pieces of a
    # malformed one (a "#" in it) that a URL parser's error message quotes.
    values = secret_values(settings, sections, min_length=_MIN_SECRET, pieces=False)
    texts = (settings.database_url, *settings.extra.values())
    pieces = {p for text in texts if "://" in text for p in password_pieces(text)}
    _DeclaredSecrets.add(set(values), pieces)


#: The shortest setting value masked wherever it appears (pieces of a malformed URL
#: password excepted: ``password_pieces`` keeps those from 3 characters).
_MIN_SECRET = 6


@hookimpl
def userplane_describe(settings: Settings) -> dict[str, str]:
    """Where log lines go."""
    kind = "JSON lines" if _use_json(settings) else "console lines"
    return {"logs": f"stderr as {kind} at {settings.log_level}"}


@hookimpl
def userplane_http_middleware(settings: Settings) -> list[Any]:
    """The access-log middleware."""
    return [AccessLog()]
