"""Authentication and authorization at the HTTP edge, as callers and plugin authors meet them.

Every protected operation needs credentials (401 with a ``Bearer`` challenge)
and an action the caller's role grants (403 otherwise); a route cannot be added
without declaring its actions; API keys are cached briefly, yet expiry is
immediate and revocation bounded by the cache delay; and third-party plugins,
loaded through entry points, can authenticate and veto without core changes.

Everything runs through ``falcon.testing.TestClient`` against a real, migrated
database (SQLite and PostgreSQL, see ``conftest.py``).
"""

from __future__ import annotations

import importlib
import json
import secrets
import string
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import falcon
import pytest
import structlog
from clients import new_key
from falcon import testing
from structlog.testing import capture_logs

from userplane import NewUser, Registry, Settings, UserQuery, hookimpl
from userplane.auth import Principal
from userplane.errors import ConfigurationError
from userplane.frontends.http import create_app
from userplane.frontends.http.auth import PUBLIC, App
from userplane.plugins import api_keys, webhooks
from userplane.plugins.api_keys.keys import lookup_of
from userplane.users import User, utcnow

USERS = "/api/v1/users"
USER = "/api/v1/users/{user_id:uuid}"
RESTORE = "/api/v1/users/{user_id:uuid}/restore"
EXPORT = "/api/v1/users/export"
PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "urn:userplane:problem:"
#: The api-keys plugin's default cache delay (USERPLANE_API_KEYS_CACHE_SECONDS).
DEFAULT_CACHE_SECONDS = 5.0
_BASE62 = string.ascii_letters + string.digits

MakeRegistry = Callable[..., Registry]


# ----------------------------------------------------------------------------------------- helpers


def random_base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def unknown_key() -> str:
    """A well-formed API key that no database holds."""
    return "up_" + random_base62(44)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.org"


def anonymous_client(registry: Registry) -> testing.TestClient:
    """A client that sends no credentials unless a request names them."""
    return testing.TestClient(create_app(registry))


def make_user(registry: Registry, *, deleted: bool = False) -> User:
    user = registry.users.create(NewUser(email=unique_email()))
    if deleted:
        user = registry.users.delete(user.id)
    return user


def all_users(registry: Registry) -> list[User]:
    page = registry.users.list(UserQuery(limit=500, include_deleted=True))
    return sorted(page.items, key=lambda u: str(u.id))


def assert_problem(resp: testing.Result, status: int, kind: str) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem with ``status`` and domain type ``kind``."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = json.loads(resp.text)
    assert body["status"] == status
    assert body["type"] == PROBLEM_TYPE + kind
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert "Traceback" not in resp.text
    return body


def assert_unauthenticated(
    resp: testing.Result, *, presented: bool, has_body: bool = True
) -> dict[str, Any] | None:
    """A 401 challenging for a bearer token; RFC 6750 names the error only when one was sent."""
    assert resp.status_code == 401, resp.text
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer"), challenge
    assert 'realm="userplane"' in challenge
    assert ('error="invalid_token"' in challenge) is presented, challenge
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    if not has_body:  # HEAD: headers only
        return None
    return assert_problem(resp, 401, "unauthenticated")


def assert_forbidden(resp: testing.Result, *, has_body: bool = True) -> None:
    assert resp.status_code == 403, resp.text
    assert "WWW-Authenticate" not in resp.headers  # known caller: no challenge
    if has_body:
        assert_problem(resp, 403, "forbidden")


def count_lookups(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every ``get_api_key`` the registry's storage is asked for."""
    storage: Any = api_keys.state_of(registry).store
    original = storage.get_api_key
    calls: list[str] = []

    def counting(lookup: str) -> Any:
        calls.append(lookup)
        return original(lookup)

    monkeypatch.setattr(storage, "get_api_key", counting)
    return calls


@pytest.fixture
def make_registry(database_url: str) -> Iterator[MakeRegistry]:
    """Registries over this test's database with extra settings or plugins; closed after."""
    made: list[Registry] = []

    def make(plugins: tuple[object, ...] = (), **env: str) -> Registry:
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url, **env})
        registry = Registry(settings, plugins=plugins)
        made.append(registry)
        registry.migrate()
        return registry

    yield make
    for registry in made:
        registry.close()


# ---------------------------------------------------------------------------------- the operations


@dataclass(frozen=True)
class Operation:
    """One API operation and the action it needs, stated here independently of the code."""

    route: str
    method: str
    action: str
    #: The status a caller allowed to do it gets.
    ok: int
    #: What the request carries: nothing, a new user, or a change.
    body: str | None = None
    #: The user the path names: a live one, or a deleted one (for restore).
    target: str = "live"

    @property
    def id(self) -> str:
        return f"{self.method} {self.route}"

    def request(
        self, client: testing.TestClient, registry: Registry, headers: dict[str, str]
    ) -> testing.Result:
        user = make_user(registry, deleted=self.target == "deleted")
        path = self.route.replace("{user_id:uuid}", str(user.id))
        media: Any = None
        if self.body == "new-user":
            media = {"email": unique_email("new")}
        elif self.body == "change":
            media = {"full_name": "Changed Name"}
        return client.simulate_request(self.method, path, json=media, headers=headers)


