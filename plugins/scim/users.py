"""SCIM ``Users`` over our users: the resource a user is, and filters as ``userplane.filtering``.

A user is a SCIM ``User`` (RFC 7643 §4.1) this way:

- ``userName`` is the name the client gave (``store.ScimUsers``), or the
  address where it gave none other; the one ``emails`` value is the
  address, with the ``type`` and ``primary`` the client gave it (a user no
  client wrote: ``work``, primary); ``displayName`` is the name; ``active``
  is ``is_active``;
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
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from userplane.plugin import And as AllOf
from userplane.plugin import Compare, Expr, Group, Linked, User, fold
from userplane.plugin import Not as NoneOf
from userplane.plugin import Or as AnyOf
from userplane.plugin import Present as HasValue
from userplane.plugins.scim import filters
from userplane.plugins.scim.errors import bad_request
from userplane.plugins.scim.filters import FilterError
from userplane.plugins.scim.store import EMAIL_PRIMARY, EMAIL_TYPE, ROW, USER_NAME, ScimUser

USER_SCHEMA: Final = filters.CORE_USER
#: The longest ``emails.type`` kept (canonical ones are work, home, other).
MAX_EMAIL_TYPE: Final = 64
#: The type of the address of a user no client wrote.
EMAIL_TYPE_DEFAULT: Final = "work"


def iso(moment: datetime) -> str:
    """A time as SCIM writes one: RFC 3339 UTC with ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def user_resource(
    user: User,
    *,
    base_url: str,
    source: str,
    groups: Iterable[Group] = (),
    row: ScimUser | None = None,
) -> dict[str, Any]:
    """``user`` as a SCIM ``User``; ``base_url`` is the service's ``…/scim/v2``.

    ``row`` is what a client wrote of the user beyond its fields, if one did.
    """
    email: dict[str, Any] = {"value": user.email, "type": EMAIL_TYPE_DEFAULT, "primary": True}
    if row is not None:
        email = {"value": user.email}
        if row.email_type is not None:
            email["type"] = row.email_type
        if row.email_primary is not None:
            email["primary"] = row.email_primary
    resource: dict[str, Any] = {
        "schemas": [USER_SCHEMA],
        "id": str(user.id),
        "userName": user.email if row is None or row.user_name is None else row.user_name,
        "active": user.is_active,
        "emails": [email],
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


def every_user() -> Expr:
    """What every user matches: ``is_active`` is never missing, true or false."""
    return AnyOf((Compare("is_active", "eq", True), Compare("is_active", "eq", False)))


def _never() -> Expr:
    return NoneOf(every_user())


def user_filter(
    node: filters.Filter,
    source: str,
    holder: Callable[[str], uuid.UUID | None] | None = None,
) -> Expr:
    """The SCIM ``filter`` on ``Users`` as a filter of our users; ``FilterError`` otherwise.

    ``holder(key)`` names the user whose kept userName folds to ``key``: with it,
    ``userName eq`` finds that user alone, though another user's address (given
    elsewhere, over ``/api/v1``) be the same text. The lookup an identity
    provider makes before every create then never answers two accounts.
    """
    return _Users(source, holder).expr(node)


class _Users:
    """The mapping of one SCIM source's filters onto the users' fields."""

    def __init__(
        self, source: str, holder: Callable[[str], uuid.UUID | None] | None = None
    ) -> None:
        self.source = source
        self.holder = holder

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
        if name == "username":
            # The stored name where there is one, the address where there is none.
            stored = self._text(USER_NAME, op, value, node.path)
            address = self._text("email", op, value, node.path)
            unnamed = AllOf((NoneOf(HasValue(USER_NAME)), address))
            if op == "eq" and self.holder is not None and isinstance(value, str):
                held = self.holder(fold(value))
                return unnamed if held is None else Compare("id", "eq", held)
            return AnyOf((stored, unnamed))
        if name in ("emails.value", "emails"):
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
            return id_term("id", op, value, node.path, every_user())
        if name in ("groups.value", "groups"):
            if op != "eq":
                raise FilterError(f"{node.path}: only eq is supported", 0)
            return id_term("group", op, value, node.path, every_user())
        if name == "emails.type":
            stored = self._text(EMAIL_TYPE, op, value, node.path)
            return AnyOf((stored, AllOf((NoneOf(HasValue(ROW)), _work(op, str(value))))))
        if name == "emails.primary":
            if isinstance(value, str):
                value = {"true": True, "false": False}.get(value.lower(), value)
            if op not in ("eq", "ne") or not isinstance(value, bool):
                raise FilterError(f"{node.path}: compares with true or false, by eq or ne", 0)
            stored = Compare(EMAIL_PRIMARY, op, str(value).lower())
            default = every_user() if (value is True) == (op == "eq") else _never()
            return AnyOf((stored, AllOf((NoneOf(HasValue(ROW)), default))))
        if name in ("meta.lastmodified", "meta.created"):
            field = "updated_at" if name == "meta.lastmodified" else "created_at"
            return time_term(field, op, value, node.path)
        raise _unsupported(node.path)

    def _present(self, name: str, path: filters.AttrPath) -> Expr:
        if name in ("username", "emails", "emails.value", "active", "id"):
            return every_user()
        if name in ("meta.created", "meta.lastmodified", "meta"):
            return every_user()
        if name in ("emails.type", "emails.primary"):
            field = EMAIL_TYPE if name == "emails.type" else EMAIL_PRIMARY
            return AnyOf((HasValue(field), NoneOf(HasValue(ROW))))
        if name == "displayname":
            return HasValue("full_name")
        if name == "externalid":
            return AllOf((Compare("external_source", "eq", self.source), HasValue("external_id")))
        if name in ("groups", "groups.value"):
            # Member of some group: not one comparison of ours; refused, never guessed.
            raise FilterError(f"{path}: pr is not supported", 0)
        raise _unsupported(path)

    @staticmethod
    def _text(field: str | Linked, op: Any, value: Any, path: filters.AttrPath) -> Expr:
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


def id_term(field: str, op: Any, value: Any, path: filters.AttrPath, every: Expr) -> Expr:
    """``field op id``; ``every`` matches every resource (an id that is none: eq none, ne all)."""
    if op not in ("eq", "ne") or not isinstance(value, str):
        raise FilterError(f"{path}: compares with an id, by eq or ne", 0)
    try:
        wanted = uuid.UUID(value)
    except ValueError:
        return NoneOf(every) if op == "eq" else every
    return Compare(field, op, wanted)


def time_term(field: str, op: Any, value: Any, path: filters.AttrPath) -> Expr:
    """``field op time``: an RFC 3339 time, UTC where it names no offset."""
    if op in ("co", "sw", "ew") or not isinstance(value, str):
        raise FilterError(f"{path}: compares with a time (RFC 3339)", 0)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"{path}: {value!r} is not a time (RFC 3339)", 0) from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return Compare(field, op, moment)


