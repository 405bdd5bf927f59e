"""The filter contract: ``FilterContract``.

``userplane.storage.FilterableStorage`` is an optional capability of a storage:
it runs filters (``userplane.filtering``) over users as one query, a page by
offset and a count. Its meaning is ``userplane.filtering.matches``: this suite
proves a store's SQL agrees with it, on fixed cases (each comparison of each
field, comparisons on missing values and their negation, ``%``, ``_``, ``\\``
and quotes taken literally, empty values, membership, pages in each sort) and
on random populations and expressions (hypothesis). Values are handed to the
store as the service prepares them (``userplane.users.prepare_filter``).

A store without the capability sees every test here skipped, saying so. On a
sealed store (``userplane.sealed_storage.SealedStorage`` with encryption on)
only what it can run is compared; the comparisons it cannot run on ciphertext
(a name's text, an email's substrings) and the personal sorts must be refused
with ``InvalidInput``.

Run alone, subclass it and provide a ``storage`` fixture yielding a migrated,
empty store, as for ``StorageContract``.

Requires pytest and hypothesis (``pip install 'userplane[testing]'``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane.emails import normalize_email
from userplane.errors import InvalidInput
from userplane.filtering import (
    FIELD_KINDS,
    KIND_OPS,
    OPTIONAL_FIELDS,
    And,
    Compare,
    Expr,
    Not,
    Or,
    Present,
    matches,
)
from userplane.groups import Group, name_key
from userplane.pagination import Position, Sort
from userplane.sealed_storage import SealedStorage
from userplane.storage import FilterableStorage, GroupStorage, Storage
from userplane.text import fold
from userplane.users import User, prepare_filter

_BASE_TIME = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
_CREATED = Sort()
_ALL = 1000
#: A property runs on the test's one database and removes what each example stored.
_SHARED_FIXTURES = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.differing_executors,
    HealthCheck.too_slow,
]
_SORTS = ["created_at", "-created_at", "email", "-email", "full_name", "-full_name"]
GroupsOf = Callable[[uuid.UUID], Collection[uuid.UUID]]


def _filterable(storage: Storage) -> FilterableStorage:
    """``storage`` as a ``FilterableStorage``, or the test is skipped saying so."""
    if not isinstance(storage, FilterableStorage):
        pytest.skip(
            "the store has no FilterableStorage capability (the core answers filters "
            "with a ConfigurationError)"
        )
    return storage


def _is_sealed(storage: Storage) -> bool:
    """Whether ``storage`` seals personal data (encryption on)."""
    return isinstance(storage, SealedStorage) and storage.sealer is not None


def _user(
    email: str,
    created_at: datetime,
    *,
    full_name: str | None = None,
    is_active: bool = True,
    external: tuple[str, str] | None = None,
    updated_at: datetime | None = None,
) -> User:
    source, external_id = external or (None, None)
    return User(
        id=uuid.uuid4(),
        email=email,
        full_name=full_name,
        is_active=is_active,
        created_at=created_at,
        updated_at=updated_at or created_at,
        version=1,
        external_source=source,
        external_id=external_id,
    )


class _Population:
    """Users stored for one test (or one example), a group of some, and their removal."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.users: dict[uuid.UUID, User] = {}
        self.groups: list[uuid.UUID] = []

    def add(self, user: User, *, deleted: bool = False) -> User:
        stored = self.storage.insert_user(user, normalize_email(user.email))
        self.users[stored.id] = stored
        if deleted:
            self.delete(stored.id)
        return self.users[stored.id]

    def delete(self, user_id: uuid.UUID) -> None:
        at = self.users[user_id].created_at + timedelta(days=1)
        self.users[user_id] = self.storage.delete_user(user_id, None, at)

    def group(self, members: Sequence[uuid.UUID]) -> uuid.UUID | None:
        """A group of ``members`` (live users), or ``None`` if the store keeps no groups."""
        if not isinstance(self.storage, GroupStorage):
            return None
        n = len(self.groups)
        group = Group(
            uuid.uuid4(), f"Filter group {n}", None, frozenset(), _BASE_TIME, _BASE_TIME, 1
        )
        self.storage.insert_group(group, name_key(group.display_name))
        self.groups.append(group.id)
        if members:
            self.storage.add_members(group.id, list(members), None, _BASE_TIME)
        return group.id

    def groups_of(self) -> GroupsOf:
        """Memberships as the store holds them (a deleted member's included)."""
        members: dict[uuid.UUID, set[uuid.UUID]] = {}
        if isinstance(self.storage, GroupStorage):
            for group_id in self.groups:
                for user_id in self.storage.member_ids(group_id):
                    members.setdefault(user_id, set()).add(group_id)
        return lambda user_id: members.get(user_id, set())

    def remove(self) -> None:
        """Remove every group and user stored here (for the next example)."""
        if isinstance(self.storage, GroupStorage):
            for group_id in self.groups:
                self.storage.delete_group(group_id, None)
        for user in self.users.values():
            if user.deleted_at is None:
                self.storage.delete_user(user.id, None, user.created_at + timedelta(days=1))
            assert self.storage.purge_user(user.id)
        self.users.clear()
        self.groups.clear()

    def expected(self, expr: Expr, include_deleted: bool, groups_of: GroupsOf) -> list[User]:
        """What ``matches`` accepts, oldest first."""
        ordered = sorted(self.users.values(), key=lambda u: (u.created_at, u.id.int))
        return [
            u
            for u in ordered
            if (include_deleted or u.deleted_at is None) and matches(expr, u, groups_of)
        ]

    def check(self, expr: Expr, groups_of: GroupsOf | None = None) -> None:
        """The store selects and counts exactly what ``matches`` accepts, deleted or not."""
        store = _filterable(self.storage)
        groups_of = groups_of or self.groups_of()
        prepared = prepare_filter(expr)
        for include_deleted in (False, True):
            want = self.expected(expr, include_deleted, groups_of)
            got = store.select_users(prepared, _CREATED, 0, _ALL, include_deleted)
            assert [_label(u) for u in got] == [_label(u) for u in want], (
                expr,
                include_deleted,
            )
            assert got == want, (expr, include_deleted)
            assert store.count_selected(prepared, include_deleted) == len(want), (
                expr,
                include_deleted,
            )


