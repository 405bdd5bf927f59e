"""Whole-instance copies from and to PostgreSQL (``userplane.plugin.CopyableStorage``).

Mixed into ``PostgreSQLStorage``. A copy runs on a connection of its own,
outside the pool and without its statement timeout (a copy's statements
may be long): a read is one ``REPEATABLE READ READ ONLY`` transaction (every
table as of one snapshot), a write one transaction whose rows go in with
``COPY``, committed when the copy ends. Tables are described from the
catalog of the connection's schema; values come and go as psycopg's Python
types, so the kinds need little converting here.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from userplane.plugin import CopyColumn, CopySession, CopyTable

_TABLES = """
SELECT c.oid, c.relname, c.relpersistence = 'u'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       a.atthasdef OR a.attidentity <> '',
       pg_get_serial_sequence(format('%%I.%%I', n.nspname, c.relname), a.attname) IS NOT NULL
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""

_PRIMARY_KEY = """
SELECT a.attname
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY array_position(i.indkey::smallint[], a.attnum)
"""

_REFERENCES = """
SELECT DISTINCT r.relname
FROM pg_constraint f JOIN pg_class r ON r.oid = f.confrelid
WHERE f.conrelid = %s AND f.contype = 'f' AND f.confrelid <> f.conrelid
ORDER BY r.relname
"""


def _bookkeeping(name: str) -> bool:
    """yoyo's tables: never copied."""
    return name.startswith("_yoyo") or name == "yoyo_lock"


def _kind(declared: str) -> str:
    """The kind a column of PostgreSQL type ``declared`` (``format_type``) holds."""
    if declared.endswith("[]"):
        return "array"
    base = declared.split("(")[0].strip()
    kinds = {
        "uuid": "uuid",
        "text": "text",
        "character varying": "text",
        "character": "text",
        "name": "text",
        "citext": "text",
        "boolean": "boolean",
        "smallint": "integer",
        "integer": "integer",
        "bigint": "integer",
        "real": "float",
        "double precision": "float",
        "timestamp with time zone": "timestamp",
        "bytea": "bytes",
        "json": "json",
        "jsonb": "json",
        "xid8": "txid",
    }
    return kinds.get(base, "raw")


def _decode(kind: str, value: Any) -> Any:
    """A value as psycopg returned it, as the Python value of ``kind``."""
    if value is None:
        return None
    if kind == "bytes":
        return bytes(value)
    if kind == "uuid":
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    if kind == "txid":
        return str(value)
    if kind in ("array", "json") and isinstance(value, str):
        return json.loads(value)
    return value


def _encode(kind: str, value: Any) -> Any:
    """The Python value of ``kind`` as ``COPY`` takes it."""
    if value is None:
        return None
    if kind == "json":
        return Jsonb(value)
    if kind == "bytes":
        return bytes(value)
    if kind == "array":
        return list(value)
    return value


#: The kinds whose values psycopg reads and writes as they are: no conversion either way.
_AS_IS = frozenset({"text", "integer", "float", "raw", "timestamp", "boolean"})


