"""userplane-audit-log: its lines, through the registry and the HTTP API, and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from userplane.frontends.http.testing import PrincipalTokens, client
from userplane.plugin import (
    ConfigurationError,
    NewUser,
    Principal,
    Registry,
    Settings,
    UserChanges,
    acting_as,
)

import userplane_audit_log as plugin

ADMIN = Principal(id="test:root", kind="test", roles=frozenset({"admin"}))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def open_registry(tmp_path: Path, log: Path | None, **extra: Any) -> Registry:
    variables = {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'users.db'}"}
    if log is not None:
        variables["USERPLANE_AUDIT_LOG_FILE"] = str(log)
    registry = Registry(Settings.from_mapping(variables), **extra)
    registry.migrate()
    return registry


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def registry(tmp_path: Path, log: Path) -> Iterator[Registry]:
    with open_registry(tmp_path, log, plugins=[PrincipalTokens()]) as registry:
        yield registry


def test_off_when_unset(tmp_path: Path) -> None:
    with open_registry(tmp_path, None) as registry:
        assert plugin.AuditLog not in registry.services
        registry.users.create(NewUser(email="ann@example.org"))
    assert list(tmp_path.glob("*.jsonl")) == []


def test_a_missing_directory_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_AUDIT_LOG_FILE"):
        open_registry(tmp_path, tmp_path / "nowhere" / "audit.jsonl")


def test_one_line_per_change_through_the_registry(registry: Registry, log: Path) -> None:
    users = registry.users
    with acting_as(ADMIN):
        ann = users.create(NewUser(email="ann@example.org", full_name="Ann Example"))
        users.update(ann.id, UserChanges(full_name="Ann E.", email="ann@example.net"))
        users.delete(ann.id)
        users.restore(ann.id)
        users.delete(ann.id)
        purged = users.purge(timedelta(0))
        cid = users.create(NewUser(email="cid@example.org"))
        users.delete(cid.id)
        users.purge_user(cid.id)  # userplane users shred
    users.create(NewUser(email="bob@example.org"))  # no principal: embedded use
    got = lines(log)
    assert [line["event"] for line in got] == [
        "user.created",
        "user.updated",
        "user.deleted",
        "user.restored",
        "user.deleted",
        "users.purged",
        "user.created",
        "user.deleted",
        "user.purged",
        "user.created",
    ]
    assert [line["principal"] for line in got] == ["test:root"] * 9 + [None]
    assert got[8]["user_id"] == str(cid.id)
    assert {line.get("user_id") for line in got[:5]} == {str(ann.id)}
    assert got[1]["changed"] == ["email", "full_name"]
    assert got[5]["count"] == purged == 1
    assert datetime.fromisoformat(got[5]["deleted_before"]).tzinfo is not None
    for line in got:
        assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)
    # Ids only: no personal data beyond them.
    text = log.read_text(encoding="utf-8")
    assert "example.org" not in text
    assert "example.net" not in text
    assert "Ann" not in text


def test_the_file_is_for_operators_only(registry: Registry, log: Path) -> None:
    registry.users.create(NewUser(email="ann@example.org"))
    assert stat.S_IMODE(log.stat().st_mode) & 0o077 == 0


def test_through_the_http_api(registry: Registry, log: Path) -> None:
    editor = Principal(id="test:ed", kind="test", roles=frozenset({"editor"}))
    http = client(registry, principal=editor)
    created = http.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert created.status_code == 201
    user = created.json["id"]
    patched = http.simulate_patch(f"/api/v1/users/{user}", json={"is_active": False})
    assert patched.status_code == 200
    assert http.simulate_delete(f"/api/v1/users/{user}").status_code == 204
    assert http.simulate_post(f"/api/v1/users/{user}/restore").status_code == 200
    refused = client(registry).simulate_delete(f"/api/v1/users/{user}")
    assert refused.status_code == 401  # refused: no change, no line
    got = lines(log)
    assert [(g["event"], g["principal"], g["user_id"]) for g in got] == [
        ("user.created", "test:ed", user),
        ("user.updated", "test:ed", user),
        ("user.deleted", "test:ed", user),
        ("user.restored", "test:ed", user),
    ]
    assert got[1]["changed"] == ["is_active"]


def test_a_failed_write_leaves_the_change_standing(
    registry: Registry, log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry.users.create(NewUser(email="ann@example.org"))
    audit = registry.services.get(plugin.AuditLog)
    writable, audit.fd = audit.fd, os.open(os.devnull, os.O_RDONLY)  # every write fails now
    try:
        with caplog.at_level("ERROR", logger="userplane.events"):
            bob = registry.users.create(NewUser(email="bob@example.org"))
    finally:
        os.close(audit.fd)
        audit.fd = writable
    assert registry.users.get(bob.id) == bob
    failed = [r for r in caplog.records if r.name == "userplane.events"]
    assert [(r.plugin, r.hook) for r in failed] == [("audit_log", "userplane_user_created")]  # type: ignore[attr-defined]
    assert len(lines(log)) == 1


# -- concurrent writers ------------------------------------------------------------------

#: Far beyond PIPE_BUF (4096), where a pipe would split writes: a file must not.
BIG = 100_000
PER_WRITER = 40


def _write_many(path: str, writer: int) -> None:
    audit = plugin.AuditLog(path)
    try:
        for i in range(PER_WRITER):
            audit.write({"writer": writer, "i": i, "pad": str(writer) * (BIG + writer * 97)})
    finally:
        audit.close()


def test_lines_stay_whole_under_concurrent_writers(log: Path) -> None:
    # Processes (each its own descriptor, as gunicorn workers) and threads (one each).
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_write_many, args=(str(log), w)) for w in range(3)]
    threads = [threading.Thread(target=_write_many, args=(str(log), w)) for w in range(3, 6)]
    for worker in [*processes, *threads]:
        worker.start()
    for thread in threads:
        thread.join(timeout=120)
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    got = lines(log)  # every line parses: none was split or interleaved
    assert len(got) == 6 * PER_WRITER
    for line in got:
        assert line["pad"] == str(line["writer"]) * (BIG + line["writer"] * 97)
    for writer in range(6):
        assert [g["i"] for g in got if g["writer"] == writer] == list(range(PER_WRITER))
