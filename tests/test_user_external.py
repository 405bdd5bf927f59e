"""Users' external ids and custom attributes, on real SQLite and PostgreSQL databases.

The storage contract of the fields (``userplane.testing.users_external``) on
each store, plain and sealed; then the service and the HTTP API through
``falcon.testing.TestClient`` over a migrated registry (``conftest.py``):
create, patch and list with the fields, every validation error naming its
field, the JSON merge patch (RFC 7396) of the attributes against a reference
implementation, concurrent patches of one user, encryption, the records of
changes and the OpenAPI document. Nothing is mocked.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jsonschema
import orjson
import pytest
from clients import client_for
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane import Registry, Settings
from userplane.errors import Conflict, InvalidInput
from userplane.keyring import NamedKey
from userplane.plugins.audit import trail_of
from userplane.plugins.audit.query import parse_query
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING
from userplane.testing.storage import run_concurrently
from userplane.users import NewUser, UserChanges

USERS = "/api/v1/users"
PROBLEM_JSON = "application/problem+json"
EXTERNAL_KEYS = {"external_source", "external_id", "attributes"}


# The storage contract (ExternalIdContract) runs inside StorageContract, on every store.


# -- helpers --------------------------------------------------------------------------------------


def assert_problem(resp: testing.Result, status: int) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem with ``status``; returns its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    assert "Traceback" not in resp.text
    body: dict[str, Any] = json.loads(resp.text)
    assert body["status"] == status
    return body


def assert_invalid(resp: testing.Result, fields: Iterable[str]) -> dict[str, Any]:
    """A 422 problem naming exactly ``fields``, each entry with a detail."""
    body = assert_problem(resp, 422)
    for entry in body["errors"]:
        assert set(entry) == {"field", "detail"}, entry
        assert isinstance(entry["detail"], str)
        assert entry["detail"]
    assert sorted({e["field"] for e in body["errors"]}) == sorted(set(fields)), body
    return body


def create(client: testing.TestClient, email: str, **fields: Any) -> dict[str, Any]:
    resp = client.simulate_post(USERS, json={"email": email, **fields})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json
    assert body.keys() >= EXTERNAL_KEYS
    return body


def patch(client: testing.TestClient, user_id: str, body: Any, status: int = 200) -> dict[str, Any]:
    resp = client.simulate_patch(f"{USERS}/{user_id}", json=body)
    assert resp.status_code == status, resp.text
    out: dict[str, Any] = resp.json
    if status == 200:
        assert out.keys() >= EXTERNAL_KEYS
        assert resp.headers["ETag"] == f'"{out["version"]}"'
    return out


def get(client: testing.TestClient, user_id: str) -> dict[str, Any]:
    resp = client.simulate_get(f"{USERS}/{user_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json
    return body


def listed(client: testing.TestClient, **params: str) -> list[dict[str, Any]]:
    """Every user a list with ``params`` answers, following the cursor."""
    out: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        resp = client.simulate_get(USERS, params=query)
        assert resp.status_code == 200, resp.text
        body = resp.json
        for item in body["items"]:
            assert item.keys() >= EXTERNAL_KEYS
        out += body["items"]
        if not body.get("next"):
            return out
        query["cursor"] = body["next"]


def strict(value: Any) -> bytes:
    """``value`` as canonical JSON: equal only when equal as JSON (``1`` is not ``true``)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def events(registry: Registry, **filters: str) -> list[dict[str, Any]]:
    """Every audit event matching ``filters``, oldest first."""
    query = dict(filters)
    out: list[dict[str, Any]] = []
    # An event is listed once every transaction older than it has ended, in any database
    # of the cluster: beside other suites' transactions, that may take longer than a
    # reader's own wait.
    trail_of(registry).catch_up(wait=30)
    while True:
        page = trail_of(registry).list(parse_query({**query, "limit": "500"}))
        out += page.items
        if page.next is None:
            return out
        query["cursor"] = page.next


