"""Whole-instance copies from and to SQLite (``userplane.plugin.CopyableStorage``).

Mixed into ``SQLiteStorage``. A copy runs on a connection of its own, never
on the store's per-thread one: a read is one snapshot (a deferred
transaction; in WAL mode readers see the database as of their first read),
a write one ``BEGIN IMMEDIATE`` transaction, committed when the copy ends.

SQLite's declared types say little (``TEXT`` holds ids, times and JSON
arrays), so the tables are described with the plainest kinds, and values
are converted to and from the kinds the other store's columns have: the
published schema's fixed-width UTC text for times, canonical text for ids,
0 and 1 for booleans, JSON text for arrays and JSON values.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from userplane.plugin import Conflict, CopyColumn, CopySession, CopyTable, Unavailable

_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bookkeeping(name: str) -> bool:
    """yoyo's tables and SQLite's own: never copied."""
    return name.startswith(("_yoyo", "sqlite_")) or name == "yoyo_lock"


def _kind(declared: str) -> str:
    """The plainest kind a column of SQLite type ``declared`` holds (its type affinity)."""
    t = declared.upper()
    if "INT" in t:
        return "integer"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if not t or "BLOB" in t:
        return "bytes"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "float"
    return "raw"


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    """sqlite3's errors during a copy as domain errors, naming the file."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise Conflict(f"the database {path} refused a copied row: {exc}") from None
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "locked" in message or "busy" in message:
            raise Unavailable(f"the database {path} is busy; retry shortly") from None
        raise Unavailable(f"the database {path} cannot be used now: {message}") from None
    except sqlite3.DatabaseError as exc:
        if type(exc) is not sqlite3.DatabaseError:
            raise
        raise Unavailable(f"the database {path} cannot be used: {exc}") from None


def _parse_time(value: Any) -> datetime:
    """The fixed-width UTC text (or any ISO 8601 time) as an aware UTC ``datetime``."""
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)  # C, and it reads the ``Z``
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _decode(kind: str, value: Any) -> Any:
    """A stored value as the Python value of ``kind``."""
    if value is None:
        return None
    if kind == "uuid":
        return uuid.UUID(str(value))
    if kind == "timestamp":
        return _parse_time(value)
    if kind == "boolean":
        return bool(value)
    if kind in ("array", "json"):
        return json.loads(value) if isinstance(value, str | bytes) else value
    if kind == "txid":
        return str(value)
    return value


def _encode(kind: str, value: Any) -> Any:
    """The Python value of ``kind`` as SQLite stores it."""
    if value is None:
        return None
    if kind == "uuid":
        return str(value)
    if kind == "timestamp":
        return value.astimezone(UTC).strftime(_TIME) if isinstance(value, datetime) else value
    if kind == "boolean":
        return int(bool(value))
    if kind in ("array", "json"):
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "bytes":
        return bytes(value) if isinstance(value, memoryview | bytearray) else value
    return value


#: The kinds whose values SQLite keeps as they come: no conversion either way.
_AS_IS = frozenset({"text", "integer", "float", "raw"})


def _converted(
    convert: Callable[[str, Any], Any], kinds: Sequence[str], rows: Iterable[Sequence[Any]]
) -> list[tuple[Any, ...]]:
    """``rows`` (cut to ``kinds``' length) with each value converted by its kind, if it needs it."""
    width = len(kinds)
    if all(k in _AS_IS for k in kinds):
        return [tuple(r[:width]) for r in rows]
    at = [(i, k) for i, k in enumerate(kinds) if k not in _AS_IS]
    out = []
    for r in rows:
        row = list(r[:width])
        for i, k in at:
            row[i] = convert(k, row[i])
        out.append(tuple(row))
    return out


def _tables(conn: sqlite3.Connection) -> list[CopyTable]:
    found = []
    listed = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    for name, sql in listed:
        if _bookkeeping(name):
            continue
        info = conn.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
        # cid, name, type, notnull, dflt_value, pk
        keyed = sorted((c for c in info if c[5]), key=lambda c: c[5])
        primary_key = tuple(c[1] for c in keyed)
        # An INTEGER PRIMARY KEY is the rowid: the database numbers it when left out.
        rowid = keyed[0][1] if len(keyed) == 1 and str(keyed[0][2]).upper() == "INTEGER" else None
        columns = tuple(
            CopyColumn(
                name=c[1],
                kind=_kind(str(c[2] or "")),
                nullable=not c[3] and c[1] != rowid,
                has_default=c[4] is not None or c[1] == rowid,
            )
            for c in info
        )
        references = tuple(
            dict.fromkeys(
                r[2]
                for r in conn.execute(f"PRAGMA foreign_key_list({_quote(name)})").fetchall()
                if r[2] != name
            )
        )
        autoincrement = rowid is not None and "AUTOINCREMENT" in str(sql or "").upper()
        found.append(
            CopyTable(
                name=name,
                columns=columns,
                primary_key=primary_key,
                references=references,
                sequenced=(rowid,) if autoincrement and rowid else (),
            )
        )
    return found


