"""The OpenAPI document: valid 3.1, in step with the routes, and kept by the server."""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import falcon
import schemathesis
from clients import new_key
from falcon import inspect, testing
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from userplane import Registry, Settings
from userplane.frontends.http import create_app
from userplane.frontends.http.openapi import document
from userplane.pagination import SORT_FIELDS, Position, Sort, encode_cursor
from userplane.users import NewUser

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _documented(doc: dict[str, object]) -> set[tuple[str, str]]:
    ops = set()
    for path, item in doc["paths"].items():  # type: ignore[attr-defined]
        for method in item:
            if method.upper() in HTTP_METHODS:
                ops.add((path.rstrip("/") or "/", method.upper()))
    return ops


def _served(app: falcon.App) -> set[tuple[str, str]]:
    ops = set()
    for route in inspect.inspect_routes(app):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods:
            if method.method in HTTP_METHODS and not method.internal:
                ops.add((path.rstrip("/") or "/", method.method))
    return ops


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_operations_with_a_query_declare_the_414_of_a_long_request_line() -> None:
    doc = document()
    with_query = [
        (path, method)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method.upper() in HTTP_METHODS
        and any(p.get("in") == "query" for p in operation.get("parameters", []))
    ]
    assert ("/api/v1/users/", "get") in with_query
    for path, method in with_query:
        responses = doc["paths"][path][method]["responses"]
        assert responses.get("414") == {"$ref": "#/components/responses/414"}, (path, method)
    too_long = doc["components"]["responses"]["414"]
    assert too_long["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    # The limit it names is the one userplane serve runs with.
    from userplane.frontends.http.server import Server

    limit = Server(Settings.from_mapping({})).cfg.limit_request_line
    assert f"over {limit} bytes" in too_long["description"]


def test_every_route_is_documented_and_every_documented_operation_exists(
    client: testing.TestClient,
) -> None:
    app = client.app
    served = _served(app)
    assert served == _documented(document())


def test_the_document_is_served(client: testing.TestClient) -> None:
    resp = client.simulate_get("/api/v1/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json == document()


def test_the_docs_page_is_offline_html(client: testing.TestClient) -> None:
    resp = client.simulate_get("/docs")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert "<script" not in resp.text
    assert "http://" not in resp.text
    assert "https://" not in resp.text
    for operation_id in ("POST /api/v1/users/", "PATCH /api/v1/users/{user_id}"):
        assert operation_id in resp.text
    assert "Idempotency-Key" in resp.text


def _fuzzed_app() -> falcon.App:
    # schemathesis needs its schema when the module is collected: the app is made
    # here, on a SQLite file of its own that lives as long as the test process.
    directory = Path(tempfile.mkdtemp(prefix="userplane-fuzz-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    settings_ = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{directory}/f.db"})
    registry = Registry(settings_)
    registry.migrate()
    atexit.register(registry.close)
    # A cursor in a personal order continues from a user: one that stays, for them.
    anchor = registry.users.create(NewUser("anchor@example.org", "Anchor"))
    return create_app(registry), new_key(registry), anchor.id


_app, _key, _anchor = _fuzzed_app()
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _app)


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_keeps_every_promise_of_the_document(case: schemathesis.Case) -> None:
    _as_a_client_would(case)
    case.call_and_validate(headers={"Authorization": f"Bearer {_key}"})


def _as_a_client_would(case: schemathesis.Case) -> None:
    """Replace the two values no schema can describe with ones a real client would send.

    A cursor is opaque: clients send back the ones they were given, so a
    schema-valid cursor becomes one the service issued. An Idempotency-Key is
    new for each new request: a generated key repeated with another body is a
    misuse (a 422, tested on its own). Values that break the schema are left
    alone, so negative cases stay negative.
    """
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(r"[!-~]{1,255}", key):
        case.headers = {**(case.headers or {}), "Idempotency-Key": uuid.uuid4().hex}
    query = case.query or {}
    cursor = query.get("cursor")
    if isinstance(cursor, str) and 1 <= len(cursor) <= 2400:
        sort_text = query.get("sort", "created_at")
        sort = (
            Sort.parse(sort_text) if isinstance(sort_text, str) and sort_text in _SORTS else Sort()
        )
        if sort.field == "created_at":
            position = Position(datetime.now(UTC), uuid.uuid4())
        else:  # the position is the user's own: a cursor names a user that exists
            position = Position(None, _anchor)
        case.query = {**query, "cursor": encode_cursor(sort, position)}


_SORTS = {*SORT_FIELDS, *(f"-{f}" for f in SORT_FIELDS)}
