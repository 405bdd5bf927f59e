"""``/api/v1/keys`` and ``/api/v1/keys/{key_id}``: API keys over HTTP (``keys:manage``).

Create (the secret shown once, and it authenticates), list (keyset pages, never a
secret), read, revoke (idempotent; the key stops within the cache delay), who may
(401, 403, and no minting or revoking a key more powerful than oneself), problems
naming the field at fault, the records of changes, and the OpenAPI document.
On SQLite and PostgreSQL (see ``conftest.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from falcon import inspect, testing
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate

from userplane import Registry, Settings
from userplane.auth import beyond
from userplane.frontends.http import create_app
from userplane.frontends.http.testing import PrincipalTokens, client
from userplane.plugin import Change, Principal, hookimpl
from userplane.plugins import api_keys
from userplane.plugins.api_keys import authenticator
from userplane.plugins.api_keys.keys import MAX_NAME
from userplane.plugins.api_keys.openapi import name_pattern, name_schema
from userplane.plugins.api_keys.resources import MAX_LIMIT

KEYS = "/api/v1/keys"
USERS = "/api/v1/users"
PROBLEM = "application/problem+json"
KEY_SHAPE = re.compile(r"up_[A-Za-z0-9]{44}")
#: What a key's record shows: never its secret or its hash.
RECORD = {"id", "name", "role", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"}
ROLES = {
    # Manages keys, and reads users: may mint viewer keys, and keymaster keys, nothing more.
    "keymaster": ["keys:manage", "users:read"],
    # Manages keys with every action an editor has.
    # Reads users and the audit trail: more than a keymaster alone holds.
    "reader": ["users:read", "audit:read"],
    "editor-keymaster": [
        "keys:manage",
        "users:read",
        "users:read-deleted",
        "users:write",
        "users:delete",
        "users:restore",
    ],
}


def principal(role: str) -> Principal:
    return Principal(id=f"test:{role}", kind="test", roles=frozenset({role}))


class Recorder:
    """Keeps every change recorded, as the audit trail would."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    @hookimpl
    def userplane_record_change(self, change: Change) -> None:
        self.changes.append(change)

    def actions(self) -> list[tuple[str, str]]:
        return [(c.action, c.target_id) for c in self.changes if c.target_type == "api_key"]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def opened(database_url: str, recorder: Recorder, **env: str) -> Registry:
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": database_url, "USERPLANE_ROLES": json.dumps(ROLES), **env}
    )
    registry = Registry(settings, plugins=[PrincipalTokens(), recorder])
    registry.migrate()
    return registry


@pytest.fixture
def reg(database_url: str, recorder: Recorder) -> Iterator[Registry]:
    with opened(database_url, recorder) as registry:
        yield registry


@pytest.fixture
def admin(reg: Registry) -> testing.TestClient:
    return client(reg, principal=principal("admin"))


