"""The audit trail on real processes: ``userplane serve`` (two workers) and the CLI, each backend.

The processes find the audit plugin through its entry point. So that this holds
whatever the installed metadata says, the tests put a distribution of their
own on ``PYTHONPATH`` declaring it (as a third party's plugin is found); with
the package's own entry point installed too, the plugin is loaded once.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import Server, running_server

pytestmark = pytest.mark.e2e


def _entry_point(directory: Path) -> str:
    site = directory / "site"
    dist = site / "userplane_audit_entry-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: userplane-audit-entry\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text(
        "[userplane]\naudit = userplane.plugins.audit\n", encoding="utf-8"
    )
    return str(site)


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path}/e2e.db"
    else:
        database_url = request.getfixturevalue("create_postgresql_database")()
    env = {"PYTHONPATH": _entry_point(tmp_path), "USERPLANE_AUDIT_HEAD_LOG_SECONDS": "0.5"}
    with running_server(tmp_path, database_url, request.param, env) as srv:
        yield srv


def _sql(server: Server, statement: str) -> None:
    """Edit the database behind the server's back, as an intruder with access to it would."""
    url = server.env["USERPLANE_DATABASE_URL"]
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(statement)
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def _heads(log: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "audit.head"]


def test_the_trail_of_a_running_server_is_read_verified_and_tamper_evident(
    server: Server,
) -> None:
    ids = []
    for i in range(4):
        created = server.request("POST", "/api/v1/users", {"email": f"e2e{i}@example.org"})
        assert created.status == 201, created.body
        ids.append(created.json()["id"])
    patched = server.request("PATCH", f"/api/v1/users/{ids[0]}", {"full_name": "Ann"})
    assert patched.status == 200
    taken = server.request("POST", "/api/v1/users", {"email": "E2E1@example.org"})
    assert taken.status == 409  # leaves no event
    stale = server.request(
        "PATCH", f"/api/v1/users/{ids[1]}", {"full_name": "B"}, headers={"If-Match": '"9"'}
    )
    assert stale.status == 412  # leaves no event

    # The serving processes link the events into the chain by themselves, no read asking:
    # the heads they log reach them (the admin key's creation, four users, one update).
    chained = []
    for _ in range(150):
        chained = [h for h in _heads(server.log()) if h["seq"] == 6]
        if chained:
            break
        time.sleep(0.1)
    assert chained, server.log()

    page = server.request("GET", "/api/v1/audit?sort=-seq&limit=3")
    assert page.status == 200
    body = page.json()
    # The admin key's creation (through the CLI), four users, one update.
    assert [i["seq"] for i in body["items"]] == [6, 5, 4]
    assert body["items"][0]["action"] == "user.updated"
    assert body["items"][0]["changes"]["full_name"] == {"before": None, "after": "Ann"}
    assert body["items"][0]["actor"].startswith("key:")
    assert body["items"][0]["client_address"] == "127.0.0.1"
    assert re.search(r'rel="?next"?', page.headers["Link"])

    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("verified 6 events, head 6 ")
    head = verified.stdout.split()[-1]

    # Each worker logs the head while serving.
    logged = []
    for _ in range(100):
        logged = [h for h in _heads(server.log()) if h["seq"] == 6]
        if len(logged) >= 2:
            break
        time.sleep(0.1)
    assert logged, server.log()
    assert logged[-1]["hash"] == head

    _sql(server, "UPDATE audit_events SET actor = 'local:mallory' WHERE seq = 3")
    broken = server.cli("audit", "verify")
    assert broken.returncode == 13
    assert broken.stdout == ""
    [line] = broken.stderr.splitlines()
    assert line.startswith("audit chain broken at seq 3 (event ")
    assert "edited" in line

    _sql(server, "DELETE FROM audit_events WHERE seq >= 3")
    _sql(
        server,
        "UPDATE audit_chain SET seq = 2, hash = (SELECT hash FROM audit_events WHERE seq = 2)",
    )
    assert server.cli("audit", "verify").returncode == 0  # a shorter chain that holds …
    expected = server.cli("audit", "verify", "--expect", f"6:{head}")
    assert expected.returncode == 13  # … but not the head logged before
    assert "seq 6" in expected.stderr
    assert "missing" in expected.stderr
