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
}


def exit_code(exc: UserplaneError) -> int:
    """The exit code for ``exc``."""
    return next((code for cls, code in EXIT_CODES.items() if isinstance(exc, cls)), 1)


def message(exc: UserplaneError, secrets: Iterable[str] = ()) -> str:
    """One line for stderr, URLs and ``secrets`` masked (``userplane.settings.mask_text``).

    A detail may quote a setting or a library's message about it: a database
    URL, or the piece of a password a URL parser cut off.
    """
    text = mask_text(" ".join(exc.detail.split()), secrets)
    return f"userplane: {exc.kind}: {text}"


def internal_error(exc: Exception, secrets: Iterable[str] = ()) -> str:
    """One line for stderr about a bug (never a traceback), masked as ``message`` is."""
    text = mask_text(" ".join(str(exc).split()), secrets)
    return f"userplane: internal error: {type(exc).__name__}: {text}"
