"""Hostile input against every route: a clean 4xx problem, never a 500 or a hang, nothing written.

The promise under test: whatever a client sends (bodies, headers, paths, query
strings), the answer is an RFC 9457 ``application/problem+json`` document with
a 4xx status (``type``, ``title``, ``status``, ``detail``, ``request_id``), with
no traceback and no internals (SQL, file paths, Python class names) in it, and
the users are exactly as they were before the request.

Most checks run on the in-process app (``client``, both backends): each test
walks a corpus and reports every case at fault at once rather than stopping at
the first. The tests marked ``e2e`` talk to a real ``userplane serve`` over raw
sockets, for what a test client cannot send: lying ``Content-Length``, header
injection on the wire, headers past gunicorn's limits.

Ordering: the module's real server carries a stalled upload (a body shorter
than its ``Content-Length``) from the first e2e test on; the last test of the
module checks, once the rest has run, that it was answered or closed within
gunicorn's timeout (the body read times out after ``USERPLANE_BODY_TIMEOUT_MS``).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from clients import new_key
from falcon import testing
from serving import REQUEST_TIMEOUT, Server, running_server

from userplane import Registry, Settings
from userplane.frontends.http.media import MAX_DEPTH, MAX_STRING
from userplane.pagination import MAX_CURSOR
from userplane.users import NewUser, User, UserQuery

PROBLEM = "application/problem+json"
JSON = "application/json"
USERS = "/api/v1/users/"
#: What ``RequestId`` makes when the client's id is missing or malformed.
FRESH_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
#: What must never reach a client: tracebacks, SQL, paths, driver and class names.
INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|/work/|\bSELECT\b|\bWHERE\b|FROM users|"
    r"sqlite3|psycopg|SQLSTATE|\b[A-Z]\w*(?:Error|Exception|Failure)\b|userplane\.\w|"
    r"<\w+ object at 0x"
)
#: Bytes of files that a path traversal might reach.
FILE_MARKERS = (b"[project]", b"root:x:", b"import ", b"def ", b"USERPLANE_", b"[build-system]")


def wire(text: str) -> str:
    """``text`` as a WSGI server hands it over: its UTF-8 bytes read as Latin-1."""
    return text.encode().decode("latin-1")


def b64(raw: bytes) -> str:
    """A cursor-like token: ``raw`` in unpadded URL-safe base64."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def snapshot(registry: Registry) -> tuple[User, ...]:
    """Every user, deleted ones included, with every field (versions, times)."""
    return registry.users.list(UserQuery(include_deleted=True, limit=500)).items


def _routing_problem(body: dict[str, Any]) -> bool:
    # Falcon's own 404 (no route) and 405 carry no detail: see
    # test_every_problem_has_the_documented_detail, which tracks that gap.
    return body.get("type") == "about:blank" and body.get("status") in (404, 405)


def complaints(
    resp: testing.Result,
    expected: int | Collection[int],
    method: str,
    field: str | None = None,
) -> list[str]:
    """What is wrong with ``resp`` as the answer to a hostile request (empty: nothing)."""
    allowed = {expected} if isinstance(expected, int) else set(expected)
    out: list[str] = []
    status = resp.status_code
    if status not in allowed:
        out.append(f"status {status}, expected {sorted(allowed)}: {resp.text[:300]!r}")
    if not 400 <= status < 500:
        out.append(f"status {status} is not a 4xx")
    request_id = resp.headers.get("X-Request-ID") or ""
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", request_id):
        out.append(f"X-Request-ID {request_id!r} is not well formed")
    if method == "HEAD":
        return out  # no body to look at
    content_type = resp.headers.get("Content-Type")
    if content_type != PROBLEM:
        return [*out, f"Content-Type {content_type!r}, not {PROBLEM}: {resp.text[:200]!r}"]
    try:
        body = json.loads(resp.text)
    except ValueError:
        return [*out, f"the problem is not JSON: {resp.text[:200]!r}"]
    required = ["type", "title", "status", "request_id"]
    if not _routing_problem(body):
        required.append("detail")
    out += [f"the problem has no {key!r}" for key in required if not body.get(key)]
    if body.get("status") != status:
        out.append(f"problem status {body.get('status')!r} differs from the response's {status}")
    if body.get("request_id") != request_id:
        out.append(f"request_id {body.get('request_id')!r} is not the header's {request_id!r}")
    said = [str(body.get("title", "")), str(body.get("detail", ""))]
    said += [str(e.get("detail", "")) for e in body.get("errors", []) if isinstance(e, dict)]
    for text in said:
        if INTERNALS.search(text):
            out.append(f"internals in the problem: {text[:300]!r}")
    if "Traceback" in resp.text:
        out.append("a traceback in the body")
    if field is not None:
        fields = [e.get("field") for e in body.get("errors", [])]
        if field not in fields:
            out.append(f"errors name {fields}, not {field!r}")
    return out


class Hostile:
    """Sends a corpus through a test client; collects every complaint, and any write."""

    def __init__(self, client: testing.TestClient, registry: Registry) -> None:
        self.client = client
        self.registry = registry
        self.before = snapshot(registry)
        self.failures: list[str] = []

    def send(
        self,
        label: str,
        method: str,
        path: str,
        *,
        expect: int | Collection[int],
        body: bytes | None = None,
        content_type: str | None = JSON,
        headers: dict[str, str] | None = None,
        query: str = "",
        field: str | None = None,
    ) -> testing.Result:
        all_headers = dict(headers or {})
        if body is not None and content_type is not None:
            all_headers.setdefault("Content-Type", content_type)
        resp = self.client.simulate_request(
            method, path, body=body, headers=all_headers, query_string=query
        )
        found = complaints(resp, expect, method, field)
        after = snapshot(self.registry)
        if after != self.before:
            found.append("the users changed")
            self.before = after
        where = f"{method} {path[:60]}{'?' + query[:60] if query else ''}"
        self.failures += [f"[{label}] {where}: {c}" for c in found]
        return resp

    def fail(self, label: str, message: str) -> None:
        self.failures.append(f"[{label}] {message}")

    def check(self) -> None:
        assert not self.failures, f"{len(self.failures)} at fault:\n" + "\n".join(self.failures)