@pytest.fixture
def unrecorded(database_url: str) -> Iterator[Registry]:
    """A registry without the plugins that record changes: updates merge on a plain read."""
    env = {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_DISABLED_PLUGINS": "audit,webhooks"}
    with Registry(Settings.from_mapping(env)) as reg:
        reg.migrate()
        assert not reg.changes.active
        yield reg


@pytest.fixture
def sealed_registry(database_url: str, k1: NamedKey, i1: NamedKey) -> Iterator[Registry]:
    env = {
        "USERPLANE_DATABASE_URL": database_url,
        KEYS_SETTING: k1.entry(),
        INDEX_KEYS_SETTING: i1.entry(),
    }
    with Registry(Settings.from_mapping(env)) as reg:
        reg.migrate()
        assert reg.encrypted
        yield reg


# -- create, get, list ----------------------------------------------------------------------------

NESTED = {
    "department": "Forschung",
    "ünïcode 😀": "値",
    "tags": ["a", 1, None, True, 2.5],
    "manager": {"id": 7, "name": "Zoë", "deeper": {"level": 4}},
}


def test_create_get_and_list_carry_the_three_fields(client: testing.TestClient) -> None:
    made = create(
        client,
        "ann@example.org",
        external_source="okta",
        external_id="00u-ÄNN",
        attributes=NESTED,
    )
    assert (made["external_source"], made["external_id"]) == ("okta", "00u-ÄNN")
    assert strict(made["attributes"]) == strict(NESTED)
    assert get(client, made["id"]) == made
    plain = create(client, "bob@example.org")
    assert (plain["external_source"], plain["external_id"], plain["attributes"]) == (None, None, {})
    # Said null: none.
    explicit = create(
        client,
        "cid@example.org",
        external_source=None,
        external_id=None,
        attributes=None,
    )
    assert (explicit["external_source"], explicit["external_id"]) == (None, None)
    assert explicit["attributes"] == {}
    assert listed(client) == [made, plain, explicit]
    # Every answer about a user has the keys: delete and restore too.
    deleted = client.simulate_delete(f"{USERS}/{made['id']}")
    assert deleted.status_code in (200, 204), deleted.text
    restored = client.simulate_post(f"{USERS}/{made['id']}/restore")
    assert restored.status_code == 200, restored.text
    assert {k: restored.json[k] for k in EXTERNAL_KEYS} == {k: made[k] for k in EXTERNAL_KEYS}


def test_a_source_without_an_id_is_dropped_on_create(client: testing.TestClient) -> None:
    # No id, no source: a source alone says nothing (the service drops it).
    made = create(client, "ann@example.org", external_source="okta")
    assert (made["external_source"], made["external_id"]) == (None, None)


def test_a_taken_pair_is_a_409_and_one_id_from_two_sources_is_fine(
    client: testing.TestClient,
) -> None:
    first = create(client, "ann@example.org", external_source="okta", external_id="42")
    clash = client.simulate_post(
        USERS, json={"email": "bob@example.org", "external_source": "okta", "external_id": "42"}
    )
    body = assert_problem(clash, 409)
    assert body["detail"] == "a user with external id '42' from 'okta' exists"
    assert [u["email"] for u in listed(client)] == ["ann@example.org"]
    other = create(client, "bob@example.org", external_source="azure", external_id="42")
    # A patch onto a taken pair: 409, and the user stays as it was.
    moved = client.simulate_patch(
        f"{USERS}/{other['id']}",
        json={"external_source": "okta", "external_id": "42", "full_name": "Bob"},
    )
    assert assert_problem(moved, 409)["detail"] == "a user with external id '42' from 'okta' exists"
    assert get(client, other["id"]) == other
    # A deleted user keeps its pair, as it keeps its email.
    assert client.simulate_delete(f"{USERS}/{first['id']}").status_code in (200, 204)
    again = client.simulate_post(
        USERS, json={"email": "cid@example.org", "external_source": "okta", "external_id": "42"}
    )
    assert_problem(again, 409)
    # An email conflict is still said as one.
    email = client.simulate_post(
        USERS, json={"email": "BOB@example.org", "external_source": "x", "external_id": "y"}
    )
    assert "email" in assert_problem(email, 409)["detail"]


def test_patch_sets_moves_and_clears_the_external_id(client: testing.TestClient) -> None:
    user = create(client, "ann@example.org", attributes={"keep": True})
    set_ = patch(client, user["id"], {"external_source": "okta", "external_id": "a-1"})
    assert (set_["external_source"], set_["external_id"], set_["version"]) == ("okta", "a-1", 2)
    assert set_["attributes"] == {"keep": True}
    moved = patch(client, user["id"], {"external_source": "azure", "external_id": "a-2"})
    assert (moved["external_source"], moved["external_id"]) == ("azure", "a-2")
    # The same pair again: nothing changes, the version stays.
    same = patch(client, user["id"], {"external_source": "azure", "external_id": "a-2"})
    assert same == moved
    # A null id clears its source too.
    cleared = patch(client, user["id"], {"external_id": None})
    assert (cleared["external_source"], cleared["external_id"]) == (None, None)
    assert cleared["version"] == moved["version"] + 1
    assert patch(client, user["id"], {"external_id": None}) == cleared
    cleared_both = patch(client, user["id"], {"external_source": None, "external_id": None})
    assert cleared_both == cleared
    # The freed pair can be taken by another.
    create(client, "bob@example.org", external_source="azure", external_id="a-2")


def test_lists_filter_by_source_id_and_both(client: testing.TestClient) -> None:
    a = create(client, "a@example.org", external_source="okta", external_id="1")
    b = create(client, "b@example.org", external_source="okta", external_id="2")
    c = create(client, "c@example.org", external_source="azure", external_id="1")
    create(client, "d@example.org")
    gone = create(client, "e@example.org", external_source="okta", external_id="3")
    assert client.simulate_delete(f"{USERS}/{gone['id']}").status_code in (200, 204)

    def ids(**params: str) -> list[str]:
        return [u["id"] for u in listed(client, **params)]

    assert ids(external_source="okta") == [a["id"], b["id"]]
    assert ids(external_source="okta", include_deleted="true") == [a["id"], b["id"], gone["id"]]
    assert ids(external_id="1") == [a["id"], c["id"]]
    assert ids(external_source="okta", external_id="1") == [a["id"]]
    assert ids(external_source="azure", external_id="2") == []
    assert ids(external_source="okta", limit="1") == [a["id"], b["id"]]  # paged, cursor kept
    assert ids(external_source="okta", external_id="2", q="b@") == [b["id"]]


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"external_source": "bad source"}, ["$.external_source"]),
        ({"external_source": "x" * 65}, ["$.external_source"]),
        ({"external_source": ""}, ["$.external_source"]),
        ({"external_id": "x" * 256}, ["$.external_id"]),
        ({"external_id": " padded"}, ["$.external_id"]),
        ({"external_id": "a\x01b"}, ["$.external_id"]),
        (
            {"external_source": "ok!", "external_id": "y" * 300},
            ["$.external_source", "$.external_id"],
        ),
    ],
)
def test_list_parameters_at_fault_are_named(
    client: testing.TestClient, params: dict[str, str], fields: list[str]
) -> None:
    assert_invalid(client.simulate_get(USERS, params=params), fields)