class Ticks:
    """The api-keys authenticator's monotonic clock, advanced by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> Ticks:
    t = Ticks()
    monkeypatch.setattr(authenticator, "time", SimpleNamespace(monotonic=t))
    return t


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create(http: testing.TestClient, **body: Any) -> dict[str, Any]:
    resp = http.simulate_post(KEYS, json={"name": "ci", "role": "viewer", **body})
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json
    return made


def fields(resp: testing.Result) -> list[str]:
    assert resp.status_code == 422, resp.text
    assert resp.headers["Content-Type"] == PROBLEM
    assert resp.json["type"] == "urn:userplane:problem:invalid-input"
    return [e["field"] for e in resp.json["errors"]]


def listed(http: testing.TestClient) -> list[dict[str, Any]]:
    resp = http.simulate_get(KEYS, params={"limit": str(MAX_LIMIT)})
    assert resp.status_code == 200, resp.text
    assert resp.json["next"] is None
    items: list[dict[str, Any]] = resp.json["items"]
    return items


# -- create ---------------------------------------------------------------------------------------


def test_create_shows_the_secret_once_and_the_key_authenticates(
    reg: Registry, admin: testing.TestClient
) -> None:
    resp = admin.simulate_post(KEYS, json={"name": "deploy bot", "role": "viewer"})
    assert resp.status_code == 201, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    made = resp.json
    assert set(made) == {"key", *RECORD}
    assert KEY_SHAPE.fullmatch(made["key"])
    assert made["key"].startswith(made["prefix"])
    assert (made["name"], made["role"]) == ("deploy bot", "viewer")
    assert (made["expires_at"], made["revoked_at"], made["last_used_at"]) == (None, None, None)
    assert resp.headers["Location"] == f"{KEYS}/{made['id']}"

    # The key works, with its role and nothing more.
    as_key = client(reg, headers=bearer(made["key"]))
    assert as_key.simulate_get(USERS).status_code == 200
    assert as_key.simulate_post(USERS, json={"email": "ann@example.org"}).status_code == 403
    assert as_key.simulate_get(KEYS).status_code == 403

    # Never shown again: not by the key's URL, not in the list; nor its hash.
    one = admin.simulate_get(resp.headers["Location"])
    assert one.status_code == 200
    assert set(one.json) == RECORD
    assert one.json == {k: v for k, v in made.items() if k != "key"} | {
        "last_used_at": one.json["last_used_at"]
    }
    page = admin.simulate_get(KEYS)
    digest = hashlib.sha256(made["key"].encode()).hexdigest()
    for text in (one.text, page.text):
        assert made["key"] not in text
        assert digest not in text
        assert "secret" not in text


@pytest.mark.parametrize(
    ("lifetime", "delta"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("99999w", timedelta(weeks=99999)),
    ],
)
def test_a_lifetime_sets_when_the_key_expires(
    admin: testing.TestClient, lifetime: str, delta: timedelta
) -> None:
    made = create(admin, expires_in=lifetime)
    created = datetime.fromisoformat(made["created_at"])
    assert datetime.fromisoformat(made["expires_at"]) == created + delta


def test_a_null_lifetime_is_none(admin: testing.TestClient) -> None:
    assert create(admin, expires_in=None)["expires_at"] is None


def test_creating_goes_through_the_key_service_and_is_recorded(
    reg: Registry, admin: testing.TestClient, recorder: Recorder
) -> None:
    made = create(admin, name="recorded", role="editor", expires_in="1d")
    assert recorder.actions() == [("api_key.created", made["id"])]
    [change] = recorder.changes
    assert (change.actor, change.actor_kind) == ("test:admin", "test")
    assert change.client_address == "127.0.0.1"
    assert change.fields["name"].after == "recorded"
    assert change.fields["role"].after == "editor"
    assert change.fields["prefix"].after == made["prefix"]
    for value in change.fields.values():
        assert made["key"] not in str(value.after)
    # The same record the CLI's service keeps: it lists the key.
    [record] = api_keys.service(reg).list()
    assert str(record.id) == made["id"]


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"role": "viewer"}, ["$.name"]),
        ({"name": "", "role": "viewer"}, ["$.name"]),
        ({"name": "   ", "role": "viewer"}, ["$.name"]),
        ({"name": "x" * 101, "role": "viewer"}, ["$.name"]),
        ({"name": "bell\x07", "role": "viewer"}, ["$.name"]),
        ({"name": "zero\u200bwidth", "role": "viewer"}, ["$.name"]),
        ({"name": 5, "role": "viewer"}, ["$.name"]),
        ({"name": None, "role": "viewer"}, ["$.name"]),
        ({"name": "ci"}, ["$.role"]),
        ({"name": "ci", "role": "nope"}, ["$.role"]),
        ({"name": "ci", "role": "Admin"}, ["$.role"]),
        ({"name": "ci", "role": ["admin"]}, ["$.role"]),
        ({"name": "ci", "role": "viewer", "expires_in": "0d"}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_in": "90"}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_in": "5x"}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_in": "90D"}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_in": " 90d"}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_in": "-1d"}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_in": "100000d"}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_in": 90}, ["$.expires_in"]),
        ({"name": "ci", "role": "viewer", "expires_at": "2030-01-01T00:00:00Z"}, ["$.expires_at"]),
        ({"name": "ci", "role": "viewer", "key": "up_mine"}, ["$.key"]),
        (
            {"name": "", "role": "nope", "expires_in": "soon", "colour": "red"},
            ["$.colour", "$.expires_in", "$.name", "$.role"],
        ),
    ],
)
def test_bad_input_is_a_422_naming_each_field_at_fault(
    admin: testing.TestClient, recorder: Recorder, body: dict[str, Any], expected: list[str]
) -> None:
    resp = admin.simulate_post(KEYS, json=body)
    assert sorted(fields(resp)) == expected
    assert listed(admin) == []
    assert recorder.changes == []


@pytest.mark.parametrize("body", ["[]", '"ci"', "1", "null"])
def test_a_body_that_is_no_object_is_a_422_naming_the_root(
    admin: testing.TestClient, body: str
) -> None:
    resp = admin.simulate_post(KEYS, body=body, headers={"Content-Type": "application/json"})
    assert fields(resp) == ["$"]


def test_an_unknown_role_names_the_roles_there_are(admin: testing.TestClient) -> None:
    resp = admin.simulate_post(KEYS, json={"name": "ci", "role": "root"})
    [error] = resp.json["errors"]
    assert error["field"] == "$.role"
    for role in ("admin", "editor", "viewer", "auditor", "keymaster", "reader"):
        assert role in error["detail"]


def test_an_idempotency_key_is_refused_as_the_secret_is_never_kept(
    admin: testing.TestClient,
) -> None:
    resp = admin.simulate_post(
        KEYS, json={"name": "ci", "role": "viewer"}, headers={"Idempotency-Key": "k-1"}
    )
    assert fields(resp) == ["Idempotency-Key"]
    assert listed(admin) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "$.limit"),
        (f"limit={MAX_LIMIT + 1}", "$.limit"),
        ("limit=ten", "$.limit"),
        ("limit=-1", "$.limit"),
        ("limit=1&limit=2", "$.limit"),
        ("cursor=bogus", "$.cursor"),
        ("cursor=1.ABCDEF0123456789ABCDEF0123456789", "$.cursor"),
        ("include_revoked=true", "$.include_revoked"),
    ],
)
def test_a_bad_list_parameter_is_a_422_naming_it(
    admin: testing.TestClient, query: str, field: str
) -> None:
    assert field in fields(admin.simulate_get(KEYS, query_string=query))


# -- list -----------------------------------------------------------------------------------------


def test_pages_walk_every_key_once_revoked_ones_included(
    reg: Registry, admin: testing.TestClient
) -> None:
    made = [create(admin, name=f"key {i}") for i in range(7)]
    revoked = admin.simulate_delete(f"{KEYS}/{made[2]['id']}")
    assert revoked.status_code == 200
    seen: list[dict[str, Any]] = []
    params = {"limit": "3"}
    pages = 0
    while True:
        resp = admin.simulate_get(KEYS, params=params)
        assert resp.status_code == 200, resp.text
        pages += 1
        seen += resp.json["items"]
        if resp.json["next"] is None:
            assert "Link" not in resp.headers
            break
        target = re.fullmatch(r'<([^>]+)>; rel="?next"?', resp.headers["Link"])
        assert target is not None
        url = urlsplit(target[1])
        assert url.path == KEYS
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert query == {"limit": "3", "cursor": resp.json["next"]}
        params = query
    assert pages == 3
    assert [k["id"] for k in seen] == [m["id"] for m in made]  # oldest first
    assert seen[2]["revoked_at"] is not None
    for key in seen:
        assert set(key) == RECORD
    everything = json.dumps(seen)
    for m in made:
        assert m["key"] not in everything
        assert hashlib.sha256(m["key"].encode()).hexdigest() not in everything


def test_a_cursor_is_a_place_keys_made_later_still_come_after(admin: testing.TestClient) -> None:
    first = create(admin, name="first")
    page = admin.simulate_get(KEYS, params={"limit": "1"})
    assert [k["id"] for k in page.json["items"]] == [first["id"]]
    assert page.json["next"] is None
    later = create(admin, name="later")
    # From the last key seen: what came since, and nothing twice.
    place = admin.simulate_get(KEYS, params={"limit": "1"})
    resumed = admin.simulate_get(KEYS, params={"cursor": place.json["next"]})
    assert [k["id"] for k in resumed.json["items"]] == [later["id"]]


def test_an_empty_list(admin: testing.TestClient) -> None:
    resp = admin.simulate_get(KEYS)
    assert resp.status_code == 200
    assert resp.json == {"items": [], "next": None}
    assert admin.simulate_head(KEYS).status_code == 200


# -- read, revoke ---------------------------------------------------------------------------------


def test_an_unknown_key_is_a_404(admin: testing.TestClient, recorder: Recorder) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    for resp in (
        admin.simulate_get(f"{KEYS}/{unknown}"),
        admin.simulate_delete(f"{KEYS}/{unknown}"),
    ):
        assert resp.status_code == 404, resp.text
        assert resp.headers["Content-Type"] == PROBLEM
        assert unknown in resp.json["detail"]
    assert admin.simulate_get(f"{KEYS}/not-a-uuid").status_code == 404
    assert admin.simulate_delete(f"{KEYS}/not-a-uuid").status_code == 404
    assert recorder.changes == []


def test_revoking_is_idempotent_and_recorded_once(
    admin: testing.TestClient, recorder: Recorder
) -> None:
    made = create(admin)
    first = admin.simulate_delete(f"{KEYS}/{made['id']}")
    assert first.status_code == 200, first.text
    assert set(first.json) == RECORD
    assert first.json["revoked_at"] is not None
    again = admin.simulate_delete(f"{KEYS}/{made['id']}")
    assert again.status_code == 200
    assert again.json == first.json  # the first revocation's time is kept
    assert admin.simulate_get(f"{KEYS}/{made['id']}").json == first.json
    assert recorder.actions() == [
        ("api_key.created", made["id"]),
        ("api_key.revoked", made["id"]),
    ]
    [_, revoked] = recorder.changes
    assert revoked.fields["revoked_at"].before is None
    assert revoked.fields["revoked_at"].after == first.json["revoked_at"]


def test_a_revoked_key_stops_authenticating_within_the_cache_delay(
    reg: Registry, admin: testing.TestClient, ticks: Ticks
) -> None:
    made = create(admin, role="viewer")
    kept = create(admin, role="viewer")
    as_key = client(reg, headers=bearer(made["key"]))
    as_kept = client(reg, headers=bearer(kept["key"]))
    assert as_key.simulate_get(USERS).status_code == 200
    assert admin.simulate_delete(f"{KEYS}/{made['id']}").status_code == 200
    # Each process trusts what it read of a key for USERPLANE_API_KEYS_CACHE_SECONDS (5 s).
    assert as_key.simulate_get(USERS).status_code == 200
    ticks.now += 5.0
    refused = as_key.simulate_get(USERS)
    assert refused.status_code == 401
    assert refused.headers["Content-Type"] == PROBLEM
    assert as_kept.simulate_get(USERS).status_code == 200


def test_without_a_cache_a_revoked_key_is_refused_at_once(
    database_url: str, recorder: Recorder
) -> None:
    with opened(database_url, recorder, USERPLANE_API_KEYS_CACHE_SECONDS="0") as registry:
        admin = client(registry, principal=principal("admin"))
        made = create(admin)
        as_key = client(registry, headers=bearer(made["key"]))
        assert as_key.simulate_get(USERS).status_code == 200
        assert admin.simulate_delete(f"{KEYS}/{made['id']}").status_code == 200
        assert as_key.simulate_get(USERS).status_code == 401


def test_a_key_may_revoke_itself(reg: Registry, admin: testing.TestClient) -> None:
    made = create(admin, role="admin")
    as_key = client(reg, headers=bearer(made["key"]))
    assert as_key.simulate_delete(f"{KEYS}/{made['id']}").status_code == 200


# -- who may --------------------------------------------------------------------------------------


def test_without_credentials_every_operation_is_a_401(
    reg: Registry, admin: testing.TestClient
) -> None:
    made = create(admin)
    anonymous = client(reg)
    for resp in (
        anonymous.simulate_post(KEYS, json={"name": "ci", "role": "viewer"}),
        anonymous.simulate_get(KEYS),
        anonymous.simulate_get(f"{KEYS}/{made['id']}"),
        anonymous.simulate_delete(f"{KEYS}/{made['id']}"),
    ):
        assert resp.status_code == 401, resp.text
        assert resp.headers["Content-Type"] == PROBLEM
        assert "Bearer" in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize("role", ["viewer", "editor", "auditor"])
def test_without_keys_manage_every_operation_is_a_403(
    reg: Registry, admin: testing.TestClient, recorder: Recorder, role: str
) -> None:
    made = create(admin)
    http = client(reg, principal=principal(role))
    for resp in (
        http.simulate_post(KEYS, json={"name": "ci", "role": "viewer"}),
        http.simulate_get(KEYS),
        http.simulate_get(f"{KEYS}/{made['id']}"),
        http.simulate_delete(f"{KEYS}/{made['id']}"),
    ):
        assert resp.status_code == 403, resp.text
        assert resp.headers["Content-Type"] == PROBLEM
        assert "keys:manage" in resp.json["detail"]
    assert len(listed(admin)) == 1
    assert admin.simulate_get(f"{KEYS}/{made['id']}").json["revoked_at"] is None
    assert recorder.actions() == [("api_key.created", made["id"])]


def test_keys_manage_is_granted_by_a_custom_role(reg: Registry) -> None:
    http = client(reg, principal=principal("keymaster"))
    made = create(http, role="viewer")
    assert http.simulate_get(KEYS).status_code == 200
    assert http.simulate_get(f"{KEYS}/{made['id']}").status_code == 200
    assert http.simulate_delete(f"{KEYS}/{made['id']}").status_code == 200


@pytest.mark.parametrize(
    ("caller", "allowed", "refused"),
    [
        # keys:manage and users:read: keys with no more than that.
        (
            "keymaster",
            ["viewer", "keymaster"],
            ["editor", "auditor", "reader", "admin", "editor-keymaster"],
        ),
        (
            "editor-keymaster",
            ["viewer", "editor", "keymaster", "editor-keymaster"],
            ["auditor", "reader", "admin"],
        ),
        # Only a role granting every action may mint one.
        (
            "admin",
            ["viewer", "editor", "auditor", "reader", "keymaster", "editor-keymaster", "admin"],
            [],
        ),
    ],
)
def test_no_key_may_be_created_with_more_than_the_callers_roles_grant(
    reg: Registry,
    admin: testing.TestClient,
    recorder: Recorder,
    caller: str,
    allowed: list[str],
    refused: list[str],
) -> None:
    http = client(reg, principal=principal(caller))
    for role in allowed:
        assert create(http, role=role)["role"] == role
    for role in refused:
        resp = http.simulate_post(KEYS, json={"name": "escalate", "role": role})
        assert resp.status_code == 403, (role, resp.text)
        assert resp.headers["Content-Type"] == PROBLEM
        assert resp.json["type"] == "urn:userplane:problem:forbidden"
        assert repr(role) in resp.json["detail"]
    assert sorted(k["role"] for k in listed(admin)) == sorted(allowed)
    assert [a for a, _ in recorder.actions()] == ["api_key.created"] * len(allowed)


def test_a_key_minted_by_a_key_has_no_more_than_its_maker(reg: Registry) -> None:
    """A keymaster key, itself made over HTTP, cannot mint its way to admin."""
    keymaster = create(client(reg, principal=principal("admin")), role="keymaster")
    as_keymaster = client(reg, headers=bearer(keymaster["key"]))
    viewer = create(as_keymaster, role="viewer")
    assert viewer["role"] == "viewer"
    refused = as_keymaster.simulate_post(KEYS, json={"name": "up", "role": "admin"})
    assert refused.status_code == 403


def test_no_key_may_be_revoked_with_more_than_the_callers_roles_grant(
    reg: Registry, admin: testing.TestClient, recorder: Recorder
) -> None:
    stronger = create(admin, role="editor")
    weaker = create(admin, role="viewer")
    http = client(reg, principal=principal("keymaster"))
    resp = http.simulate_delete(f"{KEYS}/{stronger['id']}")
    assert resp.status_code == 403, resp.text
    assert "'editor'" in resp.json["detail"]
    assert admin.simulate_get(f"{KEYS}/{stronger['id']}").json["revoked_at"] is None
    assert http.simulate_delete(f"{KEYS}/{weaker['id']}").status_code == 200
    assert ("api_key.revoked", stronger["id"]) not in recorder.actions()
    # Reading is not guarded so: a keymaster sees every key (never a secret).
    assert http.simulate_get(f"{KEYS}/{stronger['id']}").status_code == 200


def test_the_roles_of_a_principal_with_several_add_up(reg: Registry) -> None:
    """Roles from a token may be several: together they must cover the key's role."""
    both = Principal(id="test:both", kind="test", roles=frozenset({"keymaster", "auditor"}))
    http = client(reg, principal=both)
    assert create(http, role="reader")["role"] == "reader"  # users:read (keymaster), audit:read
    alone = client(reg, principal=principal("keymaster"))
    resp = alone.simulate_post(KEYS, json={"name": "ci", "role": "reader"})
    assert resp.status_code == 403
    assert "audit:read" in resp.json["detail"]


