"""Whole-instance copies: every table of one instance's database into another's.

``copy_instance(source, target)`` is what ``userplane copy --to URL`` runs. Both
registries have the same plugin set (the target's opened from the same
settings but its URL); their storages must offer ``CopyableStorage``, which
keeps everything driver-specific (the catalog, reading in keyset batches,
writing with ``executemany`` or ``COPY``) in the storage plugins. Here:

1. the target is migrated (the core's and every plugin's migrations) and the
   source must have no migration pending, so both hold the same tables;
2. the tables are discovered in both databases and matched by name and
   column; each column's kind is the more precise of the two stores'
   (SQLite's ``TEXT`` holding what PostgreSQL keeps as ``uuid``,
   ``timestamptz`` or ``text[]``), and each store converts its values to
   and from it. Tables the database does not keep across a crash
   (PostgreSQL's ``UNLOGGED``: the rate limits' counters) are not copied;
3. the target must hold no data: rows its migrations made (the audit chain's
   genesis head) do not count, found by migrating a scratch SQLite database
   with the same plugins; ``replace=True`` deletes whatever it holds instead;
4. in one read snapshot of the source and one transaction on the target,
   each table is copied in primary-key batches, tables referenced by
   foreign keys first, and sequences are advanced past the copied values.
   A failure rolls the target's transaction back: the target is left
   migrated and empty, and the copy can simply be run again.

Values are copied as stored: sealed personal data stays sealed (nothing is
decrypted), and the audit trail's columns keep the values their hashes were
computed over.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from userplane.errors import ConfigurationError, Conflict, UserplaneError
from userplane.storage import CopyableStorage, CopyColumn, CopySession, CopyTable, Storage

if TYPE_CHECKING:
    from userplane.registry import Registry

#: Rows per batch: what one read returns and one write sends.
BATCH = 1000

#: Tables copied first when nothing orders them: the core's, then the others by name.
_FIRST = ("users", "idempotency_keys", "encryption_keys")

#: What each plain kind may stand for in a store that says more.
_PLAIN = {
    "text": frozenset({"uuid", "timestamp", "array", "json", "txid"}),
    "integer": frozenset({"boolean"}),
}

#: ``progress(table, total)``: a block that is told how many rows were copied, batch by batch.
Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int], object]]]


@attrs.frozen
class CopiedTable:
    """One table of a copy and how many rows it moved."""

    name: str
    rows: int


@attrs.frozen
class CopyResult:
    """What ``copy_instance`` did."""

    tables: tuple[CopiedTable, ...]
    #: Tables left out: the database does not keep them across a crash (rate-limit counters).
    skipped: tuple[str, ...] = ()
    #: Rows of data deleted from the target before the copy (``replace``).
    cleared: int = 0

    @property
    def rows(self) -> int:
        """Rows copied, every table's."""
        return sum(t.rows for t in self.tables)


@attrs.frozen
class _Plan:
    """One table to copy: as each database has it, and the columns with agreed kinds."""

    source: CopyTable
    target: CopyTable
    columns: tuple[CopyColumn, ...]


def agree(source: str, target: str) -> str | None:
    """The kind both stores' values are converted through, or ``None`` if they cannot be."""
    if source == target:
        return source
    if "raw" in (source, target):
        return target if source == "raw" else source
    if target in _PLAIN.get(source, ()):
        return target
    if source in _PLAIN.get(target, ()):
        return source
    return None


def _copyable(storage: Storage, which: str) -> CopyableStorage:
    if not isinstance(storage, CopyableStorage):
        raise ConfigurationError(
            f"the {which}'s {storage.name} storage cannot copy a whole instance "
            "(it does not offer userplane.plugin.CopyableStorage)"
        )
    return storage


