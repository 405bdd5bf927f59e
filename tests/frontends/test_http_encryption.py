"""The HTTP API with encryption on, through falcon's TestClient, on SQLite and PostgreSQL.

Clients send and receive plain addresses and names; the database holds them
sealed. What ciphertext cannot answer is a 422 naming the parameter and the
setting; a value that fails to open is a 500 problem naming the user.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from clients import client_for
from falcon import testing

from userplane import Registry, Settings, UserQuery
from userplane.keyring import NamedKey, new_key
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING
from userplane.sealing import PREFIX

USERS = "/api/v1/users/"
PROBLEM = "application/problem+json"


def _settings(database_url: str, kek: NamedKey, index: NamedKey) -> Settings:
    return Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": database_url,
            KEYS_SETTING: kek.entry(),
            INDEX_KEYS_SETTING: index.entry(),
        }
    )


@pytest.fixture
def keys() -> tuple[NamedKey, NamedKey]:
    return new_key("kek-1"), new_key("index-1")


@pytest.fixture
def sealed_registry(database_url: str, keys: tuple[NamedKey, NamedKey]) -> Iterator[Registry]:
    with Registry(_settings(database_url, *keys)) as registry:
        registry.migrate()
        assert registry.encrypted
        yield registry


@pytest.fixture
def client(sealed_registry: Registry) -> testing.TestClient:
    return client_for(sealed_registry)


def create(client: testing.TestClient, email: str, name: str | None = None, **headers: str) -> Any:
    return client.simulate_post(USERS, json={"email": email, "full_name": name}, headers=headers)


def assert_problem(result: testing.Result, status: int) -> dict[str, Any]:
    assert result.status_code == status, result.text
    assert result.headers["Content-Type"] == PROBLEM
    assert "Traceback" not in result.text
    body: dict[str, Any] = result.json
    assert body["status"] == status
    return body


def test_create_get_and_the_email_filter_answer_in_clear_while_the_row_is_sealed(
    client: testing.TestClient, sealed_registry: Registry
) -> None:
    created = create(client, "Zoë.Ann@Example.org", "Zoë Ann")
    assert created.status_code == 201
    user = created.json
    assert (user["email"], user["full_name"]) == ("Zoë.Ann@Example.org", "Zoë Ann")
    got = client.simulate_get(f"{USERS}{user['id']}")
    assert got.status_code == 200
    assert got.json == user
    assert got.headers["ETag"] == created.headers["ETag"]
    for spelling in ("zoë.ann@example.org", "ZOË.ANN@EXAMPLE.ORG", "Zoë.Ann@Example.org"):
        listed = client.simulate_get(USERS, params={"email": spelling})
        assert listed.status_code == 200
        assert listed.json["items"] == [user]
    assert client.simulate_get(USERS, params={"email": "zoe.ann@example.org"}).json["items"] == []
    row = sealed_registry.storage.get_user(uuid.UUID(user["id"]))
    assert row is not None
    assert row.email.startswith(PREFIX)
    assert row.full_name is not None
    assert row.full_name.startswith(PREFIX)
    assert "Zoë" not in row.email + row.full_name


def test_an_address_taken_in_another_case_or_unicode_form_is_a_409(
    client: testing.TestClient,
) -> None:
    assert create(client, "Ann@Example.org").status_code == 201
    full_width = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in "ANN") + "@example.org"
    for spelling in ("ann@example.org", "ANN@EXAMPLE.ORG", full_width):
        body = assert_problem(create(client, spelling), 409)
        assert body["type"] == "urn:userplane:problem:conflict"
    other = create(client, "other@example.org")
    renamed = client.simulate_patch(f"{USERS}{other.json['id']}", json={"email": "aNN@example.ORG"})
    assert_problem(renamed, 409)


def test_concurrent_creates_of_one_email_let_exactly_one_win(
    client: testing.TestClient, sealed_registry: Registry
) -> None:
    spellings = ["race@example.org", "RACE@example.org", "Race@Example.org", "rAcE@EXAMPLE.org"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: create(client, spellings[i % 4]), range(8)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 7, [r.text for r in results]
    for r in results:
        if r.status_code == 409:
            assert_problem(r, 409)
    [winner] = [r.json for r in results if r.status_code == 201]
    assert [u.id for u in sealed_registry.users.list(UserQuery()).items] == [
        uuid.UUID(winner["id"])
    ]


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"q": "ann"}, ["$.q"]),
        ({"sort": "email"}, ["$.sort"]),
        ({"sort": "-email"}, ["$.sort"]),
        ({"sort": "full_name"}, ["$.sort"]),
        ({"sort": "-full_name"}, ["$.sort"]),
        ({"q": "ann", "sort": "-full_name", "is_active": "true"}, ["$.q", "$.sort"]),
    ],
)
def test_what_ciphertext_cannot_answer_is_refused_naming_the_field_and_the_setting(
    client: testing.TestClient, params: dict[str, str], fields: list[str]
) -> None:
    create(client, "ann@example.org", "Ann")
    body = assert_problem(client.simulate_get(USERS, params=params), 422)
    assert sorted(e["field"] for e in body["errors"]) == fields
    for error in body["errors"]:
        assert KEYS_SETTING in error["detail"]
        assert "encrypted" in error["detail"]


def test_lists_in_creation_order_page_through_with_cursors_holding_no_personal_data(
    client: testing.TestClient,
) -> None:
    emails = [f"Page.Person{i}@example.org" for i in range(5)]
    for email in emails:
        assert create(client, email, f"Name {email}").status_code == 201
    for sort, expected in (("created_at", emails), ("-created_at", emails[::-1])):
        seen: list[str] = []
        params: dict[str, str] = {"sort": sort, "limit": "2"}
        while True:
            page = client.simulate_get(USERS, params=params)
            assert page.status_code == 200
            seen += [u["email"] for u in page.json["items"]]
            cursor = page.json["next"]
            if cursor is None:
                break
            decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            assert "person" not in decoded.lower()
            assert len(json.loads(decoded)) == 3  # [sort, time, id]
            params["cursor"] = cursor
        assert seen == expected


def test_an_idempotent_retry_replays_the_first_body_stored_sealed(
    client: testing.TestClient, sealed_registry: Registry, database_url: str
) -> None:
    first = create(client, "Retry.Person@example.org", "Retry Person", **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    client.simulate_patch(first.headers["Location"], json={"full_name": "Changed Since"})
    again = create(client, "Retry.Person@example.org", "Retry Person", **{"Idempotency-Key": "k-1"})
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert again.json["full_name"] == "Retry Person"
    assert (again.headers["Location"], again.headers["ETag"]) == (
        first.headers["Location"],
        first.headers["ETag"],
    )
    # What the database keeps of the response is sealed under the user's data key.
    bodies = _stored_bodies(database_url)
    assert len(bodies) == 1
    assert bodies[0].startswith(PREFIX.encode())
    assert b"Retry" not in bodies[0]
    assert len(sealed_registry.users.list(UserQuery()).items) == 1


def _stored_bodies(database_url: str) -> list[bytes]:
    query = "SELECT body FROM idempotency_keys WHERE body IS NOT NULL"
    if database_url.startswith("sqlite"):
        import contextlib
        import sqlite3

        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return [bytes(b) for (b,) in conn.execute(query)]
    import psycopg

    with psycopg.connect(database_url) as conn:
        return [bytes(b) for (b,) in conn.execute(query)]


def _tamper(registry: Registry, user_id: uuid.UUID) -> str:
    """Alter one character in the middle of the user's sealed name; the altered stored text."""
    row = registry.storage.get_user(user_id, True)
    assert row is not None
    assert row.full_name is not None
    i = len(row.full_name) // 2
    altered = row.full_name[:i] + ("B" if row.full_name[i] == "A" else "A") + row.full_name[i + 1 :]
    assert registry.storage.reseal_user(user_id, row.version, {"full_name": altered}, None)
    return altered