@dataclass(frozen=True)
class World:
    """Users that hostile requests aim at: two live, one deleted."""

    ann: User
    cid: User
    bob: User  # deleted

    @property
    def ann_path(self) -> str:
        return f"/api/v1/users/{self.ann.id}"

    @property
    def restore_path(self) -> str:
        return f"/api/v1/users/{self.bob.id}/restore"


@pytest.fixture
def world(registry: Registry) -> World:
    ann = registry.users.create(NewUser(email="ann@example.org", full_name="Ann Example"))
    cid = registry.users.create(NewUser(email="cid@example.org", full_name="Cid Example"))
    bob = registry.users.create(NewUser(email="bob@example.org", full_name="Bob Example"))
    registry.users.delete(bob.id)
    return World(ann, cid, registry.users.get(bob.id, include_deleted=True))


@pytest.fixture
def hostile(client: testing.TestClient, registry: Registry, world: World) -> Hostile:
    return Hostile(client, registry)


def every_path(world: World) -> list[str]:
    """One path of every route, and two that route nowhere."""
    return [
        "/",
        "/docs",
        "/api/v1/openapi.json",
        "/health/live",
        "/health/ready",
        "/static/style.css",
        USERS,
        world.ann_path,
        world.restore_path,
        "/nowhere",
        "/api/v1/users/not-a-uuid",
    ]


def protected_requests(world: World) -> list[tuple[str, str, bytes | None]]:
    """Every method of every API route, with a body that is fine when one is needed."""
    return [
        ("POST", USERS, b'{"email": "mallory@example.org"}'),
        ("GET", USERS, None),
        ("HEAD", USERS, None),
        ("GET", world.ann_path, None),
        ("HEAD", world.ann_path, None),
        ("PATCH", world.ann_path, b'{"full_name": "Mallory"}'),
        ("DELETE", world.ann_path, None),
        ("POST", world.restore_path, None),
    ]


# -- the real server: the stalled upload starts here and is judged at the end of the module --


@dataclass
class Raw:
    """A response read off a socket."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


def parse_raw(data: bytes) -> Raw:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    ]
    return Raw(status, headers, body)


def raw_exchange(port: int, data: bytes, *, half_close: bool = False) -> Raw | None:
    """Send ``data`` as is and read the answer until the server closes; ``None`` if it
    closed (or reset) without answering."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass  # a server may refuse a huge request before reading all of it
    received = b"".join(chunks)
    return parse_raw(received) if received else None


def request_bytes(
    method: str,
    path: str,
    headers: dict[str, bytes | str],
    body: bytes = b"",
    *,
    content_length: int | None = None,
) -> bytes:
    """An HTTP/1.1 request, byte for byte as given (no validation, no encoding)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in headers.items():
        lines.append(name.encode() + b": " + (value.encode() if isinstance(value, str) else value))
    if content_length is not None:
        lines.append(b"Content-Length: %d" % content_length)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def served_timeout() -> int:
    """gunicorn's worker timeout as ``userplane serve`` configures it."""
    from userplane.frontends.http.server import Server as Gunicorn

    return int(Gunicorn(Settings.from_mapping({})).cfg.timeout)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory: Path = tmp_path_factory.mktemp("hostile")
    with running_server(directory, f"sqlite:///{directory}/hostile.db", "sqlite") as srv:
        yield srv


def users_over_http(srv: Server) -> list[dict[str, Any]]:
    resp = srv.request("GET", "/api/v1/users/?include_deleted=true&limit=500")
    assert resp.status == 200, resp.body
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


@dataclass
class StalledUpload:
    sock: socket.socket
    started: float


@pytest.fixture(scope="module")
def stalled_upload(real_server: Server) -> Iterator[StalledUpload]:
    """A client that promised 1000 more body bytes than it sends, and keeps waiting."""
    body = b'{"email": "stalled@example.org", "full_name": "'
    data = request_bytes(
        "POST",
        USERS,
        {"Authorization": f"Bearer {real_server.key}", "Content-Type": JSON},
        body,
        content_length=len(body) + 1000,
    )
    sock = socket.create_connection(("127.0.0.1", real_server.port), timeout=REQUEST_TIMEOUT)
    sock.sendall(data)
    try:
        yield StalledUpload(sock, time.monotonic())
    finally:
        sock.close()  # before the server stops, so that no worker thread waits on it


@pytest.mark.e2e
def test_a_stalled_upload_does_not_stop_other_clients(
    real_server: Server, stalled_upload: StalledUpload
) -> None:
    started = time.monotonic()
    assert real_server.request("GET", "/health/live").status == 200
    created = real_server.request("POST", USERS, {"email": "meanwhile@example.org"})
    assert created.status == 201, created.body
    assert real_server.request("GET", created.headers["Location"]).json() == created.json()
    emails = [u["email"] for u in users_over_http(real_server)]
    assert "meanwhile@example.org" in emails
    assert "stalled@example.org" not in emails  # still waiting for its body
    assert time.monotonic() - started < REQUEST_TIMEOUT


@pytest.mark.e2e
def test_oversized_headers_are_refused_by_the_real_server(
    real_server: Server, stalled_upload: StalledUpload
) -> None:
    before = users_over_http(real_server)
    auth = {"Authorization": f"Bearer {real_server.key}", "Content-Type": JSON}
    body = b'{"email": "big-header@example.org"}'
    huge = "a" * 65536
    for name in ("Authorization", "X-Request-ID", "Idempotency-Key", "If-Match", "Cookie", "X-Pad"):
        data = request_bytes("POST", USERS, {**auth, name: huge}, body, content_length=len(body))
        resp = raw_exchange(real_server.port, data)
        # Refused by gunicorn before the app (431), or the connection is dropped.
        assert resp is None or resp.status == 431, (name, resp)
        assert resp is None or b"Traceback" not in resp.body
    # Long, but within gunicorn's field limit (8190): the app answers, as a problem.
    near = "a" * 8000
    for name, value, status in [
        ("Authorization", f"Bearer up_{near}", 401),
        ("Idempotency-Key", near, 422),
    ]:
        data = request_bytes("POST", USERS, {**auth, name: value}, body, content_length=len(body))
        resp = raw_exchange(real_server.port, data)
        assert resp is not None
        assert (resp.status, resp.header("Content-Type")) == (status, PROBLEM), (name, resp)
        assert near.encode() not in resp.body  # not echoed
    data = request_bytes("GET", "/health/live", {"X-Request-ID": near})
    resp = raw_exchange(real_server.port, data)
    assert resp is not None
    assert resp.status == 200
    assert FRESH_REQUEST_ID.fullmatch(resp.header("X-Request-ID") or "")
    assert users_over_http(real_server) == before
    assert real_server.proc.poll() is None