def test_what_a_role_grants_beyond_others(reg: Registry) -> None:
    roles = reg.auth.roles
    assert beyond({"viewer", "auditor"}, "reader", roles) == frozenset()
    assert beyond({"viewer"}, "reader", roles) == {"audit:read"}
    assert beyond({"editor"}, "admin", roles) == {"*"}
    assert beyond({"admin"}, "admin", roles) == frozenset()
    assert beyond({"admin"}, "editor-keymaster", roles) == frozenset()
    assert beyond(set(), "viewer", roles) == {"users:read"}
    # A role no longer defined grants nothing: neither to its holder nor to its keys.
    assert beyond({"ghost"}, "viewer", roles) == {"users:read"}
    assert beyond({"viewer"}, "ghost", roles) == frozenset()


def test_validity_is_judged_before_escalation(reg: Registry) -> None:
    http = client(reg, principal=principal("keymaster"))
    assert fields(http.simulate_post(KEYS, json={"name": "", "role": "admin"})) == ["$.name"]


# -- the OpenAPI document -------------------------------------------------------------------------

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_the_document_describes_the_key_routes(reg: Registry, admin: testing.TestClient) -> None:
    doc = admin.simulate_get("/api/v1/openapi.json").json
    validate(doc)
    ops = {
        (path, method): op
        for path, item in doc["paths"].items()
        if path.startswith(KEYS)
        for method, op in item.items()
        if method.upper() in HTTP_METHODS
    }
    assert {(p, m, op["operationId"]) for (p, m), op in ops.items()} == {
        (KEYS, "post", "createApiKey"),
        (KEYS, "get", "listApiKeys"),
        (f"{KEYS}/{{key_id}}", "get", "getApiKey"),
        (f"{KEYS}/{{key_id}}", "delete", "revokeApiKey"),
    }
    for op in ops.values():
        assert op["security"] == [{"bearer": []}]
        assert "keys:manage" in op["summary"] + op.get("description", "")
        for status in ("401", "403", "429", "500", "503"):
            assert op["responses"][status] == {"$ref": f"#/components/responses/{status}"}
    post = ops[(KEYS, "post")]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewApiKey"
    }
    assert "422" in post["responses"]
    assert "Cache-Control" in post["responses"]["201"]["headers"]
    assert "404" in ops[(f"{KEYS}/{{key_id}}", "delete")]["responses"]
    new = doc["components"]["schemas"]["NewApiKey"]
    assert new["properties"]["role"]["enum"] == sorted(reg.auth.roles)
    assert set(new["properties"]) == {"name", "role", "expires_in"}
    # Every key route is served, and every served one documented.
    served = set()
    for route in inspect.inspect_routes(create_app(reg)):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if path.startswith(KEYS):
            served |= {
                (path, m.method.lower())
                for m in route.methods
                if m.method in HTTP_METHODS and not m.internal
            }
    assert served == set(ops)


