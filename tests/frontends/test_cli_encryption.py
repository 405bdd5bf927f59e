"""``userplane encryption`` (new-key, rotate, status) and the CLI with encryption on.

In-process through click's CliRunner over a SQLite file per test, and as a real
process (``python -m userplane``) for the key generator and one rotation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from userplane.frontends.cli import cli
from userplane.keyring import KEY_BYTES, NamedKey, new_key, parse_keys
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING

PG_ENV = "USERPLANE_TEST_POSTGRESQL_URL"
ENTRY = re.compile(r"[A-Za-z0-9_-]{1,32}:[A-Za-z0-9_-]{43}")
TIMEOUT = 60


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No USERPLANE_* from the outer environment; the root logger restored afterwards."""
    for name in list(os.environ):
        if name.startswith("USERPLANE_") and name != PG_ENV:
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def ring(keys: Sequence[NamedKey] | None, index: NamedKey | None) -> dict[str, str | None]:
    """The environment of a keyring (``None``: unset)."""
    return {
        KEYS_SETTING: None if keys is None else ",".join(k.entry() for k in keys),
        INDEX_KEYS_SETTING: None if index is None else index.entry(),
    }


def secrets_of(*keys: NamedKey) -> list[str]:
    return [k.entry().split(":", 1)[1] for k in keys]


class Cli:
    """``userplane`` in-process against this test's SQLite file, never a stray ``.env``."""

    def __init__(self, tmp_path: Path) -> None:
        self.runner = CliRunner()
        self.env_file = tmp_path / "empty.env"
        self.env_file.touch()
        self.env: dict[str, str | None] = {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/u.db",
            "USERPLANE_LOG_FORMAT": "json",
            PG_ENV: None,
        }

    def __call__(
        self, *args: str, env: Mapping[str, str | None] | None = None, input: str | None = None
    ) -> Result:
        return self.runner.invoke(
            cli,
            ["--env-file", str(self.env_file), *args],
            env={**self.env, **(env or {})},
            catch_exceptions=False,
            input=input,
        )

    def ok(self, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
        result = self(*args, env=env)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str, env: Mapping[str, str | None] | None = None) -> list[Any]:
        result = self.ok(*args, "--format", "json", env=env)
        return [json.loads(line) for line in result.stdout.splitlines()]

    def fails(self, code: int, *args: str, env: Mapping[str, str | None] | None = None) -> str:
        """Expect exit ``code``, nothing on stdout and one line on stderr; return it."""
        result = self(*args, env=env)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        return lines[0]