class _Session:
    """A copy's view of one SQLite database (``CopySession``)."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._path = path

    def count(self, table: CopyTable) -> int:
        with _errors(self._path):
            row = self._conn.execute(f"SELECT count(*) FROM {_quote(table.name)}").fetchone()
        return int(row[0])

    def rows(
        self, table: CopyTable, columns: Sequence[CopyColumn], batch: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        # Keyset pages by the primary key (the rowid for a table without one).
        key = list(table.primary_key) or ["rowid"]
        names = [c.name for c in columns]
        extra = [k for k in key if k not in names]
        selected = ", ".join(_quote(n) for n in [*names, *extra])
        order = ", ".join(_quote(k) for k in key)
        after = (
            f"{_quote(key[0])} > ?"
            if len(key) == 1
            else f"({order}) > ({', '.join('?' * len(key))})"
        )
        at = [[*names, *extra].index(k) for k in key]
        kinds = [c.kind for c in columns]
        last: list[Any] | None = None
        while True:
            where = "" if last is None else f" WHERE {after}"
            sql = f"SELECT {selected} FROM {_quote(table.name)}{where} ORDER BY {order} LIMIT ?"
            with _errors(self._path):
                raw = self._conn.execute(sql, [*(last or []), batch]).fetchall()
            if not raw:
                return
            last = [raw[-1][i] for i in at]
            yield _converted(_decode, kinds, raw)
            if len(raw) < batch:
                return

    def _sequence_table(self) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
        ).fetchone()
        return row is not None

    def sequences(self, table: CopyTable) -> dict[str, int]:
        if not table.sequenced or not self._sequence_table():
            return {}
        with _errors(self._path):
            row = self._conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", [table.name]
            ).fetchone()
        return {} if row is None else {table.sequenced[0]: int(row[0])}

    def clear(self, table: CopyTable) -> None:
        with _errors(self._path):
            self._conn.execute(f"DELETE FROM {_quote(table.name)}")

    def write(
        self, table: CopyTable, columns: Sequence[CopyColumn], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        if not rows:
            return
        names = ", ".join(_quote(c.name) for c in columns)
        marks = ", ".join("?" * len(columns))
        kinds = [c.kind for c in columns]
        sql = f"INSERT INTO {_quote(table.name)} ({names}) VALUES ({marks})"
        with _errors(self._path):
            self._conn.executemany(sql, _converted(_encode, kinds, rows))

    def finish(self, table: CopyTable, sequences: Mapping[str, int]) -> None:
        # AUTOINCREMENT numbers are never reused: carry the source's high-water mark over.
        for column in table.sequenced:
            with _errors(self._path):
                top = self._conn.execute(
                    f"SELECT max({_quote(column)}) FROM {_quote(table.name)}"
                ).fetchone()[0]
                mark = max(int(top or 0), int(sequences.get(column, 0)))
                if mark <= 0 or not self._sequence_table():
                    continue
                changed = self._conn.execute(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                    [mark, table.name],
                ).rowcount
                if not changed:
                    self._conn.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", [table.name, mark]
                    )


class SQLiteCopying:
    """``CopyableStorage`` for ``SQLiteStorage`` (its ``path`` and busy timeout)."""

    path: str
    _busy_timeout_ms: int

    def _copy_connect(self) -> sqlite3.Connection:
        if not Path(self.path).exists():
            raise Unavailable(f"no database at {self.path}: run `userplane migrate` to create it")
        with _errors(self.path):
            conn = sqlite3.connect(
                f"{Path(self.path).as_uri()}?mode=rw",
                uri=True,
                timeout=self._busy_timeout_ms / 1000,
                isolation_level=None,  # transactions are begun and ended here
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return conn

    def copy_tables(self) -> list[CopyTable]:
        """Every table, yoyo's and SQLite's own left out."""
        with contextlib.closing(self._copy_connect()) as conn, _errors(self.path):
            return _tables(conn)

    @contextlib.contextmanager
    def copy_session(self, *, write: bool) -> Iterator[CopySession]:
        """A read snapshot, or one ``BEGIN IMMEDIATE`` transaction, on a connection of its own."""
        with contextlib.closing(self._copy_connect()) as conn:
            with _errors(self.path):
                if write:
                    # Writing touches every page of every index: a cache of 64 MiB, not
                    # 2, saves most of the reads and writes of a large table's random keys.
                    conn.execute("PRAGMA cache_size = -65536")
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                # A deferred transaction takes its snapshot at its first read: now.
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            try:
                yield _Session(conn, self.path)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            with _errors(self.path):
                conn.execute("COMMIT")
