"""Bulk export of users: every user, page by page, as NDJSON or CSV, in constant memory.

One keyset page (``MAX_LIMIT`` users) is held at a time, so a million users
cost what five hundred do. Users come oldest first (``created_at``, then
``id``); a user created while the export runs may or may not be in it, and
none appears twice. The rows are what ``GET /api/v1/users/{id}`` answers, so
``userplane users import`` reads them back (ignoring the read-only fields).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import attrs

from userplane.imports import escape_cell
from userplane.users import MAX_LIMIT, User, UserQuery

if TYPE_CHECKING:
    from userplane.users import UserService

FORMATS: Final = ("ndjson", "csv")
#: The columns of a CSV export, in order: every field of a user.
COLUMNS: Final = tuple(a.name for a in attrs.fields(User))


def all_users(service: UserService, include_deleted: bool = False) -> Iterator[User]:
    """Every user, a page at a time, oldest first; deleted ones too with ``include_deleted``."""
    cursor: str | None = None
    while True:
        page = service.list(
            UserQuery(limit=MAX_LIMIT, cursor=cursor, include_deleted=include_deleted)
        )
        yield from page.items
        if page.next is None:
            return
        cursor = page.next


def ndjson(users: Iterator[User]) -> Iterator[bytes]:
    """One JSON object per user, each ending with a newline."""
    import orjson

    from userplane import convert

    for user in users:
        yield orjson.dumps(convert.user_to_dict(user)) + b"\n"


def csv_rows(users: Iterator[User]) -> Iterator[str]:
    """A header, then one CSV row per user; text cells escaped against formulas.

    Booleans are ``true``/``false``, times ISO 8601 with ``Z``, an empty
    cell is null. A name or address beginning with ``=``, ``+``, ``-`` or
    ``@`` gets a ``'`` first, so a spreadsheet shows it rather than run it;
    import takes the ``'`` off again.
    """
    from userplane import convert

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    def line(cells: list[str]) -> str:
        writer.writerow(cells)
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        return text

    yield line(list(COLUMNS))
    for user in users:
        data = convert.user_to_dict(user)
        cells = []
        for column in COLUMNS:
            value = data[column]
            if value is None:
                cells.append("")
            elif isinstance(value, bool):
                cells.append("true" if value else "false")
            elif isinstance(value, str):
                cells.append(escape_cell(value))
            elif isinstance(value, dict):  # the attributes, as JSON text ("" when none)
                cells.append(escape_cell(json.dumps(value, ensure_ascii=False)) if value else "")
            else:
                cells.append(str(value))
        yield line(cells)