def _label(user: User) -> str:
    return f"{user.email}|{user.full_name}|{user.external_source}:{user.external_id}"


def _refused(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidInput) as info:
        call()
    assert [e.field for e in info.value.errors] in (["$.filter"], ["$.sort"]), info.value.errors


# -- hypothesis: populations and expressions --------------------------------------------------

_LOCAL = "aAbBéÉß_%"
_NAME = "aAbBéÉßK _%\\'"
_EXTERNAL = "aA1_%\\'"
_ZONES = [UTC, UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]


@st.composite
def _emails(draw: Any) -> str:
    local = draw(st.text(alphabet=_LOCAL, min_size=1, max_size=4))
    domain = draw(st.sampled_from(["example.org", "Example.ORG", "x.io"]))
    return f"{local}@{domain}"


def _valid_key(email: str) -> str | None:
    try:
        return normalize_email(email)
    except InvalidInput:
        return None


@st.composite
def _population_specs(draw: Any) -> list[dict[str, Any]]:
    emails = draw(
        st.lists(
            _emails().filter(lambda e: _valid_key(e) is not None),
            min_size=1,
            max_size=12,
            unique_by=normalize_email,
        )
    )
    offsets = draw(
        st.lists(st.integers(0, 10**9), min_size=len(emails), max_size=len(emails), unique=True)
    )
    externals = draw(
        st.lists(
            st.none()
            | st.tuples(
                st.sampled_from(["okta", "Okta", "scim"]),
                st.text(alphabet=_EXTERNAL, min_size=1, max_size=3),
            ),
            min_size=len(emails),
            max_size=len(emails),
        )
    )
    seen: set[tuple[str, str]] = set()
    specs = []
    for email, offset, external in zip(emails, offsets, externals, strict=True):
        if external in seen:
            external = None  # the pair is unique
        if external is not None:
            seen.add(external)
        created = _BASE_TIME + timedelta(microseconds=offset)
        specs.append(
            {
                "email": email,
                "created_at": created,
                "updated_at": created + timedelta(microseconds=draw(st.integers(0, 10**9))),
                "full_name": draw(st.none() | st.text(alphabet=_NAME, min_size=1, max_size=6)),
                "is_active": draw(st.booleans()),
                "external": external,
                "deleted": draw(st.integers(0, 3)) == 0,
                "member": draw(st.booleans()),
            }
        )
    return specs