# -- validation: every error names its field ------------------------------------------------------

_DEEP = {"a": {"b": {"c": {"d": 1}}}}
_BAD_FIELDS: list[tuple[dict[str, Any], list[str]]] = [
    ({"external_source": "okta", "external_id": ""}, ["$.external_id"]),
    ({"external_source": "okta", "external_id": "x" * 256}, ["$.external_id"]),
    ({"external_source": "okta", "external_id": " lead"}, ["$.external_id"]),
    ({"external_source": "okta", "external_id": "trail\t"}, ["$.external_id"]),
    ({"external_source": "okta", "external_id": "nul\x00"}, ["$.external_id"]),
    ({"external_source": "okta", "external_id": 42}, ["$.external_id"]),
    ({"external_source": "okta", "external_id": ["x"]}, ["$.external_id"]),
    ({"external_source": "has space", "external_id": "x"}, ["$.external_source"]),
    ({"external_source": "ökta", "external_id": "x"}, ["$.external_source"]),
    ({"external_source": "s" * 65, "external_id": "x"}, ["$.external_source"]),
    ({"external_source": "", "external_id": "x"}, ["$.external_source"]),
    ({"external_source": 7, "external_id": "x"}, ["$.external_source"]),
    ({"attributes": "text"}, ["$.attributes"]),
    ({"attributes": [1, 2]}, ["$.attributes"]),
    ({"attributes": 3}, ["$.attributes"]),
    ({"attributes": _DEEP}, ["$.attributes.a.b.c"]),
    ({"attributes": {"k": [[[1]]]}}, ["$.attributes.k[0][0]"]),
    ({"attributes": {"": 1}}, ["$.attributes"]),
    ({"attributes": {"k" * 65: 1}}, ["$.attributes"]),
    ({"attributes": {"tab\there": 1}}, ["$.attributes"]),
    ({"attributes": {"s": "nul\x00inside"}}, ["$.attributes.s"]),
    ({"attributes": {"n": 2**53}}, ["$.attributes.n"]),
    ({"attributes": {"n": -(2**53)}}, ["$.attributes.n"]),
    ({"attributes": {"o": {"n": 2**60}}}, ["$.attributes.o.n"]),
    ({"attributes": {f"k{i}": i for i in range(101)}}, ["$.attributes"]),
    ({"attributes": {"list": list(range(101))}}, ["$.attributes.list"]),
    # Over 16 KiB as JSON (strings of 1000: the HTTP body guard's limit is 1024).
    ({"attributes": {f"k{i}": "x" * 1000 for i in range(17)}}, ["$.attributes"]),
]
#: Several at once: one answer names them all.
_SEVERAL = (
    {"external_source": "bad source", "external_id": "", "attributes": {"n": 2**60}},
    ["$.external_source", "$.external_id", "$.attributes.n"],
)


