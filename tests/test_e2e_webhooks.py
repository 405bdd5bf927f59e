"""Webhooks end to end: real ``userplane serve`` processes, a real receiver, real failures.

- a server killed with SIGKILL while a delivery is in flight: after a
  restart (and the dead process's lease) the event is delivered, with the
  same ``webhook-id``;
- the receiver down for 10 s while events are made: afterwards every event
  arrives, each signature verifies, in order per user;
- two instances on one PostgreSQL database: every event is delivered
  exactly once (the ``webhook-id`` sets are compared).
"""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import Server, running_server, unique_email
from test_webhooks_receiver import Received, Receiver, answer, reserved_port

pytestmark = pytest.mark.e2e

#: Fast retries, a short poll, and the local receiver allowed.
FAST = {
    "USERPLANE_WEBHOOKS_ALLOW_PRIVATE": "true",
    "USERPLANE_WEBHOOKS_POLL_SECONDS": "0.2",
    "USERPLANE_WEBHOOKS_BACKOFF_BASE_SECONDS": "0.2",
    "USERPLANE_WEBHOOKS_BACKOFF_CAP_SECONDS": "1",
    "USERPLANE_WEBHOOKS_MAX_ATTEMPTS": "100",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """A fresh database on each backend: ``(url, backend)``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hooks.db", "sqlite"
    url: str = request.getfixturevalue("create_postgresql_database")()
    return url, "postgresql"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def subscribe(server: Server, url: str, *events: str) -> dict[str, Any]:
    resp = server.request("POST", "/api/v1/webhooks", {"url": url, "events": list(events)})
    assert resp.status == 201, resp.body
    created: dict[str, Any] = resp.json()
    return created


def deliveries(server: Server, sub_id: str, status: str | None = None) -> list[dict[str, Any]]:
    """Every delivery of the subscription (following the pages)."""
    items: list[dict[str, Any]] = []
    query = f"?limit=200{'&status=' + status if status else ''}"
    cursor = ""
    while True:
        resp = server.request("GET", f"/api/v1/webhooks/{sub_id}/deliveries{query}{cursor}")
        assert resp.status == 200, resp.body
        page = resp.json()
        items += page["items"]
        if page["next"] is None:
            return items
        cursor = f"&cursor={page['next']}"


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def directory(base: Path, name: str) -> Path:
    made = base / name
    made.mkdir()
    return made


def kill(server: Server) -> None:
    """SIGKILL the master and its workers: nothing is flushed, nothing released."""
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)


def test_a_delivery_in_flight_when_the_server_is_killed_is_delivered_after_restart(
    tmp_path: Path, database: tuple[str, str], receiver: Receiver
) -> None:
    url, backend = database
    release = threading.Event()

    def stall_the_first(handler: http.server.BaseHTTPRequestHandler, seen: Received) -> None:
        if len(receiver.requests) == 1:
            release.wait(30)  # accepted, never answered: the send is in flight
            return
        answer(handler, 200)

    receiver.respond = stall_the_first
    env = {
        **FAST,
        "USERPLANE_WEBHOOKS_TIMEOUT_SECONDS": "2",
        "USERPLANE_WEBHOOKS_LEASE_SECONDS": "3",
    }
    try:
        with running_server(directory(tmp_path, "first"), url, backend, env) as first:
            sub = subscribe(first, receiver.url(), "user.created")
            made = first.request("POST", "/api/v1/users", {"email": unique_email("killed")})
            assert made.status == 201
            [in_flight] = receiver.wait_for(1)
            kill(first)  # between the commit and the end of the delivery
        assert in_flight.verify(sub["secret"])["data"]["id"] == made.json()["id"]

        with running_server(directory(tmp_path, "second"), url, backend, env) as second:
            _, again = receiver.wait_for(2, timeout=20)
            assert again.webhook_id == in_flight.webhook_id  # the same event: de-duplicable
            assert again.body == in_flight.body
            again.verify(sub["secret"])
            wait_until(
                lambda: [d["status"] for d in deliveries(second, sub["id"])] == ["delivered"],
                10,
                "the delivery is recorded as delivered",
            )
    finally:
        release.set()


def test_after_the_receiver_was_down_every_event_arrives_signed_and_in_order(
    tmp_path: Path, database: tuple[str, str]
) -> None:
    url, backend = database
    receiver = Receiver(reserved_port())  # not listening yet: connections are refused
    env = dict(FAST)
    with running_server(tmp_path, url, backend, env) as server:
        sub = subscribe(server, receiver.url(), "user.created", "user.updated", "user.deleted")
        down_since = time.monotonic()
        users: list[str] = []
        for i in range(3):
            made = server.request("POST", "/api/v1/users", {"email": unique_email(f"down{i}")})
            assert made.status == 201
            users.append(made.json()["id"])
        # Events keep coming while the receiver is down.
        for name in ("One", "Two"):
            time.sleep(2)
            for user_id in users:
                changed = server.request("PATCH", f"/api/v1/users/{user_id}", {"full_name": name})
                assert changed.status == 200
        time.sleep(2)
        for user_id in users:
            assert server.request("DELETE", f"/api/v1/users/{user_id}").status == 204
        wait_until(
            lambda: all(d["attempts"] >= 1 for d in deliveries(server, sub["id"])[-3:]),
            10,
            "every user's first event was tried (and refused)",
        )
        time.sleep(max(0.0, 10 - (time.monotonic() - down_since)))
        with receiver:
            arrived = receiver.wait_for(12, timeout=20)
            time.sleep(0.5)  # anything more would be a duplicate
            arrived = list(receiver.requests)

        events = [(r, r.verify(sub["secret"])) for r in arrived]
        assert len({r.webhook_id for r, _ in events}) == 12
        assert len(events) == 12
        for user_id in users:
            mine = [body for _, body in events if body["data"]["id"] == user_id]
            assert [b["type"] for b in mine] == [
                "user.created",
                "user.updated",
                "user.updated",
                "user.deleted",
            ]
            assert [b["data"]["version"] for b in mine] == [1, 2, 3, 4]
        states = deliveries(server, sub["id"])
        assert {d["status"] for d in states} == {"delivered"}
        assert max(d["attempts"] for d in states) > 1  # they were retried


def test_two_instances_on_one_database_deliver_every_event_once(
    tmp_path: Path, create_postgresql_database: Any, receiver: Receiver
) -> None:
    url = create_postgresql_database()
    env = dict(FAST)
    with (
        running_server(directory(tmp_path, "a"), url, "postgresql", env) as one,
        running_server(directory(tmp_path, "b"), url, "postgresql", env) as two,
    ):
        sub = subscribe(one, receiver.url(), "user.created", "user.updated")
        expected = 0
        for i in range(20):
            server = (one, two)[i % 2]
            made = server.request("POST", "/api/v1/users", {"email": unique_email(f"pair{i}")})
            assert made.status == 201
            changed = (two, one)[i % 2].request(
                "PATCH", f"/api/v1/users/{made.json()['id']}", {"full_name": "Changed"}
            )
            assert changed.status == 200
            expected += 2
        receiver.wait_for(expected, timeout=20)
        time.sleep(1.5)  # time for a second copy, if any dispatcher were to send one
        ids = [r.webhook_id for r in receiver.requests]
        for seen in receiver.requests:
            seen.verify(sub["secret"])
        delivered = {d["id"] for d in deliveries(two, sub["id"], "delivered")}
        assert len(ids) == expected
        assert len(set(ids)) == expected
        assert set(ids) == delivered