@pytest.mark.e2e
def test_header_injection_is_refused_on_the_wire(
    real_server: Server, stalled_upload: StalledUpload
) -> None:
    before = users_over_http(real_server)
    body = b'{"email": "injected@example.org"}'
    base: dict[str, bytes | str] = {
        "Authorization": f"Bearer {real_server.key}",
        "Content-Type": JSON,
    }
    for name in ("X-Request-ID", "Idempotency-Key"):
        for value in (b"a\rX-Injected: 1", b"a\nX-Injected: 1", b"a\r\n X-Injected: 1"):
            data = request_bytes(
                "POST", USERS, {**base, name: value}, body, content_length=len(body)
            )
            resp = raw_exchange(real_server.port, data)
            assert resp is not None, (name, value)
            assert resp.status == 400, (name, value, resp)
            assert resp.header("X-Injected") is None
            assert b"Traceback" not in resp.body
    # Well-formed on the wire, malformed as an id: replaced, never echoed.
    for value in ("<script>alert(1)</script>", "a%0d%0aX-Injected:%201", "id with spaces"):
        resp = raw_exchange(
            real_server.port, request_bytes("GET", "/nowhere", {"X-Request-ID": value})
        )
        assert resp is not None
        assert resp.status == 404
        assert resp.header("Content-Type") == PROBLEM
        request_id = resp.header("X-Request-ID") or ""
        assert FRESH_REQUEST_ID.fullmatch(request_id), request_id
        assert json.loads(resp.body)["request_id"] == request_id
        assert value.encode() not in resp.body
    assert users_over_http(real_server) == before


@pytest.mark.e2e
def test_protocol_abuse_gets_a_4xx_from_the_real_server(
    real_server: Server, stalled_upload: StalledUpload
) -> None:
    before = users_over_http(real_server)
    auth = f"Bearer {real_server.key}"
    body = b'{"email": "smuggled@example.org"}'
    json_headers: dict[str, bytes | str] = {"Authorization": auth, "Content-Type": JSON}
    chunked = b'21\r\n{"email": "smuggled@example.org"}\r\n0\r\n\r\n'
    cases: list[tuple[str, bytes, int, bool]] = [
        # (what, request, status, answered by the app as a problem)
        ("long path", request_bytes("GET", "/" + "a" * 9000, {}), 414, False),
        (
            "chunked POST",
            request_bytes("POST", USERS, {**json_headers, "Transfer-Encoding": "chunked"}, chunked),
            411,
            True,
        ),
        (
            "chunked PATCH",
            request_bytes(
                "PATCH",
                f"/api/v1/users/{uuid.uuid4()}",
                {**json_headers, "Transfer-Encoding": "chunked"},
                b"2\r\n{}\r\n0\r\n\r\n",
            ),
            411,
            True,
        ),
        (
            "Content-Length with Transfer-Encoding",
            request_bytes(
                "POST",
                USERS,
                {**json_headers, "Transfer-Encoding": "chunked"},
                chunked,
                content_length=len(body),
            ),
            400,
            False,
        ),
        (
            "two Content-Lengths",
            request_bytes(
                "POST",
                USERS,
                {**json_headers, "Content-Length": str(len(body) - 1)},
                body,
                content_length=len(body),
            ),
            400,
            False,
        ),
        (
            "negative Content-Length",
            request_bytes("POST", USERS, {**json_headers, "Content-Length": "-1"}, body),
            400,
            False,
        ),
        (
            "Content-Length not a number",
            request_bytes("POST", USERS, {**json_headers, "Content-Length": "1e3"}, body),
            400,
            False,
        ),
        (
            "Content-Length of 10**20",
            request_bytes("POST", USERS, json_headers, body, content_length=10**20),
            413,
            True,
        ),
        (
            "Content-Length past the limit, body never sent",
            request_bytes("POST", USERS, json_headers, b"{", content_length=70000),
            413,
            True,
        ),
    ]
    for what, data, status, app in cases:
        resp = raw_exchange(real_server.port, data)
        assert resp is not None, what
        assert resp.status == status, (what, resp)
        assert b"Traceback" not in resp.body
        if app:
            assert resp.header("Content-Type") == PROBLEM, what
            problem = json.loads(resp.body)
            assert problem["status"] == status
            assert problem["request_id"] == resp.header("X-Request-ID")
            assert problem["detail"]
    assert users_over_http(real_server) == before
    assert real_server.request("GET", "/health/live").status == 200


def _post_short_of_its_length(server: Server, body: bytes) -> bytes:
    """A user POST whose Content-Length announces 50 bytes more than ``body``."""
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": JSON}
    return request_bytes("POST", USERS, headers, body, content_length=len(body) + 50)


@pytest.mark.e2e
def test_a_body_shorter_than_its_length_is_a_400_once_the_client_stops_sending(
    real_server: Server, stalled_upload: StalledUpload
) -> None:
    before = users_over_http(real_server)
    data = _post_short_of_its_length(real_server, b'{"email": "short@example.org", "full_')
    started = time.monotonic()
    resp = raw_exchange(real_server.port, data, half_close=True)
    assert time.monotonic() - started < REQUEST_TIMEOUT
    assert resp is not None
    assert resp.status == 400, resp
    assert resp.header("Content-Type") == PROBLEM
    assert users_over_http(real_server) == before


@pytest.mark.e2e
def test_a_truncated_body_is_never_processed(
    real_server: Server, stalled_upload: StalledUpload
) -> None:
    before = users_over_http(real_server)
    # A whole JSON object, but the client meant to send 50 bytes more.
    data = _post_short_of_its_length(real_server, b'{"email": "truncated@example.org"}')
    resp = raw_exchange(real_server.port, data, half_close=True)
    assert resp is not None
    added = [u for u in users_over_http(real_server) if u not in before]
    assert (resp.status, added) == (400, []), resp.body


