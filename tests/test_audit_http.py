"""``GET /api/v1/audit`` and ``/api/v1/audit/{id}``: filters, keyset pages, problems, roles,
sealed values, and the OpenAPI document that describes them. On SQLite and PostgreSQL."""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from falcon import inspect, testing
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from test_audit import encryption_env, opened, rows

from userplane import Registry, Settings
from userplane.frontends.http import create_app
from userplane.frontends.http.testing import PrincipalTokens, client, principal_tokens
from userplane.keyring import NamedKey
from userplane.plugin import Principal, UserChanges
from userplane.plugins import audit
from userplane.plugins.audit import trail_of
from userplane.plugins.audit.query import encode_cursor, parse_query
from userplane.users import NewUser

AUDIT = "/api/v1/audit"
AUDITOR = Principal(id="test:auditor", kind="test", roles=frozenset({"auditor"}))
VIEWER = Principal(id="test:viewer", kind="test", roles=frozenset({"viewer"}))
ADMIN = Principal(id="test:admin", kind="test", roles=frozenset({"admin"}))


@pytest.fixture
def reg(database_url: str) -> Iterator[Registry]:
    with opened(database_url) as registry:
        yield registry


@pytest.fixture
def http(reg: Registry) -> testing.TestClient:
    """A client acting as an auditor."""
    return client(reg, principal=AUDITOR)


@pytest.fixture
def history(reg: Registry) -> dict[str, Any]:
    """Two users with a few changes each, made over HTTP by an admin (seqs 1 to 6)."""
    admin = client(reg, principal=ADMIN)
    ann = admin.simulate_post("/api/v1/users", json={"email": "ann@example.org"}).json
    bob = admin.simulate_post("/api/v1/users", json={"email": "bob@example.org"}).json
    admin.simulate_patch(f"/api/v1/users/{ann['id']}", json={"full_name": "Ann"})
    admin.simulate_patch(f"/api/v1/users/{bob['id']}", json={"is_active": False})
    admin.simulate_delete(f"/api/v1/users/{ann['id']}")
    admin.simulate_post(f"/api/v1/users/{ann['id']}/restore")
    return {"ann": ann["id"], "bob": bob["id"]}


def _items(resp: testing.Result) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json["items"]
    return items


def test_a_page_shows_every_field_of_each_event(
    http: testing.TestClient, history: dict[str, Any]
) -> None:
    items = _items(http.simulate_get(AUDIT, headers={"X-Request-ID": "reader-1"}))
    assert [i["seq"] for i in items] == [1, 2, 3, 4, 5, 6]
    first = items[0]
    assert set(first) == {
        "seq",
        "id",
        "occurred_at",
        "actor",
        "actor_kind",
        "action",
        "target",
        "user_id",
        "request_id",
        "trace_id",
        "client_address",
        "changes",
        "prev_hash",
        "hash",
    }
    assert first["action"] == "user.created"
    assert first["actor"] == "test:admin"
    assert first["actor_kind"] == "test"
    assert first["target"] == {"type": "user", "id": history["ann"]}
    assert first["client_address"] == "127.0.0.1"
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", first["request_id"])
    assert first["changes"]["email"] == {"before": None, "after": "ann@example.org"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["occurred_at"])
    assert items[1]["prev_hash"] == first["hash"]


def test_filters_select_and_combine(
    reg: Registry, http: testing.TestClient, history: dict[str, Any]
) -> None:
    ann, bob = history["ann"], history["bob"]

    def seqs(**params: str) -> list[int]:
        return [i["seq"] for i in _items(http.simulate_get(AUDIT, params=params))]

    assert seqs(user_id=ann) == [1, 3, 5, 6]
    assert seqs(target_type="user", target_id=bob) == [2, 4]
    assert seqs(action="user.updated") == [3, 4]
    assert seqs(action="user.updated", user_id=bob) == [4]
    assert seqs(actor="test:admin") == [1, 2, 3, 4, 5, 6]
    assert seqs(actor="test:nobody") == []
    assert seqs(target_type="api_key") == []
    times = [i["occurred_at"] for i in _items(http.simulate_get(AUDIT))]
    assert seqs(since=times[3]) == [4, 5, 6]
    assert seqs(until=times[3]) == [1, 2, 3]
    assert seqs(since=times[1], until=times[3]) == [2, 3]
    # Any offset is taken, as RFC 3339 allows.
    later = datetime.fromisoformat(times[3]).astimezone(UTC) + timedelta(hours=2)
    assert seqs(since=later.strftime("%Y-%m-%dT%H:%M:%S.%f+02:00")) == [4, 5, 6]
    assert seqs(since=(datetime.now(UTC) + timedelta(days=1)).isoformat()) == []


