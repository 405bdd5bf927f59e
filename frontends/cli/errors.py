"""The CLI's one mapping from domain errors to exit codes.

Scripts may rely on these codes; they are documented in the README.
"""

from __future__ import annotations

from collections.abc import Iterable

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

#: 1 is an unexpected failure and 2 a usage error (click's own).
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
