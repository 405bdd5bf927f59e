"""Helpers for the tests' own PostgreSQL databases."""

from __future__ import annotations


def empty(url: str) -> None:
    """Empty every table of the database at ``url`` (yoyo's migration records aside)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename NOT LIKE '%yoyo%'"
            )
        ]
        conn.execute(f"TRUNCATE {', '.join(tables)}")
