"""The SQL statements userplane runs per request, taken from the product itself.

The bare stack and pgbench must run *exactly* the statements userplane runs,
so they are not copied here: they come from the PostgreSQL plugin's
``queries.sql`` and from ``userplane.list_sql`` (the composed list query), as
``userplane`` builds them for the default sort (``created_at``) and page size.
"""

from __future__ import annotations

import re

#: The page size of the list scenarios (userplane's default); the query asks one more.
PAGE_SIZE = 50

_PARAM = re.compile(r"%\((\w+)\)s")


def statements() -> dict[str, str]:
    """``{name: sql}`` with psycopg ``%(name)s`` parameters, for every benchmarked request."""
    from userplane.plugins.postgresql.store import PostgreSQLStorage
    from userplane.sql import USER_COLUMNS, list_users_sql

    queries = PostgreSQLStorage.queries

    def listing(*, after: bool, email: bool) -> str:
        return list_users_sql(
            PostgreSQLStorage.dialect,
            USER_COLUMNS,
            "created_at",
            False,
            after=after,
            is_active=False,
            email=email,
            q=False,
            include_deleted=False,
        )

    return {
        "get_user": queries["get_user"],
        "list_first": listing(after=False, email=False),
        "list_after": listing(after=True, email=False),
        "list_email": listing(after=False, email=True),
        "insert_user": queries["insert_user"],
        "update_user": queries["update_user"],
        "user_version": queries["user_version"],
    }


def columns() -> list[str]:
    """The user columns every statement returns, in order: the keys of the JSON shape."""
    from userplane.sql import USER_COLUMNS

    return [c.strip() for c in USER_COLUMNS.split(",")]


def parameters(sql: str) -> list[str]:
    """The names of ``sql``'s ``%(name)s`` parameters, each once, in order."""
    return list(dict.fromkeys(_PARAM.findall(sql)))


def for_pgbench(sql: str, expressions: dict[str, str]) -> str:
    """``sql`` for a pgbench script: each ``%(name)s`` becomes ``expressions[name]``.

    A parameter without an expression becomes the pgbench variable ``:name``
    (set with ``-D name=value``); with ``-M prepared`` pgbench sends variables
    as bind parameters, as psycopg does. The statement must be one line.
    """
    text = _PARAM.sub(lambda m: expressions.get(m.group(1), f":{m.group(1)}"), sql)
    # Comments would swallow the rest of the line once it is joined.
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return " ".join(line.strip() for line in lines) + ";"
