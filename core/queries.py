"""Named SQL queries kept in ``.sql`` files, for storage plugins.

A file holds blocks that each start with a ``-- name: NAME`` line; the text up
to the next such line is that query. Keeping SQL in its own file lets it be
read, reviewed and ``EXPLAIN``ed as SQL.
"""

from __future__ import annotations

import re
from importlib.resources import files

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split ``text`` into ``{name: sql}``; comment-only lines are kept, blanks trimmed."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


def load_queries(package: str, resource: str = "queries.sql") -> dict[str, str]:
    """The named queries of ``resource`` shipped inside ``package``."""
    return parse_queries(files(package).joinpath(resource).read_text(encoding="utf-8"))
