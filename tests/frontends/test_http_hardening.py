"""Hostile bodies are bounded before any handler walks them; request ids reach every log line."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import structlog
from clients import client_for
from falcon import testing

from userplane import Registry, User, hookimpl
from userplane.frontends.http.media import MAX_DEPTH, MAX_STRING

USERS = "/api/v1/users/"


def raw_post(client: testing.TestClient, body: bytes) -> testing.Result:
    return client.simulate_post(USERS, body=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 5000])
def test_deep_nesting_is_refused(client: testing.TestClient, depth: int) -> None:
    body = b'{"email": "a@example.org", "x": ' + b"[" * depth + b"]" * depth + b"}"
    resp = raw_post(client, body)
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "application/problem+json"
    # Ours past 8 levels; past orjson's own 1024 it refuses while parsing. Both are 400s.
    assert "nest" in resp.json["detail"] or "depth" in resp.json["detail"]
    assert client.simulate_get(USERS).json["items"] == []


def test_nesting_within_the_bound_reaches_validation(client: testing.TestClient) -> None:
    body = b'{"email": "a@example.org", "x": ' + b"[" * 3 + b"]" * 3 + b"}"
    resp = raw_post(client, body)
    assert resp.status_code == 422  # parsed, then refused as an unknown field
    assert resp.json["errors"] == [{"field": "$.x", "detail": "unknown field"}]


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a" * (MAX_STRING + 1) + "@example.org"},
        {"email": "a@example.org", "k" * (MAX_STRING + 1): 1},
        {"email": "a@example.org", "full_name": "é" * (MAX_STRING + 1)},
    ],
    ids=["long-value", "long-key", "long-non-ascii"],
)
def test_long_strings_are_refused(client: testing.TestClient, body: dict[str, Any]) -> None:
    resp = raw_post(client, orjson.dumps(body))
    assert resp.status_code == 400
    assert "limited" in resp.json["detail"]
    assert client.simulate_get(USERS).json["items"] == []


def test_patch_bodies_are_bounded_too(client: testing.TestClient) -> None:
    created = client.simulate_post(USERS, json={"email": "p@example.org"})
    body = b'{"full_name": ' + b"[" * 50 + b"]" * 50 + b"}"
    resp = client.simulate_patch(
        created.headers["Location"], body=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert client.simulate_get(created.headers["Location"]).json == created.json


class LogsInside:
    """A plugin that logs from inside a service operation."""

    @hookimpl
    def userplane_user_created(self, user: User) -> None:
        structlog.get_logger("test.plugin").info("welcome", user_id=str(user.id))


def test_a_log_line_inside_a_request_carries_its_request_id(registry: Registry) -> None:
    registry.pm.register(LogsInside())
    client = client_for(registry)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        resp = client.simulate_post(
            USERS, json={"email": "log@example.org"}, headers={"X-Request-ID": "req-42"}
        )
    assert resp.status_code == 201
    welcome = [e for e in logs if e["event"] == "welcome"]
    assert len(welcome) == 1
    assert welcome[0]["request_id"] == "req-42"
    access = [e for e in logs if e["event"] == "request"]
    assert [e["request_id"] for e in access] == ["req-42"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"email": "a@example.org", "email": "b@example.org"}',
        b'{"email": "a@example.org", "full_name": "A", "full_name": "B"}',
    ],
)
def test_a_repeated_key_is_refused_not_settled_silently(
    client: testing.TestClient, body: bytes
) -> None:
    resp = client.simulate_post(
        "/api/v1/users", body=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert "appears twice" in resp.json["detail"]
    assert client.simulate_get("/api/v1/users").json["items"] == []


@pytest.mark.parametrize(
    "name",
    [
        "Ann \u202egnp.exe",  # a right-to-left override: shows as "Ann exe.png"
        "\u2067Ann\u2069",  # a right-to-left isolate
        "Ann\u200d",  # zero-width joiner
        "A\u2060nn",  # word joiner
        "Ann\U000e0001\U000e0062",  # tag characters
    ],
)
def test_full_name_with_invisible_formatting_is_422_naming_it(
    client: testing.TestClient, name: str
) -> None:
    created = client.simulate_post(USERS, json={"email": "spoof@example.org", "full_name": name})
    assert created.status_code == 422, created.text
    assert [e["field"] for e in created.json["errors"]] == ["$.full_name"]
    assert client.simulate_get(USERS).json["items"] == []
    user = client.simulate_post(USERS, json={"email": "ann@example.org", "full_name": "Ann"}).json
    patched = client.simulate_patch(f"{USERS}{user['id']}", json={"full_name": name})
    assert patched.status_code == 422, patched.text
    assert [e["field"] for e in patched.json["errors"]] == ["$.full_name"]
    assert client.simulate_get(f"{USERS}{user['id']}").json["full_name"] == "Ann"