def test_create_at_fault_names_each_field(client: testing.TestClient) -> None:
    # One registry for every case (a registry per case costs more than the cases).
    for fields, at_fault in [*_BAD_FIELDS, _SEVERAL]:
        resp = client.simulate_post(USERS, json={"email": "ann@example.org", **fields})
        assert resp.status_code == 422, (fields, resp.text)
        assert_invalid(resp, at_fault)
    assert listed(client) == []


def test_create_names_a_bad_email_with_the_new_fields(client: testing.TestClient) -> None:
    body = {"email": "not-an-email", "external_source": "okta", "external_id": " x"}
    assert_invalid(client.simulate_post(USERS, json=body), ["$.email", "$.external_id"])
    body = {"email": "not-an-email", "attributes": "nope"}
    assert_invalid(client.simulate_post(USERS, json=body), ["$.email", "$.attributes"])
    # An id needs its source.
    body = {"email": "ann@example.org", "external_id": "x"}
    assert_invalid(client.simulate_post(USERS, json=body), ["$.external_source"])


def test_the_service_bounds_attribute_strings_at_2048_characters(registry: Registry) -> None:
    longest = registry.users.create(NewUser("ann@example.org", attributes={"s": "x" * 2048}))
    assert registry.users.get(longest.id).attributes == {"s": "x" * 2048}
    with pytest.raises(InvalidInput) as info:
        registry.users.create(NewUser("bob@example.org", attributes={"s": "x" * 2049}))
    assert [e.field for e in info.value.errors] == ["$.attributes.s"]


def test_attribute_strings_up_to_2048_characters_pass_the_http_guard(
    client: testing.TestClient,
) -> None:
    made = create(client, "ann@example.org", attributes={"s": "x" * 2048})
    assert made["attributes"] == {"s": "x" * 2048}
    longer = {"email": "bob@example.org", "attributes": {"s": "x" * 2049}}
    assert_invalid(client.simulate_post(USERS, json=longer), ["$.attributes.s"])


def test_patch_at_fault_names_each_field_and_changes_nothing(client: testing.TestClient) -> None:
    user = create(client, "ann@example.org", attributes={"kept": 1})
    for fields, at_fault in _BAD_FIELDS:
        resp = client.simulate_patch(f"{USERS}/{user['id']}", json=fields)
        # A patch that is no object says so at $.attributes; a bad value inside at its path.
        assert resp.status_code == 422, (fields, resp.text)
        assert_invalid(resp, at_fault)
    assert get(client, user["id"]) == user


def test_a_patch_names_every_field_at_fault_at_once(client: testing.TestClient) -> None:
    user = create(client, "ann@example.org")
    fields, at_fault = _SEVERAL
    assert_invalid(client.simulate_patch(f"{USERS}/{user['id']}", json=fields), at_fault)


@pytest.mark.parametrize(
    ("body", "at_fault"),
    [
        ({"external_source": "okta"}, ["$.external_id"]),  # a source needs its id
        ({"external_id": "x"}, ["$.external_source"]),  # an id needs its source
        ({"external_id": "x", "external_source": None}, ["$.external_source"]),
        ({"attributes": {"n": 2**53}, "email": None}, ["$.attributes.n", "$.email"]),
        ({"attributes": {"ok": 1}, "nope": 1}, ["$.nope"]),
    ],
)
def test_patch_pairs_and_mixtures_at_fault(
    client: testing.TestClient, body: dict[str, Any], at_fault: list[str]
) -> None:
    user = create(client, "ann@example.org", external_source="okta", external_id="1")
    assert_invalid(client.simulate_patch(f"{USERS}/{user['id']}", json=body), at_fault)
    assert get(client, user["id"]) == user


