"""Where audit events live: this plugin's tables, in the registry's SQL storage.

Statements per dialect (``queries.<dialect>.sql``). Appending an event is one
``INSERT`` in the write's transaction, locking no shared row: the event is
stored *unchained* (no ``seq``, ``prev_hash`` or ``hash``). Linking events
into the chain (``link_batch``) is the chainer's, after their transactions
have finished, one short transaction per batch holding the chain head. Listing
composes its ``WHERE`` from a fixed set of filters, so every statement it runs
is one of a few, each prepared once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from userplane.plugin import Change, ConfigurationError, Conflict
from userplane.plugins.audit.chain import Head
from userplane.plugins.audit.events import (
    COLUMNS,
    GENESIS,
    HASHED,
    AuditEvent,
    fields_json,
    hash_of,
    parse_fields,
    time_text,
)
from userplane.plugins.audit.query import EventFilter
from userplane.sql import SQLStorage, load_queries

#: The dialects this plugin has statements and migrations for.
DIALECTS: Final = ("postgresql", "sqlite")
_SELECT: Final = f"SELECT {', '.join(COLUMNS)} FROM audit_events"
#: What ``append`` writes of a change, in ``AuditStore._values``' order.
_APPEND_COLUMNS: Final = tuple(
    c for c in HASHED if c not in ("seq", "occurred_at", "fields", "prev_hash")
)


@attrs.frozen
class Checkpoint:
    """Where pruning left the chain: the last removed event's seq and hash."""

    seq: int
    hash: str
    created_at: datetime
    #: How many events that prune removed.
    pruned: int

    @property
    def head(self) -> Head:
        """The place the remaining chain starts from."""
        return Head(self.seq, self.hash)


@attrs.frozen
class Linked:
    """What one chaining batch did: how many events it linked, and the head it left."""

    count: int
    head: Head | None = None
    #: Another chainer held the head: it is at work, nothing was done here.
    busy: bool = False
    #: Why nothing can be chained (the head row is missing), or ``None``.
    refused: str | None = None


#: Each filter's condition; the list statement is composed of those a filter sets.
_CONDITIONS: Final = {
    "target_type": "target_type = :target_type",
    "target_id": "target_id = :target_id",
    "user_id": "user_id = :user_id",
    "actor": "actor = :actor",
    "action": "action = :action",
    "since": "occurred_at >= :since",
    "until": "occurred_at < :until",
}
#: What every list selects: chained events only.
_CHAINED: Final = "seq IS NOT NULL"


