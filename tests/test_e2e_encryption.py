"""End to end with field-level encryption on: a real ``userplane serve`` and the CLI, per backend.

One server per backend (gunicorn, two workers) runs with a one-key ring for the
lifecycle, CLI, idempotency and at-rest tests; the rotation test starts its own
server, with the new key first, over a database already sealed under the old one.
Clients see plain addresses and names; the database holds none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from serving import SCRIPT, Response, Server, assert_problem, running_server, unique_email

from userplane.keyring import NamedKey, new_key

pytestmark = pytest.mark.e2e

KEYS = "USERPLANE_ENCRYPTION_KEYS"
INDEX_KEYS = "USERPLANE_ENCRYPTION_INDEX_KEYS"
MERGE_PATCH = "application/merge-patch+json"
USERS = "/api/v1/users"
#: What the database stores in place of an email: ``upe1:<kek name>:...``.
SEALED = "upe1:"


def ring(*keys: NamedKey, index: NamedKey) -> dict[str, str]:
    """The environment of a keyring, the active key first."""
    return {KEYS: ",".join(k.entry() for k in keys), INDEX_KEYS: index.entry()}


def database_url_for(backend: str, directory: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory}/e2e.db"
    url: str = request.getfixturevalue("create_postgresql_database")()
    return url


def full_width(text: str) -> str:
    """``text`` with its ASCII letters and digits in full width: the same address under NFKC."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in text)


@dataclass
class Encrypted:
    """The module's server and every clear email and name sent to it."""

    server: Server
    database_url: str
    plaintexts: set[str] = field(default_factory=set)

    def create(self, email: str, full_name: str | None = None, **headers: str | None) -> Response:
        self.plaintexts.add(email)
        if full_name is not None:
            self.plaintexts.add(full_name)
        return self.server.request("POST", USERS, {"email": email, "full_name": full_name}, headers)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def encrypted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Encrypted]:
    directory = tmp_path_factory.mktemp("e2e-encryption")
    database_url = database_url_for(request.param, directory, request)
    keys = ring(new_key("kek-1"), index=new_key("index-1"))
    with running_server(directory, database_url, request.param, keys) as srv:
        yield Encrypted(srv, database_url)


@pytest.fixture
def live(encrypted: Encrypted) -> Encrypted:
    assert encrypted.server.proc.poll() is None, (
        f"the server has stopped:\n{encrypted.server.log()}"
    )
    return encrypted