def _variants(draw: Any, text: str) -> str:
    """``text`` or a part of it, in another letter case now and then."""
    if text and draw(st.booleans()):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, len(text)))
        text = text[start:end]
    change = draw(st.sampled_from(["same", "same", "upper", "lower", "swap"]))
    return {
        "same": text,
        "upper": text.upper(),
        "lower": text.lower(),
        "swap": text.swapcase(),
    }[change]


def _value(draw: Any, field: str, op: str, users: Sequence[User], group_ids: Sequence[Any]) -> Any:
    kind = FIELD_KINDS[field]
    if kind == "uuid":
        return draw(st.sampled_from([*(u.id for u in users), uuid.uuid4()]))
    if kind == "member":
        return draw(st.sampled_from([*group_ids, uuid.uuid4()]))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "time":
        times = [getattr(u, field) for u in users]
        at = draw(st.sampled_from(times))
        at += timedelta(microseconds=draw(st.sampled_from([0, 0, -1, 1])))
        return at.astimezone(draw(st.sampled_from(_ZONES)))  # the same instant, any offset
    stored = [getattr(u, field) for u in users if getattr(u, field) is not None]
    odd = ["", "%", "_", "\\", "'", "not-an-address", "a", "SS"]
    if not stored or draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(odd))
    text = draw(st.sampled_from(stored))
    if op in ("eq", "ne") and draw(st.booleans()):
        return draw(st.sampled_from([text, text.upper(), text.swapcase()]))
    return _variants(draw, text)


def _fields(sealed: bool) -> list[tuple[str, str]]:
    """Every (field, op) a store may be asked, and a sealed one only what it can run."""
    pairs = []
    for field, kind in FIELD_KINDS.items():
        for op in sorted(KIND_OPS[kind][0]):
            if sealed and (field == "full_name" or (field == "email" and op not in ("eq", "ne"))):
                continue
            pairs.append((field, op))
    return pairs


@st.composite
def _expressions(
    draw: Any, users: Sequence[User], group_ids: Sequence[Any], sealed: bool, depth: int = 3
) -> Expr:
    choice = draw(st.integers(0, 9)) if depth > 0 else draw(st.integers(0, 5))
    if choice <= 4:
        field, op = draw(st.sampled_from(_fields(sealed)))
        return Compare(field, op, _value(draw, field, op, users, group_ids))
    if choice == 5:
        return Present(draw(st.sampled_from(sorted(OPTIONAL_FIELDS))))
    if choice == 6:
        return Not(draw(_expressions(users, group_ids, sealed, depth - 1)))
    parts = draw(
        st.lists(_expressions(users, group_ids, sealed, depth - 1), min_size=2, max_size=3)
    )
    return (And if choice == 7 else Or)(tuple(parts))