def _columns(source: CopyTable, target: CopyTable) -> tuple[CopyColumn, ...]:
    """The columns to copy, in the target's order, with the kinds the two agree on."""
    theirs = {c.name: c for c in source.columns}
    ours = {c.name for c in target.columns}
    for column in source.columns:
        if column.name not in ours and column.kind != "txid":
            raise ConfigurationError(
                f"the source's column {source.name}.{column.name} has no counterpart in the "
                "target: are both at the same migrations, with the same plugins?"
            )
    agreed = []
    for column in target.columns:
        other = theirs.get(column.name)
        if other is None:
            if column.nullable or column.has_default or column.kind == "txid":
                continue  # the target's default (or, for a transaction id, the copy's own)
            raise ConfigurationError(
                f"the target's column {target.name}.{column.name} has no counterpart in the "
                "source: are both at the same migrations, with the same plugins?"
            )
        kind = agree(other.kind, column.kind)
        if kind is None:
            raise ConfigurationError(
                f"the column {target.name}.{column.name} holds {other.kind} values in the "
                f"source and {column.kind} values in the target: they cannot be copied"
            )
        agreed.append(attrs.evolve(column, kind=kind))
    return tuple(agreed)


def _ordered(plans: Sequence[_Plan]) -> list[_Plan]:
    """``plans`` with every table after the tables it references (the target's foreign keys)."""
    by_name = {p.target.name: p for p in plans}
    rank = {name: i for i, name in enumerate(_FIRST)}
    waiting = sorted(by_name, key=lambda n: (rank.get(n, len(_FIRST)), n))
    done: list[_Plan] = []
    placed: set[str] = set()
    while waiting:
        ready = next(
            (
                n
                for n in waiting
                if all(r in placed or r not in by_name for r in by_name[n].target.references)
            ),
            None,
        )
        if ready is None:
            raise ConfigurationError(
                f"the tables {', '.join(waiting)} reference one another in a cycle: "
                "no order copies them"
            )
        waiting.remove(ready)
        placed.add(ready)
        done.append(by_name[ready])
    return done


def _frozen(value: Any) -> Any:
    """``value`` hashable, for comparing rows."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _rows(
    session: CopySession, table: CopyTable, columns: Sequence[CopyColumn]
) -> Counter[tuple[Any, ...]]:
    found: Counter[tuple[Any, ...]] = Counter()
    for batch in session.rows(table, columns, BATCH):
        found.update(tuple(_frozen(v) for v in row) for row in batch)
    return found


class _Seeds:
    """The rows a fresh migration leaves in the target's tables (the audit chain's genesis).

    Found once, when first asked, by migrating a scratch SQLite database with
    the target's settings and plugins: the migrations of every dialect are
    kept in step, so what they insert is the same. ``{}`` when that cannot
    be done (no SQLite plugin, a plugin without SQLite migrations): then
    every row counts as data.
    """

    def __init__(self, target: Registry, fresh: bool) -> None:
        self._target = target
        self._fresh = fresh
        self._found: dict[str, tuple[CopyTable, list[CopyTable]]] | None = None
        self._scratch: contextlib.ExitStack | None = None
        self._session: CopySession | None = None
        self._tables: dict[str, CopyTable] = {}

    def _open(self) -> None:
        from userplane.registry import Registry

        self._scratch = contextlib.ExitStack()
        try:
            folder = self._scratch.enter_context(tempfile.TemporaryDirectory())
            url = f"sqlite:///{Path(folder) / 'seed.db'}"
            scratch = self._scratch.enter_context(
                Registry(attrs.evolve(self._target.settings, database_url=url))
            )
            scratch.migrate()
            storage = scratch.storage
            if not isinstance(storage, CopyableStorage):
                return
            self._tables = {t.name: t for t in storage.copy_tables()}
            self._session = self._scratch.enter_context(storage.copy_session(write=False))
        except UserplaneError:
            self._session = None

    def matches(self, session: CopySession, table: CopyTable, count: int) -> bool:
        """Whether the ``count`` rows of the target's ``table`` are only what migrations made."""
        if self._fresh:
            return True
        if self._scratch is None:
            self._open()
        seed = self._tables.get(table.name)
        if self._session is None or seed is None or self._session.count(seed) != count:
            return False
        try:
            columns = _columns(seed, table)
        except ConfigurationError:
            return False
        return _rows(session, table, columns) == _rows(self._session, seed, columns)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()


def _same_database(source: Registry, target: Registry) -> bool:
    if source.settings.database_url == target.settings.database_url:
        return True
    paths = [getattr(r.storage, "path", None) for r in (source, target)]
    if all(isinstance(p, str) and p != ":memory:" for p in paths):
        return os.path.realpath(str(paths[0])) == os.path.realpath(str(paths[1]))
    return False


