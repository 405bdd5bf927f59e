"""End to end: a real ``userplane serve`` (gunicorn, two workers) and the CLI, on each backend.

The server starts once per backend; the last test stops it with SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from serving import (
    GRACEFUL_TIMEOUT,
    REQUEST_TIMEOUT,
    USER_PATH,
    USER_ROUTE,
    Response,
    Server,
    assert_problem,
    running_server,
    unique_email,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("e2e")
    if request.param == "sqlite":
        database_url = f"sqlite:///{directory}/e2e.db"
    else:
        database_url = request.getfixturevalue("create_postgresql_database")()
    with running_server(directory, database_url, request.param) as srv:
        yield srv


@pytest.fixture
def live(server: Server) -> Server:
    assert server.proc.poll() is None, f"the server has stopped:\n{server.log()}"
    return server


def all_pages(server: Server, limit: int) -> list[dict[str, Any]]:
    """Every user, following the ``Link`` header from ``GET /api/v1/users/``."""
    items: list[dict[str, Any]] = []
    path: str | None = f"/api/v1/users/?limit={limit}"
    while path is not None:
        resp = server.request("GET", path)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        page = resp.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        link = resp.headers.get("Link")
        if page["next"] is None:
            assert link is None
            path = None
        else:
            assert page["items"]
            match = re.fullmatch(r'<([^>]+)>;\s*rel="?next"?', link or "")
            assert match, link
            path = match.group(1)
            assert f"cursor={page['next']}" in path
    return items


def test_health_and_problems_for_falcon_errors(live: Server) -> None:
    resp = live.request("GET", "/health/live")
    assert resp.status == 200
    assert resp.json() == {"status": "ok"}
    ready = live.request("GET", "/health/ready")
    assert ready.status == 200
    assert ready.json() == {"status": "ok", "storage": live.backend}

    assert_problem(live.request("GET", "/no/such/route"), 404)
    assert_problem(live.request("PUT", "/api/v1/users"), 405)
    assert_problem(live.request("POST", "/api/v1/users", b"{not json"), 400)
    assert_problem(live.request("POST", "/api/v1/users", b"x=1", content_type="text/plain"), 415)


def test_user_lifecycle_over_http(live: Server) -> None:
    email = unique_email("Life")
    created = live.request("POST", "/api/v1/users", {"email": email, "full_name": "Life Cycle"})
    assert created.status == 201
    user = created.json()
    assert user["email"] == email
    assert user["full_name"] == "Life Cycle"
    assert user["is_active"] is True
    assert user["version"] == 1
    assert created.headers["ETag"] == '"1"'
    location = created.headers["Location"]
    assert urlsplit(location).path == f"/api/v1/users/{user['id']}"

    got = live.request("GET", location)
    assert got.status == 200
    assert got.headers["ETag"] == '"1"'
    assert got.json() == user
    assert got.headers["Cache-Control"] == "no-store"
    not_modified = live.request("GET", location, headers={"If-None-Match": '"1"'})
    assert not_modified.status == 304
    assert not_modified.body == b""

    listed = live.request("GET", f"/api/v1/users/?email={email.upper()}")
    assert listed.status == 200
    assert listed.json() == {"items": [user], "next": None}

    duplicate = live.request("POST", "/api/v1/users", {"email": email.upper()})
    assert_problem(duplicate, 409, "conflict")
    invalid = assert_problem(
        live.request("POST", "/api/v1/users", {"email": "not-an-email"}), 422, "invalid-input"
    )
    assert [e["field"] for e in invalid["errors"]] == ["$.email"]

    patched = live.request(
        "PATCH",
        location,
        {"full_name": "Renamed"},
        headers={"If-Match": '"1"'},
        content_type="application/merge-patch+json",
    )
    assert patched.status == 200
    assert patched.headers["ETag"] == '"2"'
    after = patched.json()
    assert after["full_name"] == "Renamed"
    assert after["version"] == 2
    assert after["created_at"] == user["created_at"]

    stale = live.request(
        "PATCH",
        location,
        {"full_name": "Lost update"},
        headers={"If-Match": '"1"'},
        content_type="application/merge-patch+json",
    )
    assert_problem(stale, 412, "precondition-failed")
    assert live.request("GET", location).json() == after

    assert_problem(live.request("DELETE", location, headers={"If-Match": '"1"'}), 412)
    deleted = live.request("DELETE", location, headers={"If-Match": '"2"'})
    assert deleted.status == 204
    assert deleted.body == b""

    gone = assert_problem(live.request("GET", location), 404, "not-found")
    assert gone["instance"] == location
    assert_problem(live.request("DELETE", location), 404, "not-found")
    patch_gone = live.request(
        "PATCH", location, {"full_name": "x"}, content_type="application/merge-patch+json"
    )
    assert_problem(patch_gone, 404, "not-found")


def test_user_created_by_the_cli_is_visible_over_http(live: Server) -> None:
    email = unique_email("Cli")
    proc = live.cli(
        "users", "create", "--email", email, "--full-name", "From CLI", "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    user = json.loads(lines[0])

    resp = live.request("GET", f"/api/v1/users/{user['id']}")
    assert resp.status == 200
    assert resp.json() == user
    assert resp.headers["ETag"] == f'"{user["version"]}"'

    # And the other way round: a change over HTTP is what the CLI then reads.
    patched = live.request(
        "PATCH",
        f"/api/v1/users/{user['id']}",
        {"is_active": False},
        content_type="application/merge-patch+json",
    )
    assert patched.status == 200
    proc = live.cli("users", "get", email.upper(), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == patched.json()


def test_cli_list_equals_every_http_page(live: Server) -> None:
    for i in range(7):
        resp = live.request("POST", "/api/v1/users", {"email": unique_email(f"page{i}")})
        assert resp.status == 201
    proc = live.cli("users", "list", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    from_cli = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(from_cli) >= 7

    assert all_pages(live, limit=3) == from_cli
    assert all_pages(live, limit=500) == from_cli


def test_concurrent_creates_of_one_email_in_different_cases(live: Server) -> None:
    local = f"race-{uuid.uuid4().hex[:8]}"
    variants = [
        f"{local}@example.org",
        f"{local.upper()}@example.org",
        f"{local}@EXAMPLE.ORG",
        f"{local.upper()}@EXAMPLE.ORG",
        f"{local.capitalize()}@Example.org",
        f"{local}@Example.Org",
        f"{local.swapcase()}@example.ORG",
        f"{local.title()}@exAMPLE.org",
    ]
    assert len(set(variants)) == len(variants)
    barrier = threading.Barrier(len(variants))

    def create(email: str) -> Response:
        barrier.wait(timeout=REQUEST_TIMEOUT)
        return live.request("POST", "/api/v1/users", {"email": email})

    with ThreadPoolExecutor(max_workers=len(variants)) as pool:
        responses = list(pool.map(create, variants))

    statuses = sorted(r.status for r in responses)
    assert statuses == [201] + [409] * (len(variants) - 1), [r.body for r in responses]
    for resp in responses:
        if resp.status == 409:
            assert_problem(resp, 409, "conflict")
    [winner] = [r.json() for r in responses if r.status == 201]
    listed = live.request("GET", f"/api/v1/users/?email={local}@example.org")
    assert listed.json() == {"items": [winner], "next": None}


def test_concurrent_patches_with_one_if_match_let_exactly_one_win(live: Server) -> None:
    created = live.request("POST", "/api/v1/users", {"email": unique_email("patch-race")})
    assert created.status == 201
    path = created.headers["Location"]
    etag = created.headers["ETag"]

    def patch(i: int) -> Response:
        return live.request("PATCH", path, {"full_name": f"writer {i}"}, {"If-Match": etag})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(patch, range(8)))
    winners = [r for r in responses if r.status == 200]
    assert len(winners) == 1, [r.status for r in responses]
    for r in responses:
        if r.status != 200:
            assert_problem(r, 412, "precondition-failed")
    final = live.request("GET", path)
    assert final.json() == winners[0].json()
    assert final.json()["version"] == 2


def _expected_route(path: str, status: int) -> str | None:
    if status in (411, 413, 415):
        return None  # refused by middleware before routing
    bare = urlsplit(path).path
    if bare != "/":
        bare = bare.rstrip("/")
    if bare == "/api/v1/users":
        return "/api/v1/users"
    if USER_PATH.fullmatch(bare):
        return USER_ROUTE
    if bare in ("/", "/health/live", "/health/ready"):
        return bare
    return None


def _access_lines(log: str) -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "request":
            by_id.setdefault(entry.get("request_id"), []).append(entry)
    return by_id


def test_every_request_has_one_access_line_and_no_traceback(live: Server) -> None:
    user = live.request("POST", "/api/v1/users", {"email": unique_email("log")}).json()
    live.request("GET", f"/api/v1/users/{user['id']}")
    live.request("GET", "/api/v1/users/?limit=1")
    live.request("GET", "/nowhere")
    live.request("DELETE", f"/api/v1/users/{user['id']}")
    with live.lock:
        sent = list(live.sent)
    wanted = {s.request_id for s in sent}

    # The line is written before the response is sent; the wait is only a safety net.
    deadline = time.monotonic() + 10
    while not wanted <= _access_lines(live.log()).keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = live.log()
    lines = _access_lines(log)

    for s in sent:
        entries = lines.get(s.request_id, [])
        assert len(entries) == 1, (s, entries)
        [entry] = entries
        assert entry["status"] == s.status, (s, entry)
        assert entry["method"] == s.method
        assert entry["route"] == _expected_route(s.path, s.status), (s, entry)
        assert entry["logger"] == "userplane.access"
        assert entry["level"] == "info"
        assert isinstance(entry["duration_ms"], int | float)
    assert "Traceback" not in log

    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    # JSON lines only, the start-up line and gunicorn's own included.
    assert all(isinstance(e, dict) for e in entries)
    (serving,) = [e for e in entries if e["event"] == "serving"]
    assert serving["url"].startswith("http://127.0.0.1:")
    assert serving["storage"] == live.backend
    assert serving["logs"].startswith("stderr as JSON lines")
    assert serving["traces"] == "off"
    assert any(e.get("logger") == "gunicorn.error" for e in entries)


def test_sigterm_stops_the_server_gracefully(live: Server) -> None:
    live.proc.send_signal(signal.SIGTERM)
    try:
        code = live.proc.wait(timeout=GRACEFUL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within {GRACEFUL_TIMEOUT}s:\n{live.log()}")
    log = live.log()
    assert code == 0, log
    assert "Traceback" not in log
    assert not (live.directory / "gunicorn.ctl").exists()
    with pytest.raises(ConnectionRefusedError):
        live.request("GET", "/health/live")


#: Every API operation, with a path that routes (its user need not exist).
API_OPERATIONS = [
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", f"/api/v1/users/{uuid.UUID(int=1)}"),
    ("PATCH", f"/api/v1/users/{uuid.UUID(int=1)}"),
    ("DELETE", f"/api/v1/users/{uuid.UUID(int=1)}"),
    ("POST", f"/api/v1/users/{uuid.UUID(int=1)}/restore"),
]


def test_a_fresh_prod_server_refuses_anonymous_calls_and_says_how_to_make_a_key(
    tmp_path: Any,
) -> None:
    env = {"USERPLANE_ENV": "prod"}
    database_url = f"sqlite:///{tmp_path}/prod.db"
    with running_server(tmp_path, database_url, "sqlite", env, with_key=False) as srv:
        for method, path in API_OPERATIONS:
            body = {"email": "anon@example.org"} if method in {"POST", "PATCH"} else None
            resp = srv.request(method, path, body)
            problem = assert_problem(resp, 401, "unauthenticated")
            assert resp.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
            assert "Bearer" in problem["detail"]
        # Health and docs stay open to probes and people.
        assert srv.request("GET", "/health/ready").status == 200
        assert srv.request("GET", "/docs").status == 200

        lines = [json.loads(line) for line in srv.log().splitlines() if line.strip()]
        (serving,) = [line for line in lines if line.get("event") == "serving"]
        assert "userplane keys create --name admin --role admin" in serving["authentication"]

        made = srv.cli("keys", "create", "--name", "first", "--role", "admin", "--format", "json")
        assert made.returncode == 0, made.stderr
        key = json.loads(made.stdout)["key"]
        resp = srv.request("GET", "/api/v1/users", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200
        lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
        principals = [e["principal"] for e in lines if e["event"] == "request"]
        assert principals[-1] is not None
        assert principals[-1].startswith("key:")
