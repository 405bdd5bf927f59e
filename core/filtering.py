"""Filters over users as expressions of their fields, which every storage runs as SQL.

A provisioning protocol (SCIM's ``filter``) or an administrator's query
names users by conditions on their fields: ``email`` starts with, ``active``
is, ``updated_at`` is after, member of a group, combined with and, or, not.
This module holds the expression, the rules of which comparison each field
takes (``check``), and the reference meaning of each (``matches``), which
the SQL of every store must agree with (``userplane.testing`` proves it).

Groups are filtered the same way, over their own fields (``GROUP_FIELD_KINDS``,
``check_group_filter``, ``group_matches``).

A frontend maps its own language onto these fields; a field or comparison
outside them is refused (``InvalidInput``), never dropped: a filter that
cannot be run answers an error, not an unfiltered list.

Comparisons never match a field the user has no value for, ``ne`` included,
and ``Not`` negates that: ``Not(Compare("external_id", "eq", "x"))`` matches
a user without an external id. Text is compared as the field's kind says:
``email`` on the normalised address (``co``/``sw``/``ew`` on its folded
form), ``full_name`` folded (any letter case), the external id and its
source exactly.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import attrs

from userplane.errors import InvalidInput
from userplane.text import fold

if TYPE_CHECKING:
    from userplane.groups import Group
    from userplane.users import User

Op: TypeAlias = Literal["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"]
#: A comparison's value; the pair is internal: a sealed address's two blind-index values.
Value: TypeAlias = str | bool | datetime | uuid.UUID | tuple[str, str | None]

#: What each field holds, which decides the comparisons it takes.
FIELD_KINDS: Final = {
    "id": "uuid",
    "email": "email",
    "full_name": "folded",
    "is_active": "boolean",
    "external_source": "exact",
    "external_id": "exact",
    "created_at": "time",
    "updated_at": "time",
    #: Membership: the user belongs to the group with this id (``eq`` only).
    "group": "member",
}
#: The comparisons of each kind, and the type of value they take.
KIND_OPS: Final[dict[str, tuple[frozenset[str], type | tuple[type, ...]]]] = {
    "uuid": (frozenset({"eq", "ne"}), uuid.UUID),
    "email": (frozenset({"eq", "ne", "co", "sw", "ew"}), str),
    "folded": (frozenset({"eq", "ne", "co", "sw", "ew"}), str),
    "exact": (frozenset({"eq", "ne", "co", "sw", "ew"}), str),
    "boolean": (frozenset({"eq", "ne"}), bool),
    "time": (frozenset({"eq", "ne", "gt", "ge", "lt", "le"}), datetime),
    "member": (frozenset({"eq"}), uuid.UUID),
}
#: Fields ``Present`` may test (the others always hold a value).
OPTIONAL_FIELDS: Final = frozenset({"full_name", "external_source", "external_id"})
#: The fields of a group a filter may name (``GroupService.select``): its name in any
#: letter case, external id, times, and a live member (``member``: a user id, ``eq``).
GROUP_FIELD_KINDS: Final = {
    "id": "uuid",
    "display_name": "folded",
    "external_id": "exact",
    "created_at": "time",
    "updated_at": "time",
    "member": "member",
}
GROUP_OPTIONAL_FIELDS: Final = frozenset({"external_id"})
#: The most comparisons one filter holds, and the deepest nesting.
MAX_TERMS: Final = 64
MAX_DEPTH: Final = 16
FIELD: Final = "$.filter"


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _identifier(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    # Written into SQL as a name: a plugin's constant, checked all the same.
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{attribute.name} must be a lower-case SQL name, not {value!r}")


@attrs.frozen
class Linked:
    """A text a plugin keeps for some users, in a table of its own: ``table(user_id, column)``.

    A field a filter may name besides the users' own: the SCIM plugin keeps a
    client's ``userName`` this way. ``table`` holds at most one row per user
    (``user_id`` is its key); a user without a row, or with NULL there, has
    no value. ``kind`` is ``"exact"`` or ``"folded"``; a folded column holds
    the value as ``userplane.text.fold`` gives it, and the filter's values
    are folded to match (``UserService.select`` does it).
    """

    table: str = attrs.field(validator=_identifier)
    column: str = attrs.field(validator=_identifier)
    kind: Literal["exact", "folded"] = "exact"


@attrs.frozen
class Compare:
    """``field op value``: a time is aware UTC, an id a ``UUID``."""

    field: str | Linked
    op: Op
    value: Value


@attrs.frozen
class Present:
    """The user has a value for ``field`` (one of ``OPTIONAL_FIELDS``, or a ``Linked``)."""

    field: str | Linked


@attrs.frozen
class And:
    """Every part matches."""

    parts: tuple[Expr, ...]


@attrs.frozen
class Or:
    """At least one part matches."""

    parts: tuple[Expr, ...]


@attrs.frozen
class Not:
    """The part does not match."""

    part: Expr


Expr: TypeAlias = Compare | Present | And | Or | Not


def check(expr: Expr) -> None:
    """``InvalidInput`` (at ``$.filter``) unless every term names a field and a comparison
    its kind takes, with a value of the right type; the size and depth are bounded."""
    _check(expr, FIELD_KINDS, OPTIONAL_FIELDS, linked=True)


def check_group_filter(expr: Expr) -> None:
    """``check`` for a filter over groups (``GROUP_FIELD_KINDS``; no ``Linked`` fields)."""
    _check(expr, GROUP_FIELD_KINDS, GROUP_OPTIONAL_FIELDS, linked=False)


def _check(
    expr: Expr, kinds: Mapping[str, str], optional: Collection[str], *, linked: bool
) -> None:
    terms = 0

    def visit(node: Expr, depth: int) -> None:
        nonlocal terms
        if depth > MAX_DEPTH:
            raise _invalid(f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, And | Or):
            if len(node.parts) < 2:
                raise _invalid("and/or join two conditions or more")
            for part in node.parts:
                visit(part, depth + 1)
            return
        if isinstance(node, Not):
            visit(node.part, depth + 1)
            return
        terms += 1
        if terms > MAX_TERMS:
            raise _invalid(f"holds more than {MAX_TERMS} conditions")
        if isinstance(node.field, Linked) and not linked:
            raise _invalid(f"cannot filter by {node.field!r}")
        kind = node.field.kind if isinstance(node.field, Linked) else kinds.get(node.field)
        if kind is None:
            raise _invalid(f"cannot filter by {node.field!r}")
        if isinstance(node, Present):
            if not isinstance(node.field, Linked) and node.field not in optional:
                raise _invalid(f"{node.field!r} is always present")
            return
        ops, value_type = KIND_OPS[kind]
        if node.op not in ops:
            raise _invalid(f"{node.field!r} takes {', '.join(sorted(ops))}, not {node.op!r}")
        if not isinstance(node.value, value_type) or (
            value_type is not bool and isinstance(node.value, bool)
        ):
            raise _invalid(f"{node.field!r} compares with {_type_name(kind)}")
        if kind == "time" and node.value.utcoffset() is None:  # type: ignore[union-attr]
            raise _invalid(f"{node.field!r} compares with an aware time")
        if isinstance(node.value, str) and "\x00" in node.value:
            raise _invalid("values must not contain NUL")

    visit(expr, 0)


def _type_name(kind: str) -> str:
    return {
        "uuid": "an id",
        "member": "a group id",
        "boolean": "true or false",
        "time": "a time",
    }.get(kind, "text")


def _invalid(message: str) -> InvalidInput:
    return InvalidInput.for_field(FIELD, message)


def _no_links(field: Linked, user_id: uuid.UUID) -> str | None:
    raise TypeError(f"matches() needs `linked` to read {field.table}.{field.column}")


def matches(
    expr: Expr,
    user: User,
    groups_of: Callable[[uuid.UUID], Collection[uuid.UUID]],
    linked: Callable[[Linked, uuid.UUID], str | None] = _no_links,
) -> bool:
    """Whether ``user`` matches ``expr``: the meaning every store's SQL must have.

    ``groups_of(user_id)`` gives the ids of the groups a user belongs to;
    ``linked(field, user_id)`` a ``Linked`` field's value for a user, as stored.
    """
    if isinstance(expr, And):
        return all(matches(p, user, groups_of, linked) for p in expr.parts)
    if isinstance(expr, Or):
        return any(matches(p, user, groups_of, linked) for p in expr.parts)
    if isinstance(expr, Not):
        return not matches(expr.part, user, groups_of, linked)
    if isinstance(expr.field, Linked):
        held = linked(expr.field, user.id)
        if isinstance(expr, Present) or held is None:
            return held is not None
        return _text(expr.op, held, str(expr.value))
    if isinstance(expr, Present):
        return getattr(user, expr.field) is not None
    kind = FIELD_KINDS[expr.field]
    if kind == "member":
        return expr.value in groups_of(user.id)
    return _compare(kind, expr.op, getattr(user, expr.field), expr.value)


def group_matches(
    expr: Expr, group: Group, members_of: Callable[[uuid.UUID], Collection[uuid.UUID]]
) -> bool:
    """Whether ``group`` matches ``expr`` (over ``GROUP_FIELD_KINDS``): what stores' SQL means.

    ``members_of(group_id)`` gives the ids of a group's live members.
    """
    if isinstance(expr, And):
        return all(group_matches(p, group, members_of) for p in expr.parts)
    if isinstance(expr, Or):
        return any(group_matches(p, group, members_of) for p in expr.parts)
    if isinstance(expr, Not):
        return not group_matches(expr.part, group, members_of)
    assert isinstance(expr.field, str)
    if isinstance(expr, Present):
        return getattr(group, expr.field) is not None
    kind = GROUP_FIELD_KINDS[expr.field]
    if kind == "member":
        return expr.value in members_of(group.id)
    return _compare(kind, expr.op, getattr(group, expr.field), expr.value)


def _compare(kind: str, op: str, stored: Any, value: Any) -> bool:
    """``stored op value`` for a field of ``kind``; a missing value matches nothing."""
    if stored is None:
        return False
    if kind == "email":
        from userplane.emails import normalize_email

        key = normalize_email(stored)
        if op in ("eq", "ne"):
            try:
                wanted = normalize_email(str(value))
            except InvalidInput:
                return op == "ne"  # no address is one that is not an address
            return (key == wanted) == (op == "eq")
        return _text(op, key, fold(str(value)))
    if kind == "folded":
        return _text(op, fold(stored), fold(str(value)))
    if kind == "exact":
        return _text(op, stored, str(value))
    if op == "eq":
        return bool(stored == value)
    if op == "ne":
        return bool(stored != value)
    return bool(
        {
            "gt": stored > value,
            "ge": stored >= value,
            "lt": stored < value,
            "le": stored <= value,
        }[op]
    )


def _text(op: str, stored: str, value: str) -> bool:
    if op == "eq":
        return stored == value
    if op == "ne":
        return stored != value
    if op == "co":
        return value in stored
    if op == "sw":
        return stored.startswith(value)
    return stored.endswith(value)
