"""End to end: the audit trail and a webhook on a real ``userplane serve``, per backend.

What the issue asks of real processes, for the audit trail: a write that fails
(409, 412) leaves no event and no delivery, while the writes that succeed leave
exactly one of each, carrying the request's id; and a row of the audit table
edited in the database makes ``userplane audit verify`` (a real CLI process)
fail, naming it. The webhook's receiver is a real HTTP server in this process,
and every delivery's signature is checked with the Standard Webhooks library.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import Server, assert_problem, running_server, unique_email
from standardwebhooks import Webhook

pytestmark = pytest.mark.e2e

USERS = "/api/v1/users"
#: How long the test waits for a delivery; a safety limit, not an expectation.
DELIVERY_TIMEOUT = 20.0


class Receiver(http.server.ThreadingHTTPServer):
    """Records every webhook request: its headers and body, as received."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def payloads_about(self, target_id: str) -> list[dict[str, Any]]:
        with self.lock:
            bodies = [json.loads(body) for _, body in self.received]
        return [b for b in bodies if b["data"].get("id") == target_id]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


def database_url_for(backend: str, directory: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory}/e2e.db"
    url: str = request.getfixturevalue("create_postgresql_database")()
    return url


def edit_audit_row(database_url: str, seq: int) -> None:
    """Change who acted in event ``seq``, behind the service's back (as an intruder would)."""
    statement = "UPDATE audit_events SET actor = 'key:forged' WHERE seq = {}"
    if database_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            assert conn.execute(statement.format("?"), (seq,)).rowcount == 1
            conn.commit()
        return
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute(statement.format("%s"), (seq,)).rowcount == 1


def audit_of(server: Server, target_id: str) -> list[dict[str, Any]]:
    answer = server.request("GET", f"/api/v1/audit?target_id={target_id}&limit=500")
    assert answer.status == 200, answer.body
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def wait_for(receiver: Receiver, target_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while len(got := receiver.payloads_about(target_id)) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} deliveries arrived"
        time.sleep(0.05)
    return got


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_failed_writes_leave_no_event_and_no_delivery_and_an_edited_row_fails_verify(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database_url = database_url_for(backend, tmp_path, request)
    private = {"USERPLANE_WEBHOOKS_ALLOW_PRIVATE": "true", "USERPLANE_WEBHOOKS_POLL_SECONDS": "0.2"}
    with receiving() as receiver, running_server(tmp_path, database_url, backend, private) as srv:
        subscribed = srv.request("POST", "/api/v1/webhooks", {"url": receiver.url, "events": ["*"]})
        assert subscribed.status == 201, subscribed.body
        secret = subscribed.json()["secret"]

        email = unique_email("ann")
        created = srv.request("POST", USERS, {"email": email, "full_name": "Ann"})
        assert created.status == 201, created.body
        ann = created.json()["id"]
        taken = srv.request("POST", USERS, {"email": email.upper()})
        assert_problem(taken, 409)
        stale = srv.request(
            "PATCH",
            f"{USERS}/{ann}",
            {"full_name": "Stale"},
            {"If-Match": '"7"'},
            content_type="application/merge-patch+json",
        )
        assert_problem(stale, 412)
        updated = srv.request(
            "PATCH",
            f"{USERS}/{ann}",
            {"full_name": "Ann E."},
            {"If-Match": created.headers["ETag"]},
            content_type="application/merge-patch+json",
        )
        assert updated.status == 200, updated.body
        stale_delete = srv.request("DELETE", f"{USERS}/{ann}", headers={"If-Match": '"1"'})
        assert_problem(stale_delete, 412)

        # Exactly the two writes that succeeded, each with its request's id.
        events = audit_of(srv, ann)
        assert [e["action"] for e in events] == ["user.created", "user.updated"]
        requests = {s.request_id for s in srv.sent if s.status in (200, 201)}
        assert {e["request_id"] for e in events} <= requests
        assert events[1]["changes"]["full_name"] == {"before": "Ann", "after": "Ann E."}

        delivered = wait_for(receiver, ann, 2)
        time.sleep(1.0)  # anything more would have been sent by now (polling every 0.2 s)
        delivered = receiver.payloads_about(ann)
        assert [d["type"] for d in delivered] == ["user.created", "user.updated"]
        hook = Webhook(secret)
        with receiver.lock:
            requests_about_ann = [
                (headers, body)
                for headers, body in receiver.received
                if json.loads(body)["data"].get("id") == ann
            ]
        for headers, body in requests_about_ann:
            hook.verify(body, headers)  # raises unless the signature is ours

        verified = srv.cli("audit", "verify")
        assert verified.returncode == 0, verified.stderr
        edit_audit_row(database_url, events[1]["seq"])
        broken = srv.cli("audit", "verify")
        assert broken.returncode != 0
        assert str(events[1]["seq"]) in broken.stderr, broken.stderr
        assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr
