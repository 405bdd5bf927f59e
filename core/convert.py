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
from userplane.groups import Group, GroupChanges, NewGroup
from userplane.users import UNSET, NewUser, Unset, User, UserChanges, check_fields

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


def _unknown_fields(exc: cattrs.ForbiddenExtraKeysError, path: str) -> list[FieldError]:
    # Extra keys come as one error naming them all; give each its own entry.
    return [FieldError(f"{path}.{k}", "unknown field") for k in sorted(exc.extra_fields)]


def _transformed(exc: Exception, path: str) -> list[FieldError]:
    errors = []
    for line in cattrs.transform_error(exc, path, format_exception=_format_error):
        message, _, where = line.rpartition(" @ ")
        errors.append(FieldError(where or path, message))
    return errors


def field_errors(exc: Exception, path: str = "$") -> list[FieldError]:
    """Flatten a cattrs error into one ``FieldError`` per field at fault."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return _unknown_fields(exc, path)
    if not isinstance(exc, cattrs.ClassValidationError):
        return _transformed(exc, path)
    errors: list[FieldError] = []
    rest = []
    for sub in exc.exceptions:
        if isinstance(sub, cattrs.ForbiddenExtraKeysError):
            errors += _unknown_fields(sub, path)
        else:
            rest.append(sub)
    if rest:
        errors += _transformed(cattrs.ClassValidationError(exc.message, rest, exc.cl), path)
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


def _invalid(errors: list[FieldError]) -> InvalidInput:
    # One field, one entry: the first (structural) complaint about it wins.
    seen: dict[str, FieldError] = {}
    for error in errors:
        seen.setdefault(error.field, error)
    return InvalidInput.from_errors(list(seen.values()))


def structure(data: Any, cls: type[T]) -> T:
    """Build ``cls`` from decoded JSON ``data``; ``InvalidInput`` naming each bad field."""
    if not isinstance(data, dict):
        raise InvalidInput.for_field("$", "must be a JSON object")
    try:
        return api.structure(data, cls)
    except (cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError) as exc:
        raise _invalid(field_errors(exc)) from None


def new_user_from(data: Any) -> NewUser:
    """A ``NewUser`` from a JSON object (``email`` required; the other fields optional).

    When the shape is wrong, the domain rules still run on the fields that have
    the right type, so that one answer names every field at fault.
    """
    if isinstance(data, dict) and "attributes" in data:
        attributes = data["attributes"]
        if attributes is None:  # none, said explicitly
            data = {k: v for k, v in data.items() if k != "attributes"}
        elif not isinstance(attributes, dict):
            domain = check_fields({k: v for k, v in data.items() if k != "attributes"})[1]
            raise _invalid([FieldError("$.attributes", "must be a JSON object"), *domain])
    try:
        return structure(data, NewUser)
    except InvalidInput as exc:
        _, domain = check_fields(data) if isinstance(data, dict) else (None, [])
        raise _invalid([*exc.errors, *domain]) from None


_CHANGE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "email": ((str,), "must be a string"),
    "full_name": ((str, type(None)), "must be a string or null"),
    "is_active": ((bool,), "must be a boolean"),
    "external_source": ((str, type(None)), "must be a string or null"),
    "external_id": ((str, type(None)), "must be a string or null"),
    # A merge patch of the attributes; null removes them all.
    "attributes": ((dict, type(None)), "must be a JSON object or null"),
}
#: Fields a change may set to null.
_NULLABLE = frozenset({"full_name", "external_source", "external_id", "attributes"})


def changes_from(data: Any) -> UserChanges:
    """``UserChanges`` from a JSON merge-patch object: absent keys stay ``UNSET``.

    ``null`` clears ``full_name``, the external id (with its source) and the
    attributes; ``attributes`` merges into the stored ones (RFC 7396: a key
    set to ``null`` goes); ``null`` for ``email`` or ``is_active`` is
    invalid, since neither may be empty. Every field at fault is reported.
    """
    if not isinstance(data, dict):
        raise InvalidInput.for_field("$", "must be a JSON object")
    errors: list[FieldError] = []
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _CHANGE_TYPES:
            errors.append(FieldError(f"$.{key}", "unknown field"))
        elif value is None and key not in _NULLABLE:
            errors.append(FieldError(f"$.{key}", "must not be null"))
        elif not isinstance(value, _CHANGE_TYPES[key][0]):
            errors.append(FieldError(f"$.{key}", _CHANGE_TYPES[key][1]))
        else:
            fields[key] = value
    if errors:
        raise _invalid([*errors, *check_fields(fields)[1]])
    return UserChanges(**fields)


def user_to_dict(user: User) -> dict[str, Any]:
    """The public JSON shape of a user (ids as strings, times as ISO 8601 with ``Z``)."""
    data: dict[str, Any] = api.unstructure(user)
    return data


def user_from_dict(data: dict[str, Any]) -> User:
    """Inverse of ``user_to_dict`` (used by clients and tests)."""
    return api.structure(data, User)


def _role_list(value: Any, field: str, errors: list[FieldError]) -> frozenset[str] | None:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        errors.append(FieldError(field, "must be a list of role names"))
        return None
    return frozenset(value)


_GROUP_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "display_name": ((str,), "must be a string"),
    "external_id": ((str, type(None)), "must be a string or null"),
    "roles": ((list,), "must be a list of role names"),
}


def _group_fields(data: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput.for_field("$", "must be a JSON object")
    errors: list[FieldError] = []
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _GROUP_TYPES:
            errors.append(FieldError(f"$.{key}", "unknown field"))
        elif key == "roles":
            roles = _role_list(value, "$.roles", errors)
            if roles is not None:
                fields["roles"] = roles
        elif not isinstance(value, _GROUP_TYPES[key][0]):
            errors.append(FieldError(f"$.{key}", _GROUP_TYPES[key][1]))
        else:
            fields[key] = value
    errors += [FieldError(f"$.{k}", "is required") for k in required if k not in data]
    if errors:
        raise _invalid(errors)
    return fields


def new_group_from(data: Any) -> NewGroup:
    """A ``NewGroup`` from a JSON object (``display_name`` required; ``roles``, ``external_id``)."""
    return NewGroup(**_group_fields(data, ("display_name",)))


def group_changes_from(data: Any) -> GroupChanges:
    """``GroupChanges`` from a JSON merge-patch object: absent keys stay ``UNSET``."""
    fields = _group_fields(data, ())
    if fields.get("display_name", "") is None:
        raise InvalidInput.for_field("$.display_name", "must not be null")
    return GroupChanges(**fields)


def group_to_dict(group: Group) -> dict[str, Any]:
    """The public JSON shape of a group (roles sorted)."""
    return {
        "id": str(group.id),
        "display_name": group.display_name,
        "external_id": group.external_id,
        "roles": sorted(group.roles),
        "created_at": api.unstructure(group.created_at),
        "updated_at": api.unstructure(group.updated_at),
        "version": group.version,
    }


def user_ids_from(data: Any, field: str = "user_ids") -> list[uuid.UUID]:
    """The user ids of ``{"user_ids": [...]}``; ``InvalidInput`` naming each bad one."""
    if not isinstance(data, dict):
        raise InvalidInput.for_field("$", "must be a JSON object")
    unknown = [FieldError(f"$.{k}", "unknown field") for k in data if k != field]
    if field not in data:
        raise _invalid([*unknown, FieldError(f"$.{field}", "is required")])
    values = data[field]
    if not isinstance(values, list):
        raise _invalid([*unknown, FieldError(f"$.{field}", "must be a list of user ids")])
    ids: list[uuid.UUID] = []
    errors = list(unknown)
    for i, value in enumerate(values):
        try:
            ids.append(uuid.UUID(value))
        except (TypeError, ValueError, AttributeError):
            errors.append(FieldError(f"$.{field}[{i}]", "must be a user id (a UUID)"))
    if errors:
        raise _invalid(errors)
    return ids


__all__ = [
    "UNSET",
    "Unset",
    "changes_from",
    "field_errors",
    "group_changes_from",
    "group_to_dict",
    "new_group_from",
    "new_user_from",
    "structure",
    "user_from_dict",
    "user_ids_from",
    "user_to_dict",
]
