"""SCIM ``Users`` over our users: the resource a user is, and filters as ``userplane.filtering``.

A user is a SCIM ``User`` (RFC 7643 §4.1) this way:

- ``userName`` and the one ``emails`` value (``type`` ``work``, ``primary``)
  are the address; ``displayName`` is the name; ``active`` is ``is_active``;
- ``externalId`` is the external id when its source is the SCIM source
  (an id another provider gave is not this client's to see);
- ``groups`` are the user's groups (read only, as RFC 7643 says);
- ``meta.created``, ``meta.lastModified`` and ``meta.version`` (a weak ETag
  of the version) are the user's.

A filter on an attribute this mapping has no column for answers
``invalidFilter`` naming it: never an unfiltered list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from userplane.plugin import And as AllOf
from userplane.plugin import Compare, Expr, Group, User
from userplane.plugin import Not as NoneOf
from userplane.plugin import Or as AnyOf
from userplane.plugin import Present as HasValue
from userplane.plugins.scim import filters
from userplane.plugins.scim.filters import FilterError

USER_SCHEMA: Final = filters.CORE_USER
#: The one email a user has, as SCIM lists it.
EMAIL_TYPE: Final = "work"


def iso(moment: datetime) -> str:
    """A time as SCIM writes one: RFC 3339 UTC with ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def user_resource(
    user: User, *, base_url: str, source: str, groups: Iterable[Group] = ()
) -> dict[str, Any]:
    """``user`` as a SCIM ``User``; ``base_url`` is the service's ``…/scim/v2``."""
    resource: dict[str, Any] = {
        "schemas": [USER_SCHEMA],
        "id": str(user.id),
        "userName": user.email,
        "active": user.is_active,
        "emails": [{"value": user.email, "type": EMAIL_TYPE, "primary": True}],
        "meta": {
            "resourceType": "User",
            "created": iso(user.created_at),
            "lastModified": iso(user.updated_at),
            "version": f'W/"{user.version}"',
            "location": f"{base_url}/Users/{user.id}",
        },
    }
    if user.external_id is not None and user.external_source == source:
        resource["externalId"] = user.external_id
    if user.full_name is not None:
        resource["displayName"] = user.full_name
    memberships = [
        {"value": str(g.id), "display": g.display_name, "$ref": f"{base_url}/Groups/{g.id}"}
        for g in groups
    ]
    if memberships:
        resource["groups"] = memberships
    return resource


# -- filters -------------------------------------------------------------------------------------


def _always() -> Expr:
    # is_active is never missing: true or false, one of the two always holds.
    return AnyOf((Compare("is_active", "eq", True), Compare("is_active", "eq", False)))


def _never() -> Expr:
    return AllOf((Compare("is_active", "eq", True), Compare("is_active", "eq", False)))


def user_filter(node: filters.Filter, source: str) -> Expr:
    """The SCIM ``filter`` on ``Users`` as a filter of our users; ``FilterError`` otherwise."""
    return _Users(source).expr(node)


