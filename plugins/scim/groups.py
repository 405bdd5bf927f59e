"""SCIM ``Groups`` over our groups: the resource a group is, its filters, what a client writes.

A group is a SCIM ``Group`` (RFC 7643 §4.2): ``displayName`` is its name,
``externalId`` its external id, ``members`` its live members (users; a
group in a group is not a thing we have). The roles a group grants are ours
alone: SCIM neither shows nor sets them.

Filters on groups run as the core's SQL (``GroupService.select``):
``displayName`` and ``externalId`` by ``eq``, ``ne``, ``co``, ``sw``, ``ew``
(the name in any letter case), ``id``, ``meta.created`` and
``meta.lastModified``, ``members`` (``members.value``, ``members[value eq
…]``) by ``eq``, with ``and``, ``or``, ``not``: Entra ID's ``id eq "g" and
members eq "u"`` among them. Anything else answers ``invalidFilter``, never
an unfiltered list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from userplane.plugin import And as AllOf
from userplane.plugin import Compare, Expr, Group
from userplane.plugin import Not as NoneOf
from userplane.plugin import Or as AnyOf
from userplane.plugin import Present as HasValue
from userplane.plugins.scim import filters
from userplane.plugins.scim.errors import bad_request
from userplane.plugins.scim.filters import FilterError
from userplane.plugins.scim.users import check_body, id_term, iso, lookup, time_term

GROUP_SCHEMA: Final = filters.CORE_GROUP


def group_resource(
    group: Group, *, base_url: str, members: Iterable[uuid.UUID] | None
) -> dict[str, Any]:
    """``group`` as a SCIM ``Group``; ``members`` ``None`` leaves them out (not asked for)."""
    resource: dict[str, Any] = {
        "schemas": [GROUP_SCHEMA],
        "id": str(group.id),
        "displayName": group.display_name,
        "meta": {
            "resourceType": "Group",
            "created": iso(group.created_at),
            "lastModified": iso(group.updated_at),
            "version": f'W/"{group.version}"',
            "location": f"{base_url}/Groups/{group.id}",
        },
    }
    if group.external_id is not None:
        resource["externalId"] = group.external_id
    if members is not None:
        listed = [
            {"value": str(m), "$ref": f"{base_url}/Users/{m}", "type": "User"} for m in members
        ]
        if listed:
            resource["members"] = listed
    return resource


def every_group() -> Expr:
    """What every group matches: every group has a name, and every name starts with nothing."""
    return Compare("display_name", "sw", "")


def group_filter(node: filters.Filter) -> Expr:
    """The SCIM ``filter`` on ``Groups`` as a filter of our groups; ``FilterError`` otherwise."""
    if isinstance(node, filters.And):
        return AllOf(tuple(group_filter(p) for p in node.operands))
    if isinstance(node, filters.Or):
        return AnyOf(tuple(group_filter(p) for p in node.operands))
    if isinstance(node, filters.Not):
        return NoneOf(group_filter(node.operand))
    if isinstance(node, filters.ValuePath):
        if _name(node.path) != "members":
            raise FilterError(f"{node.path}: Groups cannot be filtered by this attribute", 0)
        return _members(node.filter, node.path)
    name = _name(node.path)
    if isinstance(node, filters.Present):
        if name in ("displayname", "id", "meta.created", "meta.lastmodified", "meta"):
            return every_group()
        if name == "externalid":
            return HasValue("external_id")
        raise FilterError(f"{node.path}: pr is not supported on Groups here", 0)
    op, value = node.op, node.value
    if name in ("displayname", "externalid"):
        if op not in ("eq", "ne", "co", "sw", "ew") or not isinstance(value, str):
            raise FilterError(f"{node.path}: compares with a string, by eq ne co sw ew", 0)
        return Compare("display_name" if name == "displayname" else "external_id", op, value)
    if name == "id":
        return id_term("id", op, value, node.path, every_group())
    if name in ("members", "members.value"):
        if op != "eq":
            raise FilterError(f"{node.path}: only eq is supported", 0)
        return id_term("member", op, value, node.path, every_group())
    if name in ("meta.created", "meta.lastmodified"):
        field = "created_at" if name == "meta.created" else "updated_at"
        return time_term(field, op, value, node.path)
    raise FilterError(f"{node.path}: Groups cannot be filtered by this attribute", 0)


def _members(node: filters.Filter, parent: filters.AttrPath) -> Expr:
    """Inside ``members[...]``: ``value eq "u"``, joined by and, or, not."""
    if isinstance(node, filters.And):
        return AllOf(tuple(_members(p, parent) for p in node.operands))
    if isinstance(node, filters.Or):
        return AnyOf(tuple(_members(p, parent) for p in node.operands))
    if isinstance(node, filters.Not):
        return NoneOf(_members(node.operand, parent))
    if isinstance(node, filters.Comparison) and node.path.normalized == "value" and node.op == "eq":
        return id_term("member", "eq", node.value, parent, every_group())
    raise FilterError(f'{parent}: only members[value eq "…"] is supported', 0)


def _name(path: filters.AttrPath) -> str:
    return path.normalized.removeprefix(GROUP_SCHEMA.lower() + ":")


@attrs.frozen
class GroupFields:
    """What a ``Group`` body sets; ``members`` ``None`` when it has no ``members``."""

    display_name: str
    external_id: str | None
    members: tuple[uuid.UUID, ...] | None


def member_ids(value: Any) -> tuple[uuid.UUID, ...]:
    """The user ids of a ``members`` value: a list of ``{"value": id}`` (``type`` ``User``)."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise bad_request("members: must be a list of objects")
    ids: list[uuid.UUID] = []
    for member in value:
        if not isinstance(member, Mapping):
            raise bad_request("members: must be a list of objects")
        kind = lookup(member, "type")
        if kind is not None and (not isinstance(kind, str) or kind.lower() != "user"):
            raise bad_request("members.type: only users can be members (type User)")
        raw = lookup(member, "value")
        if not isinstance(raw, str):
            raise bad_request("members.value: required, a user's id")
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            raise bad_request(f"members.value: no user has the id {raw!r}") from None
    return tuple(dict.fromkeys(ids))


def group_fields(resource: Mapping[str, Any]) -> GroupFields:
    """What a ``Group`` body (POST, PUT) sets; ``ScimError`` if it cannot."""
    check_body(resource, GROUP_SCHEMA)
    name = lookup(resource, "displayName")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("displayName: required, a string")
    external = lookup(resource, "externalId")
    if external is not None and not isinstance(external, str):
        raise bad_request("externalId: must be a string")
    members = lookup(resource, "members")
    return GroupFields(name, external, None if members is None else member_ids(members))