def _work(op: str, value: str) -> Expr:
    """Whether ``work`` (a user no client wrote has a work address) compares so with ``value``."""
    if op not in ("eq", "ne", "co", "sw", "ew"):
        raise FilterError(f"emails.type: {op} is not supported on text", 0)
    wanted = fold(value)
    held = {
        "eq": wanted == EMAIL_TYPE_DEFAULT,
        "ne": wanted != EMAIL_TYPE_DEFAULT,
        "co": wanted in EMAIL_TYPE_DEFAULT,
        "sw": EMAIL_TYPE_DEFAULT.startswith(wanted),
        "ew": EMAIL_TYPE_DEFAULT.endswith(wanted),
    }[op]
    return every_user() if held else _never()


def _name(path: filters.AttrPath) -> str:
    return _strip_core(path.normalized)


def _strip_core(name: str) -> str:
    prefix = filters.CORE_USER.lower() + ":"
    return name[len(prefix) :] if name.startswith(prefix) else name


def _unsupported(path: filters.AttrPath) -> FilterError:
    return FilterError(f"{path}: filtering by this attribute is not supported", 0)


# -- what a client writes ------------------------------------------------------------------------


@attrs.frozen
class UserFields:
    """The attributes of a ``User`` a client wrote, as ours.

    ``active`` is ``None`` when the client left it out: a replace (PUT) keeps
    the user's, as Okta's replaces, which omit it, expect.
    """

    user_name: str
    email: str
    display_name: str | None
    active: bool | None
    external_id: str | None
    #: The ``type`` and ``primary`` the client gave the address, if any.
    email_type: str | None = None
    email_primary: bool | None = None