class FilterContract:
    """The behaviour of a ``FilterableStorage``. Provide a ``storage`` fixture.

    The fixture yields a migrated, empty store (a ``SealedStorage`` for the
    encrypted mode).
    """

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        raise NotImplementedError("provide a `storage` fixture yielding an empty, migrated store")

    # -- the property ---------------------------------------------------------------------

    @settings(max_examples=40, deadline=None, suppress_health_check=_SHARED_FIXTURES)
    @given(data=st.data())
    def test_selects_and_counts_what_matches_accepts(
        self, storage: Storage, data: st.DataObject
    ) -> None:
        _filterable(storage)
        sealed = _is_sealed(storage)
        population = _Population(storage)
        try:
            specs = data.draw(_population_specs(), label="population")
            for spec in specs:
                population.add(
                    _user(
                        spec["email"],
                        spec["created_at"],
                        full_name=spec["full_name"],
                        is_active=spec["is_active"],
                        external=spec["external"],
                        updated_at=spec["updated_at"],
                    )
                )
            users = list(population.users.values())
            members = [u.id for u, s in zip(users, specs, strict=True) if s["member"]]
            group_ids = [g for g in [population.group(members)] if g is not None]
            for user, spec in zip(users, specs, strict=True):
                if spec["deleted"]:
                    population.delete(user.id)
            users = list(population.users.values())
            groups_of = population.groups_of()
            for _ in range(6):
                expr = data.draw(_expressions(users, group_ids, sealed), label="filter")
                population.check(expr, groups_of)
        finally:
            population.remove()

    # -- fixed cases ------------------------------------------------------------------------

    def _people(self, storage: Storage) -> _Population:
        """Seven users: names, missing names, external ids, a deleted one, a group of three."""
        population = _Population(storage)
        t = _BASE_TIME
        specs: list[dict[str, Any]] = [
            {"email": "Ann.Lee@Example.org", "full_name": "Ann Lee", "external": ("okta", "A-1")},
            {"email": "bob@example.org", "full_name": None, "external": None},
            {"email": "Zoë@Exämple.org", "full_name": "ZOË Straße", "external": ("okta", "z%1")},
            {"email": "carl_x@example.org", "full_name": "Carl 100% O'Hara", "external": None},
            {"email": "dora%x@example.net", "full_name": "dora_b\\c", "external": ("scim", "d_1")},
            {"email": "eve@example.com", "full_name": "Éve", "is_active": False, "external": None},
            {"email": "Finn@Example.org", "full_name": "finn", "external": ("Okta", "A-1")},
        ]
        for n, spec in enumerate(specs):
            population.add(
                _user(
                    spec["email"],
                    t + timedelta(minutes=n),
                    full_name=spec["full_name"],
                    is_active=spec.get("is_active", True),
                    external=spec["external"],
                    updated_at=t + timedelta(minutes=n, seconds=30 * (n % 3)),
                )
            )
        ids = list(population.users)
        population.group([ids[0], ids[2], ids[6]])
        population.delete(ids[6])
        return population

    def test_each_comparison_of_each_field(self, storage: Storage) -> None:
        _filterable(storage)
        population = self._people(storage)
        users = list(population.users.values())
        sealed = _is_sealed(storage)
        values: dict[str, list[Any]] = {
            "id": [users[1].id, uuid.uuid4()],
            "email": [
                "ANN.LEE@example.ORG",
                "zoë@exämple.org",
                "ZOË@EXÄMPLE.ORG",
                "@example.org",
                "example.org",
                "Ann",
                "ë@ex",
                "%x",
                "_",
                ".net",
                "nobody@example.org",
            ],
            "full_name": ["ann lee", "STRASSE", "straße", "ZOË", "Ann", "%", "_b", "'", "finn"],
            "external_source": ["okta", "Okta", "OKTA", "ok", "ta", "sc"],
            "external_id": ["A-1", "a-1", "A-", "-1", "%", "_", "z%"],
            "is_active": [True, False],
            "created_at": [users[2].created_at, users[2].created_at + timedelta(microseconds=1)],
            "updated_at": [users[4].updated_at, users[0].updated_at - timedelta(microseconds=1)],
            "group": [*population.groups, uuid.uuid4()],
        }
        groups_of = population.groups_of()
        for field, op in _fields(sealed):
            for value in values[field]:
                expr = Compare(field, op, value)  # type: ignore[arg-type]
                population.check(expr, groups_of)
                population.check(Not(expr), groups_of)

    def test_ne_and_not_on_missing_values(self, storage: Storage) -> None:
        _filterable(storage)
        population = _Population(storage)
        named = population.add(
            _user("named@example.org", _BASE_TIME, full_name="Named", external=("okta", "n1"))
        )
        bare = population.add(_user("bare@example.org", _BASE_TIME + timedelta(seconds=1)))
        store = _filterable(storage)

        def ids(expr: Expr) -> list[uuid.UUID]:
            return [u.id for u in store.select_users(prepare_filter(expr), _CREATED, 0, _ALL)]

        fields = ["external_id", "external_source"]
        if not _is_sealed(storage):
            fields.append("full_name")
        for field in fields:
            # No comparison matches a missing value, ne included; Not negates that.
            assert ids(Compare(field, "ne", "x")) == [named.id]
            assert ids(Compare(field, "eq", "x")) == []
            assert ids(Not(Compare(field, "eq", "x"))) == [named.id, bare.id]
            assert ids(Not(Compare(field, "ne", "x"))) == [bare.id]
            assert ids(Compare(field, "co", "")) == [named.id]
            assert ids(Not(Compare(field, "sw", ""))) == [bare.id]
            assert ids(Not(Not(Compare(field, "ew", "")))) == [named.id]
        for field in sorted(OPTIONAL_FIELDS):
            assert ids(Present(field)) == [named.id]
            assert ids(Not(Present(field))) == [bare.id]
            population.check(Or((Present(field), Not(Present(field)))))
        population.check(And((Not(Compare("external_id", "eq", "n1")), Present("external_id"))))

    def test_text_is_compared_literally(self, storage: Storage) -> None:
        # LIKE's wildcards (% and _), its escape (\) and quotes are plain characters here.
        _filterable(storage)
        population = _Population(storage)
        texts = ["100%", "1000", "a_b", "axb", "back\\slash", "backslash", "O'Hara", 'say "hi"']
        for n, text in enumerate(texts):
            local = "".join(c for c in text.lower() if c.isalnum() or c in "%_'") or "x"
            population.add(
                _user(
                    f"{local}{n}@example.org",
                    _BASE_TIME + timedelta(seconds=n),
                    full_name=text,
                    external=("src", text),
                )
            )
        values = ["%", "0%", "_", "a_", "_b", "\\", "\\s", "k\\", "'", "O'", "'h", '"', '"hi"']
        values += ["%%", "\\%", "''", "1%", "_%"]
        fields = ["external_id", "external_source", "email"]
        if not _is_sealed(storage):
            fields.append("full_name")
        for field in fields:
            for op in ("eq", "ne", "co", "sw", "ew"):
                if _is_sealed(storage) and field == "email" and op not in ("eq", "ne"):
                    continue
                for value in values:
                    population.check(Compare(field, op, value))
        if not _is_sealed(storage):
            store = _filterable(storage)
            got = store.select_users(
                prepare_filter(Compare("full_name", "co", "%")), _CREATED, 0, 9
            )
            assert [u.full_name for u in got] == ["100%"]
            got = store.select_users(prepare_filter(Compare("email", "co", "_")), _CREATED, 0, 9)
            assert [u.full_name for u in got] == ["a_b"]
            got = store.select_users(
                prepare_filter(Compare("full_name", "ew", "\\slash")), _CREATED, 0, 9
            )
            assert [u.full_name for u in got] == ["back\\slash"]

    def test_empty_values(self, storage: Storage) -> None:
        _filterable(storage)
        population = self._people(storage)
        groups_of = population.groups_of()
        for field, op in _fields(_is_sealed(storage)):
            if FIELD_KINDS[field] in ("email", "folded", "exact"):
                population.check(Compare(field, op, ""), groups_of)  # type: ignore[arg-type]
                population.check(Not(Compare(field, op, "")), groups_of)  # type: ignore[arg-type]
        store = _filterable(storage)
        live = [u for u in population.users.values() if u.deleted_at is None]
        # An empty address is no address: eq matches nobody, ne everybody.
        assert store.count_selected(prepare_filter(Compare("email", "eq", ""))) == 0
        assert store.count_selected(prepare_filter(Compare("email", "ne", ""))) == len(live)
        assert store.count_selected(
            prepare_filter(Compare("email", "ne", "not an address"))
        ) == len(live)

    def test_group_membership(self, storage: Storage) -> None:
        _filterable(storage)
        if not isinstance(storage, GroupStorage):
            pytest.skip("the store has no GroupStorage capability: no membership to filter by")
        population = self._people(storage)
        ids = list(population.users)
        [group] = population.groups
        empty = population.group([])
        assert empty is not None
        store = _filterable(storage)

        def selected(expr: Expr, include_deleted: bool = False) -> list[uuid.UUID]:
            rows = store.select_users(prepare_filter(expr), _CREATED, 0, _ALL, include_deleted)
            return [u.id for u in rows]

        assert selected(Compare("group", "eq", group)) == [ids[0], ids[2]]
        # A deleted member stays a member: seen when deleted users are.
        assert selected(Compare("group", "eq", group), True) == [ids[0], ids[2], ids[6]]
        assert selected(Compare("group", "eq", empty)) == []
        assert selected(Compare("group", "eq", uuid.uuid4())) == []
        assert selected(Not(Compare("group", "eq", group))) == [ids[1], ids[3], ids[4], ids[5]]
        assert selected(Or((Compare("group", "eq", group), Compare("group", "eq", empty)))) == [
            ids[0],
            ids[2],
        ]
        for expr in (
            Compare("group", "eq", group),
            And((Compare("group", "eq", group), Compare("is_active", "eq", True))),
            Not(Compare("group", "eq", empty)),
        ):
            population.check(expr)

    def test_pages_by_offset_and_keyset_in_each_sort(self, storage: Storage) -> None:
        store = _filterable(storage)
        population = self._people(storage)
        sealed = _is_sealed(storage)
        condition = Or((Present("full_name"), Compare("is_active", "eq", True)))
        for text in _SORTS:
            sort = Sort.parse(text)
            if sealed and sort.field != "created_at":
                _refused(partial(store.select_users, condition, sort, 0, 10))
                continue
            for include_deleted in (False, True):
                chosen = population.expected(condition, include_deleted, population.groups_of())
                want = sorted(chosen, key=lambda u: (_sort_key(u, sort.field), u.id.int))
                if sort.descending:
                    want.reverse()
                pages: list[User] = []
                for offset in range(0, len(want) + 3, 2):
                    page = store.select_users(
                        prepare_filter(condition), sort, offset, 2, include_deleted
                    )
                    assert len(page) <= 2
                    pages += page
                assert [u.id for u in pages] == [u.id for u in want], (text, include_deleted)
                assert store.select_users(condition, sort, len(want), 5, include_deleted) == []
                assert store.select_users(condition, sort, 0, 0, include_deleted) == []
                assert store.count_selected(condition, include_deleted) == len(want)
                # By keyset: from just past each user, the users after it, in order.
                for i, user in enumerate(want):
                    after = Position(_sort_key(user, sort.field), user.id)
                    rest = store.select_users(
                        prepare_filter(condition), sort, 0, 3, include_deleted, after
                    )
                    assert [u.id for u in rest] == [u.id for u in want[i + 1 : i + 4]], text

    def test_a_sealed_store_refuses_what_it_cannot_run(self, storage: Storage) -> None:
        store = _filterable(storage)
        population = self._people(storage)
        refused: list[Expr] = [
            Compare("full_name", "eq", "ann lee"),
            Compare("full_name", "co", "ann"),
            Compare("email", "co", "ann"),
            Compare("email", "sw", "ann"),
            Compare("email", "ew", ".org"),
            Not(Compare("full_name", "ne", "x")),
            And((Compare("is_active", "eq", True), Or((Present("full_name"), _name_co())))),
        ]
        for expr in refused:
            if _is_sealed(storage):
                _refused(partial(store.select_users, prepare_filter(expr), _CREATED, 0, 10))
                _refused(partial(store.count_selected, prepare_filter(expr)))
            else:  # encryption off: every comparison runs, as matches says
                population.check(expr)
        # Equality of the address runs on its blind index; a name's presence shows.
        population.check(Compare("email", "eq", "ann.lee@EXAMPLE.org"))
        population.check(Compare("email", "ne", "ZOË@exämple.org"))
        population.check(Present("full_name"))


def _name_co() -> Expr:
    return Compare("full_name", "co", "a")


def _sort_key(user: User, field: str) -> Any:
    if field == "email":
        return normalize_email(user.email)
    if field == "full_name":
        return fold(user.full_name or "")
    return user.created_at