@pytest.mark.parametrize("sort", ["seq", "-seq"])
def test_cursors_walk_every_page_once_in_either_order(
    reg: Registry, http: testing.TestClient, history: dict[str, Any], sort: str
) -> None:
    for i in range(5):
        reg.users.update(uuid.UUID(history["bob"]), UserChanges(full_name=f"Bob {i}"))
    seen: list[int] = []
    params: dict[str, str] = {"limit": "3", "sort": sort, "target_type": "user"}
    pages = 0
    while True:
        resp = http.simulate_get(AUDIT, params=params)
        body = resp.json
        seen += [i["seq"] for i in _items(resp)]
        pages += 1
        if body["next"] is None:
            assert "Link" not in resp.headers
            break
        link = resp.headers["Link"]
        target = re.fullmatch(r'<([^>]+)>; rel="?next"?', link)
        assert target is not None, link
        url = urlsplit(target[1])
        assert url.path == AUDIT
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert query == {**params, "cursor": body["next"]}
        params = query
    expected = list(range(1, 12))
    assert seen == (expected if sort == "seq" else expected[::-1])
    assert pages == 4


def test_one_event_by_id(http: testing.TestClient, history: dict[str, Any]) -> None:
    [first, *_] = _items(http.simulate_get(AUDIT))
    resp = http.simulate_get(f"{AUDIT}/{first['id']}")
    assert resp.status_code == 200
    assert resp.json == first
    missing = http.simulate_get(f"{AUDIT}/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert http.simulate_get(f"{AUDIT}/not-a-uuid").status_code == 404
    extra = http.simulate_get(f"{AUDIT}/{first['id']}", params={"x": "1"})
    assert extra.status_code == 422
    assert [e["field"] for e in extra.json["errors"]] == ["$.x"]


def test_a_client_that_wrote_reads_its_events_chained(reg: Registry) -> None:
    """Writes only insert their events; both reads chain what was committed before them."""
    admin = client(reg, principal=ADMIN)
    auditor = client(reg, principal=AUDITOR)
    ann = admin.simulate_post("/api/v1/users", json={"email": "ann@example.org"}).json
    [(event_id, seq)] = rows(reg, "SELECT id, seq FROM audit_events")
    assert seq is None  # written with the user, not chained yet
    one = auditor.simulate_get(f"{AUDIT}/{event_id}")
    assert one.status_code == 200, one.text
    assert (one.json["seq"], one.json["target"]["id"]) == (1, ann["id"])
    admin.simulate_patch(f"/api/v1/users/{ann['id']}", json={"full_name": "Ann"})
    items = _items(auditor.simulate_get(AUDIT, params={"sort": "-seq", "limit": "1"}))
    assert [(i["seq"], i["action"]) for i in items] == [(2, "user.updated")]
    assert items[0]["prev_hash"] == one.json["hash"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "$.limit"),
        ("limit=501", "$.limit"),
        ("limit=ten", "$.limit"),
        ("limit=-1", "$.limit"),
        ("cursor=bogus", "$.cursor"),
        (f"cursor={encode_cursor(3, True)}", "$.cursor"),  # a -seq cursor in seq order
        ("sort=created_at", "$.sort"),
        ("user_id=42", "$.user_id"),
        ("since=yesterday", "$.since"),
        ("since=2026-01-02T03:04:05", "$.since"),  # no time zone
        ("until=2026-02-30T00:00:00Z", "$.until"),  # no such day
        ("since=2026-01-02T03:04:05+24:00", "$.since"),  # no such offset
        ("actor=", "$.actor"),
        ("action=a%00b", "$.action"),
        ("target_id=" + "x" * 1025, "$.target_id"),
        ("color=red", "$.color"),
        ("limit=1&limit=2", "$.limit"),
    ],
)
def test_every_bad_parameter_is_a_422_naming_it(
    http: testing.TestClient, query: str, field: str
) -> None:
    resp = http.simulate_get(AUDIT, query_string=query)
    assert resp.status_code == 422, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert field in [e["field"] for e in resp.json["errors"]]


def test_several_bad_parameters_are_named_at_once(http: testing.TestClient) -> None:
    resp = http.simulate_get(AUDIT, query_string="limit=0&sort=up&since=never")
    assert resp.status_code == 422
    assert {e["field"] for e in resp.json["errors"]} == {"$.limit", "$.sort", "$.since"}


def test_reading_the_trail_needs_audit_read(reg: Registry, history: dict[str, Any]) -> None:
    viewer = client(reg, principal=VIEWER)
    assert viewer.simulate_get(AUDIT).status_code == 403
    [event] = trail_of(reg).list(parse_query({"limit": "1"})).items
    assert viewer.simulate_get(f"{AUDIT}/{event['id']}").status_code == 403
    assert client(reg, principal=ADMIN).simulate_get(AUDIT).status_code == 200
    anonymous = client(reg)
    assert anonymous.simulate_get(AUDIT).status_code == 401
    # The auditor reads the trail and nothing else.
    auditor = client(reg, principal=AUDITOR)
    assert auditor.simulate_get(AUDIT).status_code == 200
    assert auditor.simulate_get("/api/v1/users").status_code == 403