@contextlib.contextmanager
def _silent(table: str, total: int) -> Any:
    yield lambda rows: None


def copy_instance(
    source: Registry,
    target: Registry,
    *,
    replace: bool = False,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy every table of ``source``'s database into ``target``'s (see the module's text).

    ``Conflict`` when the target holds data and ``replace`` is false;
    ``ConfigurationError`` when a storage cannot be copied, the source has
    migrations pending, or the two databases' tables do not match.
    """
    if batch < 1:
        raise ConfigurationError("the batch size must be at least 1")
    if _same_database(source, target):
        raise ConfigurationError("the target is the database being copied")
    reader = _copyable(source.storage, "source")
    writer = _copyable(target.storage, "target")
    pending = [m.id for m in source.migration_status() if not m.applied]
    if pending:
        raise ConfigurationError(
            f"the source database has {len(pending)} migration(s) pending ({pending[0]}…): "
            "run `userplane migrate` on it first"
        )
    # A target this call migrated from nothing holds only what its migrations made.
    applied = target.migrate()
    fresh = bool(applied) and len(applied) == len(target.migration_status())
    theirs = {t.name: t for t in reader.copy_tables()}
    ours = {t.name: t for t in writer.copy_tables()}
    skipped = sorted(n for n in theirs if theirs[n].ephemeral or (n in ours and ours[n].ephemeral))
    plans = _ordered(
        [
            _Plan(theirs[n], ours[n], _columns(theirs[n], ours[n]))
            for n in theirs
            if n in ours and n not in skipped
        ]
    )
    missing = [n for n in theirs if n not in ours and n not in skipped]
    show = progress or _silent
    seeds = _Seeds(target, fresh)
    try:
        with reader.copy_session(write=False) as read, writer.copy_session(write=True) as write:
            for name in missing:
                if read.count(theirs[name]):
                    raise ConfigurationError(
                        f"the source's table {name} has no counterpart in the target: is the "
                        "plugin that owns it disabled or uninstalled here?"
                    )
            cleared = _clear(write, plans, ours, seeds, replace)
            copied = []
            for plan in plans:
                copied.append(CopiedTable(plan.target.name, _copy(read, write, plan, batch, show)))
    finally:
        seeds.close()
    return CopyResult(tuple(copied), tuple(skipped), cleared)


def _clear(
    write: CopySession,
    plans: Sequence[_Plan],
    tables: Mapping[str, CopyTable],
    seeds: _Seeds,
    replace: bool,
) -> int:
    """Refuse a target holding data (unless ``replace``); empty what will be copied into."""
    planned = {p.target.name for p in plans}
    # Checked in copy order, the target's own tables last; never the ephemeral.
    order = [p.target.name for p in plans]
    order += sorted(n for n in tables if n not in planned and not tables[n].ephemeral)
    seeded: list[CopyTable] = []
    held: list[tuple[CopyTable, int]] = []
    for name in order:
        table = tables[name]
        count = write.count(table)
        if not count:
            continue
        if seeds.matches(write, table, count):
            if name in planned:  # the source's own rows replace them
                seeded.append(table)
            continue
        if not replace:
            raise Conflict(
                f"the target database already holds data ({count} row(s) in {name}): "
                "refusing to copy over it; copy into an empty database, or pass --replace "
                "to delete what it holds first"
            )
        held.append((table, count))
    # Children before the tables they reference.
    doomed = {t.name for t in seeded} | {t.name for t, _ in held}
    for name in reversed(order):
        if name in doomed:
            write.clear(tables[name])
    cleared = sum(n for _, n in held)
    return cleared


def _copy(read: CopySession, write: CopySession, plan: _Plan, batch: int, show: Progress) -> int:
    """Copy one table in batches; the rows copied."""
    total = read.count(plan.source)
    copied = 0
    with show(plan.target.name, total) as advance:
        for rows in read.rows(plan.source, plan.columns, batch):
            write.write(plan.target, plan.columns, rows)
            copied += len(rows)
            advance(len(rows))
    write.finish(plan.target, read.sequences(plan.source))
    return copied
