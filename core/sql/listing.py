"""The list query of SQL stores, composed per sort order and filter combination.

Composed from fixed fragments, never from input, rather than one statement
full of ``(:x IS NULL OR …)``: each combination then gets its own prepared
plan, and the keyset condition is a plain row comparison that the sort's index
can seek on, so page 100 costs what page 1 costs.
"""

from __future__ import annotations

import functools

from userplane.sql.dialect import Dialect

#: The column each sort field orders by.
SORT_COLUMNS = {
    "created_at": "created_at",
    "email": "email_normalized",
    "full_name": "full_name_folded",
}
#: Sort columns that are unique on their own: no ``id`` tie-break needed.
UNIQUE_SORT_COLUMNS = frozenset({"email_normalized"})


@functools.lru_cache(maxsize=256)
def list_users_sql(
    dialect: Dialect,
    columns: str,
    sort_field: str,
    descending: bool,
    *,
    after: bool,
    is_active: bool,
    email: bool,
    q: bool,
    include_deleted: bool,
    email_next: bool = False,
    external_source: bool = False,
    external_id: bool = False,
) -> str:
    """The ``SELECT`` for one page; the flags say which parameters it takes.

    Parameters: ``after_key`` and ``after_id`` (the cursor), ``is_active``,
    ``email_key`` (and ``email_next``, matched against the second index
    column), ``q`` (folded text), ``external_source`` and ``external_id``,
    and ``limit``.
    """

    def p(name: str) -> str:
        return dialect.param.format(name=name)

    column = SORT_COLUMNS[sort_field]
    unique = column in UNIQUE_SORT_COLUMNS
    conditions = []
    if not include_deleted:
        conditions.append("deleted_at IS NULL")
    if after:
        op = "<" if descending else ">"
        if unique:
            conditions.append(f"{column} {op} {p('after_key')}")
        else:
            conditions.append(f"({column}, id) {op} ({p('after_key')}, {p('after_id')})")
    if is_active:
        conditions.append(f"is_active = {p('is_active')}")
    if email and email_next:
        conditions.append(
            f"(email_normalized = {p('email_key')} OR email_index_next = {p('email_next')})"
        )
    elif email:
        conditions.append(f"email_normalized = {p('email_key')}")
    if external_source:
        conditions.append(f"external_source = {p('external_source')}")
    if external_id:
        conditions.append(f"external_id = {p('external_id')}")
    if q:
        on_email = dialect.contains.format(haystack="email_normalized", needle=p("q"))
        on_name = dialect.contains.format(haystack="full_name_folded", needle=p("q"))
        conditions.append(f"({on_email} OR {on_name})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    direction = " DESC" if descending else ""
    order = f"{column}{direction}" if unique else f"{column}{direction}, id{direction}"
    return f"SELECT {columns} FROM users{where} ORDER BY {order} LIMIT {p('limit')}"
