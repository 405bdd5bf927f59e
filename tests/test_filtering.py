"""Filters over users: the contract on each store (plain and sealed), and ``UserService.select``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest

from userplane import Registry, Settings
from userplane.errors import InvalidInput
from userplane.filtering import MAX_DEPTH, MAX_TERMS, And, Compare, Expr, Not, Or, Present
from userplane.keyring import NamedKey, new_key
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING
from userplane.users import NewUser

# -- the contract on each store ----------------------------------------------------------------


# The contract (FilterContract) runs inside StorageContract, on every store.


# -- the service -------------------------------------------------------------------------------


def _fields(exc: InvalidInput) -> list[str]:
    return sorted(e.field for e in exc.errors)


def _invalid(registry: Registry, expr: Expr, **kwargs: object) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        registry.users.select(expr, **kwargs)  # type: ignore[arg-type]
    return _fields(info.value)


def _nested(depth: int) -> Expr:
    expr: Expr = Compare("is_active", "eq", True)
    for _ in range(depth):
        expr = Not(expr)
    return expr


ACTIVE = Compare("is_active", "eq", True)

BAD_FILTERS: dict[str, Expr] = {
    "unknown field": Compare("password", "eq", "x"),
    "unknown field in Present": Present("nickname"),
    "Present of a field always present": Present("email"),
    "op not for the kind": Compare("is_active", "co", "t"),
    "gt on text": Compare("email", "gt", "a@b.org"),
    "co on a time": Compare("created_at", "co", "2026"),
    "ne on group": Compare("group", "ne", uuid.uuid4()),
    "text for a bool": Compare("is_active", "eq", "true"),
    "bool for text": Compare("full_name", "eq", True),
    "bool for a time": Compare("created_at", "eq", True),
    "string for an id": Compare("id", "eq", str(uuid.uuid4())),
    "string for a group": Compare("group", "eq", str(uuid.uuid4())),
    "naive datetime": Compare("created_at", "gt", datetime(2026, 1, 1)),
    "NUL": Compare("full_name", "co", "a\x00b"),
    "NUL in an email": Compare("email", "eq", "a\x00@b.org"),
    "too deep": _nested(MAX_DEPTH + 1),
    "too many terms": And(tuple(ACTIVE for _ in range(MAX_TERMS + 1))),
    "And with one part": And((ACTIVE,)),
    "Or with one part": Or((ACTIVE,)),
    "Or with none": Or(()),
    "bad part deep inside": And((ACTIVE, Not(Or((ACTIVE, Compare("nope", "eq", "x")))))),
}


@pytest.mark.parametrize("case", BAD_FILTERS)
def test_a_filter_that_cannot_run_is_invalid_at_filter(registry: Registry, case: str) -> None:
    assert _invalid(registry, BAD_FILTERS[case]) == ["$.filter"]


def test_the_bounds_themselves_are_accepted(registry: Registry) -> None:
    assert registry.users.select(_nested(MAX_DEPTH)).total == 0
    assert registry.users.select(And(tuple(ACTIVE for _ in range(MAX_TERMS)))).total == 0


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({"offset": -1}, ["$.offset"]),
        ({"limit": -1}, ["$.limit"]),
        ({"limit": 501}, ["$.limit"]),
        ({"sort": "password"}, ["$.sort"]),
        ({"sort": "--email"}, ["$.sort"]),
        ({"sort": "nope", "offset": -3, "limit": 10_000}, ["$.limit", "$.offset", "$.sort"]),
    ],
)
def test_paging_errors_name_their_fields(
    registry: Registry, kwargs: dict[str, object], fields: list[str]
) -> None:
    assert _invalid(registry, ACTIVE, **kwargs) == fields


def test_every_error_is_reported_at_once(registry: Registry) -> None:
    assert _invalid(registry, Present("email"), offset=-1, sort="x") == [
        "$.filter",
        "$.offset",
        "$.sort",
    ]


def _people(registry: Registry) -> list[uuid.UUID]:
    made = [
        registry.users.create(NewUser("Ann@Example.org", "Ann Lee")),
        registry.users.create(NewUser("bob@example.org", None, is_active=False)),
        registry.users.create(NewUser("Zoë@Example.org", "Zoë Straße")),
        registry.users.create(NewUser("carl@example.org", "Carl")),
    ]
    return [u.id for u in made]


def test_total_counts_all_and_items_are_one_page(registry: Registry) -> None:
    ids = _people(registry)
    everyone = Or((ACTIVE, Compare("is_active", "eq", False)))
    page = registry.users.select(everyone, offset=1, limit=2)
    assert page.total == 4
    assert [u.id for u in page.items] == ids[1:3]
    last = registry.users.select(everyone, offset=3, limit=2)
    assert (last.total, [u.id for u in last.items]) == (4, ids[3:])
    past = registry.users.select(everyone, offset=10, limit=2)
    assert (past.total, past.items) == (4, ())
    none = registry.users.select(everyone, limit=0)
    assert (none.total, none.items) == (4, ())
    newest = registry.users.select(everyone, sort="-created_at", limit=1)
    assert [u.id for u in newest.items] == [ids[3]]
    by_name = registry.users.select(Present("full_name"), sort="full_name")
    assert [u.id for u in by_name.items] == [ids[0], ids[3], ids[2]]
    # Deleted users are counted only when asked for.
    registry.users.delete(ids[0])
    assert registry.users.select(everyone).total == 3
    again = registry.users.select(everyone, include_deleted=True)
    assert again.total == 4
    assert [u.id for u in again.items] == ids


def test_values_areprepare_filter_as_the_kinds_say(registry: Registry) -> None:
    ids = _people(registry)

    def chosen(expr: Expr) -> list[uuid.UUID]:
        return [u.id for u in registry.users.select(expr).items]

    assert chosen(Compare("email", "eq", "ANN@EXAMPLE.ORG")) == [ids[0]]
    assert chosen(Compare("email", "eq", "ZOË@example.org")) == [ids[2]]
    assert chosen(Compare("email", "sw", "ZO")) == [ids[2]]
    assert chosen(Compare("email", "ew", "@EXAMPLE.org")) == ids
    assert chosen(Compare("full_name", "co", "STRASSE")) == [ids[2]]
    assert chosen(Compare("full_name", "eq", "ann lee")) == [ids[0]]
    assert chosen(Compare("full_name", "ne", "ann lee")) == [ids[2], ids[3]]


@pytest.mark.parametrize("value", ["not an address", "", "ann@", "@example.org", "Ann"])
def test_an_email_that_is_no_address_is_equal_to_none(registry: Registry, value: str) -> None:
    ids = _people(registry)
    assert registry.users.select(Compare("email", "eq", value)).total == 0
    everyone = registry.users.select(Compare("email", "ne", value))
    assert [u.id for u in everyone.items] == ids
    assert registry.users.select(Not(Compare("email", "eq", value))).total == len(ids)


@pytest.fixture
def encrypted(database_url: str) -> Iterator[Registry]:
    kek: NamedKey = new_key("kek-1")
    index: NamedKey = new_key("index-1")
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            KEYS_SETTING: kek.entry(),
            INDEX_KEYS_SETTING: index.entry(),
        }
    )
    with Registry(settings) as registry:
        registry.migrate()
        yield registry


def test_with_encryption_email_equality_works_and_text_search_is_refused(
    encrypted: Registry,
) -> None:
    ids = _people(encrypted)
    found = encrypted.users.select(Compare("email", "eq", "ANN@example.ORG"))
    assert [u.id for u in found.items] == [ids[0]]
    assert found.items[0].email == "Ann@Example.org"
    assert encrypted.users.select(Compare("email", "ne", "ann@example.org")).total == 3
    assert encrypted.users.select(Compare("email", "eq", "not an address")).total == 0
    assert encrypted.users.select(Present("full_name")).total == 3
    assert encrypted.users.select(And((ACTIVE, Not(Present("full_name"))))).total == 0
    for expr in (
        Compare("full_name", "co", "ann"),
        Compare("full_name", "eq", "Ann Lee"),
        Compare("email", "sw", "ann"),
        Or((ACTIVE, Not(Compare("full_name", "co", "x")))),
    ):
        assert _invalid(encrypted, expr) == ["$.filter"]
    assert _invalid(encrypted, ACTIVE, sort="email") == ["$.sort"]
    assert _invalid(encrypted, ACTIVE, sort="-full_name") == ["$.sort"]


def test_mid_backfill_email_ne_and_not_match_rows_not_yet_indexed(database_url: str) -> None:
    # Mid-backfill a row's second index value is NULL until the backfill reaches it: an
    # address's ne, or the negation of its eq, must still match such a row.
    with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})) as plain:
        plain.migrate()
        for email in ("ann@example.org", "bob@example.org", "cy@example.org"):
            plain.users.create(NewUser(email))
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            KEYS_SETTING: new_key("kek-1").entry(),
            INDEX_KEYS_SETTING: f"{new_key('index-1').entry()},plain",
        }
    )
    with Registry(settings) as registry:
        assert registry.users.select(Compare("email", "eq", "ANN@example.org")).total == 1
        assert registry.users.select(Compare("email", "ne", "ann@example.org")).total == 2
        assert registry.users.select(Not(Compare("email", "eq", "ann@example.org"))).total == 2
        assert registry.users.select(Compare("email", "ne", "nobody@example.org")).total == 3
