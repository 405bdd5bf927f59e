"""SCIM ``Users``: the resource a user is, and SCIM filters run as our SQL.

The property: for generated users and SCIM filters over every supported
attribute, the users the database selects (``UserService.select`` of
``user_filter``) are exactly those whose SCIM resource the RFC 7644 evaluator
(``filters.matches``) accepts. On both backends, real databases.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane import Registry
from userplane.groups import NewGroup
from userplane.plugin import fold
from userplane.plugins.scim import filters
from userplane.plugins.scim.filters import FilterError, parse_filter
from userplane.plugins.scim.store import ScimUser, ScimUsers
from userplane.plugins.scim.users import user_filter, user_resource
from userplane.sql import SQLStorage
from userplane.users import NewUser, User, UserChanges

SOURCE = "scim"
BASE = "https://id.example.org/scim/v2"
LOCALS = ["ann", "Ann.Lee", "bob", "bo", "cid_x", "dee"]
DOMAINS = ["example.org", "Example.COM", "mail.example.org"]
NAMES = ["Ann Lee", "ann", "Bob Stone", "Dee"]
IDS = ["00uA", "00ua", "X-1"]


@pytest.fixture
def people(registry: Registry) -> dict[str, Any]:
    """Nine users of every shape, and a group holding some of them.

    Entra's string booleans (``active eq "False"``) are ours to accept and the
    strict evaluator's to refuse: they are tested on their own, below.
    """
    users: list[User] = []
    for i in range(9):
        email = f"{LOCALS[i % len(LOCALS)]}{i}@{DOMAINS[i % len(DOMAINS)]}"
        external: dict[str, Any] = {}
        if i % 3 == 0:
            external = {"external_source": SOURCE, "external_id": IDS[i % len(IDS)] + str(i)}
        elif i % 3 == 1:
            external = {"external_source": "okta", "external_id": IDS[i % len(IDS)] + str(i)}
        user = registry.users.create(
            NewUser(
                email,
                NAMES[i % len(NAMES)] if i % 4 else None,
                is_active=i % 5 != 0,
                **external,
            )
        )
        if i % 2:
            user = registry.users.update(user.id, UserChanges(full_name=NAMES[(i + 1) % 4]))
        users.append(user)
    group = registry.groups.create(NewGroup("Team"))
    registry.groups.add_members(group.id, [u.id for u in users[::2]])
    # What SCIM clients wrote of some: a userName that is not the address (one that
    # is its own address in other letters), the address's type and primary flag.
    rows = ScimUsers(_sql(registry))
    for i, row in {
        2: ScimUser("ann.lee", "home", False),
        4: ScimUser(None, "Work", True),
        5: ScimUser(users[5].email.upper(), None, None),
        7: ScimUser("Bo", "other", None),
    }.items():
        key = None if row.user_name is None else fold(row.user_name)
        rows.put(users[i].id, row, key)
    return {"users": [registry.users.get(u.id) for u in users], "group": group}


def _sql(registry: Registry) -> SQLStorage:
    storage = registry.storage
    assert isinstance(storage, SQLStorage)
    return storage


def _resource(registry: Registry, user: User) -> dict[str, Any]:
    groups = registry.groups.groups_of(user.id)
    row = ScimUsers(_sql(registry)).get(user.id)
    return user_resource(user, base_url=BASE, source=SOURCE, groups=groups, row=row)


def _quote(text: str) -> str:
    return filters.render_value(text)


def _terms(people: dict[str, Any]) -> st.SearchStrategy[str]:
    users: list[User] = people["users"]
    emails = [u.email for u in users]
    pieces = st.sampled_from(
        [
            *emails,
            *(e.upper() for e in emails),
            *(e.split("@")[0] for e in emails),
            *(e.split("@")[1] for e in emails),
            "ann",
            "ANN",
            "",
            "@",
            "not an address",
            "ann.lee",
            "BO",
            "bo",
            "Lee",
        ]
    )
    names = st.sampled_from([*NAMES, "ann", "LEE", "", "x"])
    ids = st.sampled_from([*(u.external_id for u in users if u.external_id), "00UA0", "nope", ""])
    moments = st.sampled_from(
        [u.updated_at for u in users] + [u.created_at + timedelta(microseconds=1) for u in users]
    )
    user_ids = st.sampled_from([str(u.id) for u in users] + ["not-an-id", str(uuid.uuid4())])
    text_op = st.sampled_from(["eq", "ne", "co", "sw", "ew"])
    order_op = st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"])
    group = str(people["group"].id)
    return st.one_of(
        st.builds(lambda op, v: f"userName {op} {_quote(v)}", text_op, pieces),
        st.builds(lambda op, v: f"emails.value {op} {_quote(v)}", text_op, pieces),
        st.builds(
            lambda op, v: f'emails[type eq "work" and value {op} {_quote(v)}]', text_op, pieces
        ),
        st.builds(lambda op, v: f"displayName {op} {_quote(v)}", text_op, names),
        st.builds(lambda op, v: f"externalId {op} {_quote(v)}", text_op, ids),
        st.builds(
            lambda op, v: f"active {op} {v}",
            st.sampled_from(["eq", "ne"]),
            st.sampled_from(["true", "false"]),
        ),
        st.builds(lambda op, v: f"id {op} {_quote(v)}", st.sampled_from(["eq", "ne"]), user_ids),
        st.builds(
            lambda field, op, v: f"{field} {op} {_quote(v.isoformat().replace('+00:00', 'Z'))}",
            st.sampled_from(["meta.lastModified", "meta.created"]),
            order_op,
            moments,
        ),
        st.just(f'groups.value eq "{group}"'),
        st.sampled_from(["displayName pr", "externalId pr", "userName pr", "emails pr"]),
        st.builds(
            lambda op, v: f"emails.type {op} {_quote(v)}",
            text_op,
            st.sampled_from(["work", "WORK", "home", "other", "o", "", "wo"]),
        ),
        st.builds(
            lambda op, v: f"emails[primary {op} {v}]",
            st.sampled_from(["eq", "ne"]),
            st.sampled_from(["true", "false"]),
        ),
        st.sampled_from(["emails.type pr", "emails.primary pr", 'emails[type eq "home"]']),
    )


def _filters(people: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.recursive(
        _terms(people),
        lambda inner: st.one_of(
            st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
            st.builds(lambda a, b: f"({a}) or ({b})", inner, inner),
            st.builds(lambda a: f"not ({a})", inner),
        ),
        max_leaves=4,
    )


def test_sql_selects_what_the_rfc_evaluator_accepts(
    registry: Registry, people: dict[str, Any]
) -> None:
    resources = {u.id: _resource(registry, u) for u in people["users"]}

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(text=_filters(people))
    def check(text: str) -> None:
        node = parse_filter(text)
        selected = registry.users.select(user_filter(node, SOURCE), limit=100)
        expected = [u.id for u in people["users"] if filters.matches(node, resources[u.id])]
        assert [u.id for u in selected.items] == expected, text
        assert selected.total == len(expected)

    check()


def test_the_resource_of_a_user(registry: Registry, people: dict[str, Any]) -> None:
    user = people["users"][0]
    resource = _resource(registry, user)
    assert resource["schemas"] == [filters.CORE_USER]
    assert resource["id"] == str(user.id)
    assert resource["userName"] == user.email
    assert resource["emails"] == [{"value": user.email, "type": "work", "primary": True}]
    assert resource["externalId"] == user.external_id  # from this source
    assert resource["meta"]["location"] == f"{BASE}/Users/{user.id}"
    assert resource["meta"]["version"] == f'W/"{user.version}"'
    assert resource["groups"][0]["value"] == str(people["group"].id)
    okta = people["users"][1]
    assert "externalId" not in _resource(registry, okta)  # another source's id


@pytest.mark.parametrize(
    "text",
    [
        'name.givenName eq "Ann"',
        'title eq "x"',
        'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "1"',
        "nickName pr",
        'userName gt "a"',
        'active co "t"',
        'meta.lastModified co "2026"',
        'meta.lastModified gt "yesterday"',
        'phoneNumbers[type eq "work"]',
        'groups.value ne "x"',
        "groups pr",
        "displayName eq 1",
    ],
)
def test_what_cannot_be_run_is_an_invalid_filter(text: str) -> None:
    with pytest.raises(FilterError) as info:
        user_filter(parse_filter(text), SOURCE)
    assert info.value.scim_type == "invalidFilter"


def test_entra_and_okta_lookups(registry: Registry, people: dict[str, Any]) -> None:
    users: list[User] = people["users"]
    first = users[0]
    for text in (
        f"userName eq {_quote(first.email.upper())}",
        f"externalId eq {_quote(first.external_id or '')}",
        f'emails[type eq "work" and value eq {_quote(first.email)}]',
        f'id eq "{first.id}" and groups.value eq "{people["group"].id}"',
    ):
        found = registry.users.select(user_filter(parse_filter(text), SOURCE))
        assert [u.id for u in found.items] == [first.id], text
    # Entra's string booleans.
    inactive = registry.users.select(user_filter(parse_filter('active eq "False"'), SOURCE))
    assert {u.id for u in inactive.items} == {u.id for u in users if not u.is_active}
    # A time in another offset is the same instant.
    moment = first.updated_at.astimezone(datetime.now(UTC).astimezone().tzinfo)
    later = registry.users.select(
        user_filter(parse_filter(f'meta.lastModified ge "{moment.isoformat()}"'), SOURCE)
    )
    assert first.id in {u.id for u in later.items}