def test_a_patch_whose_merge_grows_too_large_is_refused(client: testing.TestClient) -> None:
    half = {f"a{i}": "x" * 1000 for i in range(9)}  # ~9 KB: fine alone
    user = create(client, "ann@example.org", attributes=half)
    more = {f"b{i}": "y" * 1000 for i in range(9)}  # fine alone, too large merged
    assert_invalid(
        client.simulate_patch(f"{USERS}/{user['id']}", json={"attributes": more}), ["$.attributes"]
    )
    assert get(client, user["id"]) == user
    # 100 entries merged with one more: too many.
    many = create(client, "bob@example.org", attributes={f"k{i}": i for i in range(100)})
    resp = client.simulate_patch(f"{USERS}/{many['id']}", json={"attributes": {"extra": 1}})
    assert_invalid(resp, ["$.attributes"])
    # Removing one first makes room: the patch is merged as a whole.
    room = patch(client, many["id"], {"attributes": {"k0": None, "extra": 1}})
    assert len(room["attributes"]) == 100
    assert "k0" not in room["attributes"]


# -- the merge patch ------------------------------------------------------------------------------


def test_attributes_merge_as_rfc_7396_says(client: testing.TestClient) -> None:
    user = create(
        client,
        "ann@example.org",
        attributes={"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2], "n": 1},
    )
    etag = f'"{user["version"]}"'
    # Nested merge: only the keys named change; null removes one.
    merged = patch(client, user["id"], {"attributes": {"a": "z", "c": {"f": None, "h": 1}}})
    assert merged["attributes"] == {"a": "z", "c": {"d": "e", "h": 1}, "list": [1, 2], "n": 1}
    assert merged["version"] == 2
    # Arrays replace, never merge; an object replaces a scalar, a scalar an object.
    replaced = patch(client, user["id"], {"attributes": {"list": [3], "n": {"x": 1}, "c": "s"}})
    assert replaced["attributes"] == {"a": "z", "c": "s", "list": [3], "n": {"x": 1}}
    # Removing what is not there, or setting what is: nothing changes, the version stays.
    same: dict[str, Any]
    for same in (
        {"attributes": {"missing": None}},
        {"attributes": {"a": "z"}},
        {"attributes": {}},
        {"attributes": {"n": {}}},
        {"attributes": {"n": {"x": 1}}},
        {},
    ):
        resp = client.simulate_patch(f"{USERS}/{user['id']}", json=same)
        assert resp.status_code == 200, resp.text
        assert resp.json == replaced, same
        assert resp.headers["ETag"] == f'"{replaced["version"]}"'
    # A nested patch onto nothing makes the objects on the way.
    made = patch(client, user["id"], {"attributes": {"new": {"inner": {"x": None, "y": 2}}}})
    assert made["attributes"]["new"] == {"inner": {"y": 2}}
    # Every key removed: none left, {} read back.
    gone = patch(client, user["id"], {"attributes": dict.fromkeys(made["attributes"])})
    assert gone["attributes"] == {}
    # attributes: null removes them all at once.
    patch(client, user["id"], {"attributes": {"back": [True]}})
    cleared = patch(client, user["id"], {"attributes": None})
    assert cleared["attributes"] == {}
    assert patch(client, user["id"], {"attributes": None}) == cleared  # again: no change
    assert get(client, user["id"]) == cleared
    # A conditional patch with the old ETag is refused and changes nothing.
    stale = client.simulate_patch(
        f"{USERS}/{user['id']}", json={"attributes": {"z": 1}}, headers={"If-Match": etag}
    )
    assert_problem(stale, 412)
    assert get(client, user["id"]) == cleared


def test_a_patch_with_other_fields_merges_the_attributes_too(client: testing.TestClient) -> None:
    user = create(client, "ann@example.org", attributes={"a": 1})
    both = patch(
        client,
        user["id"],
        {
            "full_name": "Ann",
            "attributes": {"b": 2},
            "external_source": "okta",
            "external_id": "ann",
        },
    )
    assert both["attributes"] == {"a": 1, "b": 2}
    assert (both["full_name"], both["external_id"], both["version"]) == ("Ann", "ann", 2)
    # The name changes, the attributes do not: one write.
    renamed = patch(client, user["id"], {"full_name": "Anna", "attributes": {"b": 2}})
    assert (renamed["full_name"], renamed["version"]) == ("Anna", 3)


def test_the_service_merges_as_the_api_does(registry: Registry) -> None:
    service = registry.users
    user = service.create(NewUser("ann@example.org", attributes={"a": {"b": 1}}))
    merged = service.update(user.id, UserChanges(attributes={"a": {"c": 2}}))
    assert merged.attributes == {"a": {"b": 1, "c": 2}}
    assert service.update(user.id, UserChanges(attributes={"a": {"c": 2}})) == merged
    with pytest.raises(InvalidInput) as info:
        service.update(user.id, UserChanges(attributes={"a": {"b": {"c": {"d": 1}}}}))
    assert [e.field for e in info.value.errors] == ["$.attributes.a.b.c"]
    cleared = service.update(user.id, UserChanges(attributes=None))
    assert cleared.attributes == {}
    # An id without its source is refused; a null id clears the source.
    with pytest.raises(InvalidInput) as info:
        service.update(user.id, UserChanges(external_id="x"))
    assert [e.field for e in info.value.errors] == ["$.external_source"]
    with_id = service.update(user.id, UserChanges(external_source="okta", external_id="x"))
    assert (with_id.external_source, with_id.external_id) == ("okta", "x")
    other = service.create(NewUser("bob@example.org"))
    with pytest.raises(Conflict, match="a user with external id 'x' from 'okta' exists"):
        service.update(other.id, UserChanges(external_source="okta", external_id="x"))
    none = service.update(user.id, UserChanges(external_id=None))
    assert (none.external_source, none.external_id) == (None, None)


def test_a_boolean_changed_to_a_number_is_a_change(client: testing.TestClient) -> None:
    user = create(client, "ann@example.org", attributes={"flag": True, "zero": False})
    changed = patch(client, user["id"], {"attributes": {"flag": 1, "zero": 0}})
    assert strict(changed["attributes"]) == strict({"flag": 1, "zero": 0})
    assert changed["version"] == 2


# -- property: PATCH equals a reference RFC 7396 --------------------------------------------------


def reference_merge_patch(target: Any, patch_: Any) -> Any:
    """RFC 7396, section 2, word for word."""
    if isinstance(patch_, dict):
        if not isinstance(target, dict):
            target = {}
        target = dict(target)
        for name, value in patch_.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = reference_merge_patch(target.get(name), value)
        return target
    return copy.deepcopy(patch_)


_KEYS = st.sampled_from(["a", "b", "c", "ü", "key 😀"])
# Scalars that compare in Python as they do in JSON (booleans and floats are the
# subject of their own test: see test_a_boolean_changed_to_a_number_is_a_change).
_SCALARS = st.one_of(
    st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=8),
)