# -- bodies --------------------------------------------------------------------------------


def test_oversized_bodies_are_413_on_every_route_and_method(
    hostile: Hostile, registry: Registry, world: World
) -> None:
    limit = registry.settings.max_body_bytes
    valid = b'{"email": "big@example.org"}'
    body = valid + b" " * (limit + 1 - len(valid))  # valid JSON, one byte too many
    for path in every_path(world):
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            hostile.send("oversized", method, path, body=body, expect=413)
    hostile.check()


CONTENT_TYPES: list[tuple[str | None, bytes]] = [
    ("text/plain", b'{"email": "ct@example.org"}'),
    ("application/x-www-form-urlencoded", b"email=ct%40example.org"),
    (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="email"\r\n\r\n'
        b"ct@example.org\r\n--xyz--\r\n",
    ),
    (None, b'{"email": "ct@example.org"}'),
    ("application/xml", b"<user><email>ct@example.org</email></user>"),
    ("text/json", b'{"email": "ct@example.org"}'),
    ("application/jsonx", b'{"email": "ct@example.org"}'),
    ("application/problem+json", b'{"email": "ct@example.org"}'),
    ("application/json, text/plain", b'{"email": "ct@example.org"}'),
    ("*/*", b'{"email": "ct@example.org"}'),
    ("", b'{"email": "ct@example.org"}'),
]


def test_bodies_that_are_not_json_are_415_on_every_route(hostile: Hostile, world: World) -> None:
    for path in every_path(world):
        for method in ("POST", "PUT", "PATCH"):
            for content_type, body in CONTENT_TYPES:
                hostile.send(
                    f"Content-Type {content_type!r}",
                    method,
                    path,
                    body=body,
                    content_type=content_type,
                    expect=415,
                )
    hostile.check()


def _nested_objects(depth: int) -> bytes:
    return b'{"email": "a@example.org", "x": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


#: Bodies that are not (acceptable) JSON at all: 400 before any field is looked at.
MALFORMED: list[tuple[str, bytes, str]] = [
    ("objects nested past the bound", _nested_objects(MAX_DEPTH + 1), JSON),
    ("objects nested 5000 deep", _nested_objects(5000), JSON),
    ("invalid UTF-8", b'{"email": "\xff\xfe@example.org"}', JSON),
    ("overlong UTF-8", b'{"email": "\xc0\xafa@example.org"}', JSON),
    ("truncated UTF-8", b'{"full_name": "\xe2\x82"}', JSON),
    ("UTF-8 encoded surrogate", b'{"full_name": "\xed\xa0\x80"}', JSON),
    ("lone surrogate escape", b'{"full_name": "\\ud800"}', JSON),
    ("Latin-1 body", '{"full_name": "Zoë"}'.encode("latin-1"), JSON),
    (
        "UTF-16 with its charset",
        '{"email": "a@example.org"}'.encode("utf-16"),
        f"{JSON}; charset=utf-16",
    ),
    ("raw NUL in a string", b'{"full_name": "a\x00b"}', JSON),
    ("raw control character in a string", b'{"full_name": "a\x1bb"}', JSON),
    ("1e999", b'{"email": "a@example.org", "is_active": 1e999}', JSON),
    ("-1e999", b'{"email": "a@example.org", "is_active": -1e999}', JSON),
    ("10**400 as digits", b'{"email": "a@example.org", "is_active": 1' + b"0" * 400 + b"}", JSON),
    ("-10**400 as digits", b'{"email": "a@example.org", "is_active": -1' + b"0" * 400 + b"}", JSON),
    ("NaN", b'{"email": "a@example.org", "is_active": NaN}', JSON),
    ("Infinity", b'{"email": "a@example.org", "is_active": Infinity}', JSON),
    ("-Infinity", b'{"email": "a@example.org", "is_active": -Infinity}', JSON),
    ("empty body", b"", JSON),
    ("whitespace only", b" \n\t ", JSON),
    ("BOM first", b'\xef\xbb\xbf{"email": "a@example.org"}', JSON),
    ("duplicate key", b'{"email": "a@example.org", "email": "b@example.org"}', JSON),
    (
        "duplicate key by escape",
        b'{"email": "a@example.org", "\\u0065mail": "b@example.org"}',
        JSON,
    ),
    ("duplicate key, nested", b'{"email": "a@example.org", "x": {"k": 1, "k": 2}}', JSON),
    ("duplicate key in a list", b'[{"email": "a@example.org", "email": "b@example.org"}]', JSON),
    ("trailing garbage", b'{"email": "a@example.org"} x', JSON),
    ("two documents", b'{"email": "a@example.org"}{"email": "b@example.org"}', JSON),
    ("comment", b'{"email": "a@example.org" /* hi */}', JSON),
    ("single quotes", b"{'email': 'a@example.org'}", JSON),
    ("trailing comma", b'{"email": "a@example.org",}', JSON),
    ("unquoted key", b'{email: "a@example.org"}', JSON),
    ("hex number", b'{"email": "a@example.org", "is_active": 0x1}', JSON),
    ("leading zero", b'{"email": "a@example.org", "is_active": 01}', JSON),
    ("plus sign", b'{"email": "a@example.org", "is_active": +1}', JSON),
    ("value too long", b'{"full_name": "' + b"a" * (MAX_STRING + 1) + b'"}', JSON),
    ("key too long", b'{"' + b"k" * (MAX_STRING + 1) + b'": 1}', JSON),
    ("unterminated", b'{"email": "a@example.org"', JSON),
]


def test_malformed_json_is_a_400_on_every_body_route(hostile: Hostile, world: World) -> None:
    for label, body, content_type in MALFORMED:
        for method, path in (("POST", USERS), ("PATCH", world.ann_path)):
            hostile.send(label, method, path, body=body, content_type=content_type, expect=400)
    hostile.check()


