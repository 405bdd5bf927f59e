"""Idempotency-Key on POST /api/v1/users/, through TestClient on both backends."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clients import client_for
from falcon import testing

from userplane import Registry, Settings, UserQuery
from userplane.auth import Principal
from userplane.frontends.http.testing import PrincipalTokens
from userplane.frontends.http.testing import client as client_as
from userplane.idempotency import IdempotencyService
from userplane.sql import SQLStorage

USERS = "/api/v1/users/"
PROBLEM = "application/problem+json"


def post(client: testing.TestClient, body: Any, key: str | None) -> testing.Result:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.simulate_post(USERS, json=body, headers=headers)


def test_a_retry_replays_the_first_response(client: testing.TestClient) -> None:
    body = {"email": "retry@example.org", "full_name": "Retry"}
    first = post(client, body, "k-1")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    again = post(client, {"full_name": "Retry", "email": "retry@example.org"}, "k-1")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.json == first.json
    listed = client.simulate_get(USERS).json["items"]
    assert [u["id"] for u in listed] == [first.json["id"]]


def test_the_replay_is_the_first_response_even_after_the_user_changed(
    client: testing.TestClient,
) -> None:
    first = post(client, {"email": "changes@example.org"}, "k-2")
    client.simulate_patch(first.headers["Location"], json={"full_name": "Later"})
    again = post(client, {"email": "changes@example.org"}, "k-2")
    assert again.json == first.json
    assert again.json["full_name"] is None


def test_the_same_key_with_another_body_is_422(client: testing.TestClient) -> None:
    assert post(client, {"email": "one@example.org"}, "k-3").status_code == 201
    other = post(client, {"email": "two@example.org"}, "k-3")
    assert other.status_code == 422
    assert other.headers["Content-Type"] == PROBLEM
    assert other.json["errors"][0]["field"] == "Idempotency-Key"
    assert client.simulate_get(USERS, params={"email": "two@example.org"}).json["items"] == []


def test_without_a_key_a_second_post_is_a_conflict(client: testing.TestClient) -> None:
    assert post(client, {"email": "plain@example.org"}, None).status_code == 201
    assert post(client, {"email": "plain@example.org"}, None).status_code == 409


def test_a_failed_request_is_not_stored_and_a_fixed_retry_succeeds(
    client: testing.TestClient,
) -> None:
    bad = post(client, {"email": "not-an-email"}, "k-4")
    assert bad.status_code == 422
    # Another body under the same key is fine: nothing was stored for the failure.
    good = post(client, {"email": "fixed@example.org"}, "k-4")
    assert good.status_code == 201
    assert "Idempotent-Replayed" not in good.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "tab\there", "é"])
def test_malformed_keys_are_422(client: testing.TestClient, key: str) -> None:
    resp = client.simulate_post(
        USERS, json={"email": "k@example.org"}, headers={"Idempotency-Key": key}
    )
    assert resp.status_code == 422, resp.text
    assert resp.json["errors"][0]["field"] == "Idempotency-Key"
    assert client.simulate_get(USERS).json["items"] == []


def test_concurrent_retries_create_one_user(registry: Registry) -> None:
    client = client_for(registry)

    def send(_: int) -> testing.Result:
        return post(client, {"email": "race@example.org"}, "k-race")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, range(8)))
    statuses = sorted(r.status_code for r in results)
    # One creates; the rest replay it, or (while it runs) are told to retry: never a 2nd user.
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    created = {r.json["id"] for r in results if r.status_code == 201}
    assert len(created) == 1
    for r in results:
        if r.status_code == 409:
            assert "in progress" in r.json["detail"]
    assert len(registry.users.list(UserQuery()).items) == 1


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked(registry: Registry) -> tuple[testing.TestClient, Clock]:
    clock = Clock()
    registry.idempotency = IdempotencyService(registry.storage, timedelta(hours=1), clock)
    return client_for(registry), clock


def test_an_expired_key_runs_the_request_again(
    clocked: tuple[testing.TestClient, Clock], registry: Registry
) -> None:
    client, clock = clocked
    first = post(client, {"email": "expire@example.org"}, "k-5")
    assert first.status_code == 201
    clock.now += timedelta(minutes=59)
    assert post(client, {"email": "expire@example.org"}, "k-5").status_code == 201
    clock.now += timedelta(minutes=2)
    # Expired: the request runs again, and the email is taken by the first one.
    assert post(client, {"email": "expire@example.org"}, "k-5").status_code == 409
    clock.now += timedelta(hours=2)
    assert registry.idempotency.purge_expired() == 0  # the failed run left nothing behind


def test_purge_removes_only_expired_keys(
    clocked: tuple[testing.TestClient, Clock], registry: Registry
) -> None:
    client, clock = clocked
    post(client, {"email": "p1@example.org"}, "k-old")
    clock.now += timedelta(minutes=50)
    post(client, {"email": "p2@example.org"}, "k-new")
    clock.now += timedelta(minutes=20)
    assert registry.idempotency.purge_expired() == 1
    assert post(client, {"email": "p2@example.org"}, "k-new").headers["Idempotent-Replayed"]


def test_a_principal_id_of_10_kb_with_a_key_creates_then_replays(database_url: str) -> None:
    # Random text, which no index can compress: a 10 KB token subject, say.
    huge = Principal(
        id="jwt:" + secrets.token_urlsafe(7_700), kind="jwt", roles=frozenset({"editor"})
    )
    assert len(huge.id) >= 10_000
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url})
    with Registry(settings, plugins=[PrincipalTokens()]) as registry:
        registry.migrate()
        http = client_as(registry, principal=huge)
        body = {"email": "huge@example.org"}
        first = post(http, body, "k-huge")
        assert first.status_code == 201, first.text
        again = post(http, body, "k-huge")
        assert again.status_code == 201, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json == first.json
        # Another principal's same key is its own.
        other = Principal(id="jwt:other", kind="jwt", roles=frozenset({"editor"}))
        assert post(client_as(registry, principal=other), body, "k-huge").status_code == 409
        # Stored as a fixed-length digest: neither the principal nor the key as text.
        storage = registry.storage
        assert isinstance(storage, SQLStorage)
        stored = storage.fetch_all("SELECT key FROM idempotency_keys", {})
        assert [(len(k), set(k) <= set("0123456789abcdef")) for (k,) in stored] == [(64, True)]
