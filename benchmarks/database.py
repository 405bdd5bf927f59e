"""The benchmark database: created, migrated, seeded, reset between runs, dropped."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from benchmarks import processes

#: Seeded users' emails start with this; anything else was created by a run.
SEED_PREFIX = "seed-"
EMAIL_DOMAIN = "bench.example.org"


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def temporary_database(admin_url: str, suffix: str = "") -> Iterator[str]:
    """A new, empty database next to ``admin_url``'s, dropped (connections and all) after."""
    name = f"userplane_bench_{os.getpid()}_{int(time.time())}{suffix}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        raise SystemExit(f"bench: cannot reach PostgreSQL at {admin_url}: {exc}") from None
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass(frozen=True)
class Seeded:
    """The seeded users, in creation order."""

    ids: list[uuid.UUID]
    emails: list[str]
    seconds: float
    #: Each user's creation time (one second apart, in the past).
    created: list[datetime] = field(default_factory=list)


def seed(url: str, count: int) -> Seeded:
    """Insert ``count`` users with ``PostgreSQLStorage.copy_users`` (one COPY).

    Through the storage plugin, so rows are exactly what userplane writes
    (normalised email key, folded name, UTC times), ``count`` times faster
    than through the API. Creation times are one second apart, in the past,
    so that the list order is the seeding order and users created by the
    runs sort after every seeded one. Also fills ``bench_ids(n, id,
    email_key)``, the table pgbench scripts draw random users from.
    """
    from userplane.emails import normalize_email
    from userplane.plugins.postgresql.store import PostgreSQLStorage
    from userplane.users import User

    started = time.monotonic()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=count + 3600)
    users = []
    for n in range(count):
        created = base + timedelta(seconds=n)
        email = f"{SEED_PREFIX}{n:05d}@{EMAIL_DOMAIN}"
        user = User(uuid.uuid4(), email, f"Seed User {n}", True, created, created, 1)
        users.append((user, normalize_email(email)))
    storage = PostgreSQLStorage(url, min_size=1, max_size=1)
    try:
        storage.copy_users(users)
    finally:
        storage.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_ids (n integer PRIMARY KEY, id uuid NOT NULL, email_key text)"
        )
        with conn.cursor() as cur, cur.copy("COPY bench_ids (n, id, email_key) FROM STDIN") as cp:
            for n, (user, key) in enumerate(users, start=1):
                cp.write_row((n, user.id, key))
        conn.execute("VACUUM ANALYZE users")
        conn.execute("VACUUM ANALYZE bench_ids")
    return Seeded(
        ids=[u.id for u, _ in users],
        emails=[u.email for u, _ in users],
        seconds=time.monotonic() - started,
        created=[u.created_at for u, _ in users],
    )


def seed_peer(url: str, seeded: Seeded) -> float:
    """The users of ``seeded`` in the reference peer's ``users`` table, by one COPY.

    The peer (``/work/shared/peers/fastapi_seed``, SQLModel ``User``) keeps
    ``id, email, full_name, is_active, created_at, updated_at``: the same ids,
    emails, names and creation times as ``seed``, so the same scripts address
    the same users and its offset pages hold the same users as userplane's
    keyset pages. Also fills ``bench_ids(n, id)``, by which ``reset`` tells
    the seeded users from those a run created. Returns the seconds taken.
    """
    started = time.monotonic()
    columns = "id, email, full_name, is_active, created_at, updated_at"
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY users ({columns}) FROM STDIN") as cp:
            for n, (user_id, email, created) in enumerate(
                zip(seeded.ids, seeded.emails, seeded.created, strict=True)
            ):
                cp.write_row((user_id, email, f"Seed User {n}", True, created, created))
        conn.execute("CREATE TABLE bench_ids (n integer PRIMARY KEY, id uuid NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY bench_ids (n, id) FROM STDIN") as cp:
            for n, user_id in enumerate(seeded.ids, start=1):
                cp.write_row((n, user_id))
        conn.execute("VACUUM ANALYZE users")
        conn.execute("VACUUM ANALYZE bench_ids")
    return time.monotonic() - started


def make_api_keys(url: str, count: int, role: str = "admin") -> list[str]:
    """``count`` API keys of ``role``, written straight into ``api_keys`` (one COPY).

    The rows are those ``userplane keys create`` writes (lookup id, SHA-256 of
    the whole key, through the plugin's own ``hash_key`` and ``lookup_of``),
    without a process and an audit record per key. The benchmark spreads its
    requests over them so that the rate limits stay at their defaults, counted
    per key, and are checked, not refused (see ``README.md``).
    """
    import secrets
    import string

    from userplane.plugins.api_keys.keys import (
        KEY_PREFIX,
        LOOKUP_LENGTH,
        SECRET_LENGTH,
        hash_key,
        lookup_of,
    )

    alphabet = string.ascii_letters + string.digits
    now = datetime.now(UTC)
    keys = [
        KEY_PREFIX + "".join(secrets.choice(alphabet) for _ in range(LOOKUP_LENGTH + SECRET_LENGTH))
        for _ in range(count)
    ]
    columns = "id, name, role, lookup, secret_hash, created_at"
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY api_keys ({columns}) FROM STDIN") as cp,
    ):
        for n, key in enumerate(keys):
            cp.write_row((uuid.uuid4(), f"bench-{n}", role, lookup_of(key), hash_key(key), now))
    return keys