@pytest.fixture
def run(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def keys() -> tuple[NamedKey, NamedKey, NamedKey]:
    """kek-1, kek-2 and index-1."""
    return new_key("kek-1"), new_key("kek-2"), new_key("index-1")


def proc(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Any:
    """``python -m userplane`` as a real process in ``tmp_path``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    base.update(
        USERPLANE_DATABASE_URL=f"sqlite:///{tmp_path}/p.db",
        USERPLANE_LOG_FORMAT="json",
        USERPLANE_ENV_FILE=str(tmp_path / "no-such.env"),
    )
    return subprocess.run(
        [sys.executable, "-m", "userplane", *args],
        env={**base, **(env or {})},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


# -- new-key -------------------------------------------------------------------------------------


def test_new_key_prints_one_fresh_entry_a_keyring_reads(run: Cli) -> None:
    named = run.ok("encryption", "new-key", "--name", "kek-2025-01")
    assert named.stderr == ""
    [entry] = named.stdout.splitlines()
    assert ENTRY.fullmatch(entry)
    [key] = parse_keys(entry)
    assert key.name == "kek-2025-01"
    assert len(key.secret) == KEY_BYTES
    unnamed = run.ok("encryption", "new-key").stdout.strip()
    assert re.fullmatch(r"k\d{14}:[A-Za-z0-9_-]{43}", unnamed)
    again = run.ok("encryption", "new-key", "--name", "kek-2025-01").stdout.strip()
    assert again != entry  # random every time
    # Two entries make a keyring as they are printed.
    assert [k.name for k in parse_keys(f"{entry}\n{unnamed}")] == ["kek-2025-01", unnamed[:15]]


@pytest.mark.parametrize("name", ["bad name", "x" * 33, "émile", "a:b", " "])
def test_new_key_refuses_a_bad_name_in_one_line(run: Cli, name: str) -> None:
    line = run.fails(2, "encryption", "new-key", "--name", name)
    assert line.startswith("Error: Invalid value for --name:")
    assert "1 to 32 letters, digits, - or _" in line


def test_new_key_as_a_real_process(tmp_path: Path) -> None:
    done = proc(tmp_path, "encryption", "new-key", "--name", "index-1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [key] = parse_keys(done.stdout)
    assert (key.name, len(key.secret)) == ("index-1", KEY_BYTES)
    bad = proc(tmp_path, "encryption", "new-key", "--name", "no good")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "--name" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_advice_of_the_half_keyring_error_can_be_followed(
    run: Cli, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    # The key generator needs no settings: it makes the keys settings lack.
    half = ring([keys[0]], None)
    assert "userplane encryption new-key" in run.fails(11, "users", "list", env=half)
    printed = run.ok("encryption", "new-key", "--name", "index-1", env=half).stdout
    assert parse_keys(printed)[0].name == "index-1"


# -- status and rotate -----------------------------------------------------------------------------


def test_status_and_rotation_through_the_cli(
    run: Cli, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    kek1, kek2, index = keys
    first = ring([kek1], index)
    run.ok("migrate", env=first)
    created = [
        run.json("users", "create", "--email", f"Cli.User{i}@Example.org", env=first)[0]
        for i in range(3)
    ]
    status = run.json("encryption", "status", env=first)
    assert [(r["name"], r["purpose"], r["configured"], r["retired_at"]) for r in status] == [
        ("index-1", "index", "active", None),
        ("kek-1", "kek", "active", None),
    ]
    assert all(r["created_at"] for r in status)

    rotating = ring([kek2, kek1], index)
    status = run.json("encryption", "status", env=rotating)
    assert {r["name"]: r["configured"] for r in status} == {
        "index-1": "active",
        "kek-1": "yes",
        "kek-2": "active",
    }
    rotated = run("encryption", "rotate", "--format", "json", "--batch-size", "2", env=rotating)
    assert rotated.exit_code == 0, rotated.stderr
    assert [json.loads(line) for line in rotated.stdout.splitlines()] == [
        {
            "scanned": 3,
            "rewritten": 3,
            "sealed": 0,
            "passes": 2,
            "tidied": 0,
            "active_key": "kek-2",
            "index_key": "index-1",
            "retired": ["kek-1"],
        }
    ]
    # Progress goes to stderr, never into the report, and never a key.
    assert "rotating keys" in rotated.stderr
    for secret in secrets_of(*keys):
        assert secret not in rotated.stdout + rotated.stderr
    again = run.ok("encryption", "rotate", env=rotating)
    assert again.stdout == "rewrote 0 of 3 users in 1 pass: data keys wrapped by 'kek-2'\n"
    retired = {r["name"]: r["retired_at"] for r in run.json("encryption", "status", env=rotating)}
    assert retired["kek-1"] is not None
    assert retired["kek-2"] is None

    # The old key leaves the keyring: everything still reads, by id and by email.
    last = ring([kek2], index)
    assert run.json("users", "list", env=last) == created
    assert run.json("users", "get", "cli.user1@example.org", env=last) == [created[1]]
    configured = {r["name"]: r["configured"] for r in run.json("encryption", "status", env=last)}
    assert configured == {"index-1": "active", "kek-1": "no", "kek-2": "active"}


def test_rotate_in_a_table_says_what_it_retired(
    run: Cli, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    kek1, kek2, index = keys
    run.ok("migrate", env=ring([kek1], index))
    run.ok("users", "create", "--email", "one@example.org", env=ring([kek1], index))
    out = run.ok("encryption", "rotate", env=ring([kek2, kek1], index)).stdout
    assert out == (
        "rewrote 1 of 1 users in 2 passes: data keys wrapped by 'kek-2'\n"
        "retired 'kek-1': it may now leave the keyring\n"
    )


def test_rotate_and_status_without_encryption(run: Cli) -> None:
    run.ok("migrate")
    line = run.fails(11, "encryption", "rotate")
    assert line.startswith("userplane: configuration: nothing is encrypted")
    assert KEYS_SETTING in line
    off = run.ok("encryption", "status")
    assert off.stdout == "encryption is off: no key has sealed anything in this database\n"
    assert run.json("encryption", "status") == []


def test_a_rotation_and_status_as_a_real_process_with_key_files(
    tmp_path: Path, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    kek1, kek2, index = keys
    keys_file, index_file = tmp_path / "kek", tmp_path / "index"
    keys_file.write_text(f"# the active one first\n{kek1.entry()}\n")
    index_file.write_text(index.entry() + "\n")
    env = {f"{KEYS_SETTING}_FILE": str(keys_file), f"{INDEX_KEYS_SETTING}_FILE": str(index_file)}
    for args in (("migrate",), ("users", "create", "--email", "Proc@Example.org")):
        done = proc(tmp_path, *args, env=env)
        assert done.returncode == 0, done.stderr
    keys_file.write_text(f"{kek2.entry()}\n{kek1.entry()}\n")
    rotated = proc(tmp_path, "encryption", "rotate", "--format", "json", env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout) == {
        "scanned": 1,
        "rewritten": 1,
        "sealed": 0,
        "passes": 2,  # one to re-wrap, one that finds nothing left
        "tidied": 0,
        "active_key": "kek-2",
        "index_key": "index-1",
        "retired": ["kek-1"],
    }
    for secret in secrets_of(*keys):
        assert secret not in rotated.stdout + rotated.stderr
    keys_file.write_text(f"{kek2.entry()}\n")
    status = proc(tmp_path, "encryption", "status", "--format", "json", env=env)
    assert status.returncode == 0, status.stderr
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    assert [(r["name"], r["configured"], r["retired_at"] is None) for r in rows] == [
        ("index-1", "active", True),
        ("kek-1", "no", False),
        ("kek-2", "active", True),
    ]
    got = proc(tmp_path, "users", "get", "proc@example.org", "--format", "json", env=env)
    assert json.loads(got.stdout)["email"] == "Proc@Example.org"


# -- misconfiguration and failures: one line, an exit code, no key ---------------------------------


def test_misconfigured_keyrings_exit_11_in_one_line_without_key_material(
    run: Cli, tmp_path: Path, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    kek1, kek2, index = keys
    run.ok("migrate", env=ring([kek1], index))
    run.ok("users", "create", "--email", "ann@example.org", env=ring([kek1], index))
    impostor = NamedKey("kek-1", new_key("x").secret)
    cases: list[tuple[dict[str, str | None], str]] = [
        (ring([impostor], index), "'kek-1' is not the key of that name"),
        (ring([kek2], index), "data here is sealed under 'kek-1'"),
        (ring([kek1], new_key("index-2")), "the blind index here is computed under 'index-1'"),
        (ring(None, None), "holds personal data sealed under"),
        (ring([kek1], None), "needs both a key-encryption key and a blind-index key"),
        ({**ring([kek1], index), KEYS_SETTING: kek1.entry()[:-3]}, "a key is 32 bytes"),
        (
            {**ring([kek1], index), f"{KEYS_SETTING}_FILE": str(tmp_path / "missing")},
            "not both",
        ),
    ]
    for env, says in cases:
        for args in (("users", "list"), ("encryption", "status")):
            if args[0] == "encryption":
                # status shows the recorded keys first (when it can read them), then why
                # this keyring is refused, in one line.
                result = run(*args, env=env)
                assert result.exit_code == 11, (result.stdout, result.stderr)
                [line] = result.stderr.splitlines()
                assert result.stdout == "" or result.stdout.startswith("NAME ")
            else:
                line = run.fails(11, *args, env=env)
            assert line.startswith("userplane: configuration: "), line
            assert says in line
            for secret in [*secrets_of(kek1, kek2, index, impostor)]:
                assert secret not in line + run(*args, env=env).stdout
                assert secret[:12] not in line


def test_config_masks_the_keyrings(run: Cli, keys: tuple[NamedKey, NamedKey, NamedKey]) -> None:
    out = run.ok("config", env=ring(keys[:2], keys[2])).stdout
    assert re.search(rf"^{KEYS_SETTING} +\*+$", out, re.MULTILINE)
    assert re.search(rf"^{INDEX_KEYS_SETTING} +\*+$", out, re.MULTILINE)
    for secret in secrets_of(*keys):
        assert secret not in out


def test_serve_stops_before_serving_when_the_keys_are_wrong(
    tmp_path: Path, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    kek1, _, index = keys
    good = {KEYS_SETTING: kek1.entry(), INDEX_KEYS_SETTING: index.entry()}
    for args in (("migrate",), ("users", "create", "--email", "ann@example.org")):
        assert proc(tmp_path, *args, env=good).returncode == 0
    impostor = NamedKey("kek-1", new_key("x").secret)
    wrong = {**good, KEYS_SETTING: impostor.entry(), "USERPLANE_PORT": "0"}
    done = proc(tmp_path, "serve", env=wrong)
    assert done.returncode == 11, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert lines[-1].startswith("userplane: configuration: 'kek-1' is not the key")
    assert "Traceback" not in done.stderr
    for secret in secrets_of(kek1, index, impostor):
        assert secret not in done.stdout + done.stderr


def test_refused_queries_exit_5_and_undecryptable_users_exit_12(
    run: Cli, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    kek1, _, index = keys
    env = ring([kek1], index)
    run.ok("migrate", env=env)
    user = run.json("users", "create", "--email", "t@example.org", "--full-name", "T T", env=env)[0]
    line = run.fails(5, "users", "list", "-q", "ann", env=env)
    assert line.startswith("userplane: invalid-input: $.q: substring search is unavailable")
    assert KEYS_SETTING in line
    assert "$.sort" in run.fails(5, "users", "list", "--sort", "email", env=env)

    import sqlite3

    path = run.env["USERPLANE_DATABASE_URL"].removeprefix("sqlite:///")  # type: ignore[union-attr]
    with sqlite3.connect(path) as conn:
        [(name,)] = conn.execute("SELECT full_name FROM users").fetchall()
        i = len(name) // 2
        conn.execute(
            "UPDATE users SET full_name = ?",
            (name[:i] + ("B" if name[i] == "A" else "A") + name[i + 1 :],),
        )
    conn.close()
    line = run.fails(12, "users", "get", user["id"], env=env)
    assert line.startswith(f"userplane: undecryptable: the stored full_name of user {user['id']}")
    assert "T T" not in line


# -- shred -----------------------------------------------------------------------------------------


def test_shred_erases_one_user_now_and_leaves_other_deleted_users(
    run: Cli, tmp_path: Path, keys: tuple[NamedKey, NamedKey, NamedKey]
) -> None:
    kek1, _, index = keys
    env = ring([kek1], index)
    run.ok("migrate", env=env)
    ann = run.json("users", "create", "--email", "Ann.Shred@Example.org", env=env)[0]
    bob = run.json("users", "create", "--email", "bob@example.org", env=env)[0]
    run.ok("users", "delete", bob["id"], env=env)
    # A live user is deleted and purged at once; the deleted one waits for `purge`.
    shredded = run.json("users", "shred", "ann.shred@example.org", "--yes", env=env)
    assert shredded == [{"shredded": ann["id"]}]
    listed = run.json("users", "list", "--include-deleted", env=env)
    assert [u["id"] for u in listed] == [bob["id"]]
    dumped = "\n".join(sqlite3.connect(tmp_path / "u.db").iterdump())
    # The audit trail keeps its events whole, so that the chain verifies: they name
    # the user by id (docs/audit.md, "Personal data and erasure"). Nothing else does.
    trail = 'INSERT INTO "audit_events" '
    elsewhere = [line for line in dumped.splitlines() if not line.startswith(trail)]
    assert [line for line in elsewhere if ann["id"] in line] == []
    assert any(line.startswith(trail) and ann["id"] in line for line in dumped.splitlines())
    # No value of theirs is left in clear anywhere, the trail included (sealed, key gone).
    assert "ann.shred" not in dumped.lower()
    # Unknown: one line, exit 3; asked without --yes and refused: nothing happens.
    assert "no user with that email" in run.fails(
        3, "users", "shred", "nobody@example.org", "--yes", env=env
    )
    # No terminal to ask on: refused at once, before anything is read or written.
    refused = run("users", "shred", bob["id"], env=env, input="n\n")
    assert refused.exit_code == 2
    assert [u["id"] for u in run.json("users", "list", "--include-deleted", env=env)] == [bob["id"]]


def test_shred_as_a_real_process(tmp_path: Path) -> None:
    assert proc(tmp_path, "migrate").returncode == 0
    made = proc(tmp_path, "users", "create", "--email", "gone@example.org", "--format", "json")
    assert made.returncode == 0, made.stderr
    user_id = json.loads(made.stdout)["id"]
    done = proc(tmp_path, "users", "shred", user_id, "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"shredded user {user_id}\n"
    again = proc(tmp_path, "users", "shred", user_id, "--yes")
    assert again.returncode == 3
    assert again.stderr.splitlines()[-1].startswith("userplane: not-found: ")
