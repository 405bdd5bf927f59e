"""A JWT linked to a user (``USERPLANE_JWT_USER_CLAIM``) carries the roles of its groups.

HS256 tokens signed with PyJWT against real, migrated registries on SQLite and
PostgreSQL (``database_url``, ``conftest.py``); users and groups are made through
the services, requests go through the HTTP app. Nothing is mocked.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import jwt
import pytest
from falcon import testing

from userplane import NewUser, Registry, Settings
from userplane.auth import Principal
from userplane.errors import ConfigurationError
from userplane.groups import NewGroup
from userplane.users import UserChanges

USERS = "/api/v1/users"
GROUPS = "/api/v1/groups"
PROBLEM_JSON = "application/problem+json"
REJECTED = "the credentials were not accepted"
UNAUTHENTICATED = "urn:userplane:problem:unauthenticated"
HS_SECRET = secrets.token_urlsafe(40)


def token(sub: str = "idp|ann", roles: list[str] | None = None, **extra: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + 300, "roles": roles or [], **extra}
    return jwt.encode(payload, HS_SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@attrs.frozen
class Server:
    registry: Registry
    client: testing.TestClient

    def get(self, tok: str, path: str = USERS) -> testing.Result:
        return self.client.simulate_get(path, headers=bearer(tok))

    def user(self, email: str) -> uuid.UUID:
        return self.registry.users.create(NewUser(email, None)).id

    def group(self, name: str, *roles: str) -> uuid.UUID:
        return self.registry.groups.create(NewGroup(name, frozenset(roles))).id


Serve = Callable[..., Server]


@pytest.fixture
def serve(database_url: str) -> Iterator[Serve]:
    """A migrated registry on this test's database with HS256 JWTs and ``env``; an app over it.

    Only one per test (they would share the database).
    """
    registries: list[Registry] = []

    def make(**env: str) -> Server:
        from userplane.frontends.http import create_app

        assert not registries
        settings = Settings.from_mapping(
            {
                "USERPLANE_DATABASE_URL": database_url,
                "USERPLANE_JWT_ALGORITHM": "HS256",
                "USERPLANE_JWT_KEY": HS_SECRET,
                **env,
            }
        )
        registry = Registry(settings)
        registries.append(registry)
        registry.migrate()
        return Server(registry, testing.TestClient(create_app(registry)))

    yield make
    for registry in registries:
        registry.close()


def assert_rejected(resp: testing.Result) -> None:
    """The one 401 every refused token gets: problem+json, a Bearer challenge, one detail."""
    assert resp.status_code == 401, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer "), challenge
    assert 'error="invalid_token"' in challenge, challenge
    body: dict[str, Any] = json.loads(resp.text)
    assert {k: v for k, v in body.items() if k not in {"instance", "request_id"}} == {
        "type": UNAUTHENTICATED,
        "title": "Unauthenticated",
        "status": 401,
        "detail": REJECTED,
    }


def assert_forbidden(resp: testing.Result) -> None:
    assert resp.status_code == 403, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON


def principal_of(server: Server, tok: str) -> Principal:
    """The principal the registry's auth makes of ``tok``."""
    from userplane.auth import Credentials

    return server.registry.auth.authenticate(Credentials(scheme="bearer", value=tok))


# --------------------------------------------------------------------------- linked by email


