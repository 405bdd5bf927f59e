"""The CLI's one mapping from domain errors to exit codes.

Scripts may rely on these codes; they are documented in the README and in
docs/cli.md. A command given ``--format json`` prints its error as one JSON
object (``error_object``) instead of the line ``message`` makes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from userplane.errors import (
    ConfigurationError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    RateLimited,
    Unauthenticated,
    Unavailable,
    Undecryptable,
    UserplaneError,
)
from userplane.settings import mask_text

#: An unexpected failure (a bug): never a traceback, one line naming the exception.
INTERNAL = 1
#: A usage error: click's own (a bad option), and a confirmation that cannot be
#: asked (stdin is not a terminal and ``--yes`` was not given).
USAGE = 2
#: A confirmation answered no (or interrupted): nothing was changed.
CANCELLED = 14

EXIT_CODES: dict[type[UserplaneError], int] = {
    NotFound: 3,
    Conflict: 4,
    InvalidInput: 5,
    PreconditionFailed: 6,
    Unauthenticated: 7,
    Forbidden: 8,
    RateLimited: 9,
    Unavailable: 10,
    ConfigurationError: 11,
    Undecryptable: 12,
}


def exit_code(exc: UserplaneError) -> int:
    """The exit code for ``exc``."""
    return next((code for cls, code in EXIT_CODES.items() if isinstance(exc, cls)), 1)


def error_object(exc: UserplaneError, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON object a command given ``--format json`` prints on stderr for ``exc``.

    ``{"error": kind, "detail": …, "exit_code": n}``, with ``errors`` (each
    ``{"field", "detail"}``) for invalid input naming its fields and
    ``retry_after`` (seconds) when the error has one; masked like ``message``.
    """
    out: dict[str, Any] = {
        "error": exc.kind,
        "detail": mask_line(exc.detail, secrets),
        "exit_code": exit_code(exc),
    }
    if isinstance(exc, InvalidInput) and exc.errors:
        out["errors"] = [
            {"field": mask_line(e.field, secrets), "detail": mask_line(e.message, secrets)}
            for e in exc.errors
        ]
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int):
        out["retry_after"] = retry_after
    return out


def json_line(error: Mapping[str, Any]) -> str:
    """``error`` as one line of JSON."""
    import orjson

    return orjson.dumps(error).decode()


def mask_line(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` as one line, with URLs, ``secrets`` and whatever looks like a credential masked.

    ``userplane.settings.mask_text``, then the log lines' masking by shape and
    by name (``up_`` keys keep their lookup id, JWTs, ``Bearer`` values,
    ``password=…``): an argument the user typed is quoted back by click's
    errors and by ours, and a mistyped API key is still mostly the key.
    """
    text = mask_text(" ".join(text.split()), secrets)
    # Imported here: only a failing command pays for the logging plugin's module.
    from userplane.plugins.logging import redact_text

    return redact_text(text)


def message(exc: UserplaneError, secrets: Iterable[str] = ()) -> str:
    """One line for stderr, masked (``mask_line``).

    A detail may quote a setting or a library's message about it: a database
    URL, or the piece of a password a URL parser cut off.
    """
    return f"userplane: {exc.kind}: {mask_line(exc.detail, secrets)}"


def internal_error(exc: Exception, secrets: Iterable[str] = ()) -> str:
    """One line for stderr about a bug (never a traceback), masked as ``message`` is."""
    return f"userplane: internal error: {type(exc).__name__}: {mask_line(str(exc), secrets)}"