OPERATIONS = [
    Operation(USERS, "GET", "users:read", 200),
    Operation(USERS, "HEAD", "users:read", 200),
    Operation(USERS, "POST", "users:write", 201, body="new-user"),
    Operation(USER, "GET", "users:read", 200),
    Operation(USER, "HEAD", "users:read", 200),
    Operation(USER, "PATCH", "users:write", 200, body="change"),
    Operation(USER, "DELETE", "users:delete", 204),
    Operation(RESTORE, "POST", "users:restore", 200, target="deleted"),
    Operation(EXPORT, "GET", "users:export", 200),
    Operation(EXPORT, "HEAD", "users:export", 200),
]

GROUPS = "/api/v1/groups"
GROUP = "/api/v1/groups/{group_id:uuid}"
MEMBERS = "/api/v1/groups/{group_id:uuid}/members"
MEMBER = "/api/v1/groups/{group_id:uuid}/members/{user_id:uuid}"
USER_GROUPS = "/api/v1/users/{user_id:uuid}/groups"

#: The groups operations and the action each needs (what each role may do with them is
#: tested in test_groups_http.py, with groups to act on).
GROUP_OPERATIONS = {
    (GROUPS, "GET"): "groups:read",
    (GROUPS, "HEAD"): "groups:read",
    (GROUPS, "POST"): "groups:write",
    (GROUP, "GET"): "groups:read",
    (GROUP, "HEAD"): "groups:read",
    (GROUP, "PATCH"): "groups:write",
    (GROUP, "DELETE"): "groups:write",
    (MEMBERS, "GET"): "groups:read",
    (MEMBERS, "HEAD"): "groups:read",
    (MEMBERS, "POST"): "groups:write",
    (MEMBERS, "PUT"): "groups:write",
    (MEMBER, "PUT"): "groups:write",
    (MEMBER, "DELETE"): "groups:write",
    (USER_GROUPS, "GET"): "groups:read",
    (USER_GROUPS, "HEAD"): "groups:read",
}

AUDIT = "/api/v1/audit"
AUDIT_EVENT = "/api/v1/audit/{event_id:uuid}"
WEBHOOKS = "/api/v1/webhooks"
WEBHOOK = "/api/v1/webhooks/{webhook_id:uuid}"
DELIVERIES = "/api/v1/webhooks/{webhook_id:uuid}/deliveries"
REDELIVER = "/api/v1/webhooks/deliveries/{delivery_id:uuid}/redeliver"
KEYS = "/api/v1/keys"
KEY = "/api/v1/keys/{key_id:uuid}"

#: The built-in plugins' operations (audit, webhooks) and the action each needs:
#: ``(route, method) -> action``, stated here independently of the code.
PLUGIN_OPERATIONS = {
    (AUDIT, "GET"): "audit:read",
    (AUDIT, "HEAD"): "audit:read",
    (AUDIT_EVENT, "GET"): "audit:read",
    (AUDIT_EVENT, "HEAD"): "audit:read",
    (WEBHOOKS, "GET"): "webhooks:manage",
    (WEBHOOKS, "HEAD"): "webhooks:manage",
    (WEBHOOKS, "POST"): "webhooks:manage",
    (WEBHOOK, "GET"): "webhooks:manage",
    (WEBHOOK, "HEAD"): "webhooks:manage",
    (WEBHOOK, "DELETE"): "webhooks:manage",
    (DELIVERIES, "GET"): "webhooks:manage",
    (DELIVERIES, "HEAD"): "webhooks:manage",
    (REDELIVER, "POST"): "webhooks:manage",
    (KEYS, "GET"): "keys:manage",
    (KEYS, "HEAD"): "keys:manage",
    (KEYS, "POST"): "keys:manage",
    (KEY, "GET"): "keys:manage",
    (KEY, "HEAD"): "keys:manage",
    (KEY, "DELETE"): "keys:manage",
}

#: The SCIM server's provisioning routes (their refusals are SCIM errors, tested with
#: the plugin: tests/plugins/test_scim_http.py).
SCIM = "/scim/v2"
SCIM_OPERATIONS = {
    **{
        (f"{SCIM}/{kind}", method): "scim:provision"
        for kind in ("Users", "Groups")
        for method in ("GET", "HEAD", "POST")
    },
    **{
        (f"{SCIM}/{kind}/{{{name}}}", method): "scim:provision"
        for kind, name in (("Users", "user_id"), ("Groups", "group_id"))
        for method in ("GET", "HEAD", "PUT", "PATCH", "DELETE")
    },
    **{(f"{SCIM}/{kind}/.search", "POST"): "scim:provision" for kind in ("Users", "Groups")},
    **{
        (f"{SCIM}/{what}", method): "scim:provision"
        for what in ("Bulk", "Me", ".search")
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    },
}