def test_a_tampered_row_is_a_500_problem_naming_the_user_without_a_traceback(
    client: testing.TestClient, sealed_registry: Registry
) -> None:
    victim = create(client, "victim@example.org", "Victim Person").json
    bystander = create(client, "bystander@example.org", "Bystander").json
    altered = _tamper(sealed_registry, uuid.UUID(victim["id"]))
    for result in (
        client.simulate_get(f"{USERS}{victim['id']}"),
        client.simulate_get(USERS),  # a page holding it fails as a whole
        client.simulate_get(USERS, params={"email": "victim@example.org"}),
        client.simulate_patch(f"{USERS}{victim['id']}", json={"is_active": False}),
    ):
        body = assert_problem(result, 500)
        assert body["type"] == "urn:userplane:problem:undecryptable"
        assert victim["id"] in body["detail"]
        assert "full_name" in body["detail"]
        assert altered not in result.text
        assert "Victim" not in result.text
    assert client.simulate_get(f"{USERS}{bystander['id']}").json == bystander


def test_a_keyring_the_database_was_not_sealed_with_is_a_500_that_names_no_key(
    database_url: str, keys: tuple[NamedKey, NamedKey], sealed_registry: Registry
) -> None:
    sealed_registry.users.list(UserQuery())  # records the keys
    impostor = NamedKey("kek-1", new_key("x").secret)
    with Registry(_settings(database_url, impostor, keys[1])) as registry:
        result = client_for(registry).simulate_get(USERS)
    body = assert_problem(result, 500)
    assert body["detail"] == "the service is misconfigured"
    for key in (*keys, impostor):
        assert key.entry().split(":")[1] not in result.text