def seed_sealed(url: str, seeded: Seeded, env: Mapping[str, str]) -> float:
    """The users of ``seeded`` again, sealed under the keyring ``env`` configures.

    The same ids, emails, names and times as ``seed``, each with its own data
    key and its blind index, as ``SealedStorage`` stores them; then
    ``bench_ids``, so the database resets alike. Returns the seconds taken.
    """
    from userplane.emails import normalize_email
    from userplane.plugins.encryption_keys import keyring
    from userplane.sealing import Sealer
    from userplane.settings import Settings

    started = time.monotonic()
    # USERPLANE_ENV_FILE may name a missing file (an explicit env_file may not):
    # no .env of the working directory is read.
    ring = keyring(Settings.from_env(environ={**env, "USERPLANE_ENV_FILE": "/nonexistent"}))
    assert ring is not None
    sealer = Sealer(ring)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=len(seeded.ids) + 3600)
    columns = (
        "id, email, email_normalized, full_name, full_name_folded, is_active, "
        "created_at, updated_at, version"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY users ({columns}) FROM STDIN") as cp:
            for n, (user_id, email) in enumerate(zip(seeded.ids, seeded.emails, strict=True)):
                key = sealer.new_data_key(user_id)
                created = base + timedelta(seconds=n)
                cp.write_row(
                    (
                        user_id,
                        sealer.seal_value(user_id, key, "email", email),
                        sealer.blind_index(normalize_email(email)),
                        sealer.seal_value(user_id, key, "full_name", f"Seed User {n}"),
                        "",
                        True,
                        created,
                        created,
                        1,
                    )
                )
        conn.execute("CREATE TABLE bench_ids (n integer PRIMARY KEY, id uuid NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY bench_ids (n, id) FROM STDIN") as cp:
            for n, user_id in enumerate(seeded.ids, start=1):
                cp.write_row((n, user_id))
        conn.execute("VACUUM ANALYZE users")
    return time.monotonic() - started


def copy_table(source: str, target: str, table: str) -> None:
    """Every row of ``table`` from database ``source`` into the same table of ``target``."""
    with (
        psycopg.connect(source, autocommit=True) as src,
        psycopg.connect(target, autocommit=True) as dst,
        src.cursor() as out,
        dst.cursor() as into,
        out.copy(sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(table))) as reader,
        into.copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as writer,
    ):
        for block in reader:
            writer.write(block)


def reset(url: str) -> None:
    """Remove the users a run created and vacuum, so every run starts from the same table.

    The seeded users are those of ``bench_ids``: the email key cannot tell
    them apart where it is a blind index.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id NOT IN (SELECT id FROM bench_ids)")
        conn.execute("VACUUM ANALYZE users")


def versions(
    url: str, ids: Sequence[uuid.UUID], *, versioned: bool = True
) -> list[tuple[uuid.UUID, int]]:
    """The current version of each of ``ids``, for the If-Match of update runs.

    ``versioned=False`` (the reference peer, which has no versions): 0 for each.
    """
    if not versioned:
        return [(i, 0) for i in ids]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, version FROM users WHERE id = ANY(%s)", (list(ids),)
        ).fetchall()
    current = dict(rows)
    return [(i, current[i]) for i in ids]


def server_facts(url: str) -> tuple[str, int | None]:
    """The server's version, and its postmaster's pid when it runs on this machine."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version'), pg_backend_pid()").fetchone()
    assert row is not None
    version, backend = row
    postmaster = None
    backend_stat = processes.stat(int(backend))
    host = urlsplit(url).hostname or "localhost"
    if backend_stat is not None and host in {"127.0.0.1", "localhost", "::1"}:
        comm = Path(f"/proc/{backend_stat.ppid}/comm").read_text().strip()
        if comm.startswith("postgres"):
            postmaster = backend_stat.ppid
    return str(version), postmaster


def connections_in_use(url: str) -> int:
    """Client connections the server holds now, other than the one asking."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def settings(url: str, names: Sequence[str]) -> dict[str, str]:
    """Some server settings, by name."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = [conn.execute("SELECT current_setting(%s)", (n,)).fetchone() for n in names]
    return {n: str(row[0]) if row else "?" for n, row in zip(names, rows, strict=True)}