#: The web console's pages (their refusals are a sign-in redirect or a page, tested with
#: the plugin: tests/plugins/test_console.py); GET pages answer HEAD too.
ADMIN = "/admin"
CONSOLE_OPERATIONS = {
    **{
        (route, method): action
        for route, action in (
            (f"{ADMIN}/users", "users:read"),
            (f"{ADMIN}/users/{{user_id:uuid}}", "users:read"),
            (f"{ADMIN}/users/new", "users:write"),
            (f"{ADMIN}/keys", "keys:manage"),
            (f"{ADMIN}/groups", "groups:read"),
            (f"{ADMIN}/groups/{{group_id:uuid}}", "groups:read"),
            (f"{ADMIN}/webhooks", "webhooks:manage"),
            (f"{ADMIN}/webhooks/{{webhook_id:uuid}}", "webhooks:manage"),
        )
        for method in ("GET", "HEAD")
    },
    **{
        (f"{ADMIN}/groups{tail}", "POST"): "groups:write"
        for tail in (
            "",
            "/{group_id:uuid}",
            "/{group_id:uuid}/delete",
            "/{group_id:uuid}/members",
            "/{group_id:uuid}/members/{user_id:uuid}/remove",
        )
    },
    (f"{ADMIN}/webhooks", "POST"): "webhooks:manage",
    (f"{ADMIN}/webhooks/{{webhook_id:uuid}}/delete", "POST"): "webhooks:manage",
    (
        f"{ADMIN}/webhooks/{{webhook_id:uuid}}/deliveries/{{delivery_id:uuid}}/redeliver",
        "POST",
    ): "webhooks:manage",
    (f"{ADMIN}/users", "POST"): "users:write",
    (f"{ADMIN}/users/{{user_id:uuid}}", "POST"): "users:write",
    (f"{ADMIN}/users/{{user_id:uuid}}/delete", "POST"): "users:delete",
    (f"{ADMIN}/users/{{user_id:uuid}}/restore", "POST"): "users:restore",
    (f"{ADMIN}/users/{{user_id:uuid}}/purge", "POST"): "users:purge",
    (f"{ADMIN}/keys", "POST"): "keys:manage",
    (f"{ADMIN}/keys/{{key_id:uuid}}/revoke", "POST"): "keys:manage",
}

#: What each built-in role is expected to grant, of the operations above.
GRANTS = {
    "viewer": {"users:read"},
    "editor": {"users:read", "users:write", "users:delete", "users:restore"},
    "admin": {"users:read", "users:write", "users:delete", "users:restore", "users:export"},
}

PUBLIC_ROUTES = {
    "/",
    "/docs",
    "/api/v1/openapi.json",
    "/health/live",
    "/health/ready",
    # SCIM's discovery documents describe the server, not its data (RFC 7644 §4).
    f"{SCIM}/ServiceProviderConfig",
    f"{SCIM}/Schemas",
    f"{SCIM}/Schemas/{{schema_id}}",
    f"{SCIM}/ResourceTypes",
    f"{SCIM}/ResourceTypes/{{name}}",
    # The console's way in: signing in and out checks the credential itself.
    ADMIN,
    f"{ADMIN}/sign-in",
    f"{ADMIN}/sign-out",
}


def assert_targets_untouched(
    registry: Registry, op: Operation, before: list[User], requests: int
) -> None:
    """Refused requests changed nothing: only their targets are new, as the test made them."""
    after = all_users(registry)
    assert [u for u in after if u in before] == before
    made = [u for u in after if u not in before]
    assert len(made) == requests  # no user created by a refused POST
    deleted = op.target == "deleted"
    for user in made:
        assert user.version == (2 if deleted else 1), user
        assert (user.deleted_at is not None) is deleted, user


def _role_cases() -> list[Any]:
    cases = []
    for op in OPERATIONS:
        # HEAD: every role may read, so one role shows the outcome.
        roles = ["viewer"] if op.method == "HEAD" else list(GRANTS)
        for role in roles:
            cases.append(pytest.param(op, role, id=f"{op.id} as {role}"))
    return cases


BAD_CREDENTIALS = {
    "unknown key": lambda: f"Bearer {unknown_key()}",
    "malformed key": lambda: "Bearer up_tooshort",
    "key with a stray character": lambda: f"Bearer {unknown_key()[:-1]}!",
    "empty bearer": lambda: "Bearer",
    "garbage token": lambda: "Bearer this-is-not-a-key",
    "jwt-shaped token": lambda: "Bearer aaa.bbb.ccc",
    "basic scheme": lambda: "Basic dXNlcjpwYXNz",
}


def test_the_operation_table_names_every_protected_route_and_its_action(
    registry: Registry,
) -> None:
    """A route added without an entry here (or with another action) fails this test."""
    app: Any = create_app(registry)
    protected = {
        (route, method): action
        for route, actions in app.route_actions.items()
        for method, action in actions.items()
        if action != PUBLIC
    }
    assert protected == {
        **{(op.route, op.method): op.action for op in OPERATIONS},
        **GROUP_OPERATIONS,
        **PLUGIN_OPERATIONS,
        **SCIM_OPERATIONS,
        **CONSOLE_OPERATIONS,
    }
    public = {
        route for route, actions in app.route_actions.items() if set(actions.values()) == {PUBLIC}
    }
    assert public == PUBLIC_ROUTES
    assert set(app.route_actions) == (
        {op.route for op in OPERATIONS}
        | {route for route, _ in GROUP_OPERATIONS}
        | {route for route, _ in PLUGIN_OPERATIONS}
        | {route for route, _ in SCIM_OPERATIONS}
        | {route for route, _ in CONSOLE_OPERATIONS}
        | PUBLIC_ROUTES
    )