def _decoded(kinds: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """``rows`` (cut to ``kinds``' length) as the kinds' Python values."""
    width = len(kinds)
    if all(k in _AS_IS for k in kinds):
        return [tuple(r[:width]) for r in rows]
    at = [(i, k) for i, k in enumerate(kinds) if k not in _AS_IS]
    out = []
    for r in rows:
        row = list(r[:width])
        for i, k in at:
            row[i] = _decode(k, row[i])
        out.append(tuple(row))
    return out


def _tables(conn: psycopg.Connection[Any]) -> list[CopyTable]:
    found = []
    for oid, name, unlogged in conn.execute(_TABLES).fetchall():
        if _bookkeeping(name):
            continue
        described = conn.execute(_COLUMNS, [oid]).fetchall()
        found.append(
            CopyTable(
                name=name,
                columns=tuple(
                    CopyColumn(name=c, kind=_kind(t), nullable=n, has_default=d)
                    for c, t, n, d, _ in described
                ),
                primary_key=tuple(r[0] for r in conn.execute(_PRIMARY_KEY, [oid]).fetchall()),
                references=tuple(r[0] for r in conn.execute(_REFERENCES, [oid]).fetchall()),
                ephemeral=bool(unlogged),
                sequenced=tuple(c for c, _, _, _, s in described if s),
            )
        )
    return found


class _Session:
    """A copy's view of one PostgreSQL database (``CopySession``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._txid: str | None = None

    def count(self, table: CopyTable) -> int:
        from userplane.plugins.postgresql.store import _mapped_errors

        with _mapped_errors():
            row = self._conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.name))
            ).fetchone()
        return int(row[0]) if row else 0

    def rows(
        self, table: CopyTable, columns: Sequence[CopyColumn], batch: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        from userplane.plugins.postgresql.store import _mapped_errors

        names = [c.name for c in columns]
        kinds = [c.kind for c in columns]
        selected = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        if not table.primary_key:
            # No key to page by: a server-side cursor streams the snapshot instead.
            query = sql.SQL("SELECT {} FROM {}").format(selected, sql.Identifier(table.name))
            with _mapped_errors(), self._conn.cursor(name="userplane_copy") as cur:
                cur.execute(query)
                while raw := cur.fetchmany(batch):
                    yield _decoded(kinds, raw)
            return
        key = list(table.primary_key)
        extra = [k for k in key if k not in names]
        everything = sql.SQL(", ").join(sql.Identifier(n) for n in [*names, *extra])
        order = sql.SQL(", ").join(sql.Identifier(k) for k in key)
        first = sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT %s").format(
            everything, sql.Identifier(table.name), order
        )
        following = sql.SQL("SELECT {} FROM {} WHERE ({}) > ({}) ORDER BY {} LIMIT %s").format(
            everything,
            sql.Identifier(table.name),
            order,
            sql.SQL(", ").join(sql.Placeholder() * len(key)),
            order,
        )
        at = [[*names, *extra].index(k) for k in key]
        last: list[Any] | None = None
        while True:
            with _mapped_errors():
                if last is None:
                    raw = self._conn.execute(first, [batch]).fetchall()
                else:
                    raw = self._conn.execute(following, [*last, batch]).fetchall()
            if not raw:
                return
            last = [raw[-1][i] for i in at]
            yield _decoded(kinds, raw)
            if len(raw) < batch:
                return

    def _sequence(self, table: CopyTable, column: str) -> str | None:
        row = self._conn.execute(
            "SELECT pg_get_serial_sequence(format('%%I', %s::text), %s)", [table.name, column]
        ).fetchone()
        return None if row is None else row[0]

    def sequences(self, table: CopyTable) -> dict[str, int]:
        from userplane.plugins.postgresql.store import _mapped_errors

        found = {}
        with _mapped_errors():
            for column in table.sequenced:
                name = self._sequence(table, column)
                if name is None:
                    continue
                row = self._conn.execute(
                    "SELECT pg_sequence_last_value(%s::regclass)", [name]
                ).fetchone()
                if row is not None and row[0] is not None:  # NULL: never used
                    found[column] = int(row[0])
        return found

    def clear(self, table: CopyTable) -> None:
        from userplane.plugins.postgresql.store import _mapped_errors

        with _mapped_errors():
            self._conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table.name)))

    def _transaction_id(self) -> str:
        if self._txid is None:
            row = self._conn.execute("SELECT pg_current_xact_id()::text").fetchone()
            assert row is not None
            self._txid = str(row[0])
        return self._txid

    def write(
        self, table: CopyTable, columns: Sequence[CopyColumn], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        from userplane.plugins.postgresql.store import _mapped_errors

        if not rows:
            return
        # A transaction id is this transaction's, whatever the source held: another
        # server's ids mean nothing here (an audit event not yet chained would wait for
        # this server's counter to pass one), and SQLite has none.
        kept = [i for i, c in enumerate(columns) if c.kind != "txid"]
        if len(kept) < len(columns):
            rows = [tuple(row[i] for i in kept) for row in rows]
            columns = [columns[i] for i in kept]
        stamped = [c.name for c in table.columns if c.kind == "txid"]
        txid = [self._transaction_id()] * len(stamped)
        names = [c.name for c in columns] + stamped
        kinds = [c.kind for c in columns]
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(n) for n in names)
        )
        at = [(i, k) for i, k in enumerate(kinds) if k not in _AS_IS and k != "uuid"]
        with _mapped_errors(), self._conn.cursor() as cur, cur.copy(statement) as copy:
            for row in rows:
                values = [*row, *txid]
                for i, k in at:
                    values[i] = _encode(k, values[i])
                copy.write_row(values)

    def finish(self, table: CopyTable, sequences: Mapping[str, int]) -> None:
        from userplane.plugins.postgresql.store import _mapped_errors

        with _mapped_errors():
            for column in table.sequenced:
                name = self._sequence(table, column)
                if name is None:
                    continue
                row = self._conn.execute(
                    sql.SQL("SELECT max({}) FROM {}").format(
                        sql.Identifier(column), sql.Identifier(table.name)
                    )
                ).fetchone()
                mark = max(int((row[0] if row else None) or 0), int(sequences.get(column, 0)))
                if mark > 0:
                    self._conn.execute("SELECT setval(%s::regclass, %s, true)", [name, mark])


class PostgreSQLCopying:
    """``CopyableStorage`` for ``PostgreSQLStorage`` (its ``url``)."""

    url: str

    def _copy_connect(self) -> psycopg.Connection[Any]:
        from userplane.plugins.postgresql.store import _mapped_errors

        with _mapped_errors():
            try:
                return psycopg.connect(
                    self.url, options="-c statement_timeout=0 -c TimeZone=UTC", connect_timeout=10
                )
            except psycopg.OperationalError as exc:
                if "unsupported startup parameter" not in str(exc):
                    raise
            # A pooler (PgBouncer) between: no startup options and nothing prepared;
            # the session's settings are SET LOCAL in each transaction instead.
            conn = psycopg.connect(self.url, connect_timeout=10, prepare_threshold=None)
            conn.execute("SET TimeZone TO 'UTC'")
            conn.commit()  # outside any transaction, so copy_session may set its isolation
            return conn

    def copy_tables(self) -> list[CopyTable]:
        """Every table of the connection's schema, yoyo's left out."""
        from userplane.plugins.postgresql.store import _mapped_errors

        with self._copy_connect() as conn, _mapped_errors():
            return _tables(conn)

    @contextlib.contextmanager
    def copy_session(self, *, write: bool) -> Iterator[CopySession]:
        """One snapshot (``REPEATABLE READ READ ONLY``), or one transaction, of its own."""
        conn = self._copy_connect()
        try:
            if not write:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
            with conn.transaction():
                # Whatever the role's or the pooler's default: a copy may take long.
                conn.execute("SET LOCAL statement_timeout = 0")
                yield _Session(conn)
        finally:
            conn.close()