def _values(depth: int, nulls: bool) -> st.SearchStrategy[Any]:
    """A value at ``depth`` (the attributes object is 1): containers while one more fits."""
    scalar = st.one_of(st.none(), _SCALARS) if nulls else _SCALARS
    if depth >= 4:
        return scalar
    return st.one_of(
        scalar,
        st.lists(_SCALARS, max_size=3),
        st.dictionaries(_KEYS, _values(depth + 1, nulls), max_size=3),
    )


_stored = st.dictionaries(_KEYS, _values(2, nulls=False), max_size=4)
_patches = st.lists(
    st.one_of(st.none(), st.dictionaries(_KEYS, _values(2, nulls=True), max_size=4)),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stored=_stored, patches=_patches)
def test_property_patch_equals_the_reference_merge(
    client: testing.TestClient, stored: dict[str, Any], patches: list[dict[str, Any] | None]
) -> None:
    user = create(client, f"{uuid.uuid4().hex}@example.org", attributes=stored)
    expected: dict[str, Any] = stored
    version = user["version"]
    assert strict(user["attributes"]) == strict(stored)
    for p in patches:
        after = {} if p is None else reference_merge_patch(expected, p)
        got = patch(client, user["id"], {"attributes": p})
        assert strict(got["attributes"]) == strict(after), (expected, p)
        # A version per change, none for a patch that changes nothing.
        version += strict(after) != strict(expected)
        assert got["version"] == version, (expected, p, after)
        expected = after
    assert strict(get(client, user["id"])["attributes"]) == strict(expected)


# -- concurrent patches of one user ---------------------------------------------------------------