@pytest.mark.parametrize(
    ("route", "method"), sorted(PLUGIN_OPERATIONS), ids=lambda value: str(value)
)
def test_every_plugin_operation_refuses_missing_and_bad_credentials(
    registry: Registry, route: str, method: str
) -> None:
    client = anonymous_client(registry)
    path = route
    for name in ("event_id", "webhook_id", "delivery_id", "key_id"):
        path = path.replace(f"{{{name}:uuid}}", str(uuid.uuid4()))
    media = {"url": "https://93.184.215.14/hook", "events": ["*"]} if method == "POST" else None
    has_body = method != "HEAD"

    missing = client.simulate_request(method, path, json=media)
    body = assert_unauthenticated(missing, presented=False, has_body=has_body)
    if body is not None:
        assert "Authorization" in body["detail"]

    for name, header in BAD_CREDENTIALS.items():
        headers = {"Authorization": header()}
        resp = client.simulate_request(method, path, json=media, headers=headers)
        assert resp.status_code == 401, (name, resp.text)
        assert_unauthenticated(resp, presented=True, has_body=has_body)

    # Nothing was written by any refused request: no subscription was made.
    assert webhooks.service(registry).list() == []


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.id)
def test_every_operation_refuses_missing_and_bad_credentials(
    registry: Registry, op: Operation
) -> None:
    client = anonymous_client(registry)
    has_body = op.method != "HEAD"
    before = all_users(registry)

    missing = op.request(client, registry, {})
    body = assert_unauthenticated(missing, presented=False, has_body=has_body)
    if body is not None:
        assert "Authorization" in body["detail"]  # tells the caller what to send

    for name, header in BAD_CREDENTIALS.items():
        resp = op.request(client, registry, {"Authorization": header()})
        assert resp.status_code == 401, (name, resp.text)
        assert_unauthenticated(resp, presented=True, has_body=has_body)

    # Nothing was written by any refused request (each made its own target).
    assert_targets_untouched(registry, op, before, requests=1 + len(BAD_CREDENTIALS))


@pytest.mark.parametrize(("op", "role"), _role_cases())
def test_every_operation_is_decided_by_the_callers_role(
    registry: Registry, op: Operation, role: str
) -> None:
    client = anonymous_client(registry)
    key = new_key(registry, role)
    allowed = op.action in GRANTS[role]
    before = all_users(registry)
    resp = op.request(client, registry, bearer(key))
    if allowed:
        assert resp.status_code == op.ok, resp.text
        return
    assert_forbidden(resp, has_body=op.method != "HEAD")
    assert_targets_untouched(registry, op, before, requests=1)


def test_head_is_answered_on_a_public_route(registry: Registry) -> None:
    client = anonymous_client(registry)
    assert client.simulate_get("/health/live").status_code == 200
    resp = client.simulate_head("/health/live")
    assert resp.status_code == 200, resp.headers


# ---------------------------------------------------------------------- no route without an action