def test_responses_match_their_schemas(admin: testing.TestClient) -> None:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
    from referencing import Registry as Schemas
    from referencing import Resource
    from referencing.jsonschema import DRAFT202012

    doc = admin.simulate_get("/api/v1/openapi.json").json
    schemas = Schemas().with_resource(
        "urn:doc", Resource.from_contents(doc, default_specification=DRAFT202012)
    )

    def check(name: str, instance: Any) -> None:
        validator = Draft202012Validator(
            {"$ref": f"urn:doc#/components/schemas/{name}"}, registry=schemas
        )
        assert list(validator.iter_errors(instance)) == []

    body = {"name": "Zoë's CI 😀", "role": "viewer", "expires_in": "90d"}
    check("NewApiKey", body)
    made = create(admin, **body)
    create(admin, name="second")
    check("NewApiKeySecret", made)
    check("ApiKey", admin.simulate_get(f"{KEYS}/{made['id']}").json)
    page = admin.simulate_get(KEYS, params={"limit": "1"}).json
    assert page["next"] is not None
    check("ApiKeyPage", page)
    check("ApiKey", admin.simulate_delete(f"{KEYS}/{made['id']}").json)
    check("Problem", admin.simulate_post(KEYS, json={"name": ""}).json)


def said(name: str) -> bool:
    """Whether the document's schema of a new key's name takes ``name``."""
    schema = name_schema()
    return (
        schema["minLength"] <= len(name) <= schema["maxLength"]
        and re.search(ecma(schema["pattern"]), name) is not None
        and re.search(ecma(schema["not"]["pattern"]), name) is None
    )


def ecma(pattern: str) -> str:
    """A JSON Schema pattern (ECMA-262) for Python's ``re``: there, ``$`` is the end of input.

    Python's ``$`` also matches before a final newline (``"0\\n"``); ``\\Z`` does not.
    """
    return pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern


@given(st.text(max_size=120))
def test_the_name_schema_says_what_the_service_takes(name: str) -> None:
    takes = bool(name.strip()) and len(name) <= MAX_NAME and name.isprintable()
    assert said(name) == takes


@pytest.mark.parametrize(
    "name",
    ["x", " padded ", "Zoë's CI 😀", "tab\there", "   ", "", "\u00a0", "\U000e0001", "x" * 101],
)
def test_the_name_schema_on_examples(name: str) -> None:
    takes = bool(name.strip()) and len(name) <= MAX_NAME and name.isprintable()
    assert said(name) == takes
    assert re.search(name_pattern(), name) is not None or not name.isprintable()
