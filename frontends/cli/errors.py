"""The CLI's one mapping from domain errors to exit codes.

Scripts may rely on these codes; they are documented in the README.
"""

from __future__ import annotations

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


def message(exc: UserplaneError) -> str:
    """One line for stderr."""
    text = " ".join(exc.detail.split())
    return f"userplane: {exc.kind}: {text}"