class Undeclared:
    """A resource that forgot its ``actions``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"leaked": True}


class HalfDeclared:
    """Declares GET but also answers DELETE."""

    actions: ClassVar[dict[str, str]] = {"GET": "users:read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.status = falcon.HTTP_204


class SuffixUndeclared:
    """Only a suffixed responder, and no ``actions``."""

    def on_get_secret(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"leaked": True}


class Reports:
    """A plugin's resource needing a plugin-defined action."""

    actions: ClassVar[dict[str, str]] = {"GET": "reports:read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"reports": []}


@pytest.mark.parametrize(
    ("resource", "suffix", "method"),
    [
        pytest.param(Undeclared(), None, "GET", id="no-actions"),
        pytest.param(HalfDeclared(), None, "DELETE", id="one-method-undeclared"),
        pytest.param(SuffixUndeclared(), "secret", "GET", id="suffixed-responder"),
    ],
)
def test_a_route_without_a_declared_action_cannot_be_added(
    registry: Registry, resource: object, suffix: str | None, method: str
) -> None:
    bare = App()
    kwargs = {} if suffix is None else {"suffix": suffix}
    with pytest.raises(ConfigurationError, match=method):
        bare.add_route("/extra", resource, **kwargs)
    assert bare.route_actions == {}

    app: Any = create_app(registry)
    with pytest.raises(ConfigurationError, match=type(resource).__name__):
        app.add_route("/api/v1/extra", resource, **kwargs)
    assert "/api/v1/extra" not in app.route_actions
    # The refused route was not half-added: nothing answers there.
    key = new_key(registry, "admin")
    resp = testing.TestClient(app).simulate_request(method, "/api/v1/extra", headers=bearer(key))
    assert resp.status_code == 404


def test_a_plugin_route_without_an_action_makes_the_app_fail(registry: Registry) -> None:
    class LeakyPlugin:
        @hookimpl
        def userplane_http_routes(self, app: Any, registry: Any) -> None:
            app.add_route("/api/v1/leaky", Undeclared())

    registry.pm.register(LeakyPlugin())
    with pytest.raises(ConfigurationError, match="Undeclared"):
        create_app(registry)


def test_a_plugin_route_with_its_own_action_is_protected(registry: Registry) -> None:
    class ReportsPlugin:
        @hookimpl
        def userplane_http_routes(self, app: Any, registry: Any) -> None:
            app.add_route("/api/v1/reports", Reports())

    registry.pm.register(ReportsPlugin())
    client = anonymous_client(registry)
    assert_unauthenticated(client.simulate_get("/api/v1/reports"), presented=False)
    # editor holds every users:* action but not the plugin's; admin holds every action.
    assert_forbidden(
        client.simulate_get("/api/v1/reports", headers=bearer(new_key(registry, "editor")))
    )
    ok = client.simulate_get("/api/v1/reports", headers=bearer(new_key(registry, "admin")))
    assert ok.status_code == 200
    assert ok.json == {"reports": []}


def test_public_routes_answer_without_credentials(registry: Registry) -> None:
    client = anonymous_client(registry)
    examples = {"{schema_id}": "urn:ietf:params:scim:schemas:core:2.0:User", "{name}": "User"}
    for route in sorted(PUBLIC_ROUTES):
        for template, example in examples.items():
            route = route.replace(template, example)
        if route == f"{ADMIN}/sign-out":
            continue  # POST only, with the console's form (tests/plugins/test_console.py)
        resp = client.simulate_get(route)
        # The console's root sends a browser on to sign in.
        assert resp.status_code == (303 if route == ADMIN else 200), (route, resp.text)
        assert "WWW-Authenticate" not in resp.headers
    assert client.simulate_get("/static/style.css").status_code == 200


# -------------------------------------------------------------------- one answer for every bad key


def test_unknown_wrong_revoked_and_garbage_keys_get_the_same_answer(registry: Registry) -> None:
    client = anonymous_client(registry)
    service = api_keys.service(registry)
    _, key = service.create("real", "admin")
    assert client.simulate_get(USERS, headers=bearer(key)).status_code == 200
    revoked_record, revoked = service.create("revoked", "admin")
    service.revoke(revoked_record.id)

    secret = key[15:]
    other_secret = random_base62(32)
    while other_secret == secret:
        other_secret = random_base62(32)
    wrong_secret = key[:15] + other_secret
    assert lookup_of(wrong_secret) == lookup_of(key)
    unknown = unknown_key()
    assert lookup_of(unknown) != lookup_of(key)

    tokens = {
        "unknown key": unknown,
        "wrong secret": wrong_secret,
        "revoked key": revoked,
        "garbage": "garbage",
    }
    answers = {}
    for name, token in tokens.items():
        resp = client.simulate_get(USERS, headers=bearer(token))
        body = assert_unauthenticated(resp, presented=True)
        assert body is not None
        assert token not in resp.text
        answers[name] = (
            resp.headers["WWW-Authenticate"],
            {k: v for k, v in body.items() if k not in {"request_id", "instance"}},
        )
    first = answers["unknown key"]
    assert all(answer == first for answer in answers.values()), answers


# ----------------------------------------------------------------------- expiry, revocation, cache


def test_an_expired_key_is_refused_at_once_though_it_is_cached(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = count_lookups(registry, monkeypatch)
    client = anonymous_client(registry)
    record, key = api_keys.service(registry).create(
        "short-lived", "viewer", expires_in=timedelta(seconds=1)
    )
    assert record.expires_at is not None
    first = client.simulate_get(USERS, headers=bearer(key))
    used = time.monotonic()
    assert first.status_code == 200, first.text

    # The behaviour under test is a delay: wait (about 1 s, bounded) for the expiry.
    remaining = (record.expires_at - utcnow()).total_seconds()
    assert remaining < 1.5
    time.sleep(max(0.0, remaining) + 0.05)
    assert utcnow() >= record.expires_at

    after = client.simulate_get(USERS, headers=bearer(key))
    # Still within the cache window: the cached record alone was enough to refuse.
    assert time.monotonic() - used < DEFAULT_CACHE_SECONDS
    assert_unauthenticated(after, presented=True)
    assert lookups == [record.lookup]


def test_a_revoked_key_stops_working_within_the_cache_delay(make_registry: MakeRegistry) -> None:
    cache = 0.5
    registry = make_registry(USERPLANE_API_KEYS_CACHE_SECONDS=str(cache))
    client = anonymous_client(registry)
    service = api_keys.service(registry)
    record, key = service.create("to revoke", "viewer")
    _, other = service.create("kept", "viewer")
    assert client.simulate_get(USERS, headers=bearer(key)).status_code == 200
    assert client.simulate_get(USERS, headers=bearer(other)).status_code == 200

    service.revoke(record.id)
    revoked_at = time.monotonic()
    deadline = revoked_at + 5.0  # a safety limit, not an expectation
    while True:
        resp = client.simulate_get(USERS, headers=bearer(key))
        if resp.status_code != 200:
            break
        assert time.monotonic() < deadline, "the revoked key was still accepted after 5 s"
        time.sleep(0.02)
    delay = time.monotonic() - revoked_at
    assert_unauthenticated(resp, presented=True)
    assert delay <= cache + 1.5, f"revocation took {delay:.2f}s with a {cache}s cache"
    # It stays refused, and other keys are unaffected.
    assert client.simulate_get(USERS, headers=bearer(key)).status_code == 401
    assert client.simulate_get(USERS, headers=bearer(other)).status_code == 200


def test_without_a_cache_revocation_takes_effect_on_the_next_request(
    make_registry: MakeRegistry,
) -> None:
    registry = make_registry(USERPLANE_API_KEYS_CACHE_SECONDS="0")
    client = anonymous_client(registry)
    service = api_keys.service(registry)
    record, key = service.create("to revoke", "viewer")
    assert client.simulate_get(USERS, headers=bearer(key)).status_code == 200
    assert client.simulate_get(USERS, headers=bearer(key)).status_code == 200
    service.revoke(record.id)
    assert_unauthenticated(client.simulate_get(USERS, headers=bearer(key)), presented=True)


def test_a_key_is_looked_up_once_per_cache_window(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = count_lookups(registry, monkeypatch)
    client = anonymous_client(registry)
    key = new_key(registry, "viewer")
    started = time.monotonic()
    for _ in range(20):
        assert client.simulate_get(USERS, headers=bearer(key)).status_code == 200
    assert time.monotonic() - started < DEFAULT_CACHE_SECONDS  # else this cannot judge
    assert lookups == [lookup_of(key)]


def test_unknown_and_malformed_keys_do_not_hit_the_database_each_time(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = count_lookups(registry, monkeypatch)
    client = anonymous_client(registry)
    unknown = unknown_key()
    for _ in range(10):
        assert client.simulate_get(USERS, headers=bearer(unknown)).status_code == 401
        assert client.simulate_get(USERS, headers=bearer("up_tooshort")).status_code == 401
    assert lookups == [lookup_of(unknown)]


# --------------------------------------------------------------------------------- include_deleted


@pytest.mark.parametrize(
    ("role", "allowed"), [("viewer", False), ("editor", True), ("admin", True)]
)
def test_include_deleted_needs_its_own_permission(
    registry: Registry, role: str, allowed: bool
) -> None:
    """README: without users:read-deleted a list asking for deleted users is a 403, and a
    deleted user stays a 404 (hidden, not confirmed); with it, both include deleted users."""
    live = make_user(registry)
    gone = make_user(registry, deleted=True)
    client = anonymous_client(registry)
    headers = bearer(new_key(registry, role))
    include = {"include_deleted": "true"}

    listed = client.simulate_get(USERS, params=include, headers=headers)
    single = client.simulate_get(f"{USERS}/{gone.id}", params=include, headers=headers)
    if allowed:
        assert listed.status_code == 200, listed.text
        assert {u["id"] for u in listed.json["items"]} == {str(live.id), str(gone.id)}
        assert single.status_code == 200, single.text
        assert single.json["id"] == str(gone.id)
        assert single.json["deleted_at"] is not None
    else:
        assert_forbidden(listed)
        # Answered exactly as for an id that never existed.
        hidden = assert_problem(single, 404, "not-found")
        never = uuid.uuid4()
        missing = client.simulate_get(f"{USERS}/{never}", params=include, headers=headers)
        unknown = assert_problem(missing, 404, "not-found")
        assert hidden["detail"].replace(str(gone.id), "<id>") == unknown["detail"].replace(
            str(never), "<id>"
        )
        assert "deleted" not in single.text
    # A live user is there for every role, with the flag or without.
    shown = client.simulate_get(f"{USERS}/{live.id}", params=include, headers=headers)
    assert shown.status_code == 200, shown.text
    assert shown.json["id"] == str(live.id)

    # Without the flag (or with it false) every role reads live users only.
    plain = client.simulate_get(USERS, headers=headers)
    assert [u["id"] for u in plain.json["items"]] == [str(live.id)]
    off = client.simulate_get(USERS, params={"include_deleted": "false"}, headers=headers)
    assert [u["id"] for u in off.json["items"]] == [str(live.id)]
    assert_problem(client.simulate_get(f"{USERS}/{gone.id}", headers=headers), 404, "not-found")


# ----------------------------------------------------------------------- idempotency per principal


def _post(client: testing.TestClient, key: str, email: str, idem: str) -> testing.Result:
    return client.simulate_post(
        USERS, json={"email": email}, headers={**bearer(key), "Idempotency-Key": idem}
    )


def test_each_principal_has_its_own_idempotency_keys(registry: Registry) -> None:
    client = anonymous_client(registry)
    alice, bob = new_key(registry, "admin"), new_key(registry, "admin")
    alice_email, bob_email = unique_email("alice"), unique_email("bob")

    a1 = _post(client, alice, alice_email, "shared-key")
    b1 = _post(client, bob, bob_email, "shared-key")
    assert a1.status_code == 201, a1.text
    # Not "key reused with another body" (422): bob's key is his own.
    assert b1.status_code == 201, b1.text
    assert "Idempotent-Replayed" not in b1.headers
    assert a1.json["id"] != b1.json["id"]

    # Each principal's retry replays its own first response.
    a2 = _post(client, alice, alice_email, "shared-key")
    b2 = _post(client, bob, bob_email, "shared-key")
    assert a2.headers.get("Idempotent-Replayed") == "true"
    assert b2.headers.get("Idempotent-Replayed") == "true"
    assert a2.json == a1.json
    assert b2.json == b1.json
    assert {u.email for u in all_users(registry)} == {alice_email, bob_email}


def test_a_principal_cannot_replay_another_principals_response(registry: Registry) -> None:
    client = anonymous_client(registry)
    alice, bob = new_key(registry, "admin"), new_key(registry, "admin")
    email = unique_email("same")
    first = _post(client, alice, email, "same-key")
    assert first.status_code == 201, first.text
    # The identical request from bob runs as his own: the email is taken (409),
    # rather than alice's 201 being handed to him.
    other = _post(client, bob, email, "same-key")
    assert "Idempotent-Replayed" not in other.headers
    assert_problem(other, 409, "conflict")
    assert first.json["id"] not in other.text
    assert len(all_users(registry)) == 1


# ----------------------------------------------------------------------- who acted: hooks and logs


class EventRecorder:
    """Records every user event with the principal it carried."""

    def __init__(self) -> None:
        self.events: list[tuple[str, uuid.UUID, Principal | None]] = []

    @hookimpl
    def userplane_user_created(self, user: User, principal: Principal | None) -> None:
        self.events.append(("created", user.id, principal))

    @hookimpl
    def userplane_user_updated(
        self, user: User, changed: frozenset[str], principal: Principal | None
    ) -> None:
        self.events.append(("updated", user.id, principal))

    @hookimpl
    def userplane_user_deleted(self, user: User, principal: Principal | None) -> None:
        self.events.append(("deleted", user.id, principal))

    @hookimpl
    def userplane_user_restored(self, user: User, principal: Principal | None) -> None:
        self.events.append(("restored", user.id, principal))


def test_user_event_hooks_receive_the_acting_principal(registry: Registry) -> None:
    recorder = EventRecorder()
    registry.pm.register(recorder)
    record, key = api_keys.service(registry).create("hooks", "editor")
    client = anonymous_client(registry)
    headers = bearer(key)

    created = client.simulate_post(USERS, json={"email": unique_email()}, headers=headers)
    assert created.status_code == 201, created.text
    path = created.headers["Location"]
    user_id = uuid.UUID(created.json["id"])
    assert client.simulate_patch(path, json={"full_name": "N"}, headers=headers).status_code == 200
    assert client.simulate_delete(path, headers=headers).status_code == 204
    assert client.simulate_post(f"{path}/restore", headers=headers).status_code == 200

    principal = Principal(
        id=f"key:{record.id}", kind="api-key", roles=frozenset({"editor"}), name="hooks"
    )
    assert recorder.events == [
        (event, user_id, principal) for event in ("created", "updated", "deleted", "restored")
    ]
    assert principal.id == f"key:{record.id}"
    assert principal.kind == "api-key"

    # After the request, the principal does not linger: the core used directly has none.
    recorder.events.clear()
    direct = registry.users.create(NewUser(email=unique_email("direct")))
    assert recorder.events == [("created", direct.id, None)]


def test_the_access_line_names_the_principal(registry: Registry) -> None:
    record, key = api_keys.service(registry).create("logged", "viewer")
    client = anonymous_client(registry)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        allowed = client.simulate_get(USERS, headers=bearer(key))
        denied = client.simulate_post(USERS, json={"email": unique_email()}, headers=bearer(key))
        anonymous = client.simulate_get(USERS)
    assert (allowed.status_code, denied.status_code, anonymous.status_code) == (200, 403, 401)
    lines = [
        (e["method"], e["status"], e["principal"]) for e in logs if e.get("event") == "request"
    ]
    principal = f"key:{record.id}"
    assert lines == [("GET", 200, principal), ("POST", 403, principal), ("GET", 401, None)]
    assert all(key not in repr(e) for e in logs)


# ------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({"USERPLANE_AUTH": "disabled", "USERPLANE_ENV": "prod"}, id="disabled-prod"),
        pytest.param({"USERPLANE_AUTH": "off"}, id="unknown-mode"),
    ],
)
def test_auth_mode_is_checked_at_start_up(variables: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_AUTH"):
        Settings.from_mapping(variables)


def test_with_auth_disabled_anonymous_callers_may_act(make_registry: MakeRegistry) -> None:
    registry = make_registry(USERPLANE_AUTH="disabled")
    recorder = EventRecorder()
    registry.pm.register(recorder)
    client = anonymous_client(registry)
    listed = client.simulate_get(USERS)
    assert listed.status_code == 200, listed.text
    created = client.simulate_post(USERS, json={"email": unique_email()})
    assert created.status_code == 201, created.text
    deleted = client.simulate_get(USERS, params={"include_deleted": "true"})
    assert deleted.status_code == 200, deleted.text
    [(_, _, principal)] = recorder.events
    assert principal is not None
    assert principal.kind == "development"


def test_auth_is_enabled_by_default() -> None:
    assert Settings.from_mapping({}).auth == "enabled"


# ------------------------------------------------------------------------------------ custom roles


def test_a_custom_role_grants_exactly_its_actions(make_registry: MakeRegistry) -> None:
    registry = make_registry(USERPLANE_ROLES='{"support": ["users:read", "users:restore"]}')
    client = anonymous_client(registry)
    headers = bearer(new_key(registry, "support"))
    live = make_user(registry)
    gone = make_user(registry, deleted=True)

    assert client.simulate_get(USERS, headers=headers).status_code == 200
    assert client.simulate_get(f"{USERS}/{live.id}", headers=headers).status_code == 200
    # users:restore without users:read-deleted: a deleted user stays hidden (404) and deleted.
    hidden = client.simulate_post(f"{USERS}/{gone.id}/restore", headers=headers)
    assert hidden.status_code == 404, hidden.text
    assert registry.users.get(gone.id, include_deleted=True).deleted_at is not None

    patch = client.simulate_patch(f"{USERS}/{live.id}", json={"full_name": "X"}, headers=headers)
    assert_forbidden(patch)
    assert_forbidden(client.simulate_delete(f"{USERS}/{live.id}", headers=headers))
    assert_forbidden(client.simulate_post(USERS, json={"email": unique_email()}, headers=headers))
    assert_forbidden(
        client.simulate_get(USERS, params={"include_deleted": "true"}, headers=headers)
    )
    assert registry.users.get(live.id) == live


def test_a_role_that_is_not_defined_cannot_get_a_key(registry: Registry) -> None:
    from userplane.errors import InvalidInput

    with pytest.raises(InvalidInput, match="role"):
        api_keys.service(registry).create("nobody", "support")


def test_custom_roles_may_name_plugin_defined_actions(tmp_path: Path) -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'roles.db'}",
            "USERPLANE_ROLES": '{"auditor": ["reports:read"]}',
        }
    )
    with Registry(settings) as registry:
        assert registry.auth.roles["auditor"] == frozenset({"reports:read"})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('["support"]', id="not-an-object"),
        pytest.param('{"admin": ["users:read"]}', id="redefines-admin"),
        pytest.param('{"viewer": ["users:read", "users:write"]}', id="redefines-viewer"),
        pytest.param('{"support": "users:read"}', id="actions-not-a-list"),
        pytest.param('{"support": [1]}', id="action-not-a-string"),
        pytest.param('{"support": ["fly"]}', id="unknown-core-action"),
        pytest.param('{"support": ["users:raed"]}', id="typo-in-a-core-namespace"),
    ],
)
def test_invalid_custom_roles_fail_at_start_up(tmp_path: Path, value: str) -> None:
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'roles.db'}", "USERPLANE_ROLES": value}
    )
    with pytest.raises(ConfigurationError, match="USERPLANE_ROLES"):
        Registry(settings).close()


