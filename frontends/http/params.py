"""Query parameters as every resource takes them: each named one at most once, no other."""

from __future__ import annotations

from typing import Any

import falcon

from userplane.errors import FieldError, InvalidInput


def single_params(
    req: falcon.Request, allowed: frozenset[str]
) -> tuple[dict[str, Any], list[FieldError]]:
    """The ``allowed`` query parameters given once, and an error for any other or repeated one.

    For a resource that checks more before it answers, so that one answer
    names every parameter at fault.
    """
    errors: list[FieldError] = []
    values: dict[str, Any] = {}
    for name, value in req.params.items():
        if name not in allowed:
            errors.append(FieldError(f"$.{name}", "unknown query parameter"))
        elif isinstance(value, list):
            errors.append(FieldError(f"$.{name}", "must be given once"))
        else:
            values[name] = value
    return values, errors


def query_params(req: falcon.Request, allowed: frozenset[str]) -> dict[str, str]:
    """The ``allowed`` query parameters, each given once; ``InvalidInput`` naming every other."""
    values, errors = single_params(req, allowed)
    if errors:
        raise InvalidInput.from_errors(errors)
    return values