def _patch_keys_at_once(registry: Registry, count: int) -> None:
    """``count`` clients patch one attribute each of one user at once: every one lands."""
    client = client_for(registry)
    user = create(client, "ann@example.org", attributes={"base": 0})

    def write(i: int) -> int:
        resp = client.simulate_patch(f"{USERS}/{user['id']}", json={"attributes": {f"k{i}": i}})
        assert resp.status_code == 200, resp.text
        return int(resp.json["version"])

    results = run_concurrently(count, write)
    assert all(isinstance(r, int) for r in results), results
    assert sorted(r for r in results if isinstance(r, int)) == list(range(2, count + 2))
    final = get(client, user["id"])
    assert final["attributes"] == {"base": 0, **{f"k{i}": i for i in range(count)}}
    assert final["version"] == count + 1


def test_concurrent_patches_of_different_keys_all_land_with_records(registry: Registry) -> None:
    assert registry.changes.active  # the audit plugin: a write locks the user it merges onto
    _patch_keys_at_once(registry, 8)
    updates = events(registry, action="user.updated")
    assert len(updates) == 8
    keys = set()
    for event in updates:
        change = event["changes"]["attributes"]
        added = set(change["after"]) - set(change["before"] or {})
        assert len(added) == 1, change
        keys |= added
    assert keys == {f"k{i}" for i in range(8)}


def test_concurrent_patches_of_different_keys_all_land_without_records(
    unrecorded: Registry,
) -> None:
    # Without records, a merge still locks the user from its read to its write: none is
    # lost, and no client is told 412 when it sent no If-Match.
    _patch_keys_at_once(unrecorded, 5)


def test_many_concurrent_patches_without_records_all_land(unrecorded: Registry) -> None:
    client = client_for(unrecorded)
    user = create(client, "ann@example.org")
    count = 15
    statuses: list[int] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        resp = client.simulate_patch(f"{USERS}/{user['id']}", json={"attributes": {f"k{i}": i}})
        with lock:
            statuses.append(resp.status_code)
        assert resp.status_code == 200, resp.text

    results = run_concurrently(count, write)
    assert all(r is None for r in results), results
    final = get(client, user["id"])
    assert final["attributes"] == {f"k{i}": i for i in range(count)}
    assert final["version"] == 1 + count


def test_a_conditional_patch_is_never_retried(unrecorded: Registry) -> None:
    client = client_for(unrecorded)
    user = create(client, "ann@example.org")
    patch(client, user["id"], {"attributes": {"a": 1}})
    stale = client.simulate_patch(
        f"{USERS}/{user['id']}", json={"attributes": {"b": 2}}, headers={"If-Match": '"1"'}
    )
    assert_problem(stale, 412)
    assert get(client, user["id"])["attributes"] == {"a": 1}


# -- encryption -----------------------------------------------------------------------------------


def test_encryption_refuses_attributes_and_keeps_external_ids(sealed_registry: Registry) -> None:
    client = client_for(sealed_registry)
    refused = client.simulate_post(
        USERS, json={"email": "ann@example.org", "attributes": {"team": "x"}}
    )
    body = assert_invalid(refused, ["$.attributes"])
    assert "encrypted" in body["errors"][0]["detail"]
    assert listed(client) == []
    # External ids are no personal data: kept, filtered and unique as ever.
    made = create(
        client, "ann@example.org", external_source="okta", external_id="ann", attributes={}
    )
    assert (made["external_source"], made["external_id"], made["attributes"]) == ("okta", "ann", {})
    assert get(client, made["id"]) == made
    assert [u["id"] for u in listed(client, external_source="okta", external_id="ann")] == [
        made["id"]
    ]
    clash = client.simulate_post(
        USERS, json={"email": "bob@example.org", "external_source": "okta", "external_id": "ann"}
    )
    assert (
        assert_problem(clash, 409)["detail"] == "a user with external id 'ann' from 'okta' exists"
    )
    # A patch adding attributes: refused; removing none, or all: fine (nothing to store).
    resp = client.simulate_patch(f"{USERS}/{made['id']}", json={"attributes": {"a": 1}})
    assert_invalid(resp, ["$.attributes"])
    assert patch(client, made["id"], {"attributes": None}) == made
    assert patch(client, made["id"], {"attributes": {"a": None}}) == made
    moved = patch(client, made["id"], {"external_source": "azure", "external_id": "ann-2"})
    assert (moved["external_source"], moved["external_id"]) == ("azure", "ann-2")
    cleared = patch(client, made["id"], {"external_id": None})
    assert (cleared["external_source"], cleared["external_id"]) == (None, None)
    assert get(client, made["id"])["email"] == "ann@example.org"