# ----------------------------------------------------------------------------- third-party plugins

HEADER_PLUGIN = '''\
"""Trusts an X-Test-User: <name>:<role> header (a test stand-in for a gateway)."""

from userplane import hookimpl
from userplane.auth import Principal


@hookimpl
def userplane_authenticate(credentials, registry):
    value = credentials.headers.get("x-test-user")
    if not value:
        return None
    name, _, role = value.partition(":")
    return Principal(id=f"hdr:{name}", kind="header", roles=frozenset({role}))
'''


@pytest.fixture
def header_auth_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed-looking distribution declaring a ``userplane`` entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "header_auth_plugin.py").write_text(HEADER_PLUGIN, encoding="utf-8")
    dist_info = site / "header_auth_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: header-auth-plugin\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        "[userplane]\nheader_auth = header_auth_plugin\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield "header_auth"
    sys.modules.pop("header_auth_plugin", None)
    importlib.invalidate_caches()


def test_an_authentication_plugin_loads_from_an_entry_point(
    header_auth_plugin: str, make_registry: MakeRegistry
) -> None:
    registry = make_registry()
    plugin = registry.pm.get_plugin(header_auth_plugin)
    assert plugin is not None
    assert plugin.__name__ == "header_auth_plugin"
    recorder = EventRecorder()
    registry.pm.register(recorder)
    client = anonymous_client(registry)

    ann = client.simulate_post(
        USERS, json={"email": unique_email("ann")}, headers={"X-Test-User": "ann:editor"}
    )
    assert ann.status_code == 201, ann.text
    assert [p for _, _, p in recorder.events] == [
        Principal(id="hdr:ann", kind="header", roles=frozenset({"editor"}))
    ]
    bob = {"X-Test-User": "bob:viewer"}
    assert_forbidden(client.simulate_post(USERS, json={"email": unique_email("bob")}, headers=bob))
    assert client.simulate_get(USERS, headers=bob).status_code == 200
    # API keys still work beside it, and a caller with neither is refused.
    admin = client.simulate_get(USERS, headers=bearer(new_key(registry, "admin")))
    assert admin.status_code == 200
    assert_unauthenticated(client.simulate_get(USERS), presented=False)

    # Disabled by its entry-point name, it is never loaded and its header means nothing.
    without = make_registry(USERPLANE_DISABLED_PLUGINS=header_auth_plugin)
    assert without.pm.get_plugin(header_auth_plugin) is None
    refused = anonymous_client(without).simulate_get(USERS, headers={"X-Test-User": "ann:editor"})
    assert_unauthenticated(refused, presented=False)


