"""SCIM ``Groups`` over our groups: the resource a group is, its filters, what a client writes.

A group is a SCIM ``Group`` (RFC 7643 §4.2): ``displayName`` is its name,
``externalId`` its external id, ``members`` its live members (users; a
group in a group is not a thing we have). The roles a group grants are ours
alone: SCIM neither shows nor sets them.

Filters on groups are conjunctions of equalities on ``id``, ``displayName``,
``externalId`` and ``members`` (``members.value``): what identity providers
send (Entra ID's ``id eq "g" and members eq "u"``, everyone's ``displayName
eq``). Anything else answers ``invalidFilter``, never an unfiltered list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from userplane.plugin import Group
from userplane.plugins.scim import filters
from userplane.plugins.scim.errors import bad_request
from userplane.plugins.scim.filters import FilterError
from userplane.plugins.scim.users import iso, lookup

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


@attrs.frozen
class GroupCriteria:
    """A group filter as equalities; ``nothing`` when no group can match (an id that is none)."""

    group_id: uuid.UUID | None = None
    display_name: str | None = None
    external_id: str | None = None
    member: uuid.UUID | None = None
    nothing: bool = False


_FIELDS = {
    "id": "group_id",
    "displayname": "display_name",
    "externalid": "external_id",
    "members": "member",
    "members.value": "member",
}


def group_criteria(node: filters.Filter) -> GroupCriteria:
    """The SCIM ``filter`` on ``Groups`` as equalities; ``FilterError`` for any other."""
    terms = node.operands if isinstance(node, filters.And) else (node,)
    found: dict[str, Any] = {}
    nothing = False
    for term in terms:
        if isinstance(term, filters.ValuePath) and term.path.normalized.endswith("members"):
            term = _member_term(term)
        if not isinstance(term, filters.Comparison) or term.op != "eq":
            raise FilterError(
                "filters on Groups are eq on id, displayName, externalId or members, joined by and",
                0,
            )
        name = term.path.normalized.removeprefix(GROUP_SCHEMA.lower() + ":")
        field = _FIELDS.get(name)
        if field is None:
            raise FilterError(
                f"{term.path}: filtering Groups by this attribute is not supported", 0
            )
        if not isinstance(term.value, str):
            raise FilterError(f"{term.path}: compares with a string", 0)
        value: Any = term.value
        if field in ("group_id", "member"):
            try:
                value = uuid.UUID(term.value)
            except ValueError:
                nothing = True  # no group or user has this id
                continue
        if field in found and found[field] != value:
            nothing = True  # one attribute equal to two values
        found[field] = value
    return GroupCriteria(**found, nothing=nothing)


def _member_term(node: filters.ValuePath) -> filters.Filter:
    """``members[value eq "u"]`` is ``members eq "u"``."""
    inner = node.filter
    if isinstance(inner, filters.Comparison) and inner.path.normalized == "value":
        return filters.Comparison(filters.AttrPath("members"), inner.op, inner.value)
    raise FilterError(f'{node.path}: only members[value eq "…"] is supported', 0)


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
    if not isinstance(resource, Mapping):
        raise bad_request("the body must be a JSON object", "invalidSyntax")
    schemas = lookup(resource, "schemas")
    if schemas is not None and (
        not isinstance(schemas, list)
        or not any(isinstance(s, str) and s.lower() == GROUP_SCHEMA.lower() for s in schemas)
    ):
        raise bad_request(f"schemas: must include {GROUP_SCHEMA}", "invalidSyntax")
    name = lookup(resource, "displayName")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("displayName: required, a string")
    external = lookup(resource, "externalId")
    if external is not None and not isinstance(external, str):
        raise bad_request("externalId: must be a string")
    members = lookup(resource, "members")
    return GroupFields(name, external, None if members is None else member_ids(members))
