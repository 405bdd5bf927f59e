"""cattrs at the edges: turning outside data into models, and model errors into field errors.

The HTTP body, CLI input, settings and database rows are converted here and
nowhere else. Models stay plain attrs classes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVar

import cattrs
from cattrs.preconf.json import make_converter

from userplane.errors import FieldError, InvalidInput
from userplane.users import UNSET, NewUser, Unset, User, UserChanges

T = TypeVar("T")


def _strict_bool(value: Any, _: type) -> bool:
    # cattrs would accept 1 or "yes" via bool(); a JSON API must not.
    if isinstance(value, bool):
        return value
    raise TypeError("must be a boolean")


def _strict_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("must be a string")


def _format_error(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return "unknown field"
    if isinstance(exc, KeyError):
        return "required field is missing"
    if isinstance(exc, TypeError | ValueError) and str(exc).startswith("must "):
        return str(exc)
    if type_ is bool:
        return "must be a boolean"
    if type_ is str:
        return "must be a string"
    return "has the wrong type"


def field_errors(exc: Exception, path: str = "$") -> list[FieldError]:
    """Flatten a cattrs error into one ``FieldError`` per field at fault."""
    errors: list[FieldError] = []
    if isinstance(exc, cattrs.ClassValidationError):
        # Extra keys come as one error naming them all; give each its own entry.
        for sub in exc.exceptions:
            if isinstance(sub, cattrs.ForbiddenExtraKeysError):
                errors += [
                    FieldError(f"{path}.{k}", "unknown field") for k in sorted(sub.extra_fields)
                ]
        rest = [e for e in exc.exceptions if not isinstance(e, cattrs.ForbiddenExtraKeysError)]
        if rest:
            remaining = cattrs.ClassValidationError(exc.message, rest, exc.cl)
            for line in cattrs.transform_error(remaining, path, format_exception=_format_error):
                message, _, where = line.rpartition(" @ ")
                errors.append(FieldError(where, message))
    elif isinstance(exc, cattrs.ForbiddenExtraKeysError):
        errors += [FieldError(f"{path}.{k}", "unknown field") for k in sorted(exc.extra_fields)]
    else:
        for line in cattrs.transform_error(exc, path, format_exception=_format_error):
            message, _, where = line.rpartition(" @ ")
            errors.append(FieldError(where or path, message))
    return errors


def _make_api_converter() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=True)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_structure_hook(uuid.UUID, lambda v, _: uuid.UUID(v))
    conv.register_unstructure_hook(datetime, lambda d: d.isoformat().replace("+00:00", "Z"))
    return conv


#: The converter for API payloads (HTTP bodies, CLI JSON output).
api = _make_api_converter()


def structure(data: Any, cls: type[T]) -> T:
    """Build ``cls`` from decoded JSON ``data``; ``InvalidInput`` naming each bad field."""
    if not isinstance(data, dict):
        raise InvalidInput.for_field("$", "must be a JSON object")
    try:
        return api.structure(data, cls)
    except (cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError) as exc:
        errors = field_errors(exc)
        raise InvalidInput("; ".join(f"{e.field}: {e.message}" for e in errors), errors) from None


def new_user_from(data: Any) -> NewUser:
    """A ``NewUser`` from a JSON object (``email`` required; ``full_name``, ``is_active``)."""
    return structure(data, NewUser)


def changes_from(data: Any) -> UserChanges:
    """``UserChanges`` from a JSON merge-patch object: absent keys stay ``UNSET``.

    ``null`` clears ``full_name``; ``null`` for ``email`` or ``is_active`` is
    invalid, since neither may be empty.
    """
    if not isinstance(data, dict):
        raise InvalidInput.for_field("$", "must be a JSON object")
    errors = [FieldError(f"$.{k}", "unknown field") for k in data if k not in _CHANGE_FIELDS]
    for key in ("email", "is_active"):
        if key in data and data[key] is None:
            errors.append(FieldError(f"$.{key}", "must not be null"))
    if errors:
        raise InvalidInput("; ".join(f"{e.field}: {e.message}" for e in errors), errors)
    present = data
    fields: dict[str, Any] = {}
    try:
        if "email" in present:
            fields["email"] = _strict_str(present["email"], str)
    except TypeError as exc:
        errors.append(FieldError("$.email", str(exc)))
    try:
        if "is_active" in present:
            fields["is_active"] = _strict_bool(present["is_active"], bool)
    except TypeError as exc:
        errors.append(FieldError("$.is_active", str(exc)))
    if "full_name" in present:
        value = present["full_name"]
        if value is None or isinstance(value, str):
            fields["full_name"] = value
        else:
            errors.append(FieldError("$.full_name", "must be a string or null"))
    if errors:
        raise InvalidInput("; ".join(f"{e.field}: {e.message}" for e in errors), errors)
    return UserChanges(**fields)


_CHANGE_FIELDS = frozenset({"email", "full_name", "is_active"})


def user_to_dict(user: User) -> dict[str, Any]:
    """The public JSON shape of a user (ids as strings, times as ISO 8601 with ``Z``)."""
    data: dict[str, Any] = api.unstructure(user)
    return data


def user_from_dict(data: dict[str, Any]) -> User:
    """Inverse of ``user_to_dict`` (used by clients and tests)."""
    return api.structure(data, User)


__all__ = [
    "UNSET",
    "Unset",
    "changes_from",
    "field_errors",
    "new_user_from",
    "structure",
    "user_from_dict",
    "user_to_dict",
]