#: Well-formed JSON of the wrong shape: 422 naming the field. Objects are merged into
#: a valid create (``POST``) or sent as they are (``PATCH``).
TOP_LEVEL: list[tuple[str, Any]] = [
    ("empty list", []),
    ("list of a user", [{"email": "a@example.org"}]),
    ("string", "a@example.org"),
    ("number", 1),
    ("float", 1.5),
    ("true", True),
    ("null", None),
]
WRONG_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    *[(f"email as {v!r}", {"email": v}, "$.email") for v in (1, 1.5, [], ["a@example.org"], {})],
    ("email as an operator object", {"email": {"$ne": ""}}, "$.email"),
    ("email null", {"email": None}, "$.email"),
    ("email true", {"email": True}, "$.email"),
    *[(f"is_active as {v!r}", {"is_active": v}, "$.is_active") for v in ("true", 1, 0, None, [])],
    *[(f"full_name as {v!r}", {"full_name": v}, "$.full_name") for v in ([], {}, 1, True)],
    *[
        (f"unknown field {k!r}", {k: v}, f"$.{k}")
        for k, v in [
            ("id", str(uuid.uuid4())),
            ("version", 99),
            ("created_at", "2000-01-01T00:00:00Z"),
            ("updated_at", "2000-01-01T00:00:00Z"),
            ("deleted_at", None),
            ("is_admin", True),
            ("role", "admin"),
            ("__proto__", {"is_admin": True}),
            ("constructor", {}),
            ("", 1),
            ("Email", "b@example.org"),
            ("email ", "b@example.org"),
        ]
    ],
    ("NUL in the email", {"email": "a\u0000b@example.org"}, "$.email"),
    ("NUL in the name", {"full_name": "a\u0000b"}, "$.full_name"),
    ("terminal escape in the name", {"full_name": "\u001b[2J\u001b[31mAnn"}, "$.full_name"),
    ("CR/LF in the email", {"email": "a\r\nBcc: evil@example.org"}, "$.email"),
    ("SQL as the email", {"email": "' OR 1=1 --"}, "$.email"),
    ("SQL after the email", {"email": "x@example.org'; DROP TABLE users; --"}, "$.email"),
    ("email too long", {"email": "a" * 300 + "@example.org"}, "$.email"),
    ("name too long", {"full_name": "a" * 201}, "$.full_name"),
    ("name too long once normalised", {"full_name": "\ufdfa" * 30}, "$.full_name"),
    ("blank name", {"full_name": "   "}, "$.full_name"),
]


def test_json_of_the_wrong_shape_is_a_422_naming_the_field(hostile: Hostile, world: World) -> None:
    for label, value in TOP_LEVEL:
        body = orjson.dumps(value)
        for method, path in (("POST", USERS), ("PATCH", world.ann_path)):
            hostile.send(f"top-level {label}", method, path, body=body, expect=422, field="$")
    for label, fields, field in WRONG_FIELDS:
        created = orjson.dumps({"email": "new@example.org", **fields})
        hostile.send(label, "POST", USERS, body=created, expect=422, field=field)
        hostile.send(
            label, "PATCH", world.ann_path, body=orjson.dumps(fields), expect=422, field=field
        )
    hostile.check()


def test_sql_in_values_is_stored_as_plain_data(
    client: testing.TestClient, registry: Registry, world: World
) -> None:
    names = ["Robert'); DROP TABLE users;--", "' OR '1'='1", "%_\\"]
    for i, name in enumerate(names):
        resp = client.simulate_post(
            USERS, json={"email": f"o'hara{i}@example.org", "full_name": name}
        )
        assert resp.status_code == 201, resp.text
        assert resp.json["full_name"] == name
    emails = sorted(u.email for u in snapshot(registry))
    assert emails == sorted(
        ["ann@example.org", "bob@example.org", "cid@example.org"]
        + [f"o'hara{i}@example.org" for i in range(len(names))]
    )
    found = client.simulate_get(USERS, params={"q": "DROP TABLE"}).json["items"]
    assert [u["full_name"] for u in found] == [names[0]]


# -- headers -------------------------------------------------------------------------------


def test_garbage_credentials_are_401_on_every_protected_route(
    hostile: Hostile, registry: Registry, world: World
) -> None:
    key = new_key(registry)
    garbage = [
        "garbage",
        "Bearer",
        "Bearer ",
        "Bearer up_",
        "Bearer up_" + "A" * 44,
        "Bearer up_' OR 1=1 --",
        "Bearer \x00",
        "Bearer a\r\nX-Injected: 1",
        "Basic YWRtaW46YWRtaW4=",
        f"Token {key}",
        f"Basic {key}",
        f"Bearer {key}x",
        f"Bearer {key[:-1]}",
        f"Bearer {key.upper()}",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiIsInJvbGVzIjpbImFkbWluIl19.",
        wire("Bearer up_\u00e9\u043a\u043b\u044e\u0447"),
        "Bearer " + "a" * 65536,
    ]
    for method, path, body in protected_requests(world):
        for value in garbage:
            resp = hostile.send(
                f"Authorization {value[:30]!r}",
                method,
                path,
                body=body,
                headers={"Authorization": value},
                expect=401,
            )
            challenge = resp.headers.get("WWW-Authenticate") or ""
            if not challenge.startswith('Bearer realm="userplane"'):
                hostile.fail(value[:30], f"{method} {path}: WWW-Authenticate {challenge!r}")
            if "X-Injected" in resp.headers or "X-Injected" in resp.text:
                hostile.fail(value[:30], f"{method} {path}: the injected header came back")
    hostile.check()


#: Request ids that ``RequestId`` must replace (and so never echo).
BAD_REQUEST_IDS = [
    "a\r\nX-Injected: 1",
    "a\nX-Injected: 1",
    "x" * 129,
    "a" * 65536,
    wire("\u00e9t\u00e9"),
    "a b",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "a;b",
    "",
    "\x00",
]


def test_malformed_request_ids_are_replaced_on_every_route(
    client: testing.TestClient, world: World
) -> None:
    failures = []
    for path in every_path(world):
        # A query parameter no route accepts: a problem on the API, ignored elsewhere.
        for given in BAD_REQUEST_IDS:
            resp = client.simulate_get(
                path, query_string="no_such_param=1", headers={"X-Request-ID": given}
            )
            answered = resp.headers.get("X-Request-ID") or ""
            where = f"GET {path} with X-Request-ID {given[:30]!r}"
            if resp.status_code >= 500:
                failures.append(f"{where}: status {resp.status_code}")
            if not FRESH_REQUEST_ID.fullmatch(answered):
                failures.append(f"{where}: answered with X-Request-ID {answered[:60]!r}")
            if "X-Injected" in resp.headers:
                failures.append(f"{where}: the injected header came back")
            if resp.headers.get("Content-Type") == PROBLEM:
                if resp.json.get("request_id") != answered:
                    failures.append(f"{where}: problem request_id {resp.json.get('request_id')!r}")
                if given and given in resp.text:
                    failures.append(f"{where}: echoed in the body")
    # The control: a well-formed id is kept.
    assert (
        client.simulate_get("/nowhere", headers={"X-Request-ID": "req-42"}).json["request_id"]
        == "req-42"
    )
    assert not failures, "\n".join(failures)


