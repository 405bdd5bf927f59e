"""The HTTP API as a demanding client sees it: status codes, headers and exact bodies.

Everything runs through ``falcon.testing.TestClient`` against a real, migrated
database (SQLite and PostgreSQL, see ``conftest.py``); nothing below the HTTP
surface is mocked.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import hypothesis
import pytest
from clients import client_for
from falcon import testing
from hypothesis import strategies as st

import userplane
from userplane import NewUser, Registry, Settings, convert, hookimpl
from userplane.frontends.http import create_app
from userplane.users import UserService

USERS = "/api/v1/users"
PROBLEM_JSON = "application/problem+json"
JSON_CT = {"Content-Type": "application/json"}
USER_FIELDS = {
    "id",
    "email",
    "full_name",
    "is_active",
    "created_at",
    "updated_at",
    "version",
    "deleted_at",
    "external_source",
    "external_id",
    "attributes",
}
GENERATED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
NEXT_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?(?:\s*;|\s*,|\s*$)')

MakeClient = Callable[..., testing.TestClient]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """Build clients over registries with extra settings or plugins; closes them after."""
    registries: list[Registry] = []

    def make(
        env: Mapping[str, str] | None = None,
        *,
        plugins: Iterable[object] = (),
        migrate: bool = True,
        db: str = "custom.db",
    ) -> testing.TestClient:
        variables = {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / db}", **(env or {})}
        registry = Registry(Settings.from_mapping(variables), plugins=plugins)
        registries.append(registry)
        if migrate:
            registry.migrate()
            return client_for(registry)
        # No table to keep a key in: a well-formed one, which storage must be asked about.
        return testing.TestClient(
            create_app(registry), headers={"Authorization": "Bearer up_" + "k" * 44}
        )

    yield make
    for registry in registries:
        registry.close()


def create(client: testing.TestClient, email: str, **fields: Any) -> dict[str, Any]:
    """POST a user, insist on 201, return its body."""
    resp = client.simulate_post(f"{USERS}/", json={"email": email, **fields})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json
    return body


def get_user(client: testing.TestClient, user_id: str) -> testing.Result:
    return client.simulate_get(f"{USERS}/{user_id}")


def assert_problem(resp: testing.Result, status: int) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem with ``status``; returns its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = json.loads(resp.text)
    assert isinstance(body, dict)
    assert isinstance(body.get("type"), str)
    assert body["type"]
    assert isinstance(body.get("title"), str)
    assert body["title"]
    assert body.get("status") == status
    assert type(body["status"]) is int
    assert isinstance(body.get("instance"), str)
    assert body["instance"].startswith("/")
    assert body.get("request_id") == resp.headers["X-Request-ID"]
    return body


def error_fields(body: Mapping[str, Any]) -> list[str]:
    """The ``field`` of each entry of a 422's ``errors``, checking each entry's shape."""
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors
    for entry in errors:
        assert set(entry) == {"field", "detail"}
        assert isinstance(entry["detail"], str)
        assert entry["detail"]
    return [entry["field"] for entry in errors]


def assert_invalid(resp: testing.Result, fields: Iterable[str]) -> dict[str, Any]:
    """A 422 naming exactly ``fields`` (each once)."""
    body = assert_problem(resp, 422)
    named = error_fields(body)
    assert sorted(named) == sorted(set(fields)), body
    return body


def next_link(resp: testing.Result) -> str | None:
    """The target of the ``rel=next`` link, or ``None`` when there is no Link header."""
    header = resp.headers.get("Link")
    if header is None:
        return None
    match = NEXT_LINK.search(header)
    assert match is not None, header
    return match.group(1)


def follow(client: testing.TestClient, target: str) -> testing.Result:
    parts = urlsplit(target)
    return client.simulate_get(parts.path, query_string=parts.query)


def sort_key(user: Mapping[str, Any]) -> tuple[datetime, str]:
    return (datetime.fromisoformat(user["created_at"]), user["id"])


def list_all(client: testing.TestClient, query: str) -> list[dict[str, Any]]:
    """Every item over every page, following ``Link``; checks Link iff ``next``."""
    items: list[dict[str, Any]] = []
    resp = client.simulate_get(f"{USERS}/", query_string=query)
    for _ in range(1000):
        assert resp.status_code == 200, resp.text
        items += resp.json["items"]
        link = next_link(resp)
        assert (link is None) == (resp.json["next"] is None)
        if link is None:
            return items
        resp = follow(client, link)
    raise AssertionError("paging did not end")


def cursor_of(value: object) -> str:
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


SORTS = ["created_at", "-created_at", "email", "-email", "full_name", "-full_name"]


def order_key(user: Mapping[str, Any], field: str) -> tuple[Any, uuid.UUID]:
    """An independent oracle of the documented order, for ASCII test data.

    ``email`` by the case-folded address, ``full_name`` case-insensitively with
    users without a name first (as the empty name), ``created_at`` by time;
    ties broken by id.
    """
    key: Any
    if field == "created_at":
        key = datetime.fromisoformat(user["created_at"])
    elif field == "email":
        key = user["email"].casefold()
    else:
        key = (user["full_name"] or "").casefold()
    return (key, uuid.UUID(user["id"]))


def expected_ids(users: Iterable[Mapping[str, Any]], sort: str) -> list[str]:
    """The ids of ``users`` in ``sort`` order (``-`` reverses key and tie-break alike)."""
    field = sort.removeprefix("-")
    ordered = sorted(users, key=lambda u: order_key(u, field), reverse=sort.startswith("-"))
    return [u["id"] for u in ordered]


def ids(items: Iterable[Mapping[str, Any]]) -> list[str]:
    return [u["id"] for u in items]


def list_following_links(
    client: testing.TestClient, params: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Every item over every page of ``params``, following ``Link``.

    Checks that each page holds at most ``limit`` items, that each ``Link`` keeps
    every parameter (sort and filters) and carries the body's ``next`` cursor.
    """
    items: list[dict[str, Any]] = []
    limit = int(params.get("limit", "50"))
    resp = client.simulate_get(f"{USERS}/", params=dict(params))
    for _ in range(1000):
        assert resp.status_code == 200, resp.text
        page = resp.json["items"]
        assert len(page) <= limit
        items += page
        link = next_link(resp)
        assert (link is None) == (resp.json["next"] is None)
        if link is None:
            return items
        assert page, "a page with a next link must not be empty"
        query = parse_qs(urlsplit(link).query, keep_blank_values=True)
        assert query.pop("cursor") == [resp.json["next"]]
        assert query == {k: [v] for k, v in params.items()}, link
        resp = follow(client, link)
    raise AssertionError("paging did not end")


