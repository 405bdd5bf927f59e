"""The ``/api/v1/groups`` routes as a client sees them, on SQLite and PostgreSQL.

Every request goes through ``falcon.testing.TestClient`` against a real, migrated
registry (``conftest.py``); nothing below the HTTP surface is mocked. Users are
made through the service (their own HTTP surface is tested elsewhere), except
where a test is about what the users' routes do to membership.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from clients import client_for
from falcon import testing

from userplane import NewUser, Registry, Settings, hookimpl
from userplane.users import User

GROUPS = "/api/v1/groups"
USERS = "/api/v1/users"
PROBLEM_JSON = "application/problem+json"
GROUP_FIELDS = {"id", "display_name", "external_id", "roles", "created_at", "updated_at", "version"}
NEXT_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')
#: What no error body may carry: internals of a failure.
INTERNALS = ("Traceback", 'File "', ".py", "psycopg", "sqlite3", "Error:")


# --------------------------------------------------------------------------- helpers


def assert_problem(resp: testing.Result, status: int) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem with ``status``, without internals; returns its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = json.loads(resp.text)
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body["instance"].startswith("/")
    for internal in INTERNALS:
        assert internal not in resp.text, resp.text
    return body


def assert_invalid(resp: testing.Result, fields: Iterable[str]) -> dict[str, Any]:
    """A 422 naming exactly ``fields``."""
    body = assert_problem(resp, 422)
    for entry in body["errors"]:
        assert set(entry) == {"field", "detail"}, entry
        assert isinstance(entry["detail"], str)
        assert entry["detail"]
    assert sorted({e["field"] for e in body["errors"]}) == sorted(set(fields)), body
    return body


def detail_of(body: Mapping[str, Any], field: str) -> str:
    return " ".join(e["detail"] for e in body["errors"] if e["field"] == field)


def etag(resp: testing.Result) -> str:
    return resp.headers["ETag"]


def create_group(client: testing.TestClient, name: str, **fields: Any) -> dict[str, Any]:
    resp = client.simulate_post(GROUPS, json={"display_name": name, **fields})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json
    return body


def make_users(registry: Registry, count: int, prefix: str = "member") -> list[User]:
    """``count`` live users, sorted by id (the members' order)."""
    made = [
        registry.users.create(NewUser(f"{prefix}{n}@example.org", f"Member {n}"))
        for n in range(count)
    ]
    return sorted(made, key=lambda u: u.id)


def next_link(resp: testing.Result) -> str | None:
    header = resp.headers.get("Link")
    if header is None:
        return None
    match = NEXT_LINK.search(header)
    assert match is not None, header
    return match.group(1)


def walk(client: testing.TestClient, path: str, query: str = "") -> list[list[dict[str, Any]]]:
    """Every page from ``path``, following ``Link``; checks Link iff ``next``."""
    pages: list[list[dict[str, Any]]] = []
    resp = client.simulate_get(path, query_string=query)
    for _ in range(100):
        assert resp.status_code == 200, resp.text
        pages.append(resp.json["items"])
        link = next_link(resp)
        assert (link is None) == (resp.json["next"] is None), resp.headers.get("Link")
        if link is None:
            return pages
        parts = urlsplit(link)
        assert parts.path == path
        assert parse_qs(parts.query)["cursor"] == [resp.json["next"]]
        resp = client.simulate_get(parts.path, query_string=parts.query)
    raise AssertionError("paging did not end")


def member_ids(client: testing.TestClient, group_id: str) -> list[str]:
    return [u["id"] for page in walk(client, f"{GROUPS}/{group_id}/members") for u in page]


def group_ids_of(client: testing.TestClient, user_id: uuid.UUID | str) -> list[str]:
    return [g["id"] for page in walk(client, f"{USERS}/{user_id}/groups") for g in page]


# --------------------------------------------------------------------------- groups


def test_create_read_patch_delete_round_trip(client: testing.TestClient) -> None:
    resp = client.simulate_post(
        GROUPS, json={"display_name": "Support", "roles": ["viewer"], "external_id": "idp-42"}
    )
    assert resp.status_code == 201, resp.text
    group = resp.json
    assert set(group) == GROUP_FIELDS
    assert group["display_name"] == "Support"
    assert group["roles"] == ["viewer"]
    assert group["external_id"] == "idp-42"
    assert group["version"] == 1
    assert resp.headers["Location"] == f"{GROUPS}/{group['id']}"
    assert etag(resp) == '"1"'
    url = resp.headers["Location"]

    got = client.simulate_get(url)
    assert got.status_code == 200
    assert got.json == group
    assert etag(got) == '"1"'

    head = client.simulate_head(url)
    assert head.status_code == 200
    assert head.text == ""
    assert etag(head) == '"1"'

    patched = client.simulate_patch(
        url, json={"display_name": "Help desk", "roles": ["viewer", "editor"]}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json["display_name"] == "Help desk"
    assert patched.json["roles"] == ["editor", "viewer"]
    assert patched.json["external_id"] == "idp-42"  # untouched by the merge patch
    assert patched.json["version"] == 2
    assert etag(patched) == '"2"'

    cleared = client.simulate_patch(url, json={"external_id": None, "roles": []})
    assert cleared.json["external_id"] is None
    assert cleared.json["roles"] == []
    assert cleared.json["version"] == 3

    # A patch that changes nothing writes nothing.
    same = client.simulate_patch(url, json={"display_name": "Help desk"})
    assert same.status_code == 200
    assert same.json["version"] == 3

    deleted = client.simulate_delete(url)
    assert deleted.status_code == 204
    assert deleted.text == ""
    assert_problem(client.simulate_get(url), 404)
    assert_problem(client.simulate_delete(url), 404)


def test_a_name_differing_only_in_case_is_taken(client: testing.TestClient) -> None:
    create_group(client, "Admins")
    body = assert_problem(client.simulate_post(GROUPS, json={"display_name": "ADMINS"}), 409)
    assert "ADMINS" in body["detail"]
    assert "case" in body["detail"]

    other = create_group(client, "Others")
    renamed = client.simulate_patch(f"{GROUPS}/{other['id']}", json={"display_name": "admins"})
    assert "admins" in assert_problem(renamed, 409)["detail"]
    # Renaming a group to its own name in another case is no conflict.
    recased = client.simulate_patch(f"{GROUPS}/{other['id']}", json={"display_name": "OTHERS"})
    assert recased.status_code == 200, recased.text
    assert recased.json["display_name"] == "OTHERS"


def test_a_taken_external_id_is_a_conflict(client: testing.TestClient) -> None:
    create_group(client, "One", external_id="ext-1")
    resp = client.simulate_post(GROUPS, json={"display_name": "Two", "external_id": "ext-1"})
    assert "ext-1" in assert_problem(resp, 409)["detail"]

    two = create_group(client, "Two", external_id="ext-2")
    resp = client.simulate_patch(f"{GROUPS}/{two['id']}", json={"external_id": "ext-1"})
    assert "ext-1" in assert_problem(resp, 409)["detail"]
    assert client.simulate_get(f"{GROUPS}/{two['id']}").json["external_id"] == "ext-2"


BAD_BODIES: list[tuple[Any, list[str]]] = [
    ({"display_name": "x", "colour": "red"}, ["$.colour"]),
    ({}, ["$.display_name"]),
    ({"display_name": 5}, ["$.display_name"]),
    ({"display_name": None}, ["$.display_name"]),
    ({"display_name": "   "}, ["$.display_name"]),
    ({"display_name": "bell\x07here"}, ["$.display_name"]),
    ({"display_name": "esc\x1b[31mred"}, ["$.display_name"]),
    ({"display_name": "x" * 201}, ["$.display_name"]),
    ({"display_name": "x", "roles": "admin"}, ["$.roles"]),
    ({"display_name": "x", "roles": [1]}, ["$.roles"]),
    ({"display_name": "x", "roles": ["wizard"]}, ["$.roles"]),
    ({"display_name": "x", "external_id": 7}, ["$.external_id"]),
    ({"display_name": "x", "external_id": ""}, ["$.external_id"]),
    ({"display_name": "x", "external_id": "a\nb"}, ["$.external_id"]),
    ({"display_name": 1, "roles": 2, "extra": 3}, ["$.display_name", "$.roles", "$.extra"]),
    (["display_name"], ["$"]),
]


@pytest.mark.parametrize(("body", "fields"), BAD_BODIES, ids=lambda v: repr(v)[:40])
def test_bad_create_bodies_name_each_field(
    client: testing.TestClient, body: Any, fields: list[str]
) -> None:
    assert_invalid(client.simulate_post(GROUPS, json=body), fields)
    assert client.simulate_get(GROUPS).json["items"] == []


def test_an_unknown_role_is_named(client: testing.TestClient) -> None:
    resp = client.simulate_post(GROUPS, json={"display_name": "x", "roles": ["viewer", "wizard"]})
    body = assert_invalid(resp, ["$.roles"])
    assert "wizard" in detail_of(body, "$.roles")
    assert "'viewer'" not in detail_of(body, "$.roles").split("known")[0]


def test_bad_patch_bodies_name_each_field_and_change_nothing(client: testing.TestClient) -> None:
    group = create_group(client, "Stable")
    url = f"{GROUPS}/{group['id']}"
    for body, fields in [
        ({"display_name": None}, ["$.display_name"]),
        ({"display_name": ""}, ["$.display_name"]),
        ({"roles": ["viewer", "nobody"]}, ["$.roles"]),
        ({"id": group["id"]}, ["$.id"]),
        ({"version": 9}, ["$.version"]),
        ([], ["$"]),
    ]:
        assert_invalid(client.simulate_patch(url, json=body), fields)
    assert client.simulate_get(url).json == group


def test_bad_query_parameters_are_named(client: testing.TestClient, registry: Registry) -> None:
    group = create_group(client, "Q")
    [user] = make_users(registry, 1)
    for path, query, fields in [
        (GROUPS, "cursor=garbage", ["$.cursor"]),
        (GROUPS, "colour=red", ["$.colour"]),
        (GROUPS, "limit=0", ["$.limit"]),
        (GROUPS, "limit=ten", ["$.limit"]),
        (GROUPS, "limit=1&limit=2", ["$.limit"]),
        (GROUPS, "member=not-a-uuid", ["$.member"]),
        (f"{GROUPS}/{group['id']}", "x=1", ["$.x"]),
        (f"{GROUPS}/{group['id']}/members", "cursor=garbage", ["$.cursor"]),
        (f"{GROUPS}/{group['id']}/members", "q=x", ["$.q"]),
        (f"{USERS}/{user.id}/groups", "cursor=%%%", ["$.cursor"]),
        (f"{USERS}/{user.id}/groups", "member=x", ["$.member"]),
    ]:
        assert_invalid(client.simulate_get(path, query_string=query), fields)


def test_a_group_cursor_is_no_members_cursor(
    client: testing.TestClient, registry: Registry
) -> None:
    for n in range(3):
        create_group(client, f"G{n}")
    users = make_users(registry, 3)
    group = create_group(client, "Members")
    add = client.simulate_post(
        f"{GROUPS}/{group['id']}/members", json={"user_ids": [str(u.id) for u in users]}
    )
    assert add.status_code == 200, add.text
    group_cursor = client.simulate_get(GROUPS, query_string="limit=1").json["next"]
    member_cursor = client.simulate_get(
        f"{GROUPS}/{group['id']}/members", query_string="limit=1"
    ).json["next"]
    assert group_cursor
    assert member_cursor
    assert_invalid(
        client.simulate_get(
            f"{GROUPS}/{group['id']}/members", query_string=f"cursor={group_cursor}"
        ),
        ["$.cursor"],
    )
    assert_invalid(
        client.simulate_get(GROUPS, query_string=f"cursor={member_cursor}"), ["$.cursor"]
    )


def test_missing_groups_and_users_are_404(client: testing.TestClient, registry: Registry) -> None:
    [user] = make_users(registry, 1)
    missing = uuid.uuid4()
    group = create_group(client, "Here")
    here = f"{GROUPS}/{group['id']}"
    gone = f"{GROUPS}/{missing}"
    body = {"user_ids": [str(user.id)]}
    for resp in [
        client.simulate_get(gone),
        client.simulate_head(gone),
        client.simulate_patch(gone, json={"display_name": "x"}),
        client.simulate_delete(gone),
        client.simulate_get(f"{gone}/members"),
        client.simulate_post(f"{gone}/members", json=body),
        client.simulate_put(f"{gone}/members", json=body),
        client.simulate_put(f"{gone}/members/{user.id}"),
        client.simulate_delete(f"{gone}/members/{user.id}"),
        client.simulate_get(f"{USERS}/{missing}/groups"),
        client.simulate_patch(gone, json={"display_name": "x"}, headers={"If-Match": '"1"'}),
        client.simulate_delete(gone, headers={"If-Match": "*"}),
    ]:
        if resp.status_code == 404 and resp.text == "":  # HEAD: no body to judge
            continue
        assert str(missing) in assert_problem(resp, 404)["detail"]
    # An unknown user in the path is a missing resource; in a body, invalid input naming it.
    resp = client.simulate_put(f"{here}/members/{missing}")
    assert str(missing) in assert_problem(resp, 404)["detail"]
    resp = client.simulate_post(f"{here}/members", json={"user_ids": [str(missing)]})
    assert str(missing) in detail_of(assert_invalid(resp, ["$.user_ids"]), "$.user_ids")
    # A path that is not a UUID matches no route.
    assert_problem(client.simulate_get(f"{GROUPS}/not-a-uuid"), 404)


def test_head_works_where_get_does(client: testing.TestClient, registry: Registry) -> None:
    [user] = make_users(registry, 1)
    group = create_group(client, "Heads")
    client.simulate_put(f"{GROUPS}/{group['id']}/members/{user.id}")
    for path in [
        GROUPS,
        f"{GROUPS}/{group['id']}",
        f"{GROUPS}/{group['id']}/members",
        f"{USERS}/{user.id}/groups",
    ]:
        get = client.simulate_get(path)
        head = client.simulate_head(path)
        assert get.status_code == head.status_code == 200, (path, get.text)
        assert head.text == ""
        assert head.headers.get("ETag") == get.headers.get("ETag")


# --------------------------------------------------------------------------- conditions


def test_if_none_match_answers_304(client: testing.TestClient) -> None:
    group = create_group(client, "Cached")
    url = f"{GROUPS}/{group['id']}"
    for tag in ['"1"', 'W/"1"', '"7", "1"', "*"]:
        resp = client.simulate_get(url, headers={"If-None-Match": tag})
        assert resp.status_code == 304, (tag, resp.text)
        assert resp.text == ""
        assert etag(resp) == '"1"'
    assert client.simulate_head(url, headers={"If-None-Match": '"1"'}).status_code == 304
    fresh = client.simulate_get(url, headers={"If-None-Match": '"2"'})
    assert fresh.status_code == 200
    assert fresh.json == group


def test_a_stale_if_match_is_412_and_changes_nothing(
    client: testing.TestClient, registry: Registry
) -> None:
    [ann, bob] = make_users(registry, 2)
    group = create_group(client, "Guarded")
    url = f"{GROUPS}/{group['id']}"
    stale = {"If-Match": '"2"'}
    attempts = [
        client.simulate_patch(url, json={"display_name": "New"}, headers=stale),
        client.simulate_delete(url, headers=stale),
        client.simulate_post(f"{url}/members", json={"user_ids": [str(ann.id)]}, headers=stale),
        client.simulate_put(f"{url}/members", json={"user_ids": [str(ann.id)]}, headers=stale),
        client.simulate_put(f"{url}/members/{ann.id}", headers=stale),
        client.simulate_delete(f"{url}/members/{ann.id}", headers=stale),
        client.simulate_patch(url, json={"display_name": "New"}, headers={"If-Match": 'W/"1"'}),
    ]
    for resp in attempts:
        assert_problem(resp, 412)
    assert client.simulate_get(url).json == group
    assert member_ids(client, group["id"]) == []

    # The current ETag lets each write through; each answers the next one.
    tag = etag(client.simulate_put(f"{url}/members/{ann.id}", headers={"If-Match": '"1"'}))
    assert tag == '"2"'
    resp = client.simulate_post(
        f"{url}/members", json={"user_ids": [str(bob.id)]}, headers={"If-Match": tag}
    )
    assert resp.status_code == 200, resp.text
    tag = etag(resp)
    assert tag == '"3"'
    resp = client.simulate_put(
        f"{url}/members", json={"user_ids": [str(bob.id)]}, headers={"If-Match": tag}
    )
    assert resp.status_code == 200, resp.text
    tag = etag(resp)
    assert tag == '"4"'
    resp = client.simulate_delete(f"{url}/members/{bob.id}", headers={"If-Match": tag})
    assert resp.status_code == 204
    tag = etag(resp)
    assert tag == '"5"'
    resp = client.simulate_patch(url, json={"display_name": "New"}, headers={"If-Match": tag})
    assert resp.status_code == 200
    assert etag(resp) == '"6"'
    assert_problem(client.simulate_delete(url, headers={"If-Match": tag}), 412)
    assert client.simulate_delete(url, headers={"If-Match": '"6"'}).status_code == 204


# --------------------------------------------------------------------------- lists


def test_paging_through_seven_groups_three_at_a_time(client: testing.TestClient) -> None:
    made = [create_group(client, f"Team {n}")["id"] for n in range(7)]
    pages = walk(client, GROUPS, "limit=3")
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [g["id"] for page in pages for g in page]
    assert seen == made  # oldest first: no repeat, no gap
    # The Link keeps the other parameters.
    pages = walk(client, GROUPS, "limit=2&q=team")
    assert [g["id"] for page in pages for g in page] == made
    assert len(pages) == 4


def test_list_filters(client: testing.TestClient, registry: Registry) -> None:
    [ann, bob] = make_users(registry, 2)
    sales = create_group(client, "Sales EMEA", external_id="s-1")
    ops = create_group(client, "Operations")
    admins = create_group(client, "Admins", roles=["admin"])
    client.simulate_put(f"{GROUPS}/{sales['id']}/members/{ann.id}")
    client.simulate_put(f"{GROUPS}/{admins['id']}/members/{ann.id}")
    client.simulate_put(f"{GROUPS}/{ops['id']}/members/{bob.id}")

    def names(query: str) -> list[str]:
        resp = client.simulate_get(GROUPS, query_string=query)
        assert resp.status_code == 200, resp.text
        return [g["display_name"] for g in resp.json["items"]]

    assert names("") == ["Sales EMEA", "Operations", "Admins"]
    assert names("display_name=sales%20emea") == ["Sales EMEA"]
    assert names("display_name=Sales") == []
    assert names("external_id=s-1") == ["Sales EMEA"]
    assert names("external_id=s-2") == []
    assert names("q=ION") == ["Operations"]
    assert names("q=s") == ["Sales EMEA", "Operations", "Admins"]
    assert names(f"member={ann.id}") == ["Sales EMEA", "Admins"]
    assert names(f"member={ann.id}&q=adm") == ["Admins"]
    assert names(f"member={uuid.uuid4()}") == []
    assert group_ids_of(client, ann.id) == [sales["id"], admins["id"]]
    assert group_ids_of(client, bob.id) == [ops["id"]]


def test_members_page_by_id(client: testing.TestClient, registry: Registry) -> None:
    users = make_users(registry, 5)
    group = create_group(client, "Crowd")
    resp = client.simulate_post(
        f"{GROUPS}/{group['id']}/members", json={"user_ids": [str(u.id) for u in reversed(users)]}
    )
    assert resp.status_code == 200, resp.text
    pages = walk(client, f"{GROUPS}/{group['id']}/members", "limit=2")
    assert [len(p) for p in pages] == [2, 2, 1]
    seen = [u for page in pages for u in page]
    assert [u["id"] for u in seen] == [str(u.id) for u in users]
    assert seen[0]["email"] == users[0].email
    assert "version" in seen[0]
    assert "is_active" in seen[0]


def test_user_groups_page(client: testing.TestClient, registry: Registry) -> None:
    [user] = make_users(registry, 1)
    made = [create_group(client, f"Club {n}")["id"] for n in range(5)]
    for group_id in made:
        assert client.simulate_put(f"{GROUPS}/{group_id}/members/{user.id}").status_code == 204
    pages = walk(client, f"{USERS}/{user.id}/groups", "limit=2")
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [g["id"] for page in pages for g in page] == made


# --------------------------------------------------------------------------- members


def test_member_changes_grow_the_etag(client: testing.TestClient, registry: Registry) -> None:
    [ann, bob, cid] = make_users(registry, 3)
    group = create_group(client, "Growing")
    url = f"{GROUPS}/{group['id']}"

    def version() -> int:
        resp = client.simulate_get(url)
        assert etag(resp) == f'"{resp.json["version"]}"'
        return int(resp.json["version"])

    put = client.simulate_put(f"{url}/members/{ann.id}")
    assert put.status_code == 204
    assert put.text == ""
    assert etag(put) == '"2"'
    assert version() == 2
    # Already a member: nothing changes, the same ETag.
    again = client.simulate_put(f"{url}/members/{ann.id}")
    assert again.status_code == 204
    assert etag(again) == '"2"'
    assert version() == 2

    post = client.simulate_post(
        f"{url}/members", json={"user_ids": [str(ann.id), str(bob.id), str(bob.id)]}
    )
    assert post.status_code == 200, post.text
    assert post.json["version"] == 3
    assert etag(post) == '"3"'
    assert set(member_ids(client, group["id"])) == {str(ann.id), str(bob.id)}
    same = client.simulate_post(f"{url}/members", json={"user_ids": [str(bob.id)]})
    assert same.json["version"] == 3
    empty = client.simulate_post(f"{url}/members", json={"user_ids": []})
    assert empty.status_code == 200
    assert empty.json["version"] == 3

    # PUT makes the members exactly those given.
    exact = client.simulate_put(f"{url}/members", json={"user_ids": [str(cid.id), str(bob.id)]})
    assert exact.status_code == 200, exact.text
    assert exact.json["version"] > 3
    assert sorted(member_ids(client, group["id"])) == sorted([str(bob.id), str(cid.id)])
    v = version()
    unchanged = client.simulate_put(f"{url}/members", json={"user_ids": [str(bob.id), str(cid.id)]})
    assert unchanged.json["version"] == v

    gone = client.simulate_delete(f"{url}/members/{bob.id}")
    assert gone.status_code == 204
    assert etag(gone) == f'"{v + 1}"'
    not_member = client.simulate_delete(f"{url}/members/{ann.id}")
    assert not_member.status_code == 204
    assert etag(not_member) == f'"{v + 1}"'
    cleared = client.simulate_put(f"{url}/members", json={"user_ids": []})
    assert cleared.json["version"] == v + 2
    assert member_ids(client, group["id"]) == []


def test_bad_member_bodies_name_each_field(client: testing.TestClient, registry: Registry) -> None:
    [ann] = make_users(registry, 1)
    group = create_group(client, "Picky")
    url = f"{GROUPS}/{group['id']}/members"
    unknown = uuid.uuid4()
    for method in ("POST", "PUT"):
        for body, fields in [
            (
                {"user_ids": ["nope", str(ann.id), 3, None]},
                ["$.user_ids[0]", "$.user_ids[2]", "$.user_ids[3]"],
            ),
            ({}, ["$.user_ids"]),
            ({"user_ids": str(ann.id)}, ["$.user_ids"]),
            ({"user_ids": [], "members": []}, ["$.members"]),
            ([str(ann.id)], ["$"]),
        ]:
            assert_invalid(client.simulate_request(method, url, json=body), fields)
        resp = client.simulate_request(method, url, json={"user_ids": [str(ann.id), str(unknown)]})
        body = assert_invalid(resp, ["$.user_ids"])
        assert str(unknown) in detail_of(body, "$.user_ids")
        assert str(ann.id) not in detail_of(body, "$.user_ids")
    # Nothing was added by any of them.
    assert client.simulate_get(f"{GROUPS}/{group['id']}").json["version"] == 1
    assert member_ids(client, group["id"]) == []


def test_a_deleted_member_is_hidden_until_restored_and_gone_when_purged(
    client: testing.TestClient, registry: Registry
) -> None:
    [ann, bob] = make_users(registry, 2)
    group = create_group(client, "Hidden")
    url = f"{GROUPS}/{group['id']}"
    client.simulate_post(f"{url}/members", json={"user_ids": [str(ann.id), str(bob.id)]})
    version = client.simulate_get(url).json["version"]

    assert client.simulate_delete(f"{USERS}/{ann.id}").status_code == 204
    assert member_ids(client, group["id"]) == [str(bob.id)]
    assert_problem(client.simulate_get(f"{USERS}/{ann.id}/groups"), 404)
    # A deleted user cannot be added (it is no live user).
    other = create_group(client, "Other")
    resp = client.simulate_put(f"{GROUPS}/{other['id']}/members/{ann.id}")
    assert str(ann.id) in assert_problem(resp, 404)["detail"]
    resp = client.simulate_post(f"{GROUPS}/{other['id']}/members", json={"user_ids": [str(ann.id)]})
    assert str(ann.id) in detail_of(assert_invalid(resp, ["$.user_ids"]), "$.user_ids")

    restored = client.simulate_post(f"{USERS}/{ann.id}/restore")
    assert restored.status_code == 200, restored.text
    assert sorted(member_ids(client, group["id"])) == sorted([str(ann.id), str(bob.id)])
    assert group_ids_of(client, ann.id) == [group["id"]]

    client.simulate_delete(f"{USERS}/{ann.id}")
    registry.users.purge_user(ann.id)
    assert member_ids(client, group["id"]) == [str(bob.id)]
    assert registry.groups._storage.member_ids(uuid.UUID(group["id"])) == [bob.id]
    # The group itself was not written to by the user's deletion.
    assert client.simulate_get(url).json["version"] >= version


def test_a_bulk_purge_removes_memberships(client: testing.TestClient, registry: Registry) -> None:
    [ann, bob] = make_users(registry, 2)
    group = create_group(client, "Purged")
    client.simulate_post(
        f"{GROUPS}/{group['id']}/members", json={"user_ids": [str(ann.id), str(bob.id)]}
    )
    client.simulate_delete(f"{USERS}/{ann.id}")
    assert registry.users.purge(timedelta(0)) == 1
    assert registry.groups._storage.member_ids(uuid.UUID(group["id"])) == [bob.id]
    assert member_ids(client, group["id"]) == [str(bob.id)]
    # The group lives on, and takes new members.
    [cid] = make_users(registry, 1, prefix="later")
    assert client.simulate_put(f"{GROUPS}/{group['id']}/members/{cid.id}").status_code == 204


def test_deleting_a_group_keeps_its_members_as_users(
    client: testing.TestClient, registry: Registry
) -> None:
    [ann] = make_users(registry, 1)
    group = create_group(client, "Temporary")
    client.simulate_put(f"{GROUPS}/{group['id']}/members/{ann.id}")
    assert client.simulate_delete(f"{GROUPS}/{group['id']}").status_code == 204
    assert client.simulate_get(f"{USERS}/{ann.id}").status_code == 200
    assert group_ids_of(client, ann.id) == []
    # The name is free again.
    create_group(client, "temporary")


# --------------------------------------------------------------------------- permissions

#: Custom roles (``USERPLANE_ROLES``): the built-in ``viewer`` and ``editor`` keep what they
#: had, without the groups actions; a role of one's own grants those.
CUSTOM_ROLES = {
    "group-reader": ["users:read", "groups:read"],
    "people-admin": ["users:read", "users:write", "groups:read", "groups:write"],
}


@pytest.fixture
def roles_registry(database_url: str) -> Iterator[Registry]:
    """A registry over this test's database with ``CUSTOM_ROLES`` defined."""
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_ROLES": json.dumps(CUSTOM_ROLES)}
    )
    with Registry(settings) as registry:
        registry.migrate()
        yield registry


def refused_writes(
    as_: testing.TestClient, group_id: str, user_id: uuid.UUID
) -> list[testing.Result]:
    url = f"{GROUPS}/{group_id}"
    body = {"user_ids": [str(user_id)]}
    return [
        as_.simulate_post(GROUPS, json={"display_name": "Mine"}),
        as_.simulate_patch(url, json={"display_name": "Mine"}),
        as_.simulate_delete(url),
        as_.simulate_post(f"{url}/members", json=body),
        as_.simulate_put(f"{url}/members", json=body),
        as_.simulate_put(f"{url}/members/{user_id}"),
        as_.simulate_delete(f"{url}/members/{user_id}"),
    ]


def test_groups_read_reads_but_may_not_write(roles_registry: Registry) -> None:
    registry = roles_registry
    admin = client_for(registry)
    [ann] = make_users(registry, 1)
    group = create_group(admin, "Readable")
    admin.simulate_put(f"{GROUPS}/{group['id']}/members/{ann.id}")
    reader = client_for(registry, "group-reader")
    url = f"{GROUPS}/{group['id']}"

    assert reader.simulate_get(GROUPS).json["items"] == [admin.simulate_get(url).json]
    assert reader.simulate_get(url).status_code == 200
    assert reader.simulate_head(url).status_code == 200
    assert member_ids(reader, group["id"]) == [str(ann.id)]
    assert group_ids_of(reader, ann.id) == [group["id"]]

    for resp in refused_writes(reader, group["id"], ann.id):
        body = assert_problem(resp, 403)
        assert "groups:write" in body["detail"]
    assert admin.simulate_get(url).json["version"] == 2
    assert [g["display_name"] for g in admin.simulate_get(GROUPS).json["items"]] == ["Readable"]


@pytest.mark.parametrize("role", ["viewer", "editor"])
def test_the_built_in_viewer_and_editor_have_no_groups_actions(
    client: testing.TestClient, registry: Registry, role: str
) -> None:
    [ann] = make_users(registry, 1)
    group = create_group(client, "Closed")
    client.simulate_put(f"{GROUPS}/{group['id']}/members/{ann.id}")
    other = client_for(registry, role)
    url = f"{GROUPS}/{group['id']}"
    reads = [
        other.simulate_get(GROUPS),
        other.simulate_get(url),
        other.simulate_get(f"{url}/members"),
        other.simulate_get(f"{USERS}/{ann.id}/groups"),
    ]
    for resp in reads:
        assert "groups:read" in assert_problem(resp, 403)["detail"]
    for resp in refused_writes(other, group["id"], ann.id):
        assert_problem(resp, 403)
    assert other.simulate_get(f"{USERS}/{ann.id}").status_code == 200  # what it had
    assert client.simulate_get(url).json["version"] == 2


def test_a_group_writer_may_not_hand_out_more_than_it_holds(roles_registry: Registry) -> None:
    registry = roles_registry
    admin = client_for(registry)
    [ann, bob] = make_users(registry, 2)
    writer = client_for(registry, "people-admin")

    plain = writer.simulate_post(GROUPS, json={"display_name": "Plain"})
    assert plain.status_code == 201, plain.text
    # viewer grants users:read, which people-admin holds: it may hand it out.
    viewers = writer.simulate_post(GROUPS, json={"display_name": "Viewers", "roles": ["viewer"]})
    assert viewers.status_code == 201, viewers.text
    assert writer.simulate_put(f"{GROUPS}/{viewers.json['id']}/members/{ann.id}").status_code == (
        204
    )
    assert writer.simulate_put(f"{GROUPS}/{plain.json['id']}/members/{ann.id}").status_code == 204

    for roles in (["admin"], ["editor"], ["viewer", "admin"]):
        resp = writer.simulate_post(GROUPS, json={"display_name": "Escalate", "roles": roles})
        body = assert_problem(resp, 403)
        assert f"'{roles[-1]}'" in body["detail"]
    escalate = writer.simulate_patch(f"{GROUPS}/{plain.json['id']}", json={"roles": ["admin"]})
    assert_problem(escalate, 403)
    assert writer.simulate_get(f"{GROUPS}/{plain.json['id']}").json["roles"] == []

    admins = create_group(admin, "Admins", roles=["admin"])
    url = f"{GROUPS}/{admins['id']}"
    assert_problem(writer.simulate_put(f"{url}/members/{ann.id}"), 403)
    assert_problem(writer.simulate_post(f"{url}/members", json={"user_ids": [str(ann.id)]}), 403)
    assert_problem(writer.simulate_put(f"{url}/members", json={"user_ids": [str(ann.id)]}), 403)
    assert_problem(writer.simulate_delete(url), 403)
    assert member_ids(admin, admins["id"]) == []

    # The administrator may; then the writer may not take the member away either.
    assert admin.simulate_put(f"{url}/members/{bob.id}").status_code == 204
    assert_problem(writer.simulate_delete(f"{url}/members/{bob.id}"), 403)
    assert member_ids(admin, admins["id"]) == [str(bob.id)]
    assert admin.simulate_delete(f"{url}/members/{bob.id}").status_code == 204
    assert admin.simulate_delete(url).status_code == 204
    root = admin.simulate_post(GROUPS, json={"display_name": "Root", "roles": ["admin"]})
    assert root.status_code == 201
    # Taking a role away needs it too: the writer may drop viewer, not admin.
    dropped = writer.simulate_patch(f"{GROUPS}/{viewers.json['id']}", json={"roles": []})
    assert dropped.status_code == 200, dropped.text
    assert_problem(writer.simulate_patch(f"{GROUPS}/{root.json['id']}", json={"roles": []}), 403)


def test_no_credentials_is_401(registry: Registry) -> None:
    from userplane.frontends.http import create_app

    anonymous = testing.TestClient(create_app(registry))
    assert_problem(anonymous.simulate_get(GROUPS), 401)
    assert_problem(anonymous.simulate_post(GROUPS, json={"display_name": "x"}), 401)


# --------------------------------------------------------------------------- failures


class Exploding:
    """Fails every group operation with an exception carrying internals."""

    @hookimpl(wrapper=True)
    def userplane_operation(self, operation: str, call: Any, registry: Any) -> Any:
        if operation.startswith("groups."):
            raise RuntimeError('boom at File "/secret/path.py", line 1')
        return (yield)


def test_an_unexpected_failure_is_a_500_without_internals(
    client: testing.TestClient, registry: Registry
) -> None:
    registry.pm.register(Exploding())
    for resp in [
        client.simulate_get(GROUPS),
        client.simulate_post(GROUPS, json={"display_name": "x"}),
        client.simulate_get(f"{GROUPS}/{uuid.uuid4()}"),
    ]:
        body = assert_problem(resp, 500)
        assert "boom" not in resp.text
        assert "secret" not in resp.text
        assert "RuntimeError" not in resp.text
        assert body["request_id"] == resp.headers["X-Request-ID"]
    # Users are not groups: they still work.
    assert client.simulate_get(USERS).status_code == 200


def test_malformed_json_is_a_400_problem(client: testing.TestClient) -> None:
    resp = client.simulate_post(
        GROUPS, body=b'{"display_name": ', headers={"Content-Type": "application/json"}
    )
    assert resp.status_code in (400, 422), resp.text
    assert_problem(resp, resp.status_code)


# --------------------------------------------------------------------------- found by review


def test_putting_the_members_removes_a_deleted_member_not_named(
    client: testing.TestClient, registry: Registry
) -> None:
    # "Exactly": a deleted member left out goes too, so that no restore hands it back the
    # group's roles the caller meant to take away.
    [ann, bob] = make_users(registry, 2)
    group = create_group(client, "Keepers")
    url = f"{GROUPS}/{group['id']}"
    client.simulate_post(f"{url}/members", json={"user_ids": [str(ann.id), str(bob.id)]})
    client.simulate_delete(f"{USERS}/{ann.id}")
    version = client.simulate_get(url).json["version"]

    resp = client.simulate_put(f"{url}/members", json={"user_ids": [str(bob.id)]})
    assert resp.status_code == 200, resp.text
    assert resp.json["version"] == version + 1

    client.simulate_post(f"{USERS}/{ann.id}/restore")
    assert member_ids(client, group["id"]) == [str(bob.id)]


def test_names_differing_only_in_outer_whitespace_are_refused_or_the_same(
    client: testing.TestClient,
) -> None:
    create_group(client, "Admins")
    for name in ("Admins ", " Admins"):
        resp = client.simulate_post(GROUPS, json={"display_name": name})
        assert resp.status_code in (409, 422), (name, resp.status_code)