def test_hostile_idempotency_keys_are_422_and_not_echoed(hostile: Hostile) -> None:
    keys = [
        "a\r\nX-Injected: 1",
        "a\nX-Injected: 1",
        "\x00",
        "key\x00suffix",
        wire("\u00e9"),
        wire("\u043a\u043b\u044e\u0447"),
        "with space",
        "tab\there",
        "k" * 256,
        "k" * 65536,
        "",
        "\x7f",
    ]
    for key in keys:
        resp = hostile.send(
            f"Idempotency-Key {key[:30]!r}",
            "POST",
            USERS,
            body=b'{"email": "idem@example.org"}',
            headers={"Idempotency-Key": key},
            expect=422,
            field="Idempotency-Key",
        )
        if len(key) > 2 and key in resp.text:
            hostile.fail(key[:30], "the key was echoed in the body")
        if "X-Injected" in resp.headers or "Idempotent-Replayed" in resp.headers:
            hostile.fail(key[:30], f"unexpected headers {dict(resp.headers)}")
    hostile.check()


def test_garbage_if_match_is_a_412_and_if_none_match_is_ignored(
    hostile: Hostile, world: World
) -> None:
    tags = [
        "garbage",
        '"',
        'W/"1"',
        '"abc"',
        '""',
        '"-1"',
        '"1.0"',
        '"+1"',
        '" 1"',
        '"0"',
        '"2"',
        "*garbage",
        '"1' + "\x00" + '"',
        "a" * 65536,
        '"' + "a" * 65536 + '"',
    ]
    user = hostile.client.simulate_get(world.ann_path).json
    for tag in tags:
        label = f"If-Match {tag[:30]!r}"
        patch = b'{"full_name": "Overwritten"}'
        hostile.send(
            label, "PATCH", world.ann_path, body=patch, headers={"If-Match": tag}, expect=412
        )
        hostile.send(label, "DELETE", world.ann_path, headers={"If-Match": tag}, expect=412)
        if tag == 'W/"1"':
            continue  # If-None-Match compares weakly: that one matches (304)
        # If-None-Match that matches nothing: the user, as it is.
        resp = hostile.client.simulate_get(world.ann_path, headers={"If-None-Match": tag})
        if (resp.status_code, resp.json) != (200, user):
            hostile.fail(label, f"If-None-Match: {resp.status_code} {resp.text[:200]!r}")
    hostile.check()


#: Entity tags no ETag of ours equals (strong comparison is character by character):
#: each once let a write through or made a 500.
IF_MATCH_NEVER: dict[str, str] = {
    '"\u00b2"': "superscript",
    '"1\u00b9"': "digit-superscript",
    '"2147483648"': "2^31",
    '"9223372036854775808"': "2^63",
    '"' + "9" * 40 + '"': "10^40",
    '"01"': "01",
    '"*"': "quoted-star",
    'W/"*"': "weak-star",
}


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("tag", list(IF_MATCH_NEVER), ids=list(IF_MATCH_NEVER.values()))
def test_an_if_match_that_no_etag_equals_is_a_412(
    hostile: Hostile, world: World, method: str, tag: str
) -> None:
    body = b'{"full_name": "Overwritten"}' if method == "PATCH" else None
    headers = {"If-Match": tag}
    hostile.send("If-Match", method, world.ann_path, body=body, headers=headers, expect=412)
    hostile.check()


# -- paths ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # wsgiref's lint, on FOO
def test_malformed_ids_and_unknown_paths_are_404_problems(hostile: Hostile, world: World) -> None:
    bad_ids = [
        "not-a-uuid",
        "00000000-0000-0000-0000-00000000000",
        "00000000-0000-0000-0000-0000000000000",
        "' OR 1=1 --",
        "1; DROP TABLE users",
        "%00",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e",
        "a" * 10000,
        f"{world.ann.id};DROP TABLE users",
        f"{world.ann.id}%00",
        str(uuid.uuid4()),  # well formed, nobody
        str(world.bob.id),  # deleted: hidden
    ]
    patch = b'{"full_name": "Overwritten"}'
    for bad in bad_ids:
        path = f"/api/v1/users/{bad}"
        for method, body in [("GET", None), ("HEAD", None), ("PATCH", patch), ("DELETE", None)]:
            hostile.send(f"id {bad[:30]!r}", method, path, body=body, expect=404)
        if bad != str(world.bob.id):  # restoring a deleted user is what restore is for
            hostile.send(f"id {bad[:30]!r}", "POST", f"{path}/restore", expect=404)
    for path in [
        "/api/v1/users/x/y/z",
        f"/api/v1/users/{world.ann.id}/restore/x",
        "/api/v2/users/",
        "/api/v1/users/%2e%2e/%2e%2e/",
        "/" + "a" * 100_000,
        "/api/v1/users/" + "/" * 1000,
    ]:
        hostile.send("unknown path", "GET", path, expect=404)
    hostile.send("wrong method", "PUT", world.ann_path, body=patch, expect=405)
    hostile.send("wrong method", "DELETE", USERS, expect=405)
    hostile.send("wrong method", "TRACE", world.ann_path, expect=405)
    hostile.send("wrong method", "GET", world.restore_path, expect=405)
    hostile.send("made-up method", "FOO", world.ann_path, expect=(400, 405))
    hostile.check()