def test_sealed_values_are_opened_for_the_reader_and_erased_after_shred(
    database_url: str, k1: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, **encryption_env([k1], i1)) as registry:
        admin = client(registry, principal=ADMIN)
        reader = client(registry, principal=AUDITOR)
        ann = admin.simulate_post(
            "/api/v1/users", json={"email": "ann@example.org", "full_name": "Ann Sealed"}
        ).json
        [created] = _items(reader.simulate_get(AUDIT, params={"user_id": ann["id"]}))
        assert created["changes"]["email"] == {"before": None, "after": "ann@example.org"}
        assert created["changes"]["full_name"] == {"before": None, "after": "Ann Sealed"}
        registry.users.delete(uuid.UUID(ann["id"]))
        registry.users.purge_user(uuid.UUID(ann["id"]))
        items = _items(reader.simulate_get(AUDIT, params={"user_id": ann["id"]}))
        assert [i["action"] for i in items] == ["user.created", "user.deleted", "user.purged"]
        assert items[0]["changes"]["email"] == {"erased": True}
        assert items[0]["changes"]["full_name"] == {"erased": True}
        assert items[0]["changes"]["is_active"] == {"before": None, "after": True}
        assert "ann@example.org" not in reader.simulate_get(AUDIT).text


def test_redacted_values_show_as_redacted(database_url: str) -> None:
    with opened(database_url, USERPLANE_AUDIT_REDACT_PERSONAL="true") as registry:
        registry.users.create(NewUser("ann@example.org", "Ann"))
        [event] = _items(client(registry, principal=AUDITOR).simulate_get(AUDIT))
        assert event["changes"]["email"] == {"redacted": True}
        assert event["changes"]["full_name"] == {"redacted": True}


# -- the OpenAPI document ------------------------------------------------------------------------

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_the_served_document_with_the_audit_routes_is_valid_openapi(
    reg: Registry, http: testing.TestClient
) -> None:
    doc = http.simulate_get("/api/v1/openapi.json").json
    validate(doc)
    assert doc["paths"]["/api/v1/audit"]["get"]["operationId"] == "listAuditEvents"
    assert doc["paths"]["/api/v1/audit/{event_id}"]["get"]["operationId"] == "getAuditEvent"
    # Every audit route is documented, and every documented audit operation is served.
    app = create_app(reg)
    served = set()
    for route in inspect.inspect_routes(app):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if path.startswith(AUDIT):
            served |= {
                (path, m.method)
                for m in route.methods
                if m.method in HTTP_METHODS and not m.internal
            }
    documented = {
        (path, method.upper())
        for path, item in doc["paths"].items()
        if path.startswith(AUDIT)
        for method in item
        if method.upper() in HTTP_METHODS
    }
    assert served == documented


def test_responses_match_their_schemas(http: testing.TestClient, history: dict[str, Any]) -> None:
    """What the server answers is what the document promises (schema by schema)."""
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
    from referencing import Registry as Schemas
    from referencing import Resource
    from referencing.jsonschema import DRAFT202012

    doc = http.simulate_get("/api/v1/openapi.json").json
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    schemas = Schemas().with_resource("urn:doc", resource)

    def check(name: str, instance: Any) -> None:
        schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
        validator = Draft202012Validator(schema, registry=schemas)
        errors = list(validator.iter_errors(instance))
        assert errors == [], errors

    page = http.simulate_get(AUDIT, params={"limit": "2"}).json
    check("AuditEventPage", page)
    check("AuditEvent", http.simulate_get(f"{AUDIT}/{page['items'][0]['id']}").json)
    check("Problem", http.simulate_get(AUDIT, params={"limit": "0"}).json)


# -- the server keeps the document's promises (schemathesis, on the audit operations) ------------


def _fuzzed_app() -> tuple[Any, str]:
    # schemathesis needs its schema when the module is collected: the app is made here, on a
    # SQLite file of its own that lives as long as the test process.
    directory = Path(tempfile.mkdtemp(prefix="userplane-audit-fuzz-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    settings_ = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{directory}/f.db"})
    registry = Registry(settings_, plugins=[audit, PrincipalTokens()])
    registry.migrate()
    atexit.register(registry.close)
    user = registry.users.create(NewUser("fuzz@example.org", "Fuzz"))
    registry.users.update(user.id, UserChanges(is_active=False))
    return create_app(registry), principal_tokens(registry).issue(AUDITOR)


_app, _token = _fuzzed_app()
_schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _app).include(
    path_regex="^/api/v1/audit"
)


@_schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_keeps_the_audit_promises_of_the_document(case: Any) -> None:
    query = case.query or {}
    cursor = query.get("cursor")
    if isinstance(cursor, str) and 1 <= len(cursor) <= 64:
        # A cursor is opaque: clients send back the ones they were given.
        case.query = {**query, "cursor": encode_cursor(1, query.get("sort") == "-seq")}
    case.call_and_validate(headers={"Authorization": f"Bearer {_token}"})