class Clock:
    """A settable clock for a ``UserService``: times of writes chosen by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def service_at(registry: Registry, clock: Callable[[], datetime]) -> UserService:
    """``registry``'s user service (same storage and hooks), writing at ``clock``'s times."""
    return UserService(registry.storage, registry.hooks, registry=registry, clock=clock)


class ExplodingPlugin:
    """A plugin whose operation wrapper fails the way a bug would, before the write."""

    @userplane.hookimpl(wrapper=True)
    def userplane_operation(self, operation: str) -> Iterator[None]:
        if operation == "users.create":
            raise RuntimeError("boom secret")
        return (yield)


# --------------------------------------------------------------------------- create


@pytest.mark.parametrize("path", [f"{USERS}/", USERS])
def test_create_answers_201_with_location_etag_and_the_user(
    client: testing.TestClient, path: str
) -> None:
    resp = client.simulate_post(path, json={"email": "ann@example.org", "full_name": "Ann Lee"})

    assert resp.status_code == 201
    assert resp.headers["Content-Type"].split(";")[0] == "application/json"
    body = resp.json
    assert set(body) == USER_FIELDS
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["email"] == "ann@example.org"
    assert body["full_name"] == "Ann Lee"
    assert body["is_active"] is True
    assert body["version"] == 1
    assert body["created_at"].endswith("Z")
    assert body["updated_at"].endswith("Z")
    assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
    assert body["created_at"] == body["updated_at"]
    assert body["deleted_at"] is None
    assert resp.headers["Location"] == f"{USERS}/{body['id']}"
    assert resp.headers["ETag"] == '"1"'

    again = client.simulate_get(resp.headers["Location"])
    assert again.status_code == 200
    assert again.json == body


def test_create_takes_is_active_and_a_null_full_name(client: testing.TestClient) -> None:
    body = create(client, "bob@example.org", full_name=None, is_active=False)
    assert body["full_name"] is None
    assert body["is_active"] is False
    assert get_user(client, body["id"]).json == body


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "application/merge-patch+json"],
)
def test_create_accepts_json_media_types(client: testing.TestClient, content_type: str) -> None:
    resp = client.simulate_post(
        USERS, body=json.dumps({"email": "ct@example.org"}), headers={"Content-Type": content_type}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json["email"] == "ct@example.org"


def test_full_name_of_exactly_the_maximum_length_and_unicode_is_accepted(
    client: testing.TestClient,
) -> None:
    assert create(client, "long@example.org", full_name="x" * 200)["full_name"] == "x" * 200
    name = "Zoë Ångström-Łukasz 山田"
    assert create(client, "zoe@example.org", full_name=name)["full_name"] == name


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Ann@X.org", "ann@x.org"),
        ("ann@x.org", "ANN@X.ORG"),
        ("ann@x.org", "\uff41\uff4e\uff4e@x.org"),  # full-width local part
        ("\uff21\uff4e\uff4e@\uff58.\uff4f\uff52\uff47", "ann@x.org"),  # full-width everything
    ],
)
def test_emails_that_differ_only_by_case_or_width_conflict(
    client: testing.TestClient, first: str, second: str
) -> None:
    original = create(client, first)

    resp = client.simulate_post(USERS, json={"email": second})

    body = assert_problem(resp, 409)
    assert body["type"].endswith("conflict")
    listed = client.simulate_get(USERS).json["items"]
    assert [u["id"] for u in listed] == [original["id"]]


VALIDATION_CASES = [
    pytest.param({"email": "a@x.org", "nickname": "x"}, ["$.nickname"], id="unknown-field"),
    pytest.param(
        {"email": "a@x.org", "nickname": "x", "role": "admin"},
        ["$.nickname", "$.role"],
        id="two-unknown-fields",
    ),
    pytest.param({"email": "a@x.org", "id": str(uuid.uuid4())}, ["$.id"], id="read-only-id"),
    pytest.param({"email": 1}, ["$.email"], id="email-number"),
    pytest.param({"email": ["a@x.org"]}, ["$.email"], id="email-list"),
    pytest.param({"email": None}, ["$.email"], id="email-null"),
    pytest.param({"email": "a@x.org", "is_active": "yes"}, ["$.is_active"], id="active-str"),
    pytest.param({"email": "a@x.org", "is_active": 1}, ["$.is_active"], id="active-int"),
    pytest.param({}, ["$.email"], id="missing-email"),
    pytest.param({"full_name": "Ann"}, ["$.email"], id="missing-email-with-name"),
    pytest.param({"email": "not-an-email"}, ["$.email"], id="invalid-email"),
    pytest.param({"email": "a@@x.org"}, ["$.email"], id="invalid-email-two-ats"),
    pytest.param({"email": ""}, ["$.email"], id="empty-email"),
    pytest.param({"email": "a@x.org", "full_name": ""}, ["$.full_name"], id="empty-name"),
    pytest.param({"email": "a@x.org", "full_name": "   "}, ["$.full_name"], id="blank-name"),
    pytest.param({"email": "a@x.org", "full_name": "x" * 201}, ["$.full_name"], id="long-name"),
    pytest.param({"email": "a@x.org", "full_name": 5}, ["$.full_name"], id="name-number"),
    pytest.param({"email": "a@x.org", "full_name": "a\x00b"}, ["$.full_name"], id="name-nul"),
    pytest.param({"email": "a@x.org", "full_name": "a\nb"}, ["$.full_name"], id="name-newline"),
    pytest.param({"email": "a@x.org", "full_name": "\x1b[31mred"}, ["$.full_name"], id="ansi"),
    pytest.param({"email": "a@x.org", "full_name": "a\x7fb"}, ["$.full_name"], id="name-del"),
    pytest.param({"email": "a@x.org", "full_name": "a\x85b"}, ["$.full_name"], id="name-c1-nel"),
    pytest.param({"email": "a@x.org", "full_name": "a\x9bb"}, ["$.full_name"], id="name-c1-csi"),
    pytest.param(
        {"email": 1, "is_active": "yes", "full_name": 7, "nickname": "x"},
        ["$.email", "$.is_active", "$.full_name", "$.nickname"],
        id="four-wrong-at-once",
    ),
    pytest.param({"nickname": "x"}, ["$.email", "$.nickname"], id="unknown-and-missing"),
    pytest.param(
        {"email": "not-an-email", "full_name": "  "},
        ["$.email", "$.full_name"],
        id="invalid-email-and-blank-name",
    ),
    pytest.param(
        {"email": "not-an-email", "is_active": "yes"},
        ["$.email", "$.is_active"],
        id="invalid-email-and-wrong-type",
    ),
    pytest.param(
        {"email": "not-an-email", "nickname": "x"},
        ["$.email", "$.nickname"],
        id="invalid-email-and-unknown-field",
    ),
    pytest.param([{"email": "a@x.org"}], ["$"], id="json-list"),
    pytest.param("a@x.org", ["$"], id="json-string"),
    pytest.param(42, ["$"], id="json-number"),
    pytest.param(None, ["$"], id="json-null"),
]


@pytest.mark.parametrize(("payload", "fields"), VALIDATION_CASES)
def test_create_validation_names_every_field_at_fault(
    client: testing.TestClient, payload: Any, fields: list[str]
) -> None:
    # Sent as raw JSON text: the test client's json= would send nothing for None.
    resp = client.simulate_post(USERS, body=json.dumps(payload), headers=JSON_CT)

    body = assert_invalid(resp, fields)
    assert body["type"].endswith("invalid-input")
    assert body["instance"] == USERS
    assert client.simulate_get(USERS).json["items"] == []


@pytest.mark.parametrize(
    "raw",
    [
        b"{bad",
        b'{"email": "a@x.org"',
        b'{"email": "a@x.org"} trailing',
        b'{"email": NaN}',
        b"\xff\xfe\x00",
        b"{'email': 'a@x.org'}",
    ],
)
def test_malformed_json_is_a_400_problem(client: testing.TestClient, raw: bytes) -> None:
    resp = client.simulate_post(USERS, body=raw, headers={"Content-Type": "application/json"})
    assert_problem(resp, 400)
    assert client.simulate_get(USERS).json["items"] == []


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/json"}])
def test_empty_body_on_post_is_a_400_problem(
    client: testing.TestClient, headers: dict[str, str]
) -> None:
    resp = client.simulate_post(USERS, body=b"", headers=headers)
    assert_problem(resp, 400)


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("application/x-www-form-urlencoded", b"email=a%40x.org"),
        ("text/plain", b'{"email": "a@x.org"}'),
        ("text/plain; charset=utf-8", b'{"email": "a@x.org"}'),
        ("application/xml", b"<user><email>a@x.org</email></user>"),
        ("multipart/form-data; boundary=x", b'--x\r\n\r\n{"email": "a@x.org"}\r\n--x--'),
    ],
)
def test_wrong_content_type_is_a_415_problem(
    client: testing.TestClient, content_type: str, raw: bytes
) -> None:
    resp = client.simulate_post(USERS, body=raw, headers={"Content-Type": content_type})
    assert_problem(resp, 415)
    assert client.simulate_get(USERS).json["items"] == []


def test_body_over_the_limit_is_a_413_problem(make_client: MakeClient) -> None:
    client = make_client({"USERPLANE_MAX_BODY_BYTES": "100"})
    small = json.dumps({"email": "small@x.org"}).encode()
    big = json.dumps({"email": "big@x.org", "full_name": "x" * 120}).encode()
    assert len(small) <= 100 < len(big)

    resp = client.simulate_post(USERS, body=big, headers={"Content-Type": "application/json"})
    assert_problem(resp, 413)
    assert client.simulate_get(USERS).json["items"] == []

    ok = client.simulate_post(USERS, body=small, headers={"Content-Type": "application/json"})
    assert ok.status_code == 201

    patch = client.simulate_patch(
        ok.headers["Location"], body=big, headers={"Content-Type": "application/json"}
    )
    assert_problem(patch, 413)
    assert client.simulate_get(ok.headers["Location"]).json["version"] == 1


# --------------------------------------------------------------------------- routing errors


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v2/users", "/nope", "/api/v1/users/x/y"])
def test_unknown_route_is_a_404_problem(client: testing.TestClient, path: str) -> None:
    body = assert_problem(client.simulate_get(path), 404)
    assert body["instance"] == path


@pytest.mark.parametrize(
    ("method", "item", "allowed"),
    [
        ("PUT", False, {"GET", "POST"}),
        ("DELETE", False, {"GET", "POST"}),
        ("PATCH", False, {"GET", "POST"}),
        ("POST", True, {"GET", "PATCH", "DELETE"}),
        ("PUT", True, {"GET", "PATCH", "DELETE"}),
    ],
)
def test_wrong_method_is_a_405_problem_with_allow(
    client: testing.TestClient, method: str, item: bool, allowed: set[str]
) -> None:
    path = f"{USERS}/{create(client, 'm@x.org')['id']}" if item else USERS
    resp = client.simulate_request(method, path, json={})

    assert_problem(resp, 405)
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert allowed <= allow
    assert method not in allow


def test_restore_takes_only_post(client: testing.TestClient) -> None:
    user = create(client, "rm@x.org")
    path = f"{USERS}/{user['id']}/restore"
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        resp = client.simulate_request(method, path, json={})
        assert_problem(resp, 405)
        allow = {m.strip() for m in resp.headers["Allow"].split(",")}
        assert "POST" in allow
        assert method not in allow
    assert get_user(client, user["id"]).json == user
    for bad_id in ("not-a-uuid", "123", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"):
        assert_problem(client.simulate_post(f"{USERS}/{bad_id}/restore"), 404)


def test_wrong_method_on_health_is_a_405_problem(client: testing.TestClient) -> None:
    resp = client.simulate_delete("/health/live")
    assert_problem(resp, 405)
    assert "GET" in resp.headers["Allow"]


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"])
def test_malformed_uuid_in_path_is_a_404_problem(
    client: testing.TestClient, method: str, bad_id: str
) -> None:
    kwargs: dict[str, Any] = {"json": {"full_name": "x"}} if method == "PATCH" else {}
    resp = client.simulate_request(method, f"{USERS}/{bad_id}", **kwargs)
    assert_problem(resp, 404)


# --------------------------------------------------------------------------- read


def test_get_unknown_user_is_a_404_problem(client: testing.TestClient) -> None:
    missing = uuid.uuid4()
    body = assert_problem(get_user(client, str(missing)), 404)
    assert body["type"].endswith("not-found")
    assert body["instance"] == f"{USERS}/{missing}"


def test_get_returns_the_user_with_its_etag(client: testing.TestClient) -> None:
    user = create(client, "get@x.org", full_name="Get Me")
    resp = get_user(client, user["id"])
    assert resp.status_code == 200
    assert resp.headers["ETag"] == '"1"'
    assert resp.json == user


@pytest.mark.parametrize("tag", ['"1"', 'W/"1"', '"7", "1"', "*"])
def test_if_none_match_with_the_current_etag_is_304_without_body(
    client: testing.TestClient, tag: str
) -> None:
    user = create(client, "inm@x.org")
    resp = client.simulate_get(f"{USERS}/{user['id']}", headers={"If-None-Match": tag})
    assert resp.status_code == 304
    assert resp.content == b""
    assert resp.headers["ETag"] == '"1"'


def test_if_none_match_with_a_stale_etag_is_200_with_the_new_state(
    client: testing.TestClient,
) -> None:
    user = create(client, "stale@x.org")
    patched = client.simulate_patch(f"{USERS}/{user['id']}", json={"full_name": "New"})
    assert patched.status_code == 200

    resp = client.simulate_get(f"{USERS}/{user['id']}", headers={"If-None-Match": '"1"'})

    assert resp.status_code == 200
    assert resp.headers["ETag"] == '"2"'
    assert resp.json["full_name"] == "New"
    assert resp.json["version"] == 2


# --------------------------------------------------------------------------- update


def test_patch_merges_bumps_version_and_etag(client: testing.TestClient) -> None:
    user = create(client, "merge@x.org", full_name="Ann Merge")
    path = f"{USERS}/{user['id']}"

    resp = client.simulate_patch(path, json={"is_active": False})

    assert resp.status_code == 200
    body = resp.json
    assert set(body) == USER_FIELDS
    assert body["is_active"] is False
    assert body["email"] == "merge@x.org"
    assert body["full_name"] == "Ann Merge"
    assert body["id"] == user["id"]
    assert body["created_at"] == user["created_at"]
    assert body["updated_at"].endswith("Z")
    assert datetime.fromisoformat(body["updated_at"]) >= datetime.fromisoformat(user["updated_at"])
    assert body["version"] == 2
    assert body["deleted_at"] is None
    assert resp.headers["ETag"] == '"2"'
    assert client.simulate_get(path).json == body

    second = client.simulate_patch(path, json={"email": "merged@x.org"})
    assert second.status_code == 200
    assert second.json["email"] == "merged@x.org"
    assert second.json["is_active"] is False
    assert second.json["full_name"] == "Ann Merge"
    assert second.json["version"] == 3
    assert second.headers["ETag"] == '"3"'


def test_patch_full_name_null_clears_it(client: testing.TestClient) -> None:
    user = create(client, "clear@x.org", full_name="To Clear")
    resp = client.simulate_patch(f"{USERS}/{user['id']}", json={"full_name": None})
    assert resp.status_code == 200
    assert resp.json["full_name"] is None
    assert resp.json["email"] == "clear@x.org"
    assert get_user(client, user["id"]).json["full_name"] is None


def test_a_patch_that_changes_nothing_does_not_write(client: testing.TestClient) -> None:
    # Empty, or every field to the value it has: the same user, version and ETag.
    user = create(client, "empty@x.org", full_name="Same")
    for body in ({}, {"full_name": "Same", "email": "empty@x.org", "is_active": True}):
        resp = client.simulate_patch(f"{USERS}/{user['id']}", json=body)
        assert resp.status_code == 200
        assert resp.json == user
        assert resp.headers["ETag"] == '"1"'


def test_patch_accepts_merge_patch_content_type(client: testing.TestClient) -> None:
    user = create(client, "mp@x.org")
    resp = client.simulate_patch(
        f"{USERS}/{user['id']}",
        body=json.dumps({"full_name": "Merge Patch"}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json["full_name"] == "Merge Patch"


PATCH_VALIDATION_CASES = [
    pytest.param({"email": None}, ["$.email"], id="email-null"),
    pytest.param({"is_active": None}, ["$.is_active"], id="active-null"),
    pytest.param({"nickname": "x"}, ["$.nickname"], id="unknown-field"),
    pytest.param({"version": 9}, ["$.version"], id="read-only-version"),
    pytest.param({"id": str(uuid.uuid4())}, ["$.id"], id="read-only-id"),
    pytest.param({"email": 1}, ["$.email"], id="email-number"),
    pytest.param({"email": "not-an-email"}, ["$.email"], id="invalid-email"),
    pytest.param({"is_active": "yes"}, ["$.is_active"], id="active-str"),
    pytest.param({"full_name": "  "}, ["$.full_name"], id="blank-name"),
    pytest.param({"full_name": "x" * 201}, ["$.full_name"], id="long-name"),
    pytest.param({"full_name": "a\tb"}, ["$.full_name"], id="name-tab"),
    pytest.param({"full_name": 5}, ["$.full_name"], id="name-number"),
    pytest.param(
        {"email": 1, "is_active": "yes", "full_name": 5},
        ["$.email", "$.is_active", "$.full_name"],
        id="three-wrong-types",
    ),
    pytest.param(
        {"email": "not-an-email", "full_name": " "},
        ["$.email", "$.full_name"],
        id="invalid-email-and-blank-name",
    ),
    pytest.param(
        {"nickname": "x", "is_active": "yes"},
        ["$.nickname", "$.is_active"],
        id="unknown-and-wrong-type",
    ),
    pytest.param(
        {"email": None, "full_name": 5},
        ["$.email", "$.full_name"],
        id="null-email-and-wrong-type",
    ),
    pytest.param(
        {"email": "not-an-email", "full_name": 5},
        ["$.email", "$.full_name"],
        id="invalid-email-and-wrong-type",
    ),
    pytest.param([{"full_name": "x"}], ["$"], id="json-list"),
    pytest.param("x", ["$"], id="json-string"),
    pytest.param(None, ["$"], id="json-null"),
]


@pytest.mark.parametrize(("payload", "fields"), PATCH_VALIDATION_CASES)
def test_patch_validation_names_every_field_and_changes_nothing(
    client: testing.TestClient, payload: Any, fields: list[str]
) -> None:
    user = create(client, "pv@x.org", full_name="Keep Me")

    resp = client.simulate_patch(f"{USERS}/{user['id']}", body=json.dumps(payload), headers=JSON_CT)

    body = assert_invalid(resp, fields)
    assert body["instance"] == f"{USERS}/{user['id']}"
    assert get_user(client, user["id"]).json == user


def test_patch_malformed_json_or_empty_body_is_a_400(client: testing.TestClient) -> None:
    user = create(client, "pj@x.org")
    path = f"{USERS}/{user['id']}"
    for raw in (b"{nope", b""):
        resp = client.simulate_patch(path, body=raw, headers={"Content-Type": "application/json"})
        assert_problem(resp, 400)
    assert get_user(client, user["id"]).json == user


def test_patch_with_text_plain_is_a_415(client: testing.TestClient) -> None:
    user = create(client, "pt@x.org")
    resp = client.simulate_patch(
        f"{USERS}/{user['id']}", body=b'{"full_name": "x"}', headers={"Content-Type": "text/plain"}
    )
    assert_problem(resp, 415)
    assert get_user(client, user["id"]).json == user


@pytest.mark.parametrize("tag", ['"1"', "*", '"9", "1"'])
def test_patch_with_a_matching_if_match_succeeds(client: testing.TestClient, tag: str) -> None:
    user = create(client, "im@x.org")
    resp = client.simulate_patch(
        f"{USERS}/{user['id']}", json={"full_name": "Matched"}, headers={"If-Match": tag}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json["full_name"] == "Matched"
    assert resp.headers["ETag"] == '"2"'


@pytest.mark.parametrize("tag", ['"1"', '"3"', 'W/"2"', '"0", "1"', '"abc"'])
def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(
    client: testing.TestClient, tag: str
) -> None:
    user = create(client, "pre@x.org", full_name="Before")
    path = f"{USERS}/{user['id']}"
    current = client.simulate_patch(path, json={"full_name": "Current"}).json
    assert current["version"] == 2

    resp = client.simulate_patch(path, json={"full_name": "Lost"}, headers={"If-Match": tag})

    body = assert_problem(resp, 412)
    assert body["type"].endswith("precondition-failed")
    assert client.simulate_get(path).json == current


def test_patch_email_to_one_taken_in_another_case_is_409(client: testing.TestClient) -> None:
    create(client, "taken@x.org")
    mine = create(client, "mine@x.org")

    resp = client.simulate_patch(f"{USERS}/{mine['id']}", json={"email": "TAKEN@X.ORG"})

    assert_problem(resp, 409)
    assert get_user(client, mine["id"]).json == mine


def test_patch_own_email_to_another_case_is_allowed(client: testing.TestClient) -> None:
    mine = create(client, "case@x.org")
    resp = client.simulate_patch(f"{USERS}/{mine['id']}", json={"email": "Case@X.org"})
    assert resp.status_code == 200, resp.text
    assert resp.json["email"] == "Case@X.org"
    assert resp.json["version"] == 2


def test_changing_email_frees_the_old_one(client: testing.TestClient) -> None:
    user = create(client, "old@x.org")
    resp = client.simulate_patch(f"{USERS}/{user['id']}", json={"email": "new@x.org"})
    assert resp.status_code == 200
    create(client, "OLD@x.org")
    assert_problem(client.simulate_post(USERS, json={"email": "new@X.org"}), 409)


@pytest.mark.parametrize("headers", [{}, {"If-Match": '"1"'}, {"If-Match": "*"}])
def test_patch_unknown_user_is_404(client: testing.TestClient, headers: dict[str, str]) -> None:
    resp = client.simulate_patch(
        f"{USERS}/{uuid.uuid4()}", json={"full_name": "x"}, headers=headers
    )
    body = assert_problem(resp, 404)
    assert body["type"].endswith("not-found")


# --------------------------------------------------------------------------- delete


def test_delete_is_204_then_the_user_is_gone_but_its_email_stays_reserved(
    client: testing.TestClient,
) -> None:
    user = create(client, "del@x.org")
    keep = create(client, "keep@x.org")
    path = f"{USERS}/{user['id']}"

    resp = client.simulate_delete(path)

    assert resp.status_code == 204
    assert resp.content == b""
    assert_problem(client.simulate_get(path), 404)
    assert_problem(client.simulate_patch(path, json={"full_name": "x"}), 404)
    assert_problem(client.simulate_delete(path), 404)
    assert [u["id"] for u in client.simulate_get(USERS).json["items"]] == [keep["id"]]
    assert client.simulate_get(USERS, params={"email": "del@x.org"}).json["items"] == []
    # Soft: the address stays taken, in any case, until the user is purged.
    body = assert_problem(client.simulate_post(USERS, json={"email": "DEL@x.org"}), 409)
    assert body["type"].endswith("conflict")
    assert_problem(client.simulate_patch(f"{USERS}/{keep['id']}", json={"email": "del@X.org"}), 409)
    assert get_user(client, keep["id"]).json == keep


def test_delete_with_a_stale_if_match_is_412_and_the_user_stays(
    client: testing.TestClient,
) -> None:
    user = create(client, "dpre@x.org")
    path = f"{USERS}/{user['id']}"
    current = client.simulate_patch(path, json={"full_name": "Now"}).json

    resp = client.simulate_delete(path, headers={"If-Match": '"1"'})

    assert_problem(resp, 412)
    assert client.simulate_get(path).json == current
    assert client.simulate_delete(path, headers={"If-Match": '"2"'}).status_code == 204
    assert_problem(client.simulate_get(path), 404)
    # The deleted user cannot be deleted again, whatever tag is sent.
    for tag in ('"2"', '"3"', "*", '"2", "3"'):
        assert_problem(client.simulate_delete(path, headers={"If-Match": tag}), 404)


def test_delete_with_if_match_star_on_an_existing_user(client: testing.TestClient) -> None:
    user = create(client, "dstar@x.org")
    resp = client.simulate_delete(f"{USERS}/{user['id']}", headers={"If-Match": "*"})
    assert resp.status_code == 204
    assert_problem(get_user(client, user["id"]), 404)


def test_delete_unknown_user_is_404(client: testing.TestClient) -> None:
    assert_problem(client.simulate_delete(f"{USERS}/{uuid.uuid4()}"), 404)


# --------------------------------------------------------------------------- list


def test_empty_list(client: testing.TestClient) -> None:
    resp = client.simulate_get(f"{USERS}/")
    assert resp.status_code == 200
    assert resp.json == {"items": [], "next": None}
    assert "Link" not in resp.headers


def test_list_items_are_full_users(client: testing.TestClient) -> None:
    user = create(client, "li@x.org", full_name="Listed")
    resp = client.simulate_get(USERS)
    assert resp.json == {"items": [user], "next": None}


def test_default_limit_is_50(client: testing.TestClient, registry: Registry) -> None:
    for i in range(51):
        registry.users.create(NewUser(email=f"user{i:02d}@x.org"))

    first = client.simulate_get(USERS)

    assert first.status_code == 200
    assert len(first.json["items"]) == 50
    assert first.json["next"] is not None
    link = next_link(first)
    assert link is not None
    second = follow(client, link)
    assert second.status_code == 200
    assert len(second.json["items"]) == 1
    assert second.json["next"] is None
    assert "Link" not in second.headers
    seen = [u["email"] for u in first.json["items"] + second.json["items"]]
    assert sorted(seen) == sorted(f"user{i:02d}@x.org" for i in range(51))


@pytest.mark.parametrize("limit", ["1", "500"])
def test_limit_bounds_are_inclusive(client: testing.TestClient, limit: str) -> None:
    create(client, "lim@x.org")
    resp = client.simulate_get(USERS, query_string=f"limit={limit}")
    assert resp.status_code == 200
    assert len(resp.json["items"]) == 1


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "", "1.5", "1e3"])
def test_limit_out_of_bounds_or_not_a_number_is_422(client: testing.TestClient, limit: str) -> None:
    resp = client.simulate_get(USERS, query_string=f"limit={limit}")
    assert_invalid(resp, ["$.limit"])


def test_link_header_is_present_iff_next_and_leads_to_the_next_page(
    client: testing.TestClient,
) -> None:
    users = [create(client, f"p{i}@x.org") for i in range(5)]

    page1 = client.simulate_get(f"{USERS}/", query_string="limit=2")
    assert [u["id"] for u in page1.json["items"]] == [u["id"] for u in users[:2]]
    link = next_link(page1)
    assert link is not None
    assert page1.json["next"] is not None
    assert urlsplit(link).path.rstrip("/") == USERS

    page2 = follow(client, link)
    assert [u["id"] for u in page2.json["items"]] == [u["id"] for u in users[2:4]]
    # The body's cursor works as well as the link.
    by_cursor = client.simulate_get(USERS, params={"limit": "2", "cursor": page1.json["next"]})
    assert by_cursor.json == page2.json

    page3 = follow(client, next_link(page2) or "")
    assert [u["id"] for u in page3.json["items"]] == [users[4]["id"]]
    assert page3.json["next"] is None
    assert "Link" not in page3.headers


def test_a_page_that_ends_exactly_at_the_last_user_has_no_next(
    client: testing.TestClient,
) -> None:
    for i in range(3):
        create(client, f"e{i}@x.org")
    resp = client.simulate_get(USERS, query_string="limit=3")
    assert len(resp.json["items"]) == 3
    assert resp.json["next"] is None
    assert "Link" not in resp.headers


def test_paging_returns_every_user_once_in_created_at_id_order(
    client: testing.TestClient, registry: Registry
) -> None:
    for i in range(23):
        registry.users.create(NewUser(email=f"all{i}@x.org"))
    everyone = client.simulate_get(USERS, query_string="limit=500").json["items"]
    assert len(everyone) == 23
    assert everyone == sorted(everyone, key=sort_key)

    for limit in (1, 4, 22, 23):
        items = list_all(client, f"limit={limit}")
        assert [u["id"] for u in items] == [u["id"] for u in everyone]


def test_link_preserves_filters_across_pages(client: testing.TestClient) -> None:
    wanted = []
    for i in range(7):
        active = i % 2 == 0
        name = f"Ann+Smith & co {i}" if i != 3 else "Someone Else"
        body = create(client, f"fil{i}@x.org", full_name=name, is_active=active)
        if active and i != 3:
            wanted.append(body["id"])
    create(client, "ann.smith@x.org", full_name=None, is_active=False)

    query = "limit=1&is_active=true&q=ann%2Bsmith+%26+co"
    items = list_all(client, query)

    assert [u["id"] for u in items] == wanted
    assert all(u["is_active"] for u in items)


def test_filter_is_active(client: testing.TestClient) -> None:
    on = create(client, "on@x.org")
    off = create(client, "off@x.org", is_active=False)
    trues = client.simulate_get(USERS, query_string="is_active=true").json["items"]
    falses = client.simulate_get(USERS, query_string="is_active=false").json["items"]
    assert [u["id"] for u in trues] == [on["id"]]
    assert [u["id"] for u in falses] == [off["id"]]
    assert_invalid(client.simulate_get(USERS, query_string="is_active=yes"), ["$.is_active"])


def test_filter_email_is_exact_and_case_insensitive(client: testing.TestClient) -> None:
    ann = create(client, "ann@example.org")
    create(client, "joanne@example.org")
    for given in ("ann@example.org", "ANN@Example.ORG", "\uff41nn@example.org"):
        items = client.simulate_get(USERS, params={"email": given}).json["items"]
        assert [u["id"] for u in items] == [ann["id"]], given
    for partial in ("nn@example.org", "ann@example.or"):
        assert client.simulate_get(USERS, params={"email": partial}).json["items"] == []


def test_filter_q_matches_a_substring_of_email_or_name_in_any_case(
    client: testing.TestClient,
) -> None:
    smith = create(client, "jo@alpha.org", full_name="Jo Smith")
    beta = create(client, "kim@beta.org", full_name="Kim Park")
    percent = create(client, "pct@gamma.org", full_name="100% Sure")

    def q(text: str) -> list[str]:
        resp = client.simulate_get(USERS, params={"q": text})
        assert resp.status_code == 200, resp.text
        return [u["id"] for u in resp.json["items"]]

    assert q("SMITH") == [smith["id"]]
    assert q("mit") == [smith["id"]]
    assert q("BETA.ORG") == [beta["id"]]
    assert q("kim@") == [beta["id"]]
    assert q(".org") == [smith["id"], beta["id"], percent["id"]]
    assert q("%") == [percent["id"]]
    assert q("_") == []
    assert q("nobody") == []


def test_filters_combine(client: testing.TestClient) -> None:
    a = create(client, "combo1@x.org", full_name="Combo", is_active=False)
    create(client, "combo2@x.org", full_name="Combo", is_active=True)
    resp = client.simulate_get(USERS, params={"q": "combo", "is_active": "false"})
    assert [u["id"] for u in resp.json["items"]] == [a["id"]]


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("!!!", id="not-base64"),
        pytest.param("abc", id="short-garbage"),
        pytest.param("x" * 2401, id="too-long"),
        pytest.param("\u00e9t\u00e9", id="non-ascii"),
        pytest.param(cursor_of({"a": 1}), id="json-object"),
        pytest.param(cursor_of([1, 2]), id="numbers"),
        pytest.param(
            cursor_of(["created_at", "2024-01-01T00:00:00", str(uuid.UUID(int=0))]),
            id="naive-time",
        ),
        pytest.param(cursor_of(["created_at", "2024-01-01T00:00:00+00:00", "nope"]), id="bad-uuid"),
        pytest.param(cursor_of(["created_at", "2024-01-01T00:00:00+00:00"]), id="two-elements"),
        pytest.param(
            cursor_of(["created_at", "9999-12-31T23:59:59-05:00", str(uuid.UUID(int=0))]),
            id="time-overflow",
        ),
        pytest.param(
            cursor_of(["created_at", "0001-01-01T00:00:00+05:00", str(uuid.UUID(int=0))]),
            id="time-underflow",
        ),
    ],
)
def test_garbage_or_tampered_cursor_is_422_naming_cursor(
    client: testing.TestClient, cursor: str
) -> None:
    create(client, "cur@x.org")
    resp = client.simulate_get(USERS, params={"cursor": cursor})
    assert_invalid(resp, ["$.cursor"])


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("bogus=1", ["$.bogus"]),
        ("page=2&limit=5", ["$.page"]),
        ("limit=1&limit=2", ["$.limit"]),
        ("is_active=true&is_active=false", ["$.is_active"]),
        ("q=a&q=b", ["$.q"]),
        ("email=a@x.org&email=b@x.org", ["$.email"]),
        ("bogus=1&limit=0", ["$.bogus", "$.limit"]),
    ],
)
def test_unknown_or_repeated_query_parameters_are_422(
    client: testing.TestClient, query: str, fields: list[str]
) -> None:
    assert_invalid(client.simulate_get(USERS, query_string=query), fields)


def test_bad_sort_and_include_deleted_parameters_are_422_with_every_field(
    client: testing.TestClient,
) -> None:
    for query, fields in [
        ("sort=email&sort=-email", ["$.sort"]),
        ("include_deleted=true&include_deleted=false", ["$.include_deleted"]),
        ("include_deleted=yes", ["$.include_deleted"]),
        ("include_deleted=", ["$.include_deleted"]),
        ("bogus=1&sort=id", ["$.bogus", "$.sort"]),
        ("limit=0&sort=-nope", ["$.limit", "$.sort"]),
        ("include_deleted=1&sort=email&is_active=no", ["$.include_deleted", "$.is_active"]),
        ("sort=nope&include_deleted=no&q=x", ["$.sort", "$.include_deleted"]),
    ]:
        assert_invalid(client.simulate_get(USERS, query_string=query), fields)


def test_repeated_cursor_is_422(client: testing.TestClient) -> None:
    for i in range(3):
        create(client, f"rc{i}@x.org")
    cursor = client.simulate_get(USERS, query_string="limit=1").json["next"]
    resp = client.simulate_get(USERS, query_string=f"cursor={cursor}&cursor={cursor}")
    assert_invalid(resp, ["$.cursor"])


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    n=st.integers(min_value=0, max_value=30),
    limit=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_paging_sees_every_existing_user_once_in_order_despite_inserts(
    n: int, limit: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'paging.db'}"
        with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url})) as registry:
            registry.migrate()
            client = client_for(registry)
            created = [create(client, f"h{i}@x.org") for i in range(n)]
            expected = [u["id"] for u in sorted(created, key=sort_key)]
            inserted = 0

            seen: list[dict[str, Any]] = []
            resp = client.simulate_get(f"{USERS}/", query_string=f"limit={limit}")
            for _ in range(200):
                assert resp.status_code == 200, resp.text
                page = resp.json["items"]
                assert len(page) <= limit
                seen += page
                link = next_link(resp)
                assert (link is None) == (resp.json["next"] is None)
                # Others write between this client's page reads.
                for _ in range(data.draw(st.integers(0, min(3, 12 - inserted)), label="inserts")):
                    create(client, f"late{inserted}@x.org")
                    inserted += 1
                if link is None:
                    break
                resp = follow(client, link)
            else:
                raise AssertionError("paging did not end")

            ids = [u["id"] for u in seen]
            assert len(ids) == len(set(ids)), "a user was returned twice"
            originals = set(expected)
            assert [i for i in ids if i in originals] == expected
            keys = [sort_key(u) for u in seen]
            assert keys == sorted(keys)


# --------------------------------------------------------------------------- soft delete, restore


def test_delete_restore_round_trip_with_etags_and_if_match(client: testing.TestClient) -> None:
    user = create(client, "round@x.org", full_name="Round Trip")
    path = f"{USERS}/{user['id']}"
    patched = client.simulate_patch(path, json={"is_active": False})
    assert patched.headers["ETag"] == '"2"'

    # A stale tag protects the user from a delete based on an old read.
    assert_problem(client.simulate_delete(path, headers={"If-Match": '"1"'}), 412)
    assert get_user(client, user["id"]).json == patched.json
    deleted = client.simulate_delete(path, headers={"If-Match": '"2"'})
    assert deleted.status_code == 204
    assert deleted.content == b""

    # Hidden from plain reads and writes.
    assert_problem(get_user(client, user["id"]), 404)
    assert_problem(client.simulate_get(path, params={"include_deleted": "false"}), 404)
    for tag in ('"2"', '"3"', "*"):
        resp = client.simulate_patch(path, json={"full_name": "x"}, headers={"If-Match": tag})
        assert_problem(resp, 404)

    # Visible on request, as deleted, with a new version and ETag.
    shown = client.simulate_get(path, params={"include_deleted": "true"})
    assert shown.status_code == 200
    body = shown.json
    assert set(body) == USER_FIELDS
    assert body["version"] == 3
    assert shown.headers["ETag"] == '"3"'
    assert body["deleted_at"] is not None
    assert body["deleted_at"].endswith("Z")
    assert datetime.fromisoformat(body["deleted_at"]) >= datetime.fromisoformat(
        patched.json["updated_at"]
    )
    for field in ("id", "email", "full_name", "is_active", "created_at"):
        assert body[field] == patched.json[field], field
    assert client.simulate_get(path, query_string="include_deleted=TRUE").json == body
    cached = client.simulate_get(
        path, params={"include_deleted": "true"}, headers={"If-None-Match": '"3"'}
    )
    assert cached.status_code == 304
    assert cached.headers["ETag"] == '"3"'
    assert_problem(client.simulate_get(path, headers={"If-None-Match": '"3"'}), 404)

    # Restore: live again, version bumped once more, a new ETag.
    restored = client.simulate_post(f"{path}/restore")
    assert restored.status_code == 200, restored.text
    assert restored.headers["ETag"] == '"4"'
    again = restored.json
    assert set(again) == USER_FIELDS
    assert again["deleted_at"] is None
    assert again["version"] == 4
    for field in ("id", "email", "full_name", "is_active", "created_at"):
        assert again[field] == patched.json[field], field
    assert get_user(client, user["id"]).json == again
    assert client.simulate_get(path, params={"include_deleted": "true"}).json == again

    # The tags of the deleted state no longer match.
    assert_problem(
        client.simulate_patch(path, json={"full_name": "x"}, headers={"If-Match": '"3"'}), 412
    )
    ok = client.simulate_patch(path, json={"full_name": "Back"}, headers={"If-Match": '"4"'})
    assert ok.status_code == 200, ok.text
    assert ok.headers["ETag"] == '"5"'
    assert ok.json["deleted_at"] is None


def test_restore_of_a_live_user_is_200_and_changes_nothing(client: testing.TestClient) -> None:
    user = create(client, "live@x.org")
    path = f"{USERS}/{user['id']}"

    for _ in range(2):
        resp = client.simulate_post(f"{path}/restore")
        assert resp.status_code == 200, resp.text
        assert resp.json == user
        assert resp.headers["ETag"] == '"1"'
    assert get_user(client, user["id"]).json == user


def test_restore_is_idempotent_after_a_delete(client: testing.TestClient) -> None:
    user = create(client, "twice@x.org")
    path = f"{USERS}/{user['id']}"
    assert client.simulate_delete(path).status_code == 204

    first = client.simulate_post(f"{path}/restore")
    second = client.simulate_post(f"{path}/restore")

    assert first.status_code == second.status_code == 200
    assert first.json == second.json
    assert first.json["version"] == 3
    assert first.headers["ETag"] == second.headers["ETag"] == '"3"'


def test_restore_of_an_unknown_user_is_404(client: testing.TestClient) -> None:
    create(client, "someone@x.org")
    missing = uuid.uuid4()
    body = assert_problem(client.simulate_post(f"{USERS}/{missing}/restore"), 404)
    assert body["type"].endswith("not-found")
    assert body["instance"] == f"{USERS}/{missing}/restore"


def test_restore_by_a_role_that_may_not_see_deleted_users_is_404_and_restores_nothing(
    database_url: str,
) -> None:
    # May restore, may not see deleted users: restoring would show one, so it is hidden.
    roles = '{"support": ["users:read", "users:restore"]}'
    variables = {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_ROLES": roles}
    with Registry(Settings.from_mapping(variables)) as registry:
        registry.migrate()
        app = create_app(registry)
        admin, support, editor = (
            client_for(registry, role, app=app) for role in ("admin", "support", "editor")
        )
        restore_hidden_from_support(admin, support, editor)


def restore_hidden_from_support(
    admin: testing.TestClient, support: testing.TestClient, editor: testing.TestClient
) -> None:
    gone = create(admin, "gone@x.org")
    assert admin.simulate_delete(f"{USERS}/{gone['id']}").status_code == 204
    missing = uuid.uuid4()

    hidden = assert_problem(support.simulate_post(f"{USERS}/{gone['id']}/restore"), 404)
    unknown = assert_problem(support.simulate_post(f"{USERS}/{missing}/restore"), 404)
    # The same answer as for a user that never existed: nothing confirms it did.
    for body in (hidden, unknown):
        del body["instance"], body["request_id"]
    assert hidden == json.loads(json.dumps(unknown).replace(str(missing), gone["id"]))
    still = admin.simulate_get(f"{USERS}/{gone['id']}", params={"include_deleted": "true"})
    assert still.json["deleted_at"] is not None
    assert still.json["version"] == 2

    # A role that may see deleted users restores as before; a live user is no secret.
    assert editor.simulate_post(f"{USERS}/{gone['id']}/restore").status_code == 200
    live = support.simulate_post(f"{USERS}/{gone['id']}/restore")
    assert live.status_code == 200
    assert live.json["deleted_at"] is None


def test_the_email_of_a_deleted_user_stays_reserved_across_restore(
    client: testing.TestClient,
) -> None:
    gone = create(client, "reserved@x.org")
    other = create(client, "other@x.org")
    assert client.simulate_delete(f"{USERS}/{gone['id']}").status_code == 204

    for variant in ("reserved@x.org", "RESERVED@X.ORG", "\uff52eserved@x.org"):
        assert_problem(client.simulate_post(USERS, json={"email": variant}), 409)
        resp = client.simulate_patch(f"{USERS}/{other['id']}", json={"email": variant})
        assert_problem(resp, 409)
    assert get_user(client, other["id"]).json == other

    restored = client.simulate_post(f"{USERS}/{gone['id']}/restore").json
    assert restored["email"] == "reserved@x.org"
    assert_problem(client.simulate_post(USERS, json={"email": "Reserved@x.org"}), 409)
    # Once back, the user may move to another address, which frees this one.
    moved = client.simulate_patch(f"{USERS}/{gone['id']}", json={"email": "moved@x.org"})
    assert moved.status_code == 200, moved.text
    assert create(client, "RESERVED@x.org")["email"] == "RESERVED@x.org"


def test_list_include_deleted_shows_deleted_users_in_order(client: testing.TestClient) -> None:
    users = [create(client, f"inc{i}@x.org", is_active=i % 2 == 0) for i in range(5)]
    for i in (1, 2):
        assert client.simulate_delete(f"{USERS}/{users[i]['id']}").status_code == 204
    live = [users[0], users[3], users[4]]

    assert client.simulate_get(USERS).json["items"] == live
    assert client.simulate_get(USERS, params={"include_deleted": "false"}).json["items"] == live

    everyone = client.simulate_get(USERS, params={"include_deleted": "true"}).json["items"]
    assert ids(everyone) == ids(users)
    for item, original in zip(everyone, users, strict=True):
        if original in live:
            assert item == original
        else:
            assert item["deleted_at"] is not None
            assert item["version"] == 2
            single = client.simulate_get(
                f"{USERS}/{item['id']}", params={"include_deleted": "true"}
            )
            assert item == single.json

    # Paged with a small limit, the Link keeps include_deleted.
    assert list_following_links(client, {"include_deleted": "true", "limit": "2"}) == everyone
    # Filters apply to deleted users too.
    by_email = client.simulate_get(USERS, params={"email": "INC1@x.org", "include_deleted": "true"})
    assert ids(by_email.json["items"]) == [users[1]["id"]]
    assert client.simulate_get(USERS, params={"email": "inc1@x.org"}).json["items"] == []
    inactive = client.simulate_get(USERS, params={"is_active": "false", "include_deleted": "true"})
    assert ids(inactive.json["items"]) == [users[1]["id"], users[3]["id"]]
    deleted_q = client.simulate_get(USERS, params={"q": "inc2", "include_deleted": "true"})
    assert ids(deleted_q.json["items"]) == [users[2]["id"]]


def test_restored_user_is_listed_again_in_its_place(client: testing.TestClient) -> None:
    users = [create(client, f"place{i}@x.org") for i in range(3)]
    middle = f"{USERS}/{users[1]['id']}"
    assert client.simulate_delete(middle).status_code == 204
    assert ids(client.simulate_get(USERS).json["items"]) == [users[0]["id"], users[2]["id"]]

    restored = client.simulate_post(f"{middle}/restore").json

    assert client.simulate_get(USERS).json["items"] == [users[0], restored, users[2]]


def test_purged_users_are_gone_for_good_and_free_their_email(
    client: testing.TestClient, registry: Registry
) -> None:
    old = create(client, "purged@x.org")
    recent = create(client, "recent@x.org")
    live = create(client, "alive@x.org")
    now = datetime.now(UTC)
    service_at(registry, Clock(now - timedelta(days=40))).delete(uuid.UUID(old["id"]))
    service_at(registry, Clock(now - timedelta(days=1))).delete(uuid.UUID(recent["id"]))

    assert registry.users.purge(timedelta(days=30)) == 1

    old_path = f"{USERS}/{old['id']}"
    assert_problem(client.simulate_get(old_path, params={"include_deleted": "true"}), 404)
    assert_problem(client.simulate_post(f"{old_path}/restore"), 404)
    everyone = client.simulate_get(USERS, params={"include_deleted": "true"}).json["items"]
    assert ids(everyone) == [recent["id"], live["id"]]
    assert create(client, "PURGED@x.org")["id"] != old["id"]
    assert_problem(client.simulate_post(USERS, json={"email": "recent@x.org"}), 409)


SINGLE_GET_BAD_QUERIES = [
    ("bogus=1", ["$.bogus"]),
    ("sort=email", ["$.sort"]),
    ("limit=1", ["$.limit"]),
    ("include_deleted=true&x=1", ["$.x"]),
    ("include_deleted=yes", ["$.include_deleted"]),
    ("include_deleted=1", ["$.include_deleted"]),
    ("include_deleted=", ["$.include_deleted"]),
    ("include_deleted=true&include_deleted=true", ["$.include_deleted"]),
    ("a=1&b=2&include_deleted=maybe", ["$.a", "$.b", "$.include_deleted"]),
]


def test_single_user_get_rejects_unknown_or_bad_query_parameters(
    client: testing.TestClient,
) -> None:
    user = create(client, "params@x.org")
    path = f"{USERS}/{user['id']}"
    assert client.simulate_delete(path).status_code == 204
    for query, fields in SINGLE_GET_BAD_QUERIES:
        body = assert_invalid(client.simulate_get(path, query_string=query), fields)
        assert body["instance"] == path
        # Even for an unknown id: the request itself is wrong.
        unknown = client.simulate_get(f"{USERS}/{uuid.uuid4()}", query_string=query)
        assert_invalid(unknown, fields)


def test_deleted_at_is_null_everywhere_for_live_users(client: testing.TestClient) -> None:
    user = create(client, "nulls@x.org")
    path = f"{USERS}/{user['id']}"
    assert user["deleted_at"] is None
    assert get_user(client, user["id"]).json["deleted_at"] is None
    assert client.simulate_patch(path, json={"full_name": "N"}).json["deleted_at"] is None
    assert client.simulate_get(USERS).json["items"][0]["deleted_at"] is None
    assert client.simulate_get(path, params={"include_deleted": "true"}).json["deleted_at"] is None


# --------------------------------------------------------------------------- sorting

#: Addresses in mixed case; ``alpha+1`` and ``a.lpha`` sort by code point around ``alpha``.
SORT_EMAILS = [
    "Mike@x.org",
    "alpha@x.org",
    "ZULU@x.org",
    "bravo@X.org",
    "alpha+1@x.org",
    "Charlie@x.org",
    "a.lpha@x.org",
    "delta@x.org",
    "ECHO@x.org",
    "foxtrot@x.org",
    "Golf@x.org",
    "hotel@x.org",
    "India@x.org",
    "juliet@x.org",
]
#: Names with case-only ties, exact ties, users without a name, punctuation.
SORT_NAMES = [
    None,
    "ann lee",
    "Ann Lee",
    "bob",
    "ANN LEE",
    None,
    "Zed",
    "carl",
    "Bob",
    "ann-lee",
    "annlee",
    "ann lee",
    "Ann",
    None,
]


def seed_sortable(registry: Registry) -> list[dict[str, Any]]:
    """Users with ties in every sort key: three share each creation time, names repeat."""
    clock = Clock(datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC))
    service = service_at(registry, clock)
    users = []
    for i, (email, name) in enumerate(zip(SORT_EMAILS, SORT_NAMES, strict=True)):
        clock.now += timedelta(seconds=1 if i % 3 == 0 else 0)
        user = service.create(NewUser(email=email, full_name=name, is_active=i % 4 != 1))
        users.append(convert.user_to_dict(user))
    return users


def test_every_sort_pages_through_every_user_once_in_order(
    client: testing.TestClient, registry: Registry
) -> None:
    users = seed_sortable(registry)
    by_id = {u["id"]: u for u in users}

    for sort in SORTS:
        expected = expected_ids(users, sort)
        for limit in (1, 2, 5, 13, 14, 500):
            items = list_following_links(client, {"sort": sort, "limit": str(limit)})
            assert ids(items) == expected, (sort, limit)
            assert all(item == by_id[item["id"]] for item in items)


def test_descending_is_the_exact_reverse_of_ascending(
    client: testing.TestClient, registry: Registry
) -> None:
    seed_sortable(registry)
    for field in ("created_at", "email", "full_name"):
        ascending = list_following_links(client, {"sort": field, "limit": "3"})
        descending = list_following_links(client, {"sort": f"-{field}", "limit": "3"})
        assert ids(descending) == ids(reversed(ascending)), field


def test_default_order_is_created_at_ascending(
    client: testing.TestClient, registry: Registry
) -> None:
    users = seed_sortable(registry)
    expected = expected_ids(users, "created_at")
    assert ids(list_following_links(client, {"limit": "4"})) == expected
    assert ids(list_following_links(client, {"sort": "created_at", "limit": "4"})) == expected


def test_email_sorts_by_the_case_folded_address(client: testing.TestClient) -> None:
    for email in ("bob@x.org", "Alice@X.org", "carol@x.org", "ALAN@x.org", "alan+1@x.org"):
        create(client, email)
    expected = ["alan+1@x.org", "ALAN@x.org", "Alice@X.org", "bob@x.org", "carol@x.org"]

    def emails(sort: str) -> list[str]:
        return [u["email"] for u in list_following_links(client, {"sort": sort, "limit": "2"})]

    assert emails("email") == expected
    assert emails("-email") == expected[::-1]


def test_full_name_sorts_case_insensitively_nameless_first_ties_by_id(
    client: testing.TestClient,
) -> None:
    made = {
        key: create(client, f"{key}@x.org", full_name=name)
        for key, name in [
            ("b1", "bob"),
            ("n1", None),
            ("a1", "Ann"),
            ("c1", "Carl"),
            ("a2", "ann"),
            ("n2", None),
            ("a3", "ANN"),
        ]
    }

    def by_id(*keys: str) -> list[str]:
        return sorted((made[k]["id"] for k in keys), key=uuid.UUID)

    expected = [*by_id("n1", "n2"), *by_id("a1", "a2", "a3"), made["b1"]["id"], made["c1"]["id"]]
    assert ids(list_following_links(client, {"sort": "full_name", "limit": "1"})) == expected
    assert ids(list_following_links(client, {"sort": "-full_name", "limit": "2"})) == expected[::-1]


def test_sort_follows_updates(client: testing.TestClient) -> None:
    ann = create(client, "ann@x.org", full_name="Ann")
    bob = create(client, "bob@x.org", full_name="Bob")
    cid = create(client, "cid@x.org", full_name="Cid")

    def order(sort: str) -> list[str]:
        return ids(client.simulate_get(USERS, params={"sort": sort}).json["items"])

    client.simulate_patch(f"{USERS}/{cid['id']}", json={"full_name": None})
    client.simulate_patch(f"{USERS}/{ann['id']}", json={"full_name": "zoe"})
    client.simulate_patch(f"{USERS}/{bob['id']}", json={"email": "Aaron@x.org"})

    assert order("full_name") == [cid["id"], bob["id"], ann["id"]]
    assert order("email") == [bob["id"], ann["id"], cid["id"]]
    assert order("created_at") == [ann["id"], bob["id"], cid["id"]]


def test_sort_combines_with_filters_and_include_deleted(
    client: testing.TestClient, registry: Registry
) -> None:
    users = seed_sortable(registry)
    for user in users[2::5]:
        assert client.simulate_delete(f"{USERS}/{user['id']}").status_code == 204
    shown = {
        u["id"]: u
        for u in client.simulate_get(
            USERS, params={"include_deleted": "true", "limit": "500"}
        ).json["items"]
    }
    deleted = {u["id"] for u in users[2::5]}
    assert {i for i, u in shown.items() if u["deleted_at"] is not None} == deleted

    cases: list[tuple[dict[str, str], Callable[[dict[str, Any]], bool]]] = [
        ({"is_active": "true"}, lambda u: u["is_active"] and u["id"] not in deleted),
        ({"is_active": "false", "include_deleted": "true"}, lambda u: not u["is_active"]),
        (
            {"q": "ann", "include_deleted": "true"},
            lambda u: "ann" in (u["full_name"] or "").lower(),
        ),
        (
            {"q": "A", "is_active": "true"},
            lambda u: (
                u["is_active"]
                and u["id"] not in deleted
                and ("a" in u["email"].lower() or "a" in (u["full_name"] or "").lower())
            ),
        ),
        ({"include_deleted": "true"}, lambda u: True),
        ({"include_deleted": "false"}, lambda u: u["id"] not in deleted),
    ]
    for sort in SORTS:
        for filters, wanted in cases:
            expected = expected_ids([u for u in shown.values() if wanted(u)], sort)
            assert expected, filters
            items = list_following_links(client, {**filters, "sort": sort, "limit": "2"})
            assert ids(items) == expected, (sort, filters)


def test_sort_with_an_email_filter(client: testing.TestClient) -> None:
    ann = create(client, "Ann@x.org")
    create(client, "bob@x.org")
    for sort in SORTS:
        resp = client.simulate_get(USERS, params={"sort": sort, "email": "ann@X.org"})
        assert ids(resp.json["items"]) == [ann["id"]], sort


UNKNOWN_SORTS = [
    "bogus",
    "-bogus",
    "",
    "-",
    "--email",
    "Email",
    "EMAIL",
    "+email",
    " email",
    "email ",
    "id",
    "-id",
    "updated_at",
    "deleted_at",
    "version",
    "is_active",
    "email,full_name",
    "full-name",
]


def test_unknown_sort_is_422_naming_sort(client: testing.TestClient) -> None:
    create(client, "sorted@x.org")
    for sort in UNKNOWN_SORTS:
        resp = client.simulate_get(USERS, query_string=f"sort={quote(sort, safe='')}")
        body = assert_invalid(resp, ["$.sort"])
        assert body["instance"] == USERS
        with_filters = client.simulate_get(
            USERS, params={"sort": sort, "include_deleted": "true", "q": "sorted"}
        )
        assert_invalid(with_filters, ["$.sort"])


def test_a_cursor_of_one_sort_is_refused_by_every_other(
    client: testing.TestClient, registry: Registry
) -> None:
    seed_sortable(registry)
    cursors = {}
    for sort in SORTS:
        first = client.simulate_get(USERS, params={"sort": sort, "limit": "2"})
        cursors[sort] = first.json["next"]
        assert cursors[sort] is not None
    for made_by, cursor in cursors.items():
        for used_with in SORTS:
            resp = client.simulate_get(
                USERS, params={"sort": used_with, "limit": "2", "cursor": cursor}
            )
            if used_with == made_by:
                assert resp.status_code == 200, resp.text
            else:
                assert_invalid(resp, ["$.cursor"])
        # The default order is created_at: only its cursors work without a sort.
        plain = client.simulate_get(USERS, params={"limit": "2", "cursor": cursor})
        if made_by == "created_at":
            assert plain.status_code == 200, plain.text
        else:
            assert_invalid(plain, ["$.cursor"])


def test_a_link_edited_to_another_sort_is_422(client: testing.TestClient) -> None:
    for i in range(3):
        create(client, f"edit{i}@x.org", full_name=f"Edit {i}")
    link = next_link(client.simulate_get(USERS, params={"sort": "-email", "limit": "1"}))
    assert link is not None
    assert "sort=-email" in link
    assert follow(client, link).status_code == 200
    edited = link.replace("sort=-email", "sort=email")
    assert_invalid(follow(client, edited), ["$.cursor"])
    dropped = link.replace("sort=-email", "")
    assert_invalid(follow(client, dropped), ["$.cursor"])


def test_tampered_cursor_for_a_sort_is_422(client: testing.TestClient) -> None:
    create(client, "tamper@x.org")
    zero = str(uuid.UUID(int=0))
    for cursor in [
        # As the service issued them before sorting existed.
        cursor_of(["2024-01-01T00:00:00+00:00", zero]),
        cursor_of(["created_at", "2024-01-01T00:00:00+00:00", zero, "x"]),
        cursor_of(["bogus", "2024-01-01T00:00:00+00:00", zero]),
        cursor_of(["created_at", "yesterday", zero]),
        cursor_of(["created_at", 1704067200, zero]),
        cursor_of([None, "2024-01-01T00:00:00+00:00", zero]),
    ]:
        assert_invalid(client.simulate_get(USERS, params={"cursor": cursor}), ["$.cursor"])
    for sort, key in [
        ("email", 5),
        ("email", None),
        ("-full_name", ["a"]),
        ("created_at", "not a time"),
        ("-created_at", "2024-01-01T00:00:00"),
    ]:
        resp = client.simulate_get(
            USERS, params={"sort": sort, "cursor": cursor_of([sort, key, zero])}
        )
        assert_invalid(resp, ["$.cursor"])


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(
    names=st.lists(
        st.sampled_from([None, "ann", "Ann", "bob", "BOB", "b-ob", "Zed", "zed"]), max_size=18
    ),
    sort=st.sampled_from(SORTS),
    limit=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_every_sort_pages_every_existing_user_once_despite_writes(
    names: list[str | None], sort: str, limit: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'sorting.db'}"
        with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url})) as registry:
            registry.migrate()
            client = client_for(registry)
            created = []
            for i, name in enumerate(names):
                local = data.draw(st.sampled_from(["m", "M", "a", "Z", "q"]), label="prefix")
                created.append(create(client, f"{local}{i}@x.org", full_name=name))
            expected = expected_ids(created, sort)
            writes = 0

            seen: list[dict[str, Any]] = []
            resp = client.simulate_get(USERS, params={"sort": sort, "limit": str(limit)})
            for _ in range(200):
                assert resp.status_code == 200, resp.text
                seen += resp.json["items"]
                link = next_link(resp)
                # Others create users between this client's page reads.
                for _ in range(data.draw(st.integers(0, min(2, 8 - writes)), label="writes")):
                    name = data.draw(st.sampled_from([None, "ann", "Mid", "zz"]), label="name")
                    create(client, f"late{writes}@x.org", full_name=name)
                    writes += 1
                if link is None:
                    break
                resp = follow(client, link)
            else:
                raise AssertionError("paging did not end")

            got = ids(seen)
            assert len(got) == len(set(got)), "a user was returned twice"
            originals = set(expected)
            assert [i for i in got if i in originals] == expected
            assert got == expected_ids(seen, sort)


# --------------------------------------------------------------------------- health and pages


def test_live(client: testing.TestClient) -> None:
    resp = client.simulate_get("/health/live")
    assert resp.status_code == 200
    assert resp.json == {"status": "ok"}


def test_ready(client: testing.TestClient, backend: str) -> None:
    resp = client.simulate_get("/health/ready")
    assert resp.status_code == 200
    assert resp.json == {"status": "ok", "storage": backend}


def test_ready_on_an_unmigrated_database_is_503_with_retry_after(make_client: MakeClient) -> None:
    client = make_client(migrate=False, db="unmigrated.db")

    resp = client.simulate_get("/health/ready")

    body = assert_problem(resp, 503)
    assert int(resp.headers["Retry-After"]) >= 1
    assert body["type"].endswith("unavailable")
    assert client.simulate_get("/health/live").status_code == 200
    assert_problem(client.simulate_get(USERS), 503)


def test_home_page(client: testing.TestClient, backend: str) -> None:
    resp = client.simulate_get("/")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert userplane.__version__ in resp.text
    assert backend in resp.text
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp


def test_static_stylesheet(client: testing.TestClient) -> None:
    resp = client.simulate_get("/static/style.css")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/css")
    assert "font-family" in resp.text


@pytest.mark.parametrize(
    "path",
    [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/../../../pyproject.toml",
        "/static/%2e%2e/%2e%2e/users.py",
        "/static/nope.css",
    ],
)
def test_static_path_traversal_is_404(client: testing.TestClient, path: str) -> None:
    resp = client.simulate_get(path)
    assert resp.status_code == 404
    assert "create_app" not in resp.text
    assert "import" not in resp.text


# --------------------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "given", ["abc-123", "a.b_c:d-E", "x" * 128, "0f6a9c3e-5b1d-4e2a-9c7f-3d8e1b2a4c6d"]
)
def test_valid_request_id_is_echoed(client: testing.TestClient, given: str) -> None:
    ok = client.simulate_get("/health/live", headers={"X-Request-ID": given})
    assert ok.headers["X-Request-ID"] == given
    problem = client.simulate_get(f"{USERS}/{uuid.uuid4()}", headers={"X-Request-ID": given})
    assert assert_problem(problem, 404)["request_id"] == given


@pytest.mark.parametrize(
    "given", ["has space", "x" * 300, "x" * 129, "<script>", "a/b", "semi;colon", "\u00e9"]
)
def test_invalid_request_id_is_replaced(client: testing.TestClient, given: str) -> None:
    resp = client.simulate_get(USERS, headers={"X-Request-ID": given})
    echoed = resp.headers["X-Request-ID"]
    assert echoed != given
    assert GENERATED_REQUEST_ID.fullmatch(echoed)

    problem = client.simulate_get("/nope", headers={"X-Request-ID": given})
    body = assert_problem(problem, 404)
    assert body["request_id"] != given
    assert GENERATED_REQUEST_ID.fullmatch(body["request_id"])


def test_generated_request_ids_differ(client: testing.TestClient) -> None:
    ids = {client.simulate_get("/health/live").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


# --------------------------------------------------------------------------- security headers


def _responses(client: testing.TestClient) -> list[tuple[str, testing.Result]]:
    user = create(client, "sec@x.org")
    item = f"{USERS}/{user['id']}"
    json_ct = {"Content-Type": "application/json"}
    return [
        (USERS, client.simulate_post(USERS, json={"email": "sec2@x.org"})),
        (USERS, client.simulate_get(USERS)),
        (item, client.simulate_get(item)),
        (item, client.simulate_get(item, headers={"If-None-Match": '"1"'})),
        (item, client.simulate_patch(item, json={"full_name": "S"})),
        (item, client.simulate_patch(item, json={"full_name": "S"}, headers={"If-Match": '"1"'})),
        (USERS, client.simulate_post(USERS, json={"email": 1})),
        (USERS, client.simulate_post(USERS, body=b"{", headers=json_ct)),
        (USERS, client.simulate_post(USERS, body=b"x", headers={"Content-Type": "text/plain"})),
        (USERS, client.simulate_put(USERS, json={})),
        ("/api/v1/nope", client.simulate_get("/api/v1/nope")),
        (f"{USERS}/bad", client.simulate_get(f"{USERS}/bad")),
        (USERS, client.simulate_get(USERS, query_string="cursor=zz")),
        (item, client.simulate_delete(item)),
        (item, client.simulate_get(item, params={"include_deleted": "true"})),
        (item, client.simulate_get(item, params={"bogus": "1"})),
        (f"{item}/restore", client.simulate_post(f"{item}/restore")),
        (USERS, client.simulate_get(USERS, query_string="sort=nope")),
        ("/health/live", client.simulate_get("/health/live")),
        ("/health/ready", client.simulate_get("/health/ready")),
        ("/", client.simulate_get("/")),
        ("/static/style.css", client.simulate_get("/static/style.css")),
        ("/static/../x", client.simulate_get("/static/../x")),
    ]


def test_security_headers_on_every_response(client: testing.TestClient) -> None:
    for path, resp in _responses(client):
        label = f"{path} -> {resp.status}"
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", label
        assert resp.headers.get("Referrer-Policy"), label
        if path.startswith("/api/"):
            assert resp.headers.get("Cache-Control") == "no-store", label


def test_api_errors_raised_before_routing_carry_the_headers_too(make_client: MakeClient) -> None:
    client = make_client({"USERPLANE_MAX_BODY_BYTES": "10"})
    resp = client.simulate_post(USERS, json={"email": "toolong@x.org"})
    assert_problem(resp, 413)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"]


# --------------------------------------------------------------------------- CORS


PREFLIGHT = {"Access-Control-Request-Method": "POST"}


def preflight(client: testing.TestClient, origin: str) -> testing.Result:
    return client.simulate_options(
        f"{USERS}/",
        headers={
            "Origin": origin,
            **PREFLIGHT,
            "Access-Control-Request-Headers": "content-type, if-match",
        },
    )


def test_cors_in_dev_allows_any_origin(client: testing.TestClient) -> None:
    resp = preflight(client, "https://anywhere.example")
    assert resp.status_code in (200, 204)
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", "https://anywhere.example")
    assert "POST" in resp.headers.get("Access-Control-Allow-Methods", "")

    # A browser script must be able to read API errors and the headers it needs.
    err = client.simulate_post(
        USERS, json={"email": 1}, headers={"Origin": "https://anywhere.example"}
    )
    assert err.status_code == 422
    assert err.headers.get("Access-Control-Allow-Origin") in ("*", "https://anywhere.example")
    ok = client.simulate_post(
        USERS, json={"email": "cors@x.org"}, headers={"Origin": "https://anywhere.example"}
    )
    exposed = {h.strip().lower() for h in ok.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "location", "link", "x-request-id"} <= exposed


def test_cors_in_prod_without_origins_allows_none(make_client: MakeClient) -> None:
    client = make_client({"USERPLANE_ENV": "prod"})
    resp = preflight(client, "https://anywhere.example")
    assert "Access-Control-Allow-Origin" not in resp.headers
    simple = client.simulate_get(USERS, headers={"Origin": "https://anywhere.example"})
    assert simple.status_code == 200
    assert "Access-Control-Allow-Origin" not in simple.headers


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_cors_with_configured_origins_allows_only_those(make_client: MakeClient, env: str) -> None:
    client = make_client({"USERPLANE_ENV": env, "USERPLANE_CORS_ORIGINS": "https://a.example"})

    allowed = preflight(client, "https://a.example")
    assert allowed.headers.get("Access-Control-Allow-Origin") == "https://a.example"
    assert "POST" in allowed.headers.get("Access-Control-Allow-Methods", "")

    for other in ("https://b.example", "https://a.example.evil.org", "http://a.example"):
        refused = preflight(client, other)
        assert "Access-Control-Allow-Origin" not in refused.headers, other
        simple = client.simulate_get(USERS, headers={"Origin": other})
        assert "Access-Control-Allow-Origin" not in simple.headers, other


def vary_of(resp: testing.Result) -> list[str]:
    """The names in ``resp``'s ``Vary``, lowercased, each once."""
    return [n.strip().lower() for n in resp.headers.get("Vary", "").split(",") if n.strip()]


