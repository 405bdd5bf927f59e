"""Helpers for the tests' own PostgreSQL databases."""

from __future__ import annotations


def empty(url: str) -> None:
    """Empty every table of the database at ``url`` (yoyo's migration records aside).

    Runs before each of some two thousand tests. ``DELETE`` of the few rows a test
    leaves takes about 15 ms here; ``TRUNCATE`` of the eighteen tables, which makes
    new files for each, took 180: a fifth of the in-process suite's time. Foreign
    keys are not checked meanwhile (``session_replication_role``, for a superuser,
    as the tests' server role is), since every table is emptied; a role that may not
    set it gets ``TRUNCATE``.
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename NOT LIKE '%yoyo%'"
            )
        ]
        try:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                for table in tables:
                    conn.execute(f'DELETE FROM "{table}"')
        except psycopg.errors.InsufficientPrivilege:
            conn.execute(f"TRUNCATE {', '.join(tables)}")