class _Users:
    """The mapping of one SCIM source's filters onto the users' fields."""

    def __init__(self, source: str) -> None:
        self.source = source

    def expr(self, node: filters.Filter) -> Expr:
        if isinstance(node, filters.And):
            return AllOf(tuple(self.expr(p) for p in node.operands))
        if isinstance(node, filters.Or):
            return AnyOf(tuple(self.expr(p) for p in node.operands))
        if isinstance(node, filters.Not):
            return NoneOf(self.expr(node.operand))
        if isinstance(node, filters.ValuePath):
            return self._value_path(node)
        return self._term(node, node.path.normalized)

    def _value_path(self, node: filters.ValuePath) -> Expr:
        name = _name(node.path)
        if name == "emails":
            return self._within(node.filter, "emails")
        if name == "groups":
            return self._within(node.filter, "groups")
        raise _unsupported(node.path)

    def _within(self, node: filters.Filter, parent: str) -> Expr:
        """A filter inside ``emails[…]`` or ``groups[…]``: on the one element's parts."""
        if isinstance(node, filters.And):
            return AllOf(tuple(self._within(p, parent) for p in node.operands))
        if isinstance(node, filters.Or):
            return AnyOf(tuple(self._within(p, parent) for p in node.operands))
        if isinstance(node, filters.Not):
            return NoneOf(self._within(node.operand, parent))
        if isinstance(node, filters.ValuePath):
            raise FilterError("a value path cannot hold another", 0)
        return self._term(node, f"{parent}.{node.path.attr.lower()}")

    def _term(self, node: filters.Comparison | filters.Present, name: str) -> Expr:
        name = _strip_core(name)
        if isinstance(node, filters.Present):
            return self._present(name, node.path)
        op, value = node.op, node.value
        if name in ("username", "emails.value", "emails"):
            return self._text("email", op, value, node.path)
        if name == "displayname":
            return self._text("full_name", op, value, node.path)
        if name == "externalid":
            # An id another source gave is not this client's: for it, the user has none.
            match = self._text("external_id", op, value, node.path)
            return AllOf((Compare("external_source", "eq", self.source), match))
        if name == "active":
            return self._boolean(op, value, node.path)
        if name == "id":
            return self._id("id", op, value, node.path)
        if name in ("groups.value", "groups"):
            if op != "eq":
                raise FilterError(f"{node.path}: only eq is supported", 0)
            return self._id("group", op, value, node.path)
        if name in ("emails.type", "emails.primary"):
            return self._constant(name, op, value, node.path)
        if name in ("meta.lastmodified", "meta.created"):
            field = "updated_at" if name == "meta.lastmodified" else "created_at"
            return self._time(field, op, value, node.path)
        raise _unsupported(node.path)

    def _present(self, name: str, path: filters.AttrPath) -> Expr:
        if name in ("username", "emails", "emails.value", "active", "id", "emails.type"):
            return _always()
        if name in ("meta.created", "meta.lastmodified", "meta", "emails.primary"):
            return _always()
        if name == "displayname":
            return HasValue("full_name")
        if name == "externalid":
            return AllOf((Compare("external_source", "eq", self.source), HasValue("external_id")))
        if name in ("groups", "groups.value"):
            # Member of some group: not one comparison of ours; refused, never guessed.
            raise FilterError(f"{path}: pr is not supported", 0)
        raise _unsupported(path)

    @staticmethod
    def _text(field: str, op: Any, value: Any, path: filters.AttrPath) -> Expr:
        if op not in ("eq", "ne", "co", "sw", "ew"):
            raise FilterError(f"{path}: {op} is not supported on text", 0)
        if not isinstance(value, str):
            raise FilterError(f"{path}: compares with a string", 0)
        return Compare(field, op, value)

    @staticmethod
    def _boolean(op: Any, value: Any, path: filters.AttrPath) -> Expr:
        # Entra ID sends booleans as strings ("False").
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if op not in ("eq", "ne") or not isinstance(value, bool):
            raise FilterError(f"{path}: compares with true or false, by eq or ne", 0)
        return Compare("is_active", op, value)

    @staticmethod
    def _id(field: str, op: Any, value: Any, path: filters.AttrPath) -> Expr:
        if op not in ("eq", "ne") or not isinstance(value, str):
            raise FilterError(f"{path}: compares with an id, by eq or ne", 0)
        try:
            wanted = uuid.UUID(value)
        except ValueError:
            # No resource has this id: eq matches none, ne every one.
            return _never() if op == "eq" else _always()
        return Compare(field, op, wanted)

    @staticmethod
    def _time(field: str, op: Any, value: Any, path: filters.AttrPath) -> Expr:
        if op in ("co", "sw", "ew") or not isinstance(value, str):
            raise FilterError(f"{path}: compares with a time (RFC 3339)", 0)
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(f"{path}: {value!r} is not a time (RFC 3339)", 0) from None
        if moment.utcoffset() is None:
            moment = moment.replace(tzinfo=UTC)
        return Compare(field, op, moment)

    @staticmethod
    def _constant(name: str, op: Any, value: Any, path: filters.AttrPath) -> Expr:
        """``emails.type`` is always ``work``, ``emails.primary`` always true."""
        stored: Any = EMAIL_TYPE if name == "emails.type" else True
        if name == "emails.primary" and isinstance(value, str):
            value = {"true": True, "false": False}.get(value.lower(), value)
        if op not in ("eq", "ne"):
            raise FilterError(f"{path}: compares by eq or ne", 0)
        same = (
            stored == value
            if not isinstance(stored, str)
            else (isinstance(value, str) and value.lower() == stored)
        )
        return _always() if same == (op == "eq") else _never()


def _name(path: filters.AttrPath) -> str:
    return _strip_core(path.normalized)


def _strip_core(name: str) -> str:
    prefix = filters.CORE_USER.lower() + ":"
    return name[len(prefix) :] if name.startswith(prefix) else name


def _unsupported(path: filters.AttrPath) -> FilterError:
    return FilterError(f"{path}: filtering by this attribute is not supported", 0)