@pytest.mark.parametrize(
    "env", [{"USERPLANE_CORS_ORIGINS": "https://a.example"}, {"USERPLANE_ENV": "dev"}]
)
def test_cors_answers_vary_on_origin(make_client: MakeClient, env: dict[str, str]) -> None:
    # A shared cache must not give one origin's answer (or a same-origin one) to another.
    client = make_client(env)
    allowed = client.simulate_get(USERS, headers={"Origin": "https://a.example"})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] in ("https://a.example", "*")
    answers = {
        "allowed": allowed,
        "allowed, an error": client.simulate_post(
            USERS, json={"email": 1}, headers={"Origin": "https://a.example"}
        ),
        "refused": client.simulate_get(USERS, headers={"Origin": "https://b.example"}),
        "no origin": client.simulate_get(USERS),
        "preflight": preflight(client, "https://a.example"),
        "refused preflight": preflight(client, "https://b.example"),
        "not found": client.simulate_get("/nowhere", headers={"Origin": "https://a.example"}),
        "home page": client.simulate_get("/", headers={"Origin": "https://a.example"}),
    }
    assert "POST" in answers["preflight"].headers["Access-Control-Allow-Methods"]
    for label, resp in answers.items():
        assert vary_of(resp).count("origin") == 1, (label, resp.headers.get("Vary"))


