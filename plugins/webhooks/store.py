"""Where subscriptions and deliveries live: two tables of this plugin's own.

The statements are per dialect (``queries.<dialect>.sql``): the outbox claim
needs ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and the database's clock on
both, which no shared spelling gives. Every time a statement writes is the
database's, so that any number of processes agree on what is due.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from userplane.plugin import ConfigurationError
from userplane.plugins.webhooks.records import Claimed, Delivery, Subscription
from userplane.sql import SQLStorage, load_queries

#: The dialects this plugin has statements for.
DIALECTS = ("postgresql", "sqlite")
#: Seconds a process trusts what it last read of whether any subscription is live.
LIVE_CACHE_S = 1.0


class WebhookStore:
    """Subscriptions and the outbox over a ``SQLStorage``. Raises what the storage raises."""

    def __init__(self, storage: SQLStorage) -> None:
        dialect = storage.dialect.name
        if dialect not in DIALECTS:
            raise ConfigurationError(
                f"the webhooks plugin has no statements for the {dialect} dialect "
                f"(only {', '.join(DIALECTS)}): disable it (USERPLANE_DISABLED_PLUGINS=webhooks)"
            )
        self._storage = storage
        self._postgresql = dialect == "postgresql"
        queries = load_queries(
            __package__ or "userplane.plugins.webhooks", f"queries.{dialect}.sql"
        )
        self._sql = {name: storage.dialect.compile(sql) for name, sql in queries.items()}
        #: The claim with its LIMIT written in (by size): a parameter there would have
        #: PostgreSQL plan a tenth of the backlog (a generic plan), a literal the batch.
        self._claim_text = queries["claim"]
        self._claims: dict[int, str] = {}
        #: (when read, monotonic; the events live subscriptions take): ``live_hint``.
        self._live: tuple[float, frozenset[str]] | None = None

    # -- conversions -------------------------------------------------------------------

    def _time(self, value: Any) -> datetime | None:
        return None if value is None else self._storage.time_from_db(value)

    def _seconds(self, value: float) -> Any:
        # SQLite adds seconds as a date modifier ('+1.500 seconds'): never in exponent form.
        return float(value) if self._postgresql else f"{value:.3f}"

    def _events(self, events: Sequence[str]) -> Any:
        return list(events) if self._postgresql else json.dumps(list(events))

    def _subscription(self, row: Sequence[Any]) -> Subscription:
        sub_id, url, events, secret, description, created, disabled = row
        created_at = self._time(created)
        assert created_at is not None
        return Subscription(
            id=self._storage.uuid_from_db(sub_id),
            url=url,
            events=tuple(events if isinstance(events, list) else json.loads(events)),
            secret=secret,
            description=description,
            created_at=created_at,
            disabled_at=self._time(disabled),
        )

    def _delivery(self, row: Sequence[Any]) -> Delivery:
        (seq, d_id, sub_id, event_type, payload, status, attempts, next_at) = row[:8]
        last_status, last_error, created, delivered = row[8:]
        created_at, next_attempt_at = self._time(created), self._time(next_at)
        assert created_at is not None
        assert next_attempt_at is not None
        return Delivery(
            seq=int(seq),
            id=self._storage.uuid_from_db(d_id),
            subscription_id=self._storage.uuid_from_db(sub_id),
            event_type=event_type,
            payload=payload,
            status=status,
            attempts=int(attempts),
            next_attempt_at=next_attempt_at,
            last_status=last_status,
            last_error=last_error,
            created_at=created_at,
            delivered_at=self._time(delivered),
        )

    def _fetch_one(self, name: str, params: dict[str, Any]) -> Sequence[Any] | None:
        return self._storage.fetch_one(self._sql[name], self._storage.params(params))

    def _fetch_all(self, name: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        return self._storage.fetch_all(self._sql[name], self._storage.params(params))

    def _execute(self, name: str, params: dict[str, Any]) -> int:
        return self._storage.execute(self._sql[name], self._storage.params(params))

    # -- subscriptions -----------------------------------------------------------------

    def ping(self) -> None:
        """Prove the tables answer; ``Unavailable`` (e.g. not migrated) otherwise."""
        self._storage.fetch_all(self._sql["ping"], {})

    def insert_subscription(
        self, sub_id: uuid.UUID, url: str, events: Sequence[str], secret: str, description: str
    ) -> Subscription:
        """Store a new subscription, created now by the database's clock."""
        row = self._fetch_one(
            "insert_subscription",
            {
                "id": sub_id,
                "url": url,
                "events": self._events(events),
                "secret": secret,
                "description": description,
            },
        )
        assert row is not None  # RETURNING of an insert
        self._live = None  # live now: the next write wakes its dispatcher at once
        return self._subscription(row)

    def get_subscription(self, sub_id: uuid.UUID) -> Subscription | None:
        """The live (not deleted) subscription with this id."""
        row = self._fetch_one("get_subscription", {"id": sub_id})
        return None if row is None else self._subscription(row)

    def subscription_known(self, sub_id: uuid.UUID) -> bool:
        """Whether a subscription with this id was ever made (deleted ones included)."""
        return self._fetch_one("subscription_known", {"id": sub_id}) is not None

    def list_subscriptions(self) -> list[Subscription]:
        """Every live subscription, oldest first."""
        return [self._subscription(r) for r in self._fetch_all("list_subscriptions", {})]

    def subscriptions_by_id(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Subscription]:
        """The live subscriptions among ``ids``."""
        param = self._ids(ids)
        if not param or param == "[]":
            return {}
        rows = self._storage.fetch_all(self._sql["subscriptions_by_id"], {"ids": param})
        subs = (self._subscription(r) for r in rows)
        return {s.id: s for s in subs}

    def disable_subscription(self, sub_id: uuid.UUID) -> Subscription | None:
        """Mark it deleted, forget its secret and bury its pending deliveries; ``None`` if none."""
        row = self._fetch_one("disable_subscription", {"id": sub_id})
        if row is None:
            return None
        self._execute("bury_pending", {"id": sub_id})
        self._live = None
        return self._subscription(row)

    # -- the outbox --------------------------------------------------------------------

    def any_live_subscription(self) -> bool:
        """Whether any subscription is live: a batch skips its statements otherwise."""
        return self._storage.fetch_one(self._sql["any_live_subscription"], {}) is not None

    def live_hint(self, event_type: str) -> bool:
        """Whether a live subscription takes ``event_type``, as read at most a second ago.

        A hint, never a decision: the outbox statement decides which rows to
        write, whatever this says. A write uses it to wake the dispatcher at
        once; when it is stale (a subscription made on another instance in the
        last second), the dispatcher's next poll finds the rows instead.
        """
        now = time.monotonic()
        known = self._live
        if known is None or now - known[0] >= LIVE_CACHE_S:
            events = frozenset(
                event
                for sub in self.list_subscriptions()
                if sub.disabled_at is None
                for event in sub.events
            )
            known = self._live = (now, events)
        return event_type in known[1] or "*" in known[1]

    def record_changes(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """One delivery per live subscription to each ``(event_type, ordering_key, payload)``.

        One batch (``execute_many``): no row count is waited for.
        """
        self._storage.execute_many(
            self._sql["record_change"],
            [
                self._storage.params(
                    {"event_type": event_type, "ordering_key": key, "payload": payload}
                )
                for event_type, key, payload in rows
            ],
        )

    def claim(self, worker: str, limit: int, lease_s: float) -> list[Claimed]:
        """Claim up to ``limit`` due head deliveries for ``lease_s`` seconds, for ``worker``."""
        size = int(limit)
        sql = self._claims.get(size)
        if sql is None:
            sql = self._storage.dialect.compile(self._claim_text.replace(":limit", str(size)))
            self._claims[size] = sql
        params = {"worker": worker, "lease": self._seconds(lease_s)}
        rows = self._storage.fetch_all(sql, self._storage.params(params))
        return [
            Claimed(
                seq=int(seq),
                id=self._storage.uuid_from_db(d_id),
                subscription_id=self._storage.uuid_from_db(sub_id),
                event_type=event_type,
                payload=payload,
                attempts=int(attempts),
            )
            for seq, d_id, sub_id, event_type, payload, attempts in rows
        ]

    def _ids(self, ids: Iterable[uuid.UUID]) -> Any:
        wanted = sorted({str(i) for i in ids})
        return [uuid.UUID(i) for i in wanted] if self._postgresql else json.dumps(wanted)

    def mark_delivered(self, delivery_id: uuid.UUID, status: int) -> bool:
        """The receiver took it; ``False`` if it was no longer pending."""
        return self.mark_delivered_many([delivery_id], status) > 0

    def mark_delivered_many(self, delivery_ids: Iterable[uuid.UUID], status: int) -> int:
        """The receiver took them all, each answered ``status``: one statement; how many
        were still pending."""
        ids = self._ids(delivery_ids)
        if not ids or ids == "[]":
            return 0
        return self._storage.execute(
            self._sql["mark_delivered"], self._storage.params({"ids": ids, "last_status": status})
        )

    def release(self, delivery_ids: Iterable[uuid.UUID], worker: str) -> int:
        """Give up ``worker``'s claims of these (not sent, no attempt counted); how many."""
        ids = self._ids(delivery_ids)
        if not ids or ids == "[]":
            return 0
        return self._storage.execute(
            self._sql["release"], self._storage.params({"ids": ids, "worker": worker})
        )

    def mark_failed(
        self,
        delivery_id: uuid.UUID,
        worker: str,
        *,
        dead: bool,
        delay_s: float,
        status: int | None,
        error: str,
    ) -> bool:
        """An attempt failed: retry after ``delay_s``, or dead; ``False`` if no longer ours."""
        params = {
            "id": delivery_id,
            "worker": worker,
            "status": "dead" if dead else "pending",
            "delay": self._seconds(delay_s),
            "last_status": status,
            "last_error": error,
        }
        return self._execute("mark_failed", params) > 0

    def redeliver(self, delivery_id: uuid.UUID) -> bool:
        """A dead or delivered delivery back to pending, due now; ``False`` if it is neither."""
        return self._execute("redeliver", {"id": delivery_id}) > 0

    def get_delivery(self, delivery_id: uuid.UUID) -> Delivery | None:
        """The delivery with this id."""
        row = self._fetch_one("get_delivery", {"id": delivery_id})
        return None if row is None else self._delivery(row)

    def list_deliveries(
        self,
        subscription_id: uuid.UUID | None,
        status: str | None,
        before: int | None,
        limit: int,
    ) -> list[Delivery]:
        """Deliveries newest first, with ``seq`` below ``before``, filtered when given."""
        rows = self._fetch_all(
            "list_deliveries",
            {
                "subscription_id": subscription_id,
                "status": status,
                "before": before,
                "limit": limit,
            },
        )
        return [self._delivery(r) for r in rows]

    def bury_stray(self) -> int:
        """Make dead the pending deliveries of deleted subscriptions; how many there were."""
        return self._execute("bury_stray", {})

    def queue(self) -> tuple[int, float]:
        """How many deliveries are pending, and the seconds the longest-due has waited."""
        row = self._fetch_one("queue", {})
        assert row is not None  # an aggregate always has its row
        return int(row[0]), float(row[1] or 0.0)
