"""The domain errors: what can go wrong, in words every frontend can map.

The core raises only these. Each frontend maps them in one place: the HTTP
API to a status code and an RFC 9457 problem document, the CLI to a message
on stderr and an exit code. ``kind`` is the stable, machine-readable name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs


@attrs.frozen
class FieldError:
    """One input field at fault: ``field`` is a JSON-path-like location (``$.email``)."""

    field: str
    message: str


class UserplaneError(Exception):
    """Base of every domain error; ``detail`` is safe to show to a client."""

    kind: str = "error"
    title: str = "Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(UserplaneError):
    """The addressed resource does not exist (or may not be seen)."""

    kind = "not-found"
    title = "Not found"


class Conflict(UserplaneError):
    """The write collides with existing state, e.g. an email already taken."""

    kind = "conflict"
    title = "Conflict"


class InvalidInput(UserplaneError):
    """Input failed validation; ``errors`` names each field at fault."""

    kind = "invalid-input"
    title = "Invalid input"

    def __init__(self, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.errors = tuple(errors)

    @classmethod
    def from_errors(cls, errors: Sequence[FieldError]) -> InvalidInput:
        """One error for several fields, its detail listing them all."""
        return cls("; ".join(f"{e.field}: {e.message}" for e in errors), errors)

    @classmethod
    def for_field(cls, field: str, message: str) -> InvalidInput:
        """One field at fault, with its message as the detail too."""
        return cls(f"{field}: {message}", [FieldError(field, message)])


class PreconditionFailed(UserplaneError):
    """A conditional write lost: the resource changed since the caller read it."""

    kind = "precondition-failed"
    title = "Precondition failed"


class Unauthenticated(UserplaneError):
    """No valid credentials were presented."""

    kind = "unauthenticated"
    title = "Unauthenticated"


class Forbidden(UserplaneError):
    """The principal is known but may not perform the action."""

    kind = "forbidden"
    title = "Forbidden"


class RateLimited(UserplaneError):
    """Too many requests; ``retry_after`` is in seconds.

    ``quota`` is the rate-limit check that refused, when one did
    (``userplane.limits.Quota``): frontends report its policy and state.
    """

    kind = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int = 1, quota: Any = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.quota = quota


class Unavailable(UserplaneError):
    """A dependency (usually storage) cannot serve now; retry after ``retry_after`` seconds."""

    kind = "unavailable"
    title = "Service unavailable"

    def __init__(
        self, detail: str, retry_after: int = 1, *, public_detail: str | None = None
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        #: What a remote client is told instead of ``detail``, when ``detail`` names
        #: what only an operator should see (a database's host and port, a file's path).
        self.public_detail = public_detail


class ConfigurationError(UserplaneError):
    """Settings or plugins are inconsistent; raised at start-up, never per request."""

    kind = "configuration"
    title = "Configuration error"


class Undecryptable(UserplaneError):
    """A stored value fails to open: altered, moved from another row, or its key is gone.

    Raised rather than returning garbage; the detail names the user and the
    field, never the value.
    """

    kind = "undecryptable"
    title = "Stored data cannot be decrypted"
