"""The SCIM server over HTTP, in process, on SQLite and PostgreSQL: what the checker skips.

``tests/test_scim_conformance.py`` runs ``scim2-tester`` (create, read,
replace, delete, PATCH of each declared attribute) and
``test_scim_replay.py`` replays identity providers' requests. This file
drives ``/scim/v2`` through ``falcon.testing.TestClient`` with a key of the
``provisioner`` role and checks the rest of RFC 7644 as docs/scim.md
promises it:

- filters on Users (every operator on ``userName``, for a name that is the
  address and one that is not; ``emails``, ``externalId``, ``displayName``,
  ``active``, ``meta`` times, logic) and on Groups (equalities joined by
  ``and``), and the 400 ``invalidFilter`` of what cannot be run;
- paging (``startIndex``/``count``, as a property), sorting, ``attributes``
  and ``excludedAttributes``, ``POST …/.search``;
- ETags (``If-None-Match``, ``If-Match`` on PUT, PATCH and DELETE, of users
  and groups);
- every error as a SCIM ``Error`` (401, 403, 404, 405, 409, 400, 412, 415),
  and a provisioner's key being no key to ``/api/v1``;
- races (one creation of a userName wins; concurrent member additions all
  land; concurrent PATCHes of one user lose nothing; of writes sharing one
  ``If-Match`` only one passes), group membership PATCH and PUT, the refusal
  of what would hand out or take away roles beyond the provisioner's
  (memberships, an administrator's address, reactivation), encryption's
  rule on ``userName``, and DELETE as a soft delete.
"""

from __future__ import annotations

import json
import operator
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import pytest
from clients import new_key
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyrings import opened

from userplane.frontends.http import create_app
from userplane.plugin import NamedKey, NewGroup, NewUser, Registry

SCIM = "/scim/v2"
USERS = f"{SCIM}/Users"
GROUPS = f"{SCIM}/Groups"
SCIM_JSON = "application/scim+json"
HEADERS = {"Content-Type": SCIM_JSON}
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
#: What no error body may carry: internals of a failure.
INTERNALS = ("Traceback", 'File "', ".py", "psycopg", "sqlite3")


# --------------------------------------------------------------------------- helpers