class Vote:
    """A third-party policy: votes ``vote`` on ``action`` (optionally for one resource only)."""

    def __init__(self, action: str, vote: bool, resource: object = None) -> None:
        self.action = action
        self.vote = vote
        self.resource = resource
        self.seen: list[tuple[str, object]] = []

    @hookimpl
    def userplane_authorize(self, principal: Principal, action: str, resource: Any) -> bool | None:
        self.seen.append((action, resource))
        if action != self.action:
            return None
        if self.resource is not None and resource != self.resource:
            return None
        return self.vote


def test_a_plugins_deny_wins_even_for_an_admin(registry: Registry) -> None:
    registry.pm.register(Vote("users:delete", False))
    client = anonymous_client(registry)
    headers = bearer(new_key(registry, "admin"))
    user = make_user(registry)
    assert_forbidden(client.simulate_delete(f"{USERS}/{user.id}", headers=headers))
    assert registry.users.get(user.id) == user
    # Only that action is vetoed.
    patched = client.simulate_patch(f"{USERS}/{user.id}", json={"full_name": "Y"}, headers=headers)
    assert patched.status_code == 200, patched.text


def test_a_plugin_sees_the_resource_and_may_deny_for_one_user(registry: Registry) -> None:
    protected, other = make_user(registry), make_user(registry)
    policy = Vote("users:delete", False, resource=protected.id)
    registry.pm.register(policy)
    client = anonymous_client(registry)
    headers = bearer(new_key(registry, "admin"))
    assert_forbidden(client.simulate_delete(f"{USERS}/{protected.id}", headers=headers))
    assert client.simulate_delete(f"{USERS}/{other.id}", headers=headers).status_code == 204
    assert ("users:delete", protected.id) in policy.seen
    assert ("users:delete", other.id) in policy.seen


def test_a_plugin_may_allow_beyond_the_roles_but_any_deny_still_wins(registry: Registry) -> None:
    client = anonymous_client(registry)
    headers = bearer(new_key(registry, "viewer"))
    registry.pm.register(Vote("users:write", True))
    allowed = client.simulate_post(USERS, json={"email": unique_email()}, headers=headers)
    assert allowed.status_code == 201, allowed.text

    registry.pm.register(Vote("users:write", False))
    denied = client.simulate_post(USERS, json={"email": unique_email()}, headers=headers)
    assert_forbidden(denied)