class VaryOnAccept:
    """A plugin's middleware that varies responses on ``Accept`` (and says so)."""

    @hookimpl
    def userplane_http_middleware(self) -> list[Any]:
        return [self]

    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
        resp.set_header("Vary", "Accept, origin")


def test_vary_origin_is_merged_with_the_vary_already_set(make_client: MakeClient) -> None:
    client = make_client({"USERPLANE_CORS_ORIGINS": "https://a.example"}, plugins=[VaryOnAccept()])
    for origin in ("https://a.example", "https://b.example"):
        resp = client.simulate_get(USERS, headers={"Origin": origin})
        assert vary_of(resp) == ["accept", "origin"], resp.headers["Vary"]


def test_without_cors_nothing_varies_on_origin(make_client: MakeClient) -> None:
    client = make_client({"USERPLANE_ENV": "prod"})
    resp = client.simulate_get(USERS, headers={"Origin": "https://a.example"})
    assert "origin" not in vary_of(resp)


# --------------------------------------------------------------------------- unexpected errors


def test_unexpected_exception_is_a_500_problem_without_internals(
    make_client: MakeClient,
) -> None:
    client = make_client(plugins=[ExplodingPlugin()])

    resp = client.simulate_post(
        USERS, json={"email": "kaboom@x.org"}, headers={"X-Request-ID": "req-500"}
    )

    body = assert_problem(resp, 500)
    assert body["request_id"] == "req-500"
    assert body["instance"] == USERS
    for secret in ("boom", "secret", "Traceback", "RuntimeError", 'File "', ".py"):
        assert secret not in resp.text
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