class Scim:
    """A provisioner's client of one app, with the few requests every test makes."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key
        self.http = self.new_client()

    def new_client(self) -> testing.TestClient:
        """Another client of the same app and key (a thread's own)."""
        return testing.TestClient(self.app, headers={"Authorization": f"Bearer {self.key}"})

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        http: testing.TestClient | None = None,
    ) -> testing.Result:
        extra = {**HEADERS, **(headers or {})}
        text = None if body is None else json.dumps(body)
        return (http or self.http).simulate_request(
            method, path, body=text, params=params, headers=extra
        )

    def create_user(
        self, user_name: str, email: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": user_name, **fields}
        if email is not None:
            body.setdefault("emails", [{"value": email}])
        resp = self.send("POST", USERS, body)
        assert resp.status_code == 201, resp.text
        created: dict[str, Any] = resp.json
        return created

    def create_group(
        self, name: str, members: list[str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "displayName": name, **fields}
        if members is not None:
            body["members"] = [{"value": m} for m in members]
        resp = self.send("POST", GROUPS, body)
        assert resp.status_code == 201, resp.text
        created: dict[str, Any] = resp.json
        return created

    def listing(self, path: str = USERS, **params: str) -> dict[str, Any]:
        resp = self.http.simulate_get(path, params=params)
        assert resp.status_code == 200, (params, resp.text)
        assert resp.headers["Content-Type"].split(";")[0] == SCIM_JSON
        body: dict[str, Any] = resp.json
        assert body["schemas"] == [LIST_SCHEMA]
        assert body["itemsPerPage"] == len(body["Resources"])
        return body

    def ids(self, path: str = USERS, **params: str) -> list[str]:
        return [r["id"] for r in self.listing(path, **params)["Resources"]]

    def members(self, group_id: str) -> set[str]:
        resp = self.http.simulate_get(f"{GROUPS}/{group_id}")
        assert resp.status_code == 200, resp.text
        return {m["value"] for m in resp.json.get("members", [])}


@pytest.fixture
def scim(registry: Registry) -> Scim:
    return Scim(create_app(registry), new_key(registry, "provisioner"))


def patch_op(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}


def assert_scim_error(
    resp: testing.Result, status: int, scim_type: str | None = None
) -> dict[str, Any]:
    """``resp`` is a SCIM ``Error`` of ``status`` (and ``scim_type``), without internals."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == SCIM_JSON
    body: dict[str, Any] = json.loads(resp.text)
    assert body["schemas"] == [ERROR_SCHEMA]
    # RFC 7644 §3.12: the status is a string.
    assert body["status"] == str(status)
    assert isinstance(body.get("detail"), str)
    assert body["detail"]
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    for internal in INTERNALS:
        assert internal not in resp.text, resp.text
    return body


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- user filters


@pytest.fixture
def people(scim: Scim, registry: Registry) -> dict[str, dict[str, Any]]:
    """Five users, by letter: userNames that are and are not addresses, every attribute shape.

    ``B`` has userName ``bjensen`` and address ``b@x.org`` (the name is in the
    plugin's table); ``A`` an address as userName and a ``home`` address;
    ``C`` no ``emails`` (its userName is the address) and is inactive; ``D``
    userName ``dee.admin``; ``E`` was made through the core, so no client wrote
    it (a work address), with an external id of another source.
    """
    made = {
        "B": scim.create_user(
            "bjensen",
            emails=[{"value": "b@x.org", "type": "work", "primary": True}],
            displayName="Barbara Jensen",
            externalId="ext-b",
        ),
        "A": scim.create_user(
            "ann@example.org",
            emails=[{"value": "ann@example.org", "type": "home"}],
            displayName="Ann Lee",
            externalId="ext-a",
        ),
        # Entra ID's string boolean.
        "C": scim.create_user("carl@example.org", active="False"),
        "D": scim.create_user(
            "dee.admin", emails=[{"value": "dee@corp.example", "type": "work"}], displayName="Dee"
        ),
    }
    eve = registry.users.create(
        NewUser("eve@example.org", external_source="okta", external_id="ext-b")
    )
    resp = scim.http.simulate_get(f"{USERS}/{eve.id}")
    assert resp.status_code == 200, resp.text
    made["E"] = resp.json
    return made


#: Filters on Users and the letters of ``people`` they select.
USER_FILTERS: list[tuple[str, str]] = [
    # userName: the stored name where the client gave one, else the address, in any case.
    ('userName eq "BJENSEN"', "B"),
    ('userName eq "bjensen"', "B"),
    ('userName eq "b@x.org"', ""),  # B's address is not its userName
    ('userName eq "ANN@EXAMPLE.ORG"', "A"),
    ('userName eq "eve@example.org"', "E"),
    ('userName ne "bjensen"', "ACDE"),
    ('userName ne "b@x.org"', "ABCDE"),
    ('userName co "JENS"', "B"),
    ('userName co "@x.org"', ""),
    ('userName co "example.org"', "ACE"),
    ('userName sw "b"', "B"),
    ('userName sw "dee"', "D"),
    ('userName sw "dee@"', ""),
    ('userName ew ".ADMIN"', "D"),
    ('userName ew "example"', ""),  # D's address ends so; its userName does not
    ('userName ew ".org"', "ACE"),
    ("userName pr", "ABCDE"),
    # SQL's LIKE wildcards are plain characters in a SCIM filter.
    ('userName co "_"', ""),
    ('userName co "%"', ""),
    ('userName sw "%"', ""),
    ('displayName co "%"', ""),
    ('userName co "\\\\"', ""),
    ('userName co "."', "ACDE"),
    # Attribute names and operators match in any letter case (RFC 7644 §3.4.2.2).
    ('USERNAME EQ "bjensen"', "B"),
    (f'{USER_SCHEMA}:userName eq "bjensen"', "B"),
    # emails
    ('emails.value eq "B@X.ORG"', "B"),
    ('emails eq "dee@corp.example"', "D"),
    ('emails.value co "example"', "ACDE"),
    ('emails.value ew "@example.org"', "ACE"),
    ('emails.value sw "ann"', "A"),
    ('emails.value ne "b@x.org"', "ACDE"),
    ("emails.value pr", "ABCDE"),
    # C's client gave no type; E was written by none (a work address).
    ('emails[type eq "work"]', "BDE"),
    ('emails[type eq "work" and value ew "@example.org"]', "E"),
    # Entra ID's spelling of the same: a sub-attribute after the brackets.
    ('emails[type eq "work"].value eq "b@x.org"', "B"),
    ('emails[type eq "work"].value ew "@example.org"', "E"),
    ('emails[type eq "home"].value eq "b@x.org"', ""),
    ('emails[type eq "home"]', "A"),
    ('emails.type eq "WORK"', "BDE"),
    # B was sent primary; E was written by no client (primary); A, C, D were sent none.
    ("emails.primary eq true", "BE"),
    ("emails[primary eq true]", "BE"),
    ('not (emails[type eq "work"])', "AC"),
    # externalId: only this source's (E's ext-b is Okta's).
    ('externalId eq "ext-b"', "B"),
    ("externalId pr", "AB"),
    ('externalId sw "ext-"', "AB"),
    # displayName
    ('displayName eq "barbara jensen"', "B"),
    ('displayName co "LEE"', "A"),
    ("displayName pr", "ABD"),
    # active, with Entra ID's strings
    ("active eq true", "ABDE"),
    ("active eq false", "C"),
    ('active eq "False"', "C"),
    ('active eq "True"', "ABDE"),
    ("active ne true", "C"),
    # id
    ('id eq "not-a-uuid"', ""),
    # logic and grouping
    ('userName sw "b" or displayName eq "Dee"', "BD"),
    ('active eq true and emails.value co "example.org"', "AE"),
    ('userName eq "bjensen" AND active eq true', "B"),
    ("not (userName pr)", ""),
    ("not (active eq false) and (displayName pr or externalId pr)", "ABD"),
    ('(userName eq "bjensen" or userName eq "carl@example.org") and active eq false', "C"),
    ('userName eq "bjensen" and not (externalId eq "ext-b")', ""),
]


def test_user_filters_select_exactly_the_matching_users(
    scim: Scim, people: dict[str, dict[str, Any]]
) -> None:
    letter = {p["id"]: name for name, p in people.items()}
    cases = [
        *USER_FILTERS,
        (f'id eq "{people["B"]["id"]}"', "B"),
        (f'id ne "{people["B"]["id"]}"', "ACDE"),
        (f'id eq "{people["B"]["id"]}" or userName eq "dee.admin"', "BD"),
    ]
    wrong = {}
    for text, expected in cases:
        body = scim.listing(filter=text)
        found = "".join(sorted(letter[r["id"]] for r in body["Resources"]))
        if found != "".join(sorted(expected)) or body["totalResults"] != len(expected):
            wrong[text] = (found, body["totalResults"], expected)
    # Every mismatch at once: one failure names them all.
    assert not wrong, wrong


def test_a_user_name_change_alone_moves_last_modified(
    scim: Scim, people: dict[str, dict[str, Any]]
) -> None:
    # RFC 7643 §3.1: lastModified is when the resource last changed; clients
    # sync by `meta.lastModified gt` and would miss a rename that left it.
    path = f"{USERS}/{people['B']['id']}"
    before = scim.http.simulate_get(path).json["meta"]["lastModified"]
    resp = scim.send(
        "PATCH", path, patch_op({"op": "replace", "path": "userName", "value": "barbara"})
    )
    assert resp.status_code == 200, resp.text
    assert resp.json["userName"] == "barbara"
    after = resp.json["meta"]["lastModified"]
    assert moment(after) > moment(before)
    assert people["B"]["id"] in scim.ids(filter=f'meta.lastModified gt "{before}"')


def test_filters_on_last_modified_and_created_compare_as_times(
    scim: Scim, people: dict[str, dict[str, Any]]
) -> None:
    # D changes after the others: its lastModified moves, its created does not.
    resp = scim.send(
        "PATCH",
        f"{USERS}/{people['D']['id']}",
        patch_op({"op": "replace", "path": "displayName", "value": "Dee D"}),
    )
    assert resp.status_code == 200, resp.text
    current = {r["id"]: r for r in scim.listing(count="200")["Resources"]}
    assert len(current) == 5
    for attribute in ("lastModified", "created"):
        for pivot_letter in ("B", "D"):
            pivot = current[people[pivot_letter]["id"]]["meta"][attribute]
            for op, holds in (
                ("gt", operator.gt),
                ("ge", operator.ge),
                ("lt", operator.lt),
                ("le", operator.le),
                ("eq", operator.eq),
            ):
                expected = {
                    i
                    for i, r in current.items()
                    if holds(moment(r["meta"][attribute]), moment(pivot))
                }
                text = f'meta.{attribute} {op} "{pivot}"'
                assert set(scim.ids(filter=text)) == expected, text
    # Not vacuous: D's change is later than B's creation and last change.
    b_changed = current[people["B"]["id"]]["meta"]["lastModified"]
    later = scim.ids(filter=f'meta.lastModified gt "{b_changed}"')
    # The same instant written in another offset selects the same users.
    shifted = moment(b_changed).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert scim.ids(filter=f'meta.lastModified gt "{shifted}"') == later
    assert people["D"]["id"] in later
    assert people["B"]["id"] not in later


@pytest.mark.parametrize(
    "text",
    [
        'title eq "x"',
        'name.familyName eq "x"',
        "nickName pr",
        'phoneNumbers[type eq "work"]',
        'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "1"',
        'userName gt "a"',  # ordering is for times here
        'active co "t"',
        'meta.lastModified gt "yesterday"',
        'userName eq "bjensen" or title eq "x"',  # one unknown term spoils the whole
    ],
)
def test_a_filter_on_what_is_not_kept_is_refused_never_ignored(
    scim: Scim, people: dict[str, dict[str, Any]], text: str
) -> None:
    # An unfiltered (or partly filtered) list would link an IdP's person to the wrong user.
    body = assert_scim_error(scim.http.simulate_get(USERS, params={"filter": text}), 400)
    assert body["scimType"] == "invalidFilter"


@pytest.mark.parametrize(
    "text",
    [
        "userName eq",
        'userName "bjensen"',
        'userName zz "bjensen"',
        '(userName eq "bjensen"',
        'userName eq "bjensen")',
        'userName eq "bjensen" and',
        'emails[type eq "work"',
        'emails[type eq "work"].',
        'emails[type eq "work"].value',
        'userName eq "unterminated',
        "and",
        "",
    ],
)
def test_a_malformed_filter_is_an_invalid_filter(scim: Scim, text: str) -> None:
    resp = scim.http.simulate_get(USERS, query_string=urlencode({"filter": text}))
    assert_scim_error(resp, 400, "invalidFilter")


# --------------------------------------------------------------------------- group filters


def test_group_filters_run_as_sql(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    a, b = people["A"]["id"], people["B"]["id"]
    eng = scim.create_group("Engineering", [a, b], externalId="g-eng")["id"]
    sales = scim.create_group("Sales", [a], externalId="g-sales")["id"]
    scim.create_group("Empty")
    name = {eng: "eng", sales: "sales"}
    cases = [
        ('displayName eq "Engineering"', {"eng"}),
        ('displayName eq "ENGINEERING"', {"eng"}),  # names ignore letter case
        ('displayName eq "engineering"', {"eng"}),
        ('displayName eq "Eng"', set()),
        ('externalId eq "g-sales"', {"sales"}),
        (f'id eq "{eng}"', {"eng"}),
        ('id eq "not-a-uuid"', set()),
        (f'members eq "{a}"', {"eng", "sales"}),
        (f'members.value eq "{b}"', {"eng"}),
        (f'members[value eq "{b}"]', {"eng"}),
        (f'id eq "{eng}" and members eq "{a}"', {"eng"}),  # Entra ID's membership check
        (f'id eq "{sales}" and members eq "{b}"', set()),
        ('displayName eq "Sales" and externalId eq "g-sales"', {"sales"}),
        ('displayName eq "Sales" and externalId eq "g-eng"', set()),
        ('displayName eq "Sales" and displayName eq "Engineering"', set()),
        ('displayName co "GIN"', {"eng"}),
        ('displayName sw "e"', {"eng", "Empty"}),
        ('displayName ew "S"', {"sales"}),
        ('displayName ne "sales"', {"eng", "Empty"}),
        ('displayName eq "Sales" or displayName eq "Empty"', {"sales", "Empty"}),
        ('not (displayName eq "Sales")', {"eng", "Empty"}),
        ("externalId pr", {"eng", "sales"}),
        ("not (externalId pr)", {"Empty"}),
        ('externalId sw "g-"', {"eng", "sales"}),
        (f'id ne "{eng}"', {"sales", "Empty"}),
        ('id ne "not-a-uuid"', {"eng", "sales", "Empty"}),
        (f'not (members eq "{a}")', {"Empty"}),
        (f'members[value eq "{b}" or value eq "{a}"]', {"eng", "sales"}),
        ('meta.created gt "2000-01-01T00:00:00Z"', {"eng", "sales", "Empty"}),
        ('meta.lastModified lt "2000-01-01T00:00:00Z"', set()),
        (
            f'displayName sw "e" and (externalId eq "g-eng" or members eq "{a}")',
            {"eng"},
        ),
    ]
    for text, expected in cases:
        body = scim.listing(GROUPS, filter=text)
        found = {name.get(r["id"], r["displayName"]) for r in body["Resources"]}
        assert found == expected, text
        assert body["totalResults"] == len(expected), text
    # The other way round: a user's groups, read only, and Users filtered by them.
    assert set(scim.ids(filter=f'groups.value eq "{sales}"')) == {a}
    assert set(scim.ids(filter=f'groups eq "{eng}"')) == {a, b}
    resp = scim.http.simulate_get(f"{USERS}/{a}")
    assert {g["value"]: g["display"] for g in resp.json["groups"]} == {
        eng: "Engineering",
        sales: "Sales",
    }


@pytest.mark.parametrize(
    "text",
    [
        "members pr",
        'members ne "x"',
        'members co "x"',
        'members[display eq "x"]',
        'title eq "x"',
        'displayName gt "x"',
        'meta.created co "2026"',
        "externalId eq 1",
        'displayName eq "x" and (externalId eq "y" or title eq "z")',
        'displayName eq "unterminated',
    ],
)
def test_any_other_group_filter_is_an_invalid_filter(scim: Scim, text: str) -> None:
    resp = scim.http.simulate_get(GROUPS, params={"filter": text})
    assert_scim_error(resp, 400, "invalidFilter")


# --------------------------------------------------------------------------- paging


@pytest.fixture
def nine(registry: Registry) -> list[str]:
    """Nine users (creation order: the list's order unless sorted)."""
    return [
        str(registry.users.create(NewUser(f"page{n}@example.org", f"Page {n}")).id)
        for n in range(9)
    ]


def test_pages_cover_every_user_once_in_a_stable_order(scim: Scim, nine: list[str]) -> None:
    whole = scim.listing(count="200")
    assert whole["totalResults"] == 9
    order = [r["id"] for r in whole["Resources"]]
    assert sorted(order) == sorted(nine)
    assert order == nine  # creation order
    assert scim.ids(count="200") == order  # and again: stable

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(count=st.integers(1, 10))
    def walk(count: int) -> None:
        seen: list[str] = []
        start = 1
        while start <= 9:
            body = scim.listing(startIndex=str(start), count=str(count))
            assert body["totalResults"] == 9
            assert body["startIndex"] == start
            assert body["itemsPerPage"] == min(count, 10 - start)
            seen += [r["id"] for r in body["Resources"]]
            start += count
        assert seen == order  # each once, in order

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(start=st.integers(1, 12), count=st.integers(0, 12))
    def one_page(start: int, count: int) -> None:
        body = scim.listing(startIndex=str(start), count=str(count))
        assert body["totalResults"] == 9
        assert body["startIndex"] == start
        assert [r["id"] for r in body["Resources"]] == order[start - 1 : start - 1 + count]

    walk()
    one_page()


def test_paging_parameters_at_their_edges(scim: Scim, nine: list[str]) -> None:
    # count=0: the total only.
    totals = scim.listing(count="0")
    assert (totals["totalResults"], totals["itemsPerPage"], totals["Resources"]) == (9, 0, [])
    # A negative count counts as 0.
    assert scim.listing(count="-3")["Resources"] == []
    # startIndex below 1 counts as 1, and says so.
    for start in ("0", "-5"):
        body = scim.listing(startIndex=start, count="2")
        assert body["startIndex"] == 1
        assert [r["id"] for r in body["Resources"]] == nine[:2]
    # Past the end: none, the total still told.
    beyond = scim.listing(startIndex="50")
    assert (beyond["totalResults"], beyond["Resources"]) == (9, [])
    # Above the most (200): lowered, not refused.
    many = scim.listing(count="5000")
    assert many["itemsPerPage"] == 9
    assert many["itemsPerPage"] <= 200
    # Without count: every one of the nine (the default is 100).
    assert scim.listing()["itemsPerPage"] == 9
    for query in ("count=x", "count=1.5", "startIndex=two", "startIndex=", "count=1e3"):
        assert_scim_error(scim.http.simulate_get(USERS, query_string=query), 400)
    # Each parameter once; no unknown parameter is silently ignored.
    assert_scim_error(scim.http.simulate_get(USERS, query_string="count=1&count=2"), 400)
    assert_scim_error(scim.http.simulate_get(USERS, params={"page": "2"}), 400)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (USERS, None),
        (f"{USERS}/.search", {"schemas": [SEARCH_SCHEMA], "startIndex": 10**20}),
        (GROUPS, None),
    ],
)
def test_a_start_index_past_any_integer_is_no_server_error(
    scim: Scim, nine: list[str], path: str, body: Any
) -> None:
    # Beyond what the database's integers hold: an empty page (RFC 7644 §3.4.2.4) or a 400.
    if body is None:
        resp = scim.http.simulate_get(path, query_string="startIndex=99999999999999999999")
    else:
        resp = scim.send("POST", path, body)
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 200:
        assert resp.json["Resources"] == []
        assert resp.json["totalResults"] == (9 if path.startswith(USERS) else 0)
    else:
        assert_scim_error(resp, 400)


def test_groups_page_too(scim: Scim) -> None:
    made = [scim.create_group(f"Team {n}")["id"] for n in range(7)]
    assert scim.ids(GROUPS, count="200") == made
    seen = []
    for start in (1, 4, 7):
        body = scim.listing(GROUPS, startIndex=str(start), count="3")
        assert (body["totalResults"], body["startIndex"]) == (7, start)
        seen += [r["id"] for r in body["Resources"]]
    assert seen == made
    assert scim.listing(GROUPS, count="0")["totalResults"] == 7


# --------------------------------------------------------------------------- sorting


def test_users_sort_by_user_name_display_name_and_created(scim: Scim) -> None:
    # Made in an order that is neither alphabetical one; names in mixed letter case.
    made = [
        scim.create_user("m@x.org", displayName="Zoe"),
        scim.create_user("a@x.org", displayName="mia"),
        scim.create_user("z@x.org", displayName="Abe"),
        scim.create_user("k@x.org", displayName="bob"),
    ]

    def by(sort_by: str, order: str | None = None) -> list[str]:
        params = {"sortBy": sort_by} if order is None else {"sortBy": sort_by, "sortOrder": order}
        return [r["id"] for r in scim.listing(**params)["Resources"]]

    ids = {u["userName"]: u["id"] for u in made}
    by_name = [ids[n] for n in sorted(ids)]
    assert by("userName") == by_name  # ascending by default
    assert by("userName", "ascending") == by_name
    assert by("userName", "descending") == by_name[::-1]
    assert by(f"{USER_SCHEMA}:userName") == by_name
    assert by("emails.value") == by_name
    # displayName is not case-exact (RFC 7643 §4.1.1): sorted in any letter case.
    by_display = [u["id"] for u in sorted(made, key=lambda u: u["displayName"].lower())]
    assert by("displayName") == by_display
    assert by("DISPLAYNAME", "DESCENDING") == by_display[::-1]
    created = [u["id"] for u in made]
    assert by("meta.created") == created
    assert by("meta.created", "descending") == created[::-1]
    # Sorted, then paged.
    second = scim.listing(sortBy="displayName", startIndex="2", count="2")
    assert [r["id"] for r in second["Resources"]] == by_display[1:3]
    for params in (
        {"sortBy": "title"},
        {"sortBy": "name.familyName"},
        {"sortBy": "userName", "sortOrder": "sideways"},
    ):
        assert_scim_error(scim.http.simulate_get(USERS, params=params), 400)


def test_groups_sort_by_display_name_and_created(scim: Scim) -> None:
    made = [scim.create_group(n)["id"] for n in ("Sales", "admins", "Ops")]
    by_name = [made[1], made[2], made[0]]  # admins, Ops, Sales: in any letter case
    assert scim.ids(GROUPS, sortBy="displayName") == by_name
    assert scim.ids(GROUPS, sortBy="displayName", sortOrder="descending") == by_name[::-1]
    assert scim.ids(GROUPS, sortBy="meta.created") == made
    assert scim.ids(GROUPS, sortBy="meta.created", sortOrder="descending") == made[::-1]
    for sort_by in ("members", "externalId", "id"):
        assert_scim_error(scim.http.simulate_get(GROUPS, params={"sortBy": sort_by}), 400)


# --------------------------------------------------------------------------- attributes


def test_attributes_and_excluded_attributes(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    always = {"id", "schemas"}
    resources = scim.listing(attributes="userName")["Resources"]
    assert len(resources) == 5
    assert all(set(r) == always | {"userName"} for r in resources)
    # A sub-attribute keeps only itself in each value.
    for r in scim.listing(attributes="emails.value")["Resources"]:
        assert set(r) == always | {"emails"}
        assert all(set(e) == {"value"} for e in r["emails"])
    # With the schema URN, and in any letter case.
    resources = scim.listing(attributes=f"{USER_SCHEMA}:displayName,ACTIVE")["Resources"]
    assert all(set(r) <= always | {"displayName", "active"} for r in resources)
    assert all("active" in r for r in resources)
    # Excluded: gone; id and schemas cannot be excluded.
    resources = scim.listing(excludedAttributes="emails,meta,id,schemas")["Resources"]
    assert all({"userName", "id", "schemas"} <= set(r) for r in resources)
    assert not any({"emails", "meta"} & set(r) for r in resources)
    resources = scim.listing(excludedAttributes="emails.type")["Resources"]
    assert all("type" not in e for r in resources for e in r["emails"])
    assert any("primary" in e for r in resources for e in r["emails"])

    # On one user: the same.
    one = f"{USERS}/{people['B']['id']}"
    resp = scim.http.simulate_get(one, params={"attributes": "displayName"})
    assert resp.status_code == 200, resp.text
    assert resp.json == {
        "schemas": [USER_SCHEMA],
        "id": people["B"]["id"],
        "displayName": "Barbara Jensen",
    }
    resp = scim.http.simulate_get(one, params={"excludedAttributes": "emails,groups"})
    assert resp.status_code == 200, resp.text
    assert "emails" not in resp.json
    assert resp.json["userName"] == "bjensen"
    # On a write's answer too.
    resp = scim.send(
        "POST", USERS, {"userName": "fred@example.org"}, params={"attributes": "userName"}
    )
    assert resp.status_code == 201, resp.text
    assert set(resp.json) == always | {"userName"}
    # Both at once: refused, on a list and on one.
    both = {"attributes": "userName", "excludedAttributes": "emails"}
    assert_scim_error(scim.http.simulate_get(USERS, params=both), 400)
    assert_scim_error(scim.http.simulate_get(one, params=both), 400)


def test_attributes_on_groups(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    group = scim.create_group("Eng", [people["A"]["id"]], externalId="g-1")
    one = f"{GROUPS}/{group['id']}"
    resp = scim.http.simulate_get(one, params={"excludedAttributes": "members"})
    assert resp.status_code == 200, resp.text
    assert "members" not in resp.json
    assert resp.json["displayName"] == "Eng"
    resp = scim.http.simulate_get(one, params={"attributes": "members.value"})
    assert resp.json == {
        "schemas": [GROUP_SCHEMA],
        "id": group["id"],
        "members": [{"value": people["A"]["id"]}],
    }
    listed = scim.listing(GROUPS, attributes="displayName")["Resources"]
    assert listed == [{"schemas": [GROUP_SCHEMA], "id": group["id"], "displayName": "Eng"}]
    both = {"attributes": "displayName", "excludedAttributes": "members"}
    assert_scim_error(scim.http.simulate_get(GROUPS, params=both), 400)
    assert_scim_error(scim.http.simulate_get(one, params=both), 400)


# --------------------------------------------------------------------------- search


def test_search_answers_what_the_list_answers(
    scim: Scim, people: dict[str, dict[str, Any]]
) -> None:
    for path, query, search in (
        (
            USERS,
            {"filter": 'userName sw "b" or active eq false', "sortBy": "userName"},
            {"filter": 'userName sw "b" or active eq false', "sortBy": "userName"},
        ),
        (
            USERS,
            {"startIndex": "2", "count": "2", "attributes": "userName,emails.value"},
            {"startIndex": 2, "count": 2, "attributes": ["userName", "emails.value"]},
        ),
        (
            USERS,
            {"excludedAttributes": "meta,groups", "sortOrder": "descending"},
            {"excludedAttributes": ["meta", "groups"], "sortOrder": "descending"},
        ),
    ):
        expected = scim.listing(path, **query)
        resp = scim.send("POST", f"{path}/.search", {"schemas": [SEARCH_SCHEMA], **search})
        assert resp.status_code == 200, resp.text
        assert resp.json == expected
        assert expected["totalResults"] > 0  # not vacuous
    scim.create_group("Eng", [people["A"]["id"]], externalId="g-1")
    scim.create_group("Ops")
    query = {"filter": f'members eq "{people["A"]["id"]}"', "attributes": "displayName"}
    expected = scim.listing(GROUPS, **query)
    assert [r["displayName"] for r in expected["Resources"]] == ["Eng"]
    search = {"schemas": [SEARCH_SCHEMA], "filter": query["filter"], "attributes": ["displayName"]}
    resp = scim.send("POST", f"{GROUPS}/.search", search)
    assert resp.status_code == 200, resp.text
    assert resp.json == expected


@pytest.mark.parametrize("path", [f"{USERS}/.search", f"{GROUPS}/.search"])
@pytest.mark.parametrize(
    "body",
    [
        [],
        {"filter": 'displayName eq "x"'},  # no schemas
        {"schemas": [USER_SCHEMA]},
        {"schemas": [SEARCH_SCHEMA], "bogus": 1},
        {"schemas": [SEARCH_SCHEMA], "count": "many"},
        {"schemas": [SEARCH_SCHEMA], "attributes": [1]},
        {"schemas": [SEARCH_SCHEMA], "filter": 'displayName eq "x'},
        {"schemas": [SEARCH_SCHEMA], "filter": 7},
    ],
)
def test_a_bad_search_request_is_refused(scim: Scim, path: str, body: Any) -> None:
    assert_scim_error(scim.send("POST", path, body), 400)


def test_a_malformed_search_body_is_invalid_syntax(scim: Scim) -> None:
    resp = scim.http.simulate_post(f"{USERS}/.search", headers=HEADERS, body="{not json")
    assert_scim_error(resp, 400, "invalidSyntax")


# --------------------------------------------------------------------------- ETags


def test_user_etags_guard_every_write(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    path = f"{USERS}/{people['B']['id']}"
    resp = scim.http.simulate_get(path)
    assert resp.status_code == 200, resp.text
    tag = resp.headers["ETag"]
    assert tag == resp.json["meta"]["version"]
    assert tag.startswith('W/"')
    assert people["B"]["meta"]["version"] == tag  # as the creation answered
    listed = scim.listing(filter='userName eq "bjensen"')["Resources"]
    assert listed[0]["meta"]["version"] == tag  # and as a list shows it

    # If-None-Match: the tag (weak or bare, or in a list) is 304, another is the user.
    for header in (tag, tag.removeprefix("W/"), f'"nope", {tag}', "*"):
        resp = scim.http.simulate_get(path, headers={"If-None-Match": header})
        assert resp.status_code == 304, header
        assert resp.text == ""
        assert resp.headers["ETag"] == tag
    assert scim.http.simulate_get(path, headers={"If-None-Match": 'W/"0"'}).status_code == 200

    # A change of userName alone (the address stays) changes the tag.
    body = {
        "schemas": [USER_SCHEMA],
        "userName": "barbara",
        "emails": [{"value": "b@x.org", "type": "work", "primary": True}],
        "displayName": "Barbara Jensen",
        "externalId": "ext-b",
    }
    resp = scim.send("PUT", path, body, headers={"If-Match": tag})
    assert resp.status_code == 200, resp.text
    assert resp.json["userName"] == "barbara"
    fresh = resp.headers["ETag"]
    assert fresh == resp.json["meta"]["version"]
    assert fresh != tag
    stale = tag

    # Stale If-Match: 412 on PUT, PATCH and DELETE; nothing changes.
    before = scim.http.simulate_get(path).json
    refused = [
        scim.send("PUT", path, {**body, "userName": "other"}, headers={"If-Match": stale}),
        scim.send(
            "PATCH",
            path,
            patch_op({"op": "replace", "path": "displayName", "value": "X"}),
            headers={"If-Match": stale},
        ),
        scim.send("DELETE", path, headers={"If-Match": stale}),
    ]
    for resp in refused:
        assert_scim_error(resp, 412)
    after = scim.http.simulate_get(path)
    assert after.status_code == 200
    assert after.json == before
    assert after.headers["ETag"] == fresh

    # The current tag: each write passes, and hands on the next tag.
    resp = scim.send(
        "PATCH",
        path,
        patch_op({"op": "replace", "path": "displayName", "value": "Babs"}),
        headers={"If-Match": fresh},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json["displayName"] == "Babs"
    assert resp.headers["ETag"] not in (fresh, stale)

    # A PATCH of userName alone changes the tag too; `*` matches any version.
    resp = scim.send(
        "PATCH",
        path,
        patch_op({"op": "replace", "path": "userName", "value": "babs"}),
        headers={"If-Match": "*"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json["emails"][0]["value"] == "b@x.org"
    before_rename = scim.http.simulate_get(path).headers["ETag"]
    resp = scim.send(
        "PATCH",
        path,
        patch_op({"op": "replace", "path": "userName", "value": "b.jensen"}),
        headers={"If-Match": before_rename},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["ETag"] != before_rename
    assert_scim_error(scim.send("DELETE", path, headers={"If-Match": before_rename}), 412)
    resp = scim.send("DELETE", path, headers={"If-Match": resp.headers["ETag"]})
    assert resp.status_code == 204, resp.text


def test_group_etags_guard_every_write(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    created = scim.send("POST", GROUPS, {"schemas": [GROUP_SCHEMA], "displayName": "Eng"})
    assert created.status_code == 201, created.text
    assert created.headers["ETag"] == created.json["meta"]["version"]
    path = f"{GROUPS}/{created.json['id']}"
    resp = scim.http.simulate_get(path)
    tag = resp.headers["ETag"]
    assert tag == resp.json["meta"]["version"]
    assert scim.http.simulate_get(path, headers={"If-None-Match": tag}).status_code == 304
    assert scim.http.simulate_get(path, headers={"If-None-Match": 'W/"0"'}).status_code == 200

    add = patch_op({"op": "add", "path": "members", "value": [{"value": people["A"]["id"]}]})
    resp = scim.send("PATCH", path, add, headers={"If-Match": tag})
    assert resp.status_code == 204, resp.text
    fresh = resp.headers["ETag"]
    assert fresh != tag

    before = scim.http.simulate_get(path).json
    rename = {"schemas": [GROUP_SCHEMA], "displayName": "Renamed", "members": []}
    for resp in (
        scim.send("PUT", path, rename, headers={"If-Match": tag}),
        scim.send(
            "PATCH",
            path,
            patch_op({"op": "remove", "path": "members"}),
            headers={"If-Match": tag},
        ),
        scim.send("DELETE", path, headers={"If-Match": tag}),
    ):
        assert_scim_error(resp, 412)
    after = scim.http.simulate_get(path)
    assert after.json == before
    assert after.headers["ETag"] == fresh

    resp = scim.send("PUT", path, rename, headers={"If-Match": fresh})
    assert resp.status_code == 200, resp.text
    assert resp.json["displayName"] == "Renamed"
    assert resp.headers["ETag"] == resp.json["meta"]["version"] != fresh
    assert scim.members(created.json["id"]) == set()
    resp = scim.send("DELETE", path, headers={"If-Match": resp.headers["ETag"]})
    assert resp.status_code == 204, resp.text
    assert_scim_error(scim.http.simulate_get(path), 404)


# --------------------------------------------------------------------------- errors


def test_authentication_and_authorization_errors(scim: Scim, registry: Registry) -> None:
    anonymous = testing.TestClient(scim.app)
    resp = anonymous.simulate_get(USERS)
    assert_scim_error(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    bad = testing.TestClient(scim.app, headers={"Authorization": "Bearer up_not_a_key"})
    assert_scim_error(bad.simulate_get(GROUPS), 401)
    # An editor may manage users through /api/v1, but not provision over SCIM.
    editor = testing.TestClient(
        scim.app, headers={"Authorization": f"Bearer {new_key(registry, 'editor')}"}
    )
    assert_scim_error(editor.simulate_get(USERS), 403)
    assert_scim_error(
        editor.simulate_post(
            USERS, headers=HEADERS, body=json.dumps({"userName": "x@example.org"})
        ),
        403,
    )
    # A provisioner's key grants scim:provision and nothing else.
    for resp in (
        scim.http.simulate_get("/api/v1/users"),
        scim.http.simulate_post("/api/v1/users", json={"email": "p@example.org"}),
        scim.http.simulate_get("/api/v1/groups"),
    ):
        assert resp.status_code == 403, resp.text
    assert scim.listing()["totalResults"] == 0  # neither refusal created anyone


def test_not_found_and_method_errors(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    unknown = str(uuid.uuid4())
    for path in (
        f"{USERS}/{unknown}",
        f"{USERS}/not-a-uuid",
        f"{GROUPS}/{unknown}",
        f"{GROUPS}/42",
        f"{SCIM}/Nope",
        SCIM,
        f"{SCIM}/Schemas/urn:nope",
        f"{SCIM}/Users/{people['B']['id']}/extra",
    ):
        assert_scim_error(scim.http.simulate_get(path), 404)
    replace = {"schemas": [USER_SCHEMA], "userName": "z@example.org"}
    assert_scim_error(scim.send("PUT", f"{USERS}/{unknown}", replace), 404)
    assert_scim_error(
        scim.send(
            "PATCH",
            f"{USERS}/{unknown}",
            patch_op({"op": "replace", "path": "active", "value": False}),
        ),
        404,
    )
    assert_scim_error(scim.send("DELETE", f"{GROUPS}/{unknown}"), 404)
    resp = scim.send("DELETE", USERS)
    assert_scim_error(resp, 405)
    assert "GET" in resp.headers["Allow"]
    assert_scim_error(scim.send("PUT", GROUPS, {"displayName": "x"}), 405)
    # What is not offered says so (RFC 7644 §3.7, §3.11, §3.4.3).
    for path in (f"{SCIM}/Bulk", f"{SCIM}/Me"):
        assert_scim_error(scim.http.simulate_get(path), 501)
    assert_scim_error(scim.send("POST", f"{SCIM}/.search", {"schemas": [SEARCH_SCHEMA]}), 501)


def test_uniqueness_conflicts(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    for name, email in (
        ("bjensen", "new1@example.org"),
        ("BJensen", "new2@example.org"),  # in any letter case
        ("ANN@example.org", None),  # an address as userName, taken as such
        ("someone", "dee@corp.example"),  # the address is taken
    ):
        body: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": name}
        if email is not None:
            body["emails"] = [{"value": email}]
        assert_scim_error(scim.send("POST", USERS, body), 409, "uniqueness")
    # A rename onto another user's userName.
    resp = scim.send(
        "PATCH",
        f"{USERS}/{people['D']['id']}",
        patch_op({"op": "replace", "path": "userName", "value": "BJENSEN"}),
    )
    assert_scim_error(resp, 409, "uniqueness")
    assert scim.listing()["totalResults"] == 5
    scim.create_group("Eng")
    for name in ("Eng", "ENG"):
        body = {"schemas": [GROUP_SCHEMA], "displayName": name}
        assert_scim_error(scim.send("POST", GROUPS, body), 409, "uniqueness")
    assert scim.listing(GROUPS)["totalResults"] == 1


def test_syntax_and_media_type_errors(scim: Scim, people: dict[str, dict[str, Any]]) -> None:
    user = f"{USERS}/{people['B']['id']}"
    for method, path in (("POST", USERS), ("PUT", user), ("PATCH", user), ("POST", GROUPS)):
        resp = scim.http.simulate_request(method, path, headers=HEADERS, body='{"userName": ')
        assert_scim_error(resp, 400, "invalidSyntax")
    resp = scim.http.simulate_post(USERS, headers={"Content-Type": "text/plain"}, body="userName=x")
    assert_scim_error(resp, 415)
    # application/json is accepted too (docs/scim.md).
    resp = scim.http.simulate_post(
        USERS,
        headers={"Content-Type": "application/json"},
        body=json.dumps({"userName": "json@example.org"}),
    )
    assert resp.status_code == 201, resp.text
    assert_scim_error(scim.send("POST", USERS, {"schemas": [USER_SCHEMA]}), 400)
    assert_scim_error(scim.send("POST", USERS, {"userName": "nobody"}), 400)  # no address


@pytest.mark.parametrize(
    ("operation", "scim_type"),
    [
        ({"op": "replace", "path": 'emails[type eq "work"', "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": "emails..value", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": "", "value": "x"}, "invalidPath"),
        ({"op": "remove"}, "noTarget"),
        ({"op": "jump", "path": "displayName", "value": "x"}, "invalidSyntax"),
    ],
)
def test_a_bad_user_patch_is_refused_and_changes_nothing(
    scim: Scim, people: dict[str, dict[str, Any]], operation: dict[str, Any], scim_type: str
) -> None:
    path = f"{USERS}/{people['B']['id']}"
    before = scim.http.simulate_get(path).json
    assert_scim_error(scim.send("PATCH", path, patch_op(operation)), 400, scim_type)
    assert scim.http.simulate_get(path).json == before


@pytest.mark.parametrize(
    ("operation", "scim_type"),
    [
        ({"op": "add", "path": 'members[value eq "x"', "value": []}, "invalidPath"),
        ({"op": "replace", "path": "owner", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": "displayName.first", "value": "x"}, "invalidPath"),
        ({"op": "remove"}, "noTarget"),
    ],
)
def test_a_bad_group_patch_is_refused_and_changes_nothing(
    scim: Scim, people: dict[str, dict[str, Any]], operation: dict[str, Any], scim_type: str
) -> None:
    group = scim.create_group("Eng", [people["A"]["id"]])
    path = f"{GROUPS}/{group['id']}"
    before = scim.http.simulate_get(path).json
    assert_scim_error(scim.send("PATCH", path, patch_op(operation)), 400, scim_type)
    assert scim.http.simulate_get(path).json == before


# --------------------------------------------------------------------------- concurrency


def _at_once(count: int, work: Callable[[int], testing.Result]) -> list[testing.Result]:
    """``work(i)`` in ``count`` threads released together; their answers."""
    barrier = threading.Barrier(count)
    results: list[testing.Result | BaseException | None] = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # reported below, not lost in the thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    assert all(isinstance(r, testing.Result) for r in results)
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("user_name", ["jdoe", "same@example.org"])
def test_one_of_concurrent_creations_of_a_user_name_wins(scim: Scim, user_name: str) -> None:
    clients = [scim.new_client() for _ in range(8)]

    def create(i: int) -> testing.Result:
        body: dict[str, Any] = {
            "schemas": [USER_SCHEMA],
            "userName": user_name.upper() if i % 2 else user_name,
        }
        if "@" not in user_name:
            body["emails"] = [{"value": f"racer{i}@example.org"}]
        return scim.send("POST", USERS, body, http=clients[i])

    results = _at_once(8, create)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 7, [r.text for r in results]
    for r in results:
        if r.status_code == 409:
            assert_scim_error(r, 409, "uniqueness")
    listed = scim.listing()
    assert listed["totalResults"] == 1
    found = scim.listing(filter=f'userName eq "{user_name}"')["Resources"]
    assert [u["id"] for u in found] == [next(r.json["id"] for r in results if r.status_code == 201)]


def test_concurrent_member_additions_all_land(scim: Scim, registry: Registry) -> None:
    users = [str(registry.users.create(NewUser(f"member{n}@example.org")).id) for n in range(8)]
    group = scim.create_group("Crowd")["id"]
    clients = [scim.new_client() for _ in range(8)]

    def add(i: int) -> testing.Result:
        # No If-Match: a write that loses the race is computed again, not refused.
        operation = {"op": "add", "path": "members", "value": [{"value": users[i]}]}
        return scim.send("PATCH", f"{GROUPS}/{group}", patch_op(operation), http=clients[i])

    results = _at_once(8, add)
    assert [r.status_code for r in results] == [204] * 8, [r.text for r in results]
    assert scim.members(group) == set(users)


def test_concurrent_writes_with_one_if_match_let_one_win(scim: Scim, registry: Registry) -> None:
    users = [str(registry.users.create(NewUser(f"m{n}@example.org")).id) for n in range(6)]
    created = scim.send("POST", GROUPS, {"schemas": [GROUP_SCHEMA], "displayName": "Crowd"})
    group, tag = created.json["id"], created.headers["ETag"]
    clients = [scim.new_client() for _ in range(6)]

    def add(i: int) -> testing.Result:
        # The same If-Match: the first write moves the version, the others are stale.
        operation = {"op": "add", "path": "members", "value": [{"value": users[i]}]}
        return scim.send(
            "PATCH",
            f"{GROUPS}/{group}",
            patch_op(operation),
            headers={"If-Match": tag},
            http=clients[i],
        )

    results = _at_once(6, add)
    assert sorted(r.status_code for r in results) == [204] + [412] * 5, [r.text for r in results]
    winner = next(users[i] for i, r in enumerate(results) if r.status_code == 204)
    assert scim.members(group) == {winner}


def test_concurrent_patches_of_one_user_lose_no_change(
    scim: Scim, people: dict[str, dict[str, Any]]
) -> None:
    # Each PATCH of a user is a read-modify-write of the whole resource: one
    # computed from a version another has since moved must be computed again,
    # or it writes back what the other changed. A userName-only change is the
    # sharp case: it writes the plugin's row, not the user. Several rounds, as
    # a lost update needs the threads to interleave.
    path = f"{USERS}/{people['D']['id']}"
    for round_ in range(10):
        changes = [
            {"op": "replace", "path": "displayName", "value": f"Dee {round_}"},
            {"op": "replace", "path": "externalId", "value": f"ext-d{round_}"},
            {"op": "replace", "path": "active", "value": round_ % 2 == 0},
            {"op": "replace", "path": "userName", "value": f"dee.{round_}"},
        ]
        clients = [scim.new_client() for _ in changes]

        def patch(
            i: int, changes: list[dict[str, Any]] = changes, clients: list[Any] = clients
        ) -> testing.Result:
            return scim.send("PATCH", path, patch_op(changes[i]), http=clients[i])

        results = _at_once(len(changes), patch)
        assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
        final = scim.http.simulate_get(path).json
        got = (final["displayName"], final["externalId"], final["active"], final["userName"])
        assert got == tuple(c["value"] for c in changes), f"round {round_}"
        assert final["emails"][0]["value"] == "dee@corp.example"


def test_one_if_match_lets_one_of_two_user_writers_win(
    scim: Scim, people: dict[str, dict[str, Any]]
) -> None:
    # RFC 7644 §3.14: of two writes made at the same version, the second is 412.
    path = f"{USERS}/{people['D']['id']}"
    for round_ in range(10):
        tag = scim.http.simulate_get(path).headers["ETag"]
        # Two renames: a userName alone is written to the plugin's row, not the user.
        changes = [
            {"op": "replace", "path": "userName", "value": f"dee.{round_}a"},
            {"op": "replace", "path": "userName", "value": f"dee.{round_}b"},
        ]
        clients = [scim.new_client() for _ in changes]

        def patch(
            i: int,
            changes: list[dict[str, Any]] = changes,
            clients: list[Any] = clients,
            tag: str = tag,
        ) -> testing.Result:
            return scim.send(
                "PATCH", path, patch_op(changes[i]), headers={"If-Match": tag}, http=clients[i]
            )

        results = _at_once(2, patch)
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 412], (round_, [r.text for r in results])
        final = scim.http.simulate_get(path).json
        won = changes[[r.status_code for r in results].index(200)]
        assert final["userName"] == won["value"]


# --------------------------------------------------------------------------- group members


def test_group_membership_patch_and_put(scim: Scim, registry: Registry) -> None:
    u = [str(registry.users.create(NewUser(f"m{n}@example.org")).id) for n in range(4)]
    group = scim.create_group("Eng", [u[0]])
    path = f"{GROUPS}/{group['id']}"

    def patch(*ops: dict[str, Any]) -> None:
        resp = scim.send("PATCH", path, patch_op(*ops))
        assert resp.status_code == 204, resp.text
        assert resp.text == ""  # no members listed back
        assert resp.headers["ETag"].startswith('W/"')

    patch({"op": "add", "path": "members", "value": [{"value": u[1]}]})
    assert scim.members(group["id"]) == {u[0], u[1]}
    patch({"op": "Add", "value": {"members": [{"value": u[2]}, {"value": u[1]}]}})
    assert scim.members(group["id"]) == {u[0], u[1], u[2]}
    patch({"op": "remove", "path": f'members[value eq "{u[0]}"]'})
    assert scim.members(group["id"]) == {u[1], u[2]}
    # Entra ID: remove with the members to remove as the value.
    patch({"op": "remove", "path": "members", "value": [{"value": u[1]}]})
    assert scim.members(group["id"]) == {u[2]}
    patch({"op": "replace", "path": "members", "value": [{"value": u[0]}, {"value": u[3]}]})
    assert scim.members(group["id"]) == {u[0], u[3]}
    patch({"op": "replace", "value": {"members": [{"value": u[1]}]}})
    assert scim.members(group["id"]) == {u[1]}
    # Several operations in one request: all applied, in order.
    patch(
        {"op": "add", "path": "members", "value": [{"value": u[2]}, {"value": u[3]}]},
        {"op": "remove", "path": f'members[value eq "{u[1]}"]'},
        {"op": "replace", "path": "displayName", "value": "Engineering"},
    )
    assert scim.members(group["id"]) == {u[2], u[3]}

    # With attributes asked for: 200 and the group.
    resp = scim.send(
        "PATCH",
        path,
        patch_op({"op": "remove", "path": f'members[value eq "{u[3]}"]'}),
        params={"attributes": "displayName,members"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json["displayName"] == "Engineering"
    assert [m["value"] for m in resp.json["members"]] == [u[2]]
    assert "meta" not in resp.json  # only what was asked for
    assert resp.headers["ETag"] == scim.http.simulate_get(path).headers["ETag"]
    # remove of members without a value: none left.
    patch({"op": "remove", "path": "members"})
    assert scim.members(group["id"]) == set()

    # PUT with members sets exactly them; without members, keeps them.
    put = {"schemas": [GROUP_SCHEMA], "displayName": "Engineering"}
    for wanted in ([u[0], u[2]], [u[3]], [u[1], u[3], u[0]]):
        resp = scim.send("PUT", path, {**put, "members": [{"value": m} for m in wanted]})
        assert resp.status_code == 200, resp.text
        assert {m["value"] for m in resp.json["members"]} == set(wanted)
        assert scim.members(group["id"]) == set(wanted)
    resp = scim.send("PUT", path, {**put, "externalId": "g-9"})
    assert resp.status_code == 200, resp.text
    assert scim.members(group["id"]) == {u[0], u[1], u[3]}
    assert resp.json["externalId"] == "g-9"
    # A member that is no user: refused, nothing changed.
    resp = scim.send(
        "PATCH",
        path,
        patch_op({"op": "add", "path": "members", "value": [{"value": str(uuid.uuid4())}]}),
    )
    assert 400 <= resp.status_code < 500
    assert_scim_error(resp, resp.status_code)
    assert scim.members(group["id"]) == {u[0], u[1], u[3]}


def test_memberships_granting_more_than_provisioning_are_refused(
    scim: Scim, registry: Registry
) -> None:
    admins = registry.groups.create(NewGroup("Admins", roles=frozenset({"admin"})))
    user = str(registry.users.create(NewUser("climber@example.org")).id)
    path = f"{GROUPS}/{admins.id}"
    # A provisioner must not make anyone an administrator.
    for operation in (
        {"op": "add", "path": "members", "value": [{"value": user}]},
        {"op": "add", "value": {"members": [{"value": user}]}},
        {"op": "replace", "path": "members", "value": [{"value": user}]},
    ):
        assert_scim_error(scim.send("PATCH", path, patch_op(operation)), 403)
    resp = scim.send(
        "PUT",
        path,
        {"schemas": [GROUP_SCHEMA], "displayName": "Admins", "members": [{"value": user}]},
    )
    assert_scim_error(resp, 403)
    assert scim.members(str(admins.id)) == set()
    assert list(registry.groups.groups_of(uuid.UUID(user))) == []

    # Nor take such roles away, nor hand an administrator's account to another
    # address (whoever holds it gains the roles), nor bring one back to life.
    admin = registry.users.create(NewUser("root@example.org"))
    asleep = registry.users.create(NewUser("sleeper@example.org", is_active=False))
    registry.groups.add_members(admins.id, [admin.id, asleep.id])
    everyone = {str(admin.id), str(asleep.id)}
    for operation in (
        {"op": "remove", "path": f'members[value eq "{admin.id}"]'},
        {"op": "remove", "path": "members"},
        {"op": "replace", "path": "members", "value": []},
    ):
        assert_scim_error(scim.send("PATCH", path, patch_op(operation)), 403)
    assert_scim_error(scim.send("DELETE", path), 403)
    assert scim.members(str(admins.id)) == everyone
    admin_path = f"{USERS}/{admin.id}"
    retarget = patch_op(
        {"op": "replace", "path": "emails", "value": [{"value": "me@evil.example"}]}
    )
    assert_scim_error(scim.send("PATCH", admin_path, retarget), 403)
    assert registry.users.get(admin.id).email == "root@example.org"
    wake = patch_op({"op": "replace", "path": "active", "value": True})
    assert_scim_error(scim.send("PATCH", f"{USERS}/{asleep.id}", wake), 403)
    assert registry.users.get(asleep.id).is_active is False


# --------------------------------------------------------------------------- encryption


@pytest.fixture
def sealed(database_url: str, k1: NamedKey, i1: NamedKey) -> Iterator[Scim]:
    """A provisioner's client of a registry whose personal data is encrypted."""
    with opened(database_url, [k1], i1.entry()) as registry:
        assert registry.encrypted
        yield Scim(create_app(registry), new_key(registry, "provisioner"))


def test_under_encryption_a_user_name_must_be_the_address(sealed: Scim) -> None:
    # A userName other than the address would be stored unsealed.
    resp = sealed.send(
        "POST",
        USERS,
        {"schemas": [USER_SCHEMA], "userName": "bjensen", "emails": [{"value": "b@x.org"}]},
    )
    body = assert_scim_error(resp, 400)
    assert "userName" in body["detail"]
    assert "encrypt" in body["detail"]
    assert sealed.listing()["totalResults"] == 0  # nothing half made
    user = sealed.create_user("b@x.org", "b@x.org", displayName="Barbara")
    assert user["userName"] == "b@x.org"
    # The address in another letter case is the address.
    other = sealed.create_user("C@X.org", "c@x.org")
    assert other["userName"].lower() == "c@x.org"
    found = sealed.listing(filter='userName eq "B@X.ORG"')["Resources"]
    assert [u["id"] for u in found] == [user["id"]]
    # What sealed data cannot answer is refused, never a 500 or a guess.
    resp = sealed.http.simulate_get(USERS, params={"filter": 'userName co "x"'})
    assert_scim_error(resp, 400, "invalidFilter")
    assert_scim_error(sealed.http.simulate_get(USERS, params={"sortBy": "userName"}), 400)
    # A rename away from the address is refused too, and changes nothing.
    path = f"{USERS}/{user['id']}"
    before = sealed.http.simulate_get(path).json
    resp = sealed.send(
        "PATCH", path, patch_op({"op": "replace", "path": "userName", "value": "barbara"})
    )
    assert "encrypt" in assert_scim_error(resp, 400)["detail"]
    assert sealed.http.simulate_get(path).json == before


# --------------------------------------------------------------------------- delete


def test_delete_is_a_soft_delete(
    scim: Scim, registry: Registry, people: dict[str, dict[str, Any]]
) -> None:
    target = people["B"]["id"]
    path = f"{USERS}/{target}"
    group = scim.create_group("Eng", [target, people["A"]["id"]])
    resp = scim.send("DELETE", path)
    assert resp.status_code == 204, resp.text
    assert resp.text == ""
    assert_scim_error(scim.http.simulate_get(path), 404)
    assert_scim_error(scim.send("DELETE", path), 404)
    assert_scim_error(
        scim.send("PATCH", path, patch_op({"op": "replace", "path": "active", "value": True})), 404
    )
    assert target not in scim.ids(count="200")
    assert scim.listing(filter='userName eq "bjensen"')["totalResults"] == 0
    assert scim.listing(filter=f'id eq "{target}"')["totalResults"] == 0
    assert scim.listing()["totalResults"] == 4
    # No longer listed among the group's members.
    assert scim.members(group["id"]) == {people["A"]["id"]}
    # Soft: the core still has it, deleted, for an administrator to restore.
    kept = registry.users.get(uuid.UUID(target), include_deleted=True)
    assert kept.email == "b@x.org"
    assert kept.deleted_at is not None