class AuditStore:
    """The audit tables over a ``SQLStorage``. Methods raise only userplane's errors."""

    def __init__(self, storage: SQLStorage) -> None:
        dialect = storage.dialect.name
        if dialect not in DIALECTS:
            raise ConfigurationError(
                f"the audit plugin has no statements for the {dialect} dialect: "
                "disable it (USERPLANE_DISABLED_PLUGINS=audit) or use SQLite or PostgreSQL"
            )
        self._storage = storage
        queries = load_queries(__package__ or "userplane.plugins.audit", f"queries.{dialect}.sql")
        self._sql = {name: storage.dialect.compile(sql) for name, sql in queries.items()}
        self._lists: dict[tuple[tuple[str, ...], bool], str] = {}

    # -- rows ------------------------------------------------------------------------

    def _text_time(self, value: Any) -> str:
        # SQLite keeps the fixed-width text that was hashed; PostgreSQL a timestamptz.
        return time_text(value) if isinstance(value, datetime) else str(value)

    def _columns(self, row: Sequence[Any]) -> dict[str, Any]:
        """The event's own columns (``id`` … ``fields``) of a row, as stored and hashed."""
        (event_id, occurred, actor, kind, action, ttype, tid, user, req, trace, client, fields) = (
            row
        )
        return {
            "id": str(event_id),
            "occurred_at": self._text_time(occurred),
            "actor": actor,
            "actor_kind": kind,
            "action": action,
            "target_type": ttype,
            "target_id": tid,
            "user_id": None if user is None else str(user),
            "request_id": req,
            "trace_id": trace,
            "client_address": client,
            "fields": parse_fields(fields),
        }

    def _event(self, row: Sequence[Any]) -> AuditEvent:
        seq, prev_hash, digest = row[0], row[13], row[14]
        return AuditEvent(
            seq=int(seq), **self._columns(row[1:13]), prev_hash=prev_hash, hash=digest
        )

    def _one(self, name: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        return self._storage.fetch_one(self._sql[name], self._storage.params(params))

    def _all(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        return self._storage.fetch_all(sql, self._storage.params(params))

    def _count(self, name: str, params: Mapping[str, Any]) -> int:
        row = self._one(name, params)
        return 0 if row is None else int(row[0])

    def ping(self) -> None:
        """Prove the tables answer; ``Unavailable`` (e.g. not migrated) otherwise."""
        self._storage.fetch_all(self._sql["ping"], {})

    # -- writing ---------------------------------------------------------------------

    def append(self, events: Sequence[tuple[Change, Mapping[str, Any]]]) -> None:
        """Insert each change's event, unchained, in the write's transaction.

        No shared row is locked: an event's time is the database's clock, and
        on PostgreSQL the writing transaction's id (``txid``) orders it in the
        chain once the transaction has finished. One event is one
        ``INSERT``; a batch (an import's) reads the transaction id and the
        clock once and writes its events with ``insert_rows`` (``COPY`` on
        PostgreSQL), all stamped alike.
        """
        storage = self._storage
        if len(events) == 1:
            change, fields = events[0]
            params = {**self._values(change), "fields": fields_json(fields)}
            # execute_many: nobody waits for a row count, so a store that pipelines
            # (PostgreSQL) sends the event with the transaction's COMMIT.
            storage.execute_many(self._sql["append"], [storage.params(params)])
            return
        stamp = self._one("batch_stamp", {})
        assert stamp is not None
        txid, occurred_at = stamp
        columns = [*_APPEND_COLUMNS, "occurred_at", "fields"]
        if txid is not None:
            columns.append("txid")
        rows = []
        for change, fields in events:
            row = [*self._values(change).values(), occurred_at, fields_json(fields)]
            if txid is not None:
                row.append(txid)
            rows.append(row)
        storage.insert_rows("audit_events", columns, rows)

    @staticmethod
    def _values(change: Change) -> dict[str, Any]:
        """The event's own columns, as ``_APPEND_COLUMNS`` orders them."""
        return {
            "id": change.id,
            "actor": change.actor,
            "actor_kind": change.actor_kind,
            "action": change.action,
            "target_type": change.target_type,
            "target_id": change.target_id,
            "user_id": change.user_id,
            "request_id": change.request_id,
            "trace_id": change.trace_id,
            "client_address": change.client_address,
        }

    # -- the chain -------------------------------------------------------------------

    def link_batch(self, limit: int) -> Linked:
        """Link up to ``limit`` finished events into the chain, in one short transaction.

        Must run in a transaction of its own (never inside a write's). On
        PostgreSQL its first statement reads the horizon (the oldest id of a
        transaction still running): events of transactions below it are final,
        and taken in ``txid``, then ``entry`` order, which nothing can come
        before later. The head is locked with ``SKIP LOCKED``: another chainer
        at work makes this one return (``busy``). On SQLite the transaction
        holds the database's write lock, so every committed event is final,
        taken in insertion order. Each event gets the next seq and its hash
        (``events.hash_of``, as ``verify`` recomputes it); the batch and the
        head are written back in one statement (two on SQLite).

        A missing head row is made again at the genesis only when no chain
        was ever linked; otherwise nothing is chained (``refused``): the chain
        is never forked.
        """
        with self._storage.transaction():
            horizon = self._one("horizon", {}) if "horizon" in self._sql else None
            row = self._one("lock_head", {})
            if row is None:
                if self._one("head_exists", {}) is not None:
                    return Linked(0, busy=True)
                if self._one("chain_started", {}) is not None:
                    return Linked(0, refused="the chain head row is missing")
                self._storage.execute(self._sql["genesis"], {"genesis": GENESIS})
                row = self._one("lock_head", {})
                if row is None:  # pragma: no cover - another chainer made it and holds it
                    return Linked(0, busy=True)
            seq, prev_hash = int(row[0]), str(row[1])
            params: dict[str, Any] = {"limit": limit}
            if horizon is not None:
                params["horizon"] = horizon[0]
            rows = self._all(self._sql["unchained"], params)
            if not rows:
                return Linked(0, Head(seq, prev_hash))
            links: list[tuple[int, int, str, str]] = []
            for unchained in rows:
                seq += 1
                body = {"seq": seq, **self._columns(unchained[1:]), "prev_hash": prev_hash}
                digest = hash_of(body)
                links.append((int(unchained[0]), seq, prev_hash, digest))
                prev_hash = digest
            linked = self._link(links, Head(seq, prev_hash))
            if linked != len(links):  # the rows changed under the head's lock: by hand
                raise Conflict(
                    f"the audit chain could not link {len(links)} events ({linked} were "
                    "unchained still): nothing was chained"
                )
            return Linked(linked, Head(seq, prev_hash))

    def _link(self, links: Sequence[tuple[int, int, str, str]], head: Head) -> int:
        if "set_head" not in self._sql:  # PostgreSQL: the events and the head at once
            params = {
                "entries": [link[0] for link in links],
                "seqs": [link[1] for link in links],
                "prev_hashes": [link[2] for link in links],
                "hashes": [link[3] for link in links],
                "seq": head.seq,
                "hash": head.hash,
            }
            row = self._one("link", params)
            return 0 if row is None else int(row[0])
        count = self._storage.execute(self._sql["link"], {"batch": json.dumps(links)})
        self._storage.execute(self._sql["set_head"], {"seq": head.seq, "hash": head.hash})
        return count

    def mark(self) -> str | None:
        """What a reader must see chained: on PostgreSQL, every transaction with an id now.

        ``None`` on SQLite, where one chaining links everything committed.
        """
        if "mark" not in self._sql:
            return None
        row = self._one("mark", {})
        assert row is not None
        return str(row[0])

    def pending(self, mark: str) -> int:
        """How many events of transactions that had an id before ``mark`` are unchained."""
        return self._count("pending", {"mark": mark})

    def unchained(self) -> int:
        """How many events are not chained yet."""
        return self._count("unchained_count", {})

    def head(self) -> Head | None:
        """The chain head: the last event's seq and hash (``None``: the row is missing)."""
        row = self._one("head", {})
        return None if row is None else Head(int(row[0]), str(row[1]))

    def now(self) -> datetime:
        """The database's clock."""
        row = self._one("now", {})
        assert row is not None
        value = row[0]
        if isinstance(value, datetime):
            return value
        return self._storage.time_from_db(value)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint of the last prune (the highest seq), if any."""
        row = self._one("latest_checkpoint", {})
        if row is None:
            return None
        seq, digest, created, pruned = row
        return Checkpoint(int(seq), str(digest), self._storage.time_from_db(created), int(pruned))

    def events_after(self, after: int, until: int, batch: int = 1000) -> Iterator[AuditEvent]:
        """Events with ``after < seq <= until``, in seq order, read ``batch`` at a time."""
        while after < until:
            rows = self._all(
                self._sql["events_after"], {"after": after, "until": until, "limit": batch}
            )
            for row in rows:
                event = self._event(row)
                after = event.seq
                yield event
            if len(rows) < batch:
                return

    def get(self, event_id: uuid.UUID) -> AuditEvent | None:
        """The event with this id."""
        row = self._one("get_event", {"id": event_id})
        return None if row is None else self._event(row)

    # -- pruning -----------------------------------------------------------------------

    def prune_bound(self, cutoff: datetime) -> Head | None:
        """The last event of the oldest run of events older than ``cutoff``, if any."""
        row = self._one("prune_bound", {"cutoff": cutoff})
        return None if row is None else Head(int(row[0]), str(row[1]))

    def prune(self, through: Head, now: datetime) -> int:
        """Delete the events up to ``through`` and record the checkpoint; how many went."""
        count = self._storage.execute(self._sql["prune"], {"seq": through.seq})
        if count:
            params = {"seq": through.seq, "hash": through.hash, "created_at": now, "pruned": count}
            self._storage.execute(self._sql["add_checkpoint"], self._storage.params(params))
        return count

    # -- listing -----------------------------------------------------------------------

    def list(
        self, flt: EventFilter, after: int | None, descending: bool, limit: int
    ) -> list[AuditEvent]:
        """Events matching ``flt``, by seq, from after ``after``; ``limit`` at most."""
        params: dict[str, Any] = {
            name: getattr(flt, name) for name in _CONDITIONS if getattr(flt, name) is not None
        }
        keyset = after is not None
        sql = self._list_sql((*params, *(("after",) if keyset else ())), descending)
        if keyset:
            params["after"] = after
        params["limit"] = limit
        return [self._event(row) for row in self._all(sql, params)]

    def _list_sql(self, names: tuple[str, ...], descending: bool) -> str:
        key = (names, descending)
        sql = self._lists.get(key)
        if sql is None:
            conditions = [_CHAINED] + [
                _CONDITIONS[n]
                if n != "after"
                else ("seq < :after" if descending else "seq > :after")
                for n in names
            ]
            where = f" WHERE {' AND '.join(conditions)}"
            order = "DESC" if descending else "ASC"
            sql = self._storage.dialect.compile(
                f"{_SELECT}{where} ORDER BY seq {order} LIMIT :limit"
            )
            self._lists[key] = sql
        return sql