def test_a_group_grants_its_roles_to_the_token_of_its_member(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    ann = server.user("ann@example.org")
    viewers = server.group("Viewers", "viewer")
    tok = token(email="ann@example.org")

    assert_forbidden(server.get(tok))  # its own roles grant nothing

    server.registry.groups.add_members(viewers, [ann])
    listed = server.get(tok)
    assert listed.status_code == 200, listed.text
    assert [u["email"] for u in listed.json["items"]] == ["ann@example.org"]
    # viewer reads, and only reads.
    write = server.client.simulate_post(
        USERS, headers=bearer(tok), json={"email": "new@example.org"}
    )
    assert_forbidden(write)

    server.registry.groups.remove_members(viewers, [ann])
    assert_forbidden(server.get(tok))  # the very next request


def test_the_email_claim_is_matched_in_any_letter_case(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    ann = server.user("ann@example.org")
    server.registry.groups.add_members(server.group("Viewers", "viewer"), [ann])
    assert server.get(token(email="ANN@Example.ORG")).status_code == 200


def test_group_roles_add_to_the_tokens_own(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    ann = server.user("ann@example.org")
    tok = token(roles=["viewer"], email="ann@example.org")
    assert principal_of(server, tok).roles == frozenset({"viewer"})
    assert principal_of(server, tok).user_id == ann

    server.registry.groups.add_members(server.group("Editors", "editor"), [ann])
    server.registry.groups.add_members(server.group("Nothing"), [ann])
    principal = principal_of(server, tok)
    assert principal.roles == frozenset({"viewer", "editor"})
    assert principal.id == "jwt:idp|ann"
    created = server.client.simulate_post(
        USERS, headers=bearer(tok), json={"email": "new@example.org"}
    )
    assert created.status_code == 201, created.text


def test_a_deleted_members_group_roles_come_back_with_it(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    ann = server.user("ann@example.org")
    server.registry.groups.add_members(server.group("Viewers", "viewer"), [ann])
    tok = token(email="ann@example.org")
    assert server.get(tok).status_code == 200

    server.registry.users.delete(ann)
    assert_rejected(server.get(tok))
    server.registry.users.restore(ann)
    assert server.get(tok).status_code == 200


def test_tokens_of_no_live_active_user_are_refused(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    viewers = server.group("Viewers", "viewer")
    ann = server.user("ann@example.org")
    bob = server.user("bob@example.org")
    server.registry.groups.add_members(viewers, [ann, bob])
    assert server.get(token(email="ann@example.org")).status_code == 200
    assert server.get(token(sub="idp|bob", email="bob@example.org")).status_code == 200

    server.registry.users.update(ann, UserChanges(is_active=False))
    server.registry.users.delete(bob)
    for tok in [
        token(email="ann@example.org"),  # deactivated
        token(email="ann@example.org", roles=["admin"]),  # its own roles do not save it
        token(sub="idp|bob", email="bob@example.org"),  # deleted
        token(email="carol@example.org"),  # no such user
        token(email="not an email"),
        token(email=""),
        token(email=42),
        token(email=["ann@example.org"]),
        token(),  # no email claim at all
    ]:
        assert_rejected(server.get(tok))

    server.registry.users.update(ann, UserChanges(is_active=True))
    assert server.get(token(email="ann@example.org")).status_code == 200


def test_purging_a_member_refuses_its_tokens_and_leaves_its_groups(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    ann = server.user("ann@example.org")
    viewers = server.group("Viewers", "viewer")
    server.registry.groups.add_members(viewers, [ann])
    server.registry.users.delete(ann)
    server.registry.users.purge_user(ann)
    assert_rejected(server.get(token(email="ann@example.org")))
    # A new user with the same email is a new person: not in the old one's groups.
    server.user("ann@example.org")
    assert_forbidden(server.get(token(email="ann@example.org")))


def test_a_dotted_user_claim(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="profile.mail")
    ann = server.user("ann@example.org")
    server.registry.groups.add_members(server.group("Viewers", "viewer"), [ann])
    assert server.get(token(profile={"mail": "ann@example.org"})).status_code == 200
    assert_rejected(server.get(token(email="ann@example.org")))


# --------------------------------------------------------------------------- linked by id


def test_sub_holding_the_user_id(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="sub", USERPLANE_JWT_USER_MATCH="id")
    ann = server.user("ann@example.org")
    viewers = server.group("Viewers", "viewer")
    tok = token(sub=str(ann))

    assert_forbidden(server.get(tok))
    server.registry.groups.add_members(viewers, [ann])
    assert server.get(tok).status_code == 200
    principal = principal_of(server, tok)
    assert principal.user_id == ann
    assert principal.id == f"jwt:{ann}"
    server.registry.groups.remove_members(viewers, [ann])
    assert_forbidden(server.get(tok))

    assert_rejected(server.get(token(sub=str(uuid.uuid4()))))  # no such user
    assert_rejected(server.get(token(sub="idp|opaque")))  # neither an id nor an email
    server.registry.users.update(ann, UserChanges(is_active=False))
    assert_rejected(server.get(tok))


# --------------------------------------------------------------------------- not linked


def test_without_a_user_claim_a_token_is_not_linked(serve: Serve) -> None:
    server = serve()
    ann = server.user("ann@example.org")
    server.registry.groups.add_members(server.group("Viewers", "viewer"), [ann])

    for tok in [token(sub=str(ann)), token(email="ann@example.org")]:
        assert_forbidden(server.get(tok))
        principal = principal_of(server, tok)
        assert principal.user_id is None
        assert principal.roles == frozenset()
    # A token of no user at all is not refused for that: linking is off.
    assert server.get(token(sub="idp|x", roles=["viewer"], email="x@example.org")).status_code == (
        200
    )


def test_api_keys_are_not_linked(serve: Serve) -> None:
    from clients import new_key

    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    key = new_key(server.registry, "viewer")
    assert server.get(key).status_code == 200
    assert principal_of(server, key).user_id is None


def test_roles_from_groups_count_against_escalation_too(serve: Serve) -> None:
    roles = {"group-admin": ["users:read", "groups:read", "groups:write"]}
    server = serve(USERPLANE_JWT_USER_CLAIM="email", USERPLANE_ROLES=json.dumps(roles))
    ann = server.user("ann@example.org")
    managers = server.group("Managers", "group-admin")
    tok = token(email="ann@example.org")

    def create(body: dict[str, Any]) -> testing.Result:
        return server.client.simulate_post(GROUPS, headers=bearer(tok), json=body)

    assert_forbidden(create({"display_name": "Early"}))
    server.registry.groups.add_members(managers, [ann])
    made = create({"display_name": "Readers", "roles": ["viewer"]})
    assert made.status_code == 201, made.text
    # What its groups grant it bounds what it may hand out: not admin; group-admin, which
    # it holds through its group, it may.
    assert_forbidden(create({"display_name": "Admins", "roles": ["admin"]}))
    assert create({"display_name": "More managers", "roles": ["group-admin"]}).status_code == 201
    listed = server.get(tok, GROUPS)
    assert listed.status_code == 200
    assert [g["display_name"] for g in listed.json["items"]] == [
        "Managers",
        "Readers",
        "More managers",
    ]


# --------------------------------------------------------------------------- matched by kind


def test_an_email_claim_holding_another_users_id_names_nobody(serve: Serve) -> None:
    # Matched by the kind the settings say, never guessed from the value.
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    admin = server.user("root@example.org")
    server.registry.groups.add_members(server.group("Admins", "admin"), [admin])
    for spelling in (str(admin), admin.hex, f"{{{admin}}}", f"urn:uuid:{admin}"):
        assert_rejected(server.get(token(email=spelling)))


def test_a_sub_holding_an_email_names_nobody_when_matching_ids(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="sub", USERPLANE_JWT_USER_MATCH="id")
    server.user("ann@example.org")
    assert_rejected(server.get(token(sub="ann@example.org")))


def test_an_unverified_email_names_nobody(serve: Serve) -> None:
    server = serve(USERPLANE_JWT_USER_CLAIM="email")
    ann = server.user("ann@example.org")
    server.registry.groups.add_members(server.group("Viewers", "viewer"), [ann])
    assert_rejected(server.get(token(email="ann@example.org", email_verified=False)))
    assert server.get(token(email="ann@example.org", email_verified=True)).status_code == 200


def test_a_bad_user_match_stops_start_up(serve: Serve) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_JWT_USER_MATCH"):
        serve(USERPLANE_JWT_USER_CLAIM="email", USERPLANE_JWT_USER_MATCH="name")
