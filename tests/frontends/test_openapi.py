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
from schemathesis.generation import GenerationMode
from schemathesis.generation.meta import ParameterLocation

from userplane import Registry, Settings
from userplane.frontends.http import create_app
from userplane.frontends.http.openapi import document, tag_operations
from userplane.pagination import SORT_FIELDS, Position, Sort, encode_cursor
from userplane.plugins.audit.query import encode_cursor as audit_cursor
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
        if route.path.startswith("/scim/v2"):
            continue  # SCIM describes itself (/scim/v2/Schemas, RFC 7643), not in OpenAPI
        if route.path == "/admin" or route.path.startswith("/admin/"):
            continue  # the web console's pages are for browsers, not an API
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods:
            if method.method in HTTP_METHODS and not method.internal:
                ops.add((path.rstrip("/") or "/", method.method))
    return ops


def _served_document(registry: Registry) -> dict[str, object]:
    """The document the app serves, built as create_app builds it: core and plugins."""
    doc = document(registry.auth.roles)
    registry.hooks.openapi(doc, registry)
    tag_operations(doc)
    return doc


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_operations_with_a_query_declare_the_414_of_a_long_request_line(
    registry: Registry,
) -> None:
    doc = _served_document(registry)
    with_query = [
        (path, method)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method.upper() in HTTP_METHODS
        and any(p.get("in") == "query" for p in operation.get("parameters", []))
    ]
    assert ("/api/v1/users/", "get") in with_query
    assert ("/api/v1/audit", "get") in with_query
    assert ("/api/v1/webhooks/{webhook_id}/deliveries", "get") in with_query
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


def test_the_served_document_is_valid_openapi_3_1(registry: Registry) -> None:
    doc = _served_document(registry)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_route_is_documented_and_every_documented_operation_exists(
    client: testing.TestClient, registry: Registry
) -> None:
    app = client.app
    served = _served(app)
    assert served == _documented(_served_document(registry))


def test_the_document_is_served(client: testing.TestClient, registry: Registry) -> None:
    resp = client.simulate_get("/api/v1/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json == _served_document(registry)


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
    case.call_and_validate(headers=_credentials(case))


def _credentials(case: schemathesis.Case) -> dict[str, str]:
    """Our key, unless leaving the credentials out is what makes the case negative.

    The document says every operation needs a bearer token: a negative case
    may be one whose only fault is a missing ``Authorization`` header. Adding
    our key to it would turn it into a valid request, answered 200, which the
    fuzzer then reports as a schema-violating request accepted. Sent without
    one, it must be refused (401).
    """
    headers = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    if (
        headers is not None
        and headers.mode is GenerationMode.NEGATIVE
        and "Authorization" not in (case.headers or {})
    ):
        return {}
    return {"Authorization": f"Bearer {_key}"}


def _as_a_client_would(case: schemathesis.Case) -> None:
    """Replace the values no schema can describe with ones a real client would send.

    A cursor is opaque: clients send back the ones they were given, so a
    schema-valid cursor becomes one the service issued (for the list it is
    sent to: users, audit events; a webhook delivery cursor is a plain seq,
    which the schema describes whole). An Idempotency-Key is new for each new
    request: a generated key repeated with another body is a misuse (a 422,
    tested on its own). A webhook URL must lead to public addresses, which
    no pattern can say: a schema-valid one gets a public host (an address
    literal, so nothing is resolved). Values that break the schema are left
    alone, so negative cases stay negative. Groups page as users do by
    creation; a group's members by user id.
    """
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(r"[!-~]{1,255}", key):
        case.headers = {**(case.headers or {}), "Idempotency-Key": uuid.uuid4().hex}
    path = case.operation.path
    if path == "/api/v1/webhooks" and case.method.upper() == "POST":
        _with_a_public_host(case)
    query = case.query or {}
    cursor = query.get("cursor")
    if not isinstance(cursor, str):
        return
    if path == "/api/v1/audit" and 1 <= len(cursor) <= 64:
        case.query = {**query, "cursor": audit_cursor(1, query.get("sort") == "-seq")}
    elif path.endswith("/members") and 1 <= len(cursor) <= 2400:
        # A group's members page by user id.
        members = encode_cursor(Sort("id"), Position(None, uuid.uuid4()), "members")
        case.query = {**query, "cursor": members}
    elif path.endswith("/groups") and 1 <= len(cursor) <= 2400:
        case.query = {
            **query,
            "cursor": encode_cursor(Sort(), Position(datetime.now(UTC), uuid.uuid4()), "groups"),
        }
    elif path.startswith("/api/v1/users") and 1 <= len(cursor) <= 2400:
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
#: What the document says a new subscription's URL is. Python's ``re`` reads this pattern
#: as JSON Schema does but for ``$`` before a final newline: such URLs are left alone.
_WEBHOOK_URL = schema.raw_schema["components"]["schemas"]["NewWebhookSubscription"]["properties"][
    "url"
]["pattern"]
#: A globally routable address (the documentation ranges are reserved: refused too).
_PUBLIC_HOST = "93.184.215.14"


def _with_a_public_host(case: schemathesis.Case) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    url = body.get("url")
    if not isinstance(url, str) or not 1 <= len(url) <= 2048 or "\n" in url:
        return
    if re.search(_WEBHOOK_URL, url) is None:
        return
    scheme, _, rest = url.partition("://")
    # The host (and port) end at the path or the query, if any.
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    public = f"{scheme}://{_PUBLIC_HOST}{rest[min(ends, default=len(rest)) :]}"
    if len(public) <= 2048:
        case.body = {**body, "url": public}


def test_the_documented_examples_are_bodies_the_server_takes(client: testing.TestClient) -> None:
    """The docs' "Try it out" starts from these: each must work as it stands."""
    from userplane.frontends.http.openapi import EXAMPLES

    created = client.simulate_post("/api/v1/users", json=EXAMPLES["NewUser"])
    assert created.status_code == 201, created.text
    assert {k: created.json[k] for k in EXAMPLES["NewUser"]} == EXAMPLES["NewUser"]
    changed = client.simulate_patch(
        f"/api/v1/users/{created.json['id']}",
        json=EXAMPLES["UserChanges"],
        headers={"If-Match": created.headers["ETag"]},
    )
    assert changed.status_code == 200, changed.text
    assert {k: changed.json[k] for k in EXAMPLES["UserChanges"]} == EXAMPLES["UserChanges"]


def test_every_served_operation_is_in_a_group_of_the_docs(client: testing.TestClient) -> None:
    doc = client.simulate_get("/api/v1/openapi.json").json
    names = [tag["name"] for tag in doc["tags"]]
    assert names[:2] == ["users", "groups"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in ("get", "put", "post", "patch", "delete"):
                assert len(operation["tags"]) == 1, (path, method)
                assert operation["tags"][0] in names, (path, method)
    assert doc["paths"]["/api/v1/keys"]["post"]["tags"] == ["keys"]
    assert doc["paths"]["/health/live"]["get"]["tags"] == ["service"]