# -- the records of changes -----------------------------------------------------------------------


def test_change_records_carry_the_new_fields(registry: Registry) -> None:
    client = client_for(registry)
    made = create(
        client, "ann@example.org", external_source="okta", external_id="a-1", attributes={"a": 1}
    )
    plain = create(client, "bob@example.org")
    patch(client, made["id"], {"attributes": {"b": {"c": 2}, "a": None}})
    patch(client, made["id"], {"attributes": {"b": {"c": 2}}})  # no change: no record
    patch(client, made["id"], {"external_source": "azure", "external_id": "a-2"})
    patch(client, made["id"], {"external_id": None, "attributes": None})

    created = events(registry, action="user.created")
    by_target = {e["target"]["id"]: e for e in created}
    changes = by_target[made["id"]]["changes"]
    assert changes["external_source"] == {"before": None, "after": "okta"}
    assert changes["external_id"] == {"before": None, "after": "a-1"}
    assert changes["attributes"] == {"before": None, "after": {"a": 1}}
    # None is none: no change of the fields is recorded for a user created without them.
    assert EXTERNAL_KEYS.isdisjoint(by_target[plain["id"]]["changes"])

    updates = [e["changes"] for e in events(registry, action="user.updated")]
    assert len(updates) == 3
    first, second, third = updates
    assert first["attributes"] == {"before": {"a": 1}, "after": {"b": {"c": 2}}}
    assert EXTERNAL_KEYS & first.keys() == {"attributes"}
    assert second["external_source"] == {"before": "okta", "after": "azure"}
    assert second["external_id"] == {"before": "a-1", "after": "a-2"}
    assert "attributes" not in second
    assert third["external_source"] == {"before": "azure", "after": None}
    assert third["external_id"] == {"before": "a-2", "after": None}
    assert third["attributes"] == {"before": {"b": {"c": 2}}, "after": None}


# -- the OpenAPI document -------------------------------------------------------------------------


@pytest.fixture
def openapi(client: testing.TestClient) -> dict[str, Any]:
    resp = client.simulate_get("/api/v1/openapi.json")
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json
    return doc


def _validator(doc: Mapping[str, Any], name: str) -> Callable[[Any], bool]:
    """Whether a value is valid against the document's schema ``name`` (refs resolved)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(schema)

    def is_valid(value: Any) -> bool:
        return bool(validator.is_valid(value))

    return is_valid


def test_the_openapi_document_declares_the_fields(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    user = schemas["User"]
    assert set(user["required"]) >= EXTERNAL_KEYS
    assert user["properties"].keys() >= EXTERNAL_KEYS
    for name in ("NewUser", "UserChanges"):
        assert schemas[name]["properties"].keys() >= EXTERNAL_KEYS, name
    assert schemas["ExternalSource"]["maxLength"] == 64
    assert schemas["ExternalId"]["maxLength"] == 255
    assert "null" in schemas["Attributes"]["type"]
    params = {p.get("name") for p in openapi["paths"]["/api/v1/users/"]["get"]["parameters"]}
    assert {"external_source", "external_id"} <= params


def test_the_openapi_schemas_agree_with_what_the_api_answers(
    client: testing.TestClient, openapi: dict[str, Any]
) -> None:
    valid_new = _validator(openapi, "NewUser")
    valid_changes = _validator(openapi, "UserChanges")
    valid_user = _validator(openapi, "User")
    good: dict[str, Any] = {
        "email": "ann@example.org",
        "external_source": "okta",
        "external_id": "a",
        "attributes": NESTED,
    }
    assert valid_new(good)
    made = create(client, good["email"], **{k: v for k, v in good.items() if k != "email"})
    assert valid_user(made)
    assert valid_changes({"attributes": {"a": None}, "external_id": None})
    assert valid_changes({"external_source": "x", "external_id": "y"})
    # What the API refuses, the document refuses too (all but the size in bytes, which
    # a JSON Schema cannot say: the description does).
    for fields, _ in _BAD_FIELDS:
        body = {"email": "bob@example.org", **fields}
        if len(orjson.dumps(fields.get("attributes"))) > 16384:
            continue
        assert not valid_new(body), fields
        assert client.simulate_post(USERS, json=body).status_code == 422
    assert not valid_new({"email": "bob@example.org", "external_id": "x"})
    assert not valid_changes({"external_source": "okta"})
    assert not valid_changes({"external_id": "x"})
