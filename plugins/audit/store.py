"""Where audit events live: this plugin's tables, in the registry's SQL storage.

Statements per dialect (``queries.<dialect>.sql``): appending an event takes
two round trips on PostgreSQL (lock the head and take the next seq with the
database's clock; insert the event and move the head's hash) and stays in
the write's transaction. Listing composes its ``WHERE`` from a fixed set of
filters, so every statement it runs is one of a few, each prepared once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from userplane.plugin import ConfigurationError, Unavailable
from userplane.plugins.audit.chain import Head
from userplane.plugins.audit.events import (
    COLUMNS,
    GENESIS,
    AuditEvent,
    fields_json,
    parse_fields,
    time_text,
)
from userplane.sql import SQLStorage, load_queries

#: The dialects this plugin has statements and migrations for.
DIALECTS: Final = ("postgresql", "sqlite")
_SELECT: Final = f"SELECT {', '.join(COLUMNS)} FROM audit_events"


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
class EventFilter:
    """What ``GET /api/v1/audit`` and ``audit list`` select by; ``None``: any."""

    target_type: str | None = None
    target_id: str | None = None
    user_id: uuid.UUID | None = None
    actor: str | None = None
    action: str | None = None
    #: Events at or after this time.
    since: datetime | None = None
    #: Events before this time.
    until: datetime | None = None


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

    def _event(self, row: Sequence[Any]) -> AuditEvent:
        (seq, event_id, occurred, actor, kind, action, ttype, tid, user, req, trace, client) = row[
            :12
        ]
        fields, prev_hash, digest = row[12:]
        return AuditEvent(
            seq=int(seq),
            id=str(event_id),
            occurred_at=self._text_time(occurred),
            actor=actor,
            actor_kind=kind,
            action=action,
            target_type=ttype,
            target_id=tid,
            user_id=None if user is None else str(user),
            request_id=req,
            trace_id=trace,
            client_address=client,
            fields=parse_fields(fields),
            prev_hash=prev_hash,
            hash=digest,
        )

    def _one(self, name: str, params: Mapping[str, Any]) -> Sequence[Any] | None:
        return self._storage.fetch_one(self._sql[name], self._storage.params(params))

    def _all(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        return self._storage.fetch_all(sql, self._storage.params(params))

    def ping(self) -> None:
        """Prove the tables answer; ``Unavailable`` (e.g. not migrated) otherwise."""
        self._storage.fetch_all(self._sql["ping"], {})

    # -- the chain -------------------------------------------------------------------

    def advance(self) -> tuple[int, str, str, Any]:
        """Lock the head and take the next seq: ``(seq, prev_hash, time text, time)``.

        The time is the database's clock, read after the lock (so events' times
        follow their seqs unless the clock steps back): as text, as hashed, and
        as the ``occurred_at`` column takes it, for ``append``.

        Inside the write's transaction: the head stays locked (PostgreSQL) or
        the database stays the writer's (SQLite) until it commits or rolls
        back, so no other event can take this seq, and a rollback gives it back.
        """
        row = self._one("advance", {})
        if row is None:
            # The head row is gone (tables emptied by hand): start it again. Were
            # events left, the next one's seq is taken and the write fails: the
            # chain is never forked.
            self._storage.execute(self._sql["genesis"], {"genesis": GENESIS})
            row = self._one("advance", {})
            if row is None:  # pragma: no cover - the insert above made it
                raise Unavailable("the audit chain head cannot be locked")
        seq, prev_hash, now = row
        return int(seq), str(prev_hash), self._text_time(now), now

    def append(self, event: AuditEvent, occurred_at: Any) -> None:
        """Insert ``event`` and make it the head (after ``advance``, in its transaction)."""
        params = {
            "seq": event.seq,
            "id": uuid.UUID(event.id),
            "occurred_at": occurred_at,
            "actor": event.actor,
            "actor_kind": event.actor_kind,
            "action": event.action,
            "target_type": event.target_type,
            "target_id": event.target_id,
            "user_id": None if event.user_id is None else uuid.UUID(event.user_id),
            "request_id": event.request_id,
            "trace_id": event.trace_id,
            "client_address": event.client_address,
            "fields": fields_json(event.fields),
            "prev_hash": event.prev_hash,
            "hash": event.hash,
        }
        self._storage.execute(self._sql["append"], self._storage.params(params))
        if "set_head" in self._sql:
            self._storage.execute(self._sql["set_head"], {"hash": event.hash})

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
            conditions = [
                _CONDITIONS[n]
                if n != "after"
                else ("seq < :after" if descending else "seq > :after")
                for n in names
            ]
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            order = "DESC" if descending else "ASC"
            sql = self._storage.dialect.compile(
                f"{_SELECT}{where} ORDER BY seq {order} LIMIT :limit"
            )
            self._lists[key] = sql
        return sql