def test_static_path_traversal_never_serves_a_file(hostile: Hostile) -> None:
    paths = [
        "/static/../pyproject.toml",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fcore/settings.py",
        "/static/..%2f..%2f..%2fpyproject.toml",
        "/static/....//....//etc/passwd",
        "/static/..\\..\\pyproject.toml",
        "/static/%252e%252e/%252e%252e/etc/passwd",
        "/static//etc/passwd",
        "/static/style.css/../../app.py",
        "/static/%00",
        "/static/style.css%00.py",
        "/static/" + "a" * 10000,
    ]
    for path in paths:
        resp = hostile.send("traversal", "GET", path, expect=(400, 403, 404))
        for marker in FILE_MARKERS:
            if marker in resp.content:
                hostile.fail(path, f"file content {marker!r} in the body")
    ok = hostile.client.simulate_get("/static/style.css")
    assert ok.status_code == 200  # the control: static files are served
    hostile.check()


def test_every_problem_has_the_documented_detail(client: testing.TestClient, world: World) -> None:
    missing = []
    for method, path in [
        ("GET", "/nowhere"),
        ("GET", "/static/nothing.css"),
        ("GET", "/api/v1/users/not-a-uuid"),
        ("PUT", world.ann_path),
        ("DELETE", USERS),
    ]:
        resp = client.simulate_request(method, path)
        assert 400 <= resp.status_code < 500
        if not resp.json.get("detail"):
            missing.append(f"{method} {path}: {resp.status_code} {resp.text}")
    assert not missing, "\n".join(missing)


# -- query strings and cursors ---------------------------------------------------------------

LIST_QUERIES: list[tuple[str, str]] = [
    *[
        (f"limit={v}", "$.limit")
        for v in ("0", "-1", "501", str(10**30), "abc", "", "1.5", "1e3", "0x10", "NaN", "9" * 5000)
    ],
    ("limit=%27%20OR%201%3D1%20--", "$.limit"),
    ("limit=1;DROP%20TABLE%20users", "$.limit"),
    *[(f"{p}=a&{p}=b", f"$.{p}") for p in ("limit", "q", "cursor", "sort", "email")],
    ("include_deleted=true&include_deleted=false", "$.include_deleted"),
    ("is_active=true&is_active=true", "$.is_active"),
    ("foo=bar", "$.foo"),
    ("LIMIT=5", "$.LIMIT"),
    ("limit%5B%5D=1", "$.limit[]"),
    ("__proto__=x", "$.__proto__"),
    ("password=x", "$.password"),
    *[(f"include_deleted={v}", "$.include_deleted") for v in ("maybe", "1", "yes", "", "%00")],
    *[(f"is_active={v}", "$.is_active") for v in ("maybe", "0", "")],
    *[
        (f"sort={v}", "$.sort")
        for v in (
            "%27%20OR%201%3D1%20--",
            "%3B%20DROP%20TABLE%20users%3B",
            "email%3B%20DROP%20TABLE%20users",
            "email%20DESC",
            "created_at,email",
            "-",
            "--email",
            "id",
            "password",
            "%00",
            "x" * 5000,
        )
    ],
    *[
        (f"email={v}", "$.email")
        for v in (
            "%27%20OR%201%3D1%20--",
            "%3B%20DROP%20TABLE%20users%3B",
            "a%00b%40example.org",
            "*",
            "%25",
            "x" * 5000,
        )
    ],
    ("q=" + "x" * 201, "$.q"),
    ("cursor=%27%20OR%201%3D1%20--", "$.cursor"),
    ("cursor=%3B%20DROP%20TABLE%20users%3B", "$.cursor"),
]


def test_hostile_list_queries_are_422_naming_the_parameter(hostile: Hostile) -> None:
    for query, field in LIST_QUERIES:
        hostile.send("list query", "GET", USERS, query=query, expect=422, field=field)
        hostile.send("list query", "HEAD", USERS, query=query, expect=422)
    hostile.check()


def test_hostile_queries_on_one_user_are_422_naming_the_parameter(
    hostile: Hostile, world: World
) -> None:
    for query, field in [
        ("include_deleted=maybe", "$.include_deleted"),
        ("include_deleted=true&include_deleted=true", "$.include_deleted"),
        ("include_deleted=%27%20OR%201%3D1%20--", "$.include_deleted"),
        ("limit=1", "$.limit"),
        ("id=" + str(world.bob.id), "$.id"),
    ]:
        for method in ("GET", "HEAD"):
            field_ = field if method == "GET" else None
            hostile.send("get query", method, world.ann_path, query=query, expect=422, field=field_)
    hostile.check()


def test_sql_and_wildcards_in_q_match_only_literally(
    client: testing.TestClient, world: World
) -> None:
    for q in [
        "' OR 1=1 --",
        "; DROP TABLE users;",
        "' OR ''='",
        "%",
        "_",
        "%%",
        "\\",
        "*",
        "ann' --",
    ]:
        resp = client.simulate_get(USERS, params={"q": q, "include_deleted": "true"})
        assert (resp.status_code, resp.json["items"]) == (200, []), q
    assert [u["email"] for u in client.simulate_get(USERS, params={"q": "ANN"}).json["items"]] == [
        "ann@example.org"
    ]


def _cursor(client: testing.TestClient, query: str) -> str:
    page = client.simulate_get(USERS, query_string=f"limit=1&{query}").json
    assert page["next"], page
    cursor: str = page["next"]
    return cursor