def boolean(value: Any, name: str) -> bool:
    """A SCIM boolean; Entra ID sends ``"True"``/``"False"`` as strings."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise bad_request(f"{name}: must be true or false")
    return value


def _text_of(resource: Mapping[str, Any], name: str) -> str | None:
    value = lookup(resource, name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name}: must be a string")
    return value


def _email_of(resource: Mapping[str, Any], user_name: str) -> Mapping[str, Any]:
    """The address: the primary email, else the first, else the userName if it is one."""
    emails = lookup(resource, "emails")
    if emails is None or emails == []:
        if "@" in user_name:
            return {"value": user_name}
        raise bad_request("emails: required (the userName is no email address)")
    if not isinstance(emails, list) or not all(isinstance(e, Mapping) for e in emails):
        raise bad_request("emails: must be a list of objects")
    primary = [
        e
        for e in emails
        if lookup(e, "primary") is not None and boolean(lookup(e, "primary"), "emails.primary")
    ]
    if len(primary) > 1:  # RFC 7643 §2.4: true at most once
        raise bad_request("emails.primary: true on one address at most")
    chosen = primary[0] if primary else emails[0]
    assert isinstance(chosen, Mapping)
    if not isinstance(lookup(chosen, "value"), str):
        raise bad_request("emails.value: must be a string")
    kind = lookup(chosen, "type")
    if kind is not None and (
        not isinstance(kind, str)
        or not 0 < len(kind) <= MAX_EMAIL_TYPE
        or any(ord(c) < 32 or ord(c) == 127 for c in kind)
    ):
        raise bad_request(
            f"emails.type: a word such as work or home, 1 to {MAX_EMAIL_TYPE} characters, "
            "no control characters"
        )
    return chosen


def user_fields(resource: Mapping[str, Any]) -> UserFields:
    """What a ``User`` body (POST, PUT, or a patched resource) sets; ``ScimError`` if it cannot.

    Attribute names match in any letter case; read-only ones (``id``,
    ``meta``, ``groups``) and undeclared ones are ignored.
    """
    check_body(resource, USER_SCHEMA)
    user_name = _text_of(resource, "userName")
    if user_name is None or not user_name.strip():
        raise bad_request("userName: required")
    active = lookup(resource, "active")
    email = _email_of(resource, user_name)
    primary = lookup(email, "primary")
    return UserFields(
        user_name=user_name,
        email=lookup(email, "value"),
        display_name=_text_of(resource, "displayName"),
        active=None if active is None else boolean(active, "active"),
        external_id=_text_of(resource, "externalId"),
        email_type=lookup(email, "type"),
        email_primary=None if primary is None else boolean(primary, "emails.primary"),
    )


def check_body(resource: Any, schema: str) -> None:
    """``ScimError`` unless ``resource`` is an object whose ``schemas`` (if any) name ``schema``."""
    if not isinstance(resource, Mapping):
        raise bad_request("the body must be a JSON object", "invalidSyntax")
    schemas = lookup(resource, "schemas")
    if schemas is not None and (
        not isinstance(schemas, list)
        or not any(isinstance(s, str) and s.lower() == schema.lower() for s in schemas)
    ):
        raise bad_request(f"schemas: must include {schema}", "invalidSyntax")


def lookup(resource: Mapping[str, Any], name: str) -> Any:
    """``resource[name]`` matching the name in any letter case; ``None`` if absent."""
    if name in resource:
        return resource[name]
    lowered = name.lower()
    for key, value in resource.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None