def run_cli(env: dict[str, str], directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``userplane *args`` as a process with ``env``."""
    return subprocess.run(
        [str(SCRIPT), *args],
        env=env,
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def json_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def dump(database_url: str) -> str:
    """Everything the database holds, as SQL text."""
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return "\n".join(conn.iterdump())
    done = subprocess.run(
        ["pg_dump", "--no-owner", "--dbname", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def stored_emails(database_url: str) -> list[str]:
    """The ``users.email`` column as stored, deleted users included."""
    query = "SELECT email FROM users"
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return [email for (email,) in conn.execute(query)]
    import psycopg

    with psycopg.connect(database_url) as conn:
        return [email for (email,) in conn.execute(query)]


def wrapping_keys(database_url: str) -> list[str]:
    """The name of the key that wraps each stored user's data key."""
    emails = stored_emails(database_url)
    assert emails
    assert all(e.startswith(SEALED) for e in emails), emails
    return [e.split(":")[1] for e in emails]


def test_user_lifecycle_over_http_with_encryption_on(live: Encrypted) -> None:
    srv = live.server
    local = f"Life.Sealed-{uuid.uuid4().hex[:10]}"
    email = f"{local}@Example.org"
    created = live.create(email, "Zoë Sealed")
    assert created.status == 201, created.body
    user = created.json()
    assert (user["email"], user["full_name"]) == (email, "Zoë Sealed")
    assert user["version"] == 1
    location = created.headers["Location"]
    assert urlsplit(location).path == f"{USERS}/{user['id']}"

    got = srv.request("GET", location)
    assert got.status == 200
    assert got.json() == user
    assert got.headers["ETag"] == created.headers["ETag"] == '"1"'

    for spelling in (email.lower(), email.upper(), full_width(local) + "@example.org"):
        listed = srv.request("GET", f"{USERS}/?email={quote(spelling)}")
        assert listed.status == 200, (spelling, listed.body)
        assert listed.json() == {"items": [user], "next": None}, spelling
    missing = srv.request("GET", f"{USERS}/?email={quote('x' + email)}")
    assert missing.json() == {"items": [], "next": None}

    for spelling in (email.upper(), email.lower(), full_width(local) + "@EXAMPLE.ORG"):
        assert_problem(live.create(spelling), 409, "conflict")

    new_local = f"Moved.Sealed-{uuid.uuid4().hex[:10]}"
    new_email = f"{new_local}@example.net"
    live.plaintexts.update({new_email, "Renamed Sealed"})
    patched = srv.request(
        "PATCH",
        location,
        {"email": new_email, "full_name": "Renamed Sealed"},
        headers={"If-Match": '"1"'},
        content_type=MERGE_PATCH,
    )
    assert patched.status == 200, patched.body
    after = patched.json()
    assert (after["email"], after["full_name"], after["version"]) == (
        new_email,
        "Renamed Sealed",
        2,
    )
    assert after["id"] == user["id"]
    assert patched.headers["ETag"] == '"2"'
    assert srv.request("GET", location).json() == after
    found = srv.request("GET", f"{USERS}/?email={quote(new_email.upper())}")
    assert found.json() == {"items": [after], "next": None}
    old = srv.request("GET", f"{USERS}/?email={quote(email)}")
    assert old.json() == {"items": [], "next": None}
    stale = srv.request(
        "PATCH", location, {"full_name": "Lost"}, {"If-Match": '"1"'}, content_type=MERGE_PATCH
    )
    assert_problem(stale, 412, "precondition-failed")

    deleted = srv.request("DELETE", location, headers={"If-Match": '"2"'})
    assert deleted.status == 204
    assert_problem(srv.request("GET", location), 404, "not-found")
    gone = srv.request("GET", f"{USERS}/?email={quote(new_email)}")
    assert gone.json() == {"items": [], "next": None}
    # A deleted user keeps its address: another case of it is still taken.
    assert_problem(live.create(new_email.swapcase()), 409, "conflict")

    for query, fields in (
        ("q=sealed", ["$.q"]),
        ("sort=email", ["$.sort"]),
        ("sort=-full_name", ["$.sort"]),
        ("q=zo&sort=-email", ["$.q", "$.sort"]),
    ):
        problem = assert_problem(srv.request("GET", f"{USERS}/?{query}"), 422, "invalid-input")
        assert sorted(e["field"] for e in problem["errors"]) == fields, query
        for error in problem["errors"]:
            assert KEYS in error["detail"], error
            assert "encrypted" in error["detail"], error
    # What ciphertext can answer still works: the list in creation order.
    page = srv.request("GET", f"{USERS}/?sort=-created_at&limit=5")
    assert page.status == 200
    assert all(
        "@" in u["email"] and not u["email"].startswith(SEALED) for u in page.json()["items"]
    )


def test_the_cli_and_http_see_each_others_users_in_clear(live: Encrypted) -> None:
    srv = live.server
    email = unique_email("Cli.Sealed")
    live.plaintexts.update({email, "Ünal From Cli"})
    proc = srv.cli(
        "users", "create", "--email", email, "--full-name", "Ünal From Cli", "--format", "json"
    )
    [user] = json_lines(proc)
    assert (user["email"], user["full_name"]) == (email, "Ünal From Cli")
    resp = srv.request("GET", f"{USERS}/{user['id']}")
    assert resp.status == 200
    assert resp.json() == user
    listed = srv.request("GET", f"{USERS}/?email={quote(email.upper())}")
    assert listed.json() == {"items": [user], "next": None}

    other = unique_email("Http.Sealed")
    created = live.create(other, "Ødegaard Over Http")
    assert created.status == 201
    [shown] = json_lines(srv.cli("users", "get", other.upper(), "--format", "json"))
    assert shown == created.json()
    table = srv.cli("users", "get", other)
    assert table.returncode == 0, table.stderr
    assert other in table.stdout
    assert "Ødegaard Over Http" in table.stdout
    assert SEALED not in table.stdout

    refused = srv.cli("users", "list", "-q", "sealed")
    assert refused.returncode == 5, (refused.stdout, refused.stderr)
    assert KEYS in refused.stderr
    assert "$.q" in refused.stderr


def test_an_idempotent_create_replays_the_identical_body(live: Encrypted) -> None:
    srv = live.server
    email = unique_email("Retry.Sealed")
    key = {"Idempotency-Key": f"e2e-{uuid.uuid4().hex}"}
    first = live.create(email, "Retry Sealed", **key)
    assert first.status == 201, first.body
    # Changed since: the replay is the stored first response, not the user now.
    changed = srv.request(
        "PATCH", first.headers["Location"], {"full_name": "Changed"}, content_type=MERGE_PATCH
    )
    assert changed.status == 200
    replays = [live.create(email, "Retry Sealed", **key) for _ in range(3)]
    for again in replays:
        assert again.status == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.body == first.body
        assert again.headers["Location"] == first.headers["Location"]
        assert again.headers["ETag"] == first.headers["ETag"]
    assert first.json()["full_name"] == "Retry Sealed"
    listed = srv.request("GET", f"{USERS}/?email={quote(email)}")
    assert listed.json() == {"items": [changed.json()], "next": None}


def test_the_database_holds_no_email_or_name_in_clear(live: Encrypted) -> None:
    # Of its own too, so that this test means something when run alone.
    marker = uuid.uuid4().hex[:12]
    assert live.create(f"AtRest.{marker}@example.org", f"Ärmel Atrest {marker}").status == 201
    assert live.create(f"atrest2.{marker}@example.org", None).status == 201
    every = live.server.cli("users", "list", "--include-deleted", "--format", "json")
    users = json_lines(every)
    for user in users:
        live.plaintexts.add(user["email"])
        if user["full_name"]:
            live.plaintexts.add(user["full_name"])
    assert len(live.plaintexts) >= 4

    text = dump(live.database_url).casefold()
    assert "upe1:kek-1:" in text  # the dump is of the right database, sealed
    leaked = sorted(p for p in live.plaintexts if p.casefold() in text)
    assert leaked == []
    # Nor the local parts alone (the blind index is a keyed hash, not the address).
    for user in users:
        local = user["email"].rsplit("@", 1)[0].casefold()
        assert local not in text, user["email"]
    assert marker not in text
    assert all(e.startswith(f"{SEALED}kek-1:") for e in stored_emails(live.database_url))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rotation_under_a_live_server_rewraps_every_user_and_retires_the_old_key(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database_url = database_url_for(backend, tmp_path, request)
    old, new, index = new_key("kek-old"), new_key("kek-new"), new_key("index-1")
    base = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    base.update(
        USERPLANE_DATABASE_URL=database_url,
        USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
    )

    def cli(keys: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli({**base, **keys}, tmp_path, *args)

    # Users sealed under the old key alone, by the CLI, a deleted one among them.
    old_only = ring(old, index=index)
    migrated = cli(old_only, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    seeded = []
    for i, name in enumerate([["--full-name", "Rot Zero"], ["--full-name", "Rötation Eins"], []]):
        email = unique_email(f"Rot{i}")
        made = cli(old_only, "users", "create", "--email", email, *name, "--format", "json")
        seeded += json_lines(made)
    json_lines(cli(old_only, "users", "delete", seeded[2]["id"], "--format", "json"))
    assert wrapping_keys(database_url) == ["kek-old"] * 3
    # The new key alone cannot open them yet.
    lacking = cli(ring(new, index=index), "users", "list", "--format", "json")
    assert lacking.returncode == 11, (lacking.stdout, lacking.stderr)
    assert "kek-old" in lacking.stderr

    both = ring(new, old, index=index)
    with running_server(tmp_path, database_url, backend, both) as srv:

        def read_all() -> dict[str, Response]:
            return {
                u["id"]: srv.request("GET", f"{USERS}/{u['id']}?include_deleted=true")
                for u in seeded
            }

        before = read_all()
        for user in seeded:
            resp = before[user["id"]]
            assert resp.status == 200, resp.body
            body = resp.json()
            assert (body["email"], body["full_name"]) == (user["email"], user["full_name"])
        fresh = srv.request("POST", USERS, {"email": unique_email("Rot.New"), "full_name": "Nu"})
        assert fresh.status == 201
        assert sorted(wrapping_keys(database_url)) == ["kek-new"] + ["kek-old"] * 3

        # A client keeps writing one old user while the rotation runs: no write is lost.
        target = f"{USERS}/{seeded[0]['id']}"
        stop = threading.Event()
        responses: list[Response] = []

        def keep_writing() -> None:
            while not stop.is_set() or not responses:
                name = f"Writer {len(responses)}"
                resp = srv.request("PATCH", target, {"full_name": name}, content_type=MERGE_PATCH)
                responses.append(resp)
                if resp.status != 200:
                    return

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            rotated = cli(both, "encryption", "rotate", "--batch-size", "2", "--format", "json")
        finally:
            stop.set()
            writer.join(timeout=60)
        assert not writer.is_alive()
        assert [r.status for r in responses] == [200] * len(responses), responses[-1].body
        written = [r.json() for r in responses]
        assert [w["version"] for w in written] == list(range(2, len(written) + 2))
        [report] = json_lines(rotated)
        assert report["active_key"] == "kek-new"
        assert report["retired"] == ["kek-old"]
        assert report["scanned"] == 4
        # The written user's own writes move its data key under the new key (else a user
        # written without pause would win every race with the rotation): the rotation
        # rewrote it too only if it got there first.
        assert report["rewritten"] in (2, 3)
        assert wrapping_keys(database_url) == ["kek-new"] * 4

        after = read_all()
        for user in seeded[1:]:
            # To clients nothing happened: same body, same ETag.
            assert after[user["id"]].status == 200
            assert after[user["id"]].body == before[user["id"]].body
            assert after[user["id"]].headers["ETag"] == before[user["id"]].headers["ETag"]
        assert after[seeded[0]["id"]].json() == written[-1]
        assert srv.request("GET", fresh.headers["Location"]).json() == fresh.json()

        status = {
            r["name"]: r for r in json_lines(cli(both, "encryption", "status", "--format", "json"))
        }
        assert set(status) == {"kek-old", "kek-new", "index-1"}
        assert status["kek-old"]["purpose"] == "kek"
        assert status["kek-old"]["retired_at"] is not None
        assert status["kek-old"]["configured"] == "yes"
        assert status["kek-new"]["retired_at"] is None
        assert status["kek-new"]["configured"] == "active"
        assert status["index-1"]["retired_at"] is None

        # Run again before the old key leaves the ring (docs, step 4): nothing left to do.
        again = cli(both, "encryption", "rotate", "--format", "json")
        assert json_lines(again)[0]["rewritten"] == 0
        http_users = srv.request("GET", f"{USERS}/?include_deleted=true&limit=100")
        assert http_users.status == 200

    # The old key may now leave the ring: the new key alone reads every user.
    new_only = ring(new, index=index)
    from_cli = json_lines(cli(new_only, "users", "list", "--include-deleted", "--format", "json"))
    assert from_cli == http_users.json()["items"]
    assert len(from_cli) == 4
    by_id = {u["id"]: u for u in from_cli}
    assert by_id[seeded[1]["id"]]["full_name"] == "Rötation Eins"
    assert by_id[seeded[2]["id"]]["deleted_at"] is not None
    assert by_id[seeded[0]["id"]] == written[-1]
    # And the retired key can never be the active one again.
    retired = cli(ring(old, index=index), "users", "list", "--format", "json")
    assert retired.returncode == 11, (retired.stdout, retired.stderr)
    assert "kek-old" in retired.stderr
    assert "retired" in retired.stderr