def test_tampered_cursors_are_422_naming_cursor_without_internals(
    hostile: Hostile, world: World
) -> None:
    by_time = _cursor(hostile.client, "sort=created_at")
    by_email = _cursor(hostile.client, "sort=email")
    an_id = str(uuid.uuid4())
    now = "2030-01-01T00:00:00+00:00"
    flipped = ("X" if by_time[0] != "X" else "Y") + by_time[1:]
    cursors: list[tuple[str, str, str]] = [
        # (what, cursor, the sort it is sent with)
        ("truncated", by_time[: len(by_time) // 2], "created_at"),
        ("first character changed", flipped, "created_at"),
        ("with garbage appended", by_time + "!!", "created_at"),
        ("from another sort", by_email, "created_at"),
        ("from another direction", by_time, "-created_at"),
        ("email cursor read by name", by_email, "full_name"),
        ("not base64", "!!!!", "created_at"),
        ("padding only", "====", "created_at"),
        ("one character", "a", "created_at"),
        ("non-ASCII", wire("\u00e9\u00e9\u00e9\u00e9"), "created_at"),
        ("too long", "A" * (MAX_CURSOR + 1), "created_at"),
        ("base64 of garbage", b64(b"\x00\xff\xfe garbage"), "created_at"),
        ("base64 of invalid UTF-8", b64(b'["created_at","\xff","x"]'), "created_at"),
        ("base64 of an empty list", b64(b"[]"), "created_at"),
        ("base64 of an object", b64(b'{"sort": "created_at"}'), "created_at"),
        ("base64 of a string", b64(b'"created_at"'), "created_at"),
        ("base64 of null", b64(b"null"), "created_at"),
        ("numbers", b64(b"[1, 2, 3]"), "created_at"),
        ("four parts", b64(json.dumps(["created_at", now, an_id, "x"]).encode()), "created_at"),
        (
            "naive time",
            b64(json.dumps(["created_at", "2030-01-01T00:00:00", an_id]).encode()),
            "created_at",
        ),
        ("not a time", b64(json.dumps(["created_at", "yesterday", an_id]).encode()), "created_at"),
        (
            "time past UTC",
            b64(json.dumps(["created_at", "9999-12-31T23:59:59-14:00", an_id]).encode()),
            "created_at",
        ),
        ("not an id", b64(json.dumps(["created_at", now, "' OR 1=1 --"]).encode()), "created_at"),
        (
            "SQL as the sort",
            b64(json.dumps(["email; DROP TABLE users", "a", an_id]).encode()),
            "email",
        ),
        (
            "SQL as the key",
            b64(json.dumps(["created_at", "' OR 1=1 --", an_id]).encode()),
            "created_at",
        ),
    ]
    for what, cursor, sort in cursors:
        query = f"sort={sort}&cursor={cursor}"
        hostile.send(f"cursor {what}", "GET", USERS, query=query, expect=422, field="$.cursor")
    hostile.check()


def test_a_forged_cursor_moves_the_page_but_never_widens_it(
    client: testing.TestClient, world: World
) -> None:
    # Cursors are not signed: a well-formed one made by hand is a position like any other.
    # It can only say where a page starts; the filters (deleted users) still hold.
    forged = b64(
        json.dumps(["created_at", "1970-01-01T00:00:00+00:00", str(uuid.UUID(int=0))]).encode()
    )
    resp = client.simulate_get(USERS, query_string=f"cursor={forged}")
    assert resp.status_code == 200
    assert [u["email"] for u in resp.json["items"]] == ["ann@example.org", "cid@example.org"]
    # In a personal order a cursor's position is its user: a key in it (what earlier
    # releases put there) is never read, so it cannot reach the database.
    ann = client.simulate_get(USERS, query_string="email=ann@example.org").json["items"][0]
    key_sql = b64(json.dumps(["email", "' OR 1=1 --", ann["id"]]).encode())
    resp = client.simulate_get(USERS, query_string=f"sort=email&cursor={key_sql}")
    assert resp.status_code == 200
    assert [u["email"] for u in resp.json["items"]] == ["cid@example.org"]
    nobody = b64(json.dumps(["email", str(uuid.UUID(int=0))]).encode())
    resp = client.simulate_get(USERS, query_string=f"sort=email&cursor={nobody}")
    assert resp.status_code == 422
    assert resp.json["errors"][0]["field"] == "$.cursor"


def test_a_deeply_nested_cursor_is_a_422_not_a_500(hostile: Hostile) -> None:
    cursor = b64(b"[" * 1700)
    assert len(cursor) <= MAX_CURSOR
    hostile.send(
        "nested cursor", "GET", USERS, query=f"cursor={cursor}", expect=422, field="$.cursor"
    )
    hostile.check()


@pytest.mark.parametrize("sort", ["email", "full_name"])
def test_a_cursor_key_with_a_lone_surrogate_is_a_422_not_a_500(hostile: Hostile, sort: str) -> None:
    cursor = b64(f'["{sort}","\\ud800","{uuid.UUID(int=0)}"]'.encode())
    query = f"sort={sort}&cursor={cursor}"
    hostile.send("surrogate cursor", "GET", USERS, query=query, expect=422, field="$.cursor")
    hostile.check()


@pytest.mark.parametrize("sort", ["email", "full_name"])
def test_a_cursor_key_with_nul_is_not_a_500(
    client: testing.TestClient,
    registry: Registry,
    world: World,
    sort: str,
) -> None:
    before = snapshot(registry)
    cursor = b64(json.dumps([sort, "a\u0000b", str(uuid.UUID(int=0))]).encode())
    resp = client.simulate_get(USERS, query_string=f"sort={sort}&cursor={cursor}")
    # No issued cursor holds NUL (names refuse control characters): refusing it is right,
    # and so is reading it as a position, as SQLite does.
    assert resp.status_code in (200, 422), resp.text
    if resp.status_code == 422:
        assert complaints(resp, 422, "GET", "$.cursor") == []
    assert snapshot(registry) == before


def test_nul_in_q_is_not_a_500(
    client: testing.TestClient, registry: Registry, world: World
) -> None:
    before = snapshot(registry)
    resp = client.simulate_get(USERS, query_string="q=ann%00")
    assert resp.status_code in (200, 422), resp.text
    if resp.status_code == 200:
        assert resp.json["items"] == []
    else:
        assert complaints(resp, 422, "GET", "$.q") == []
    assert snapshot(registry) == before


# -- last: the stalled upload, judged once everything above has run meanwhile ---------------


@pytest.mark.e2e
def test_a_stalled_upload_is_answered_or_closed_within_the_gunicorn_timeout(
    real_server: Server, stalled_upload: StalledUpload
) -> None:
    timeout = served_timeout()
    deadline = stalled_upload.started + timeout + 1  # a second for scheduling
    sock = stalled_upload.sock
    sock.settimeout(max(deadline - time.monotonic(), 0.1))
    try:
        answer = sock.recv(65536)
    except TimeoutError:
        waited = time.monotonic() - stalled_upload.started
        pytest.fail(f"no answer and still connected after {waited:.0f}s (timeout {timeout}s)")
    except ConnectionResetError:
        answer = b""
    if answer:  # answered: must be a 4xx (408 or 400), never a success or a 500
        assert 400 <= parse_raw(answer).status < 500, answer[:300]
    assert real_server.request("GET", "/health/live").status == 200
