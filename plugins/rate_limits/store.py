"""Where rate-limit state lives: a table of this plugin's own, in the registry's SQL storage.

One atomic statement per check (``queries.<dialect>.sql``), timed by the
database's clock, so every process of every instance counts against one
state. PostgreSQL keeps the table UNLOGGED: counters need no crash safety.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence

import attrs

from userplane.plugin import ConfigurationError
from userplane.sql import SQLStorage, load_queries

#: The dialects this plugin has statements and migrations for.
DIALECTS = ("postgresql", "sqlite")


@attrs.frozen
class Hit:
    """What the database decided for one check."""

    allowed: bool
    #: The subject's theoretical arrival time after the check, in epoch seconds.
    tat: float
    #: The database's clock at the check, in epoch seconds.
    now: float


@functools.lru_cache(maxsize=65_536)  # a hash per request, of few distinct subjects
def state_key(kind: str, subject: str) -> str:
    """The row key of ``subject``'s ``kind`` state.

    A hash: subjects can be long (a token's ``sub``) and must never be a
    credential at rest; a fixed length keeps every key indexable.
    """
    return hashlib.sha256(f"{kind}\0{subject}".encode()).hexdigest()


class RateStore:
    """GCRA state over a ``SQLStorage``. Methods raise what the storage raises."""

    def __init__(self, storage: SQLStorage) -> None:
        dialect = storage.dialect.name
        if dialect not in DIALECTS:
            raise ConfigurationError(
                f"the rate_limits plugin has no statements for the {dialect} dialect: "
                "set USERPLANE_RATE_LIMITS=off, or disable the plugin "
                "(USERPLANE_DISABLED_PLUGINS=rate_limits) and bring a limiter of your own"
            )
        self._storage = storage
        self._dialect = dialect
        queries = load_queries(
            __package__ or "userplane.plugins.rate_limits", f"queries.{dialect}.sql"
        )
        self._sql = {name: storage.dialect.compile(sql) for name, sql in queries.items()}

    def hit(self, key: str, pending: int, cost: int, interval_s: float, window_s: float) -> Hit:
        """Count ``pending`` served requests, and ``cost`` more if they fit; what was decided."""
        row = self._storage.fetch_one(
            self._sql["hit"],
            {
                "bucket": key,
                # Floats throughout: one prepared statement's types, whatever the values.
                "pending": float(pending),
                "cost": float(cost),
                "interval": float(interval_s),
                # A thousandth of an interval of tolerance (limiter.tolerance), so that a
                # burst of exactly `limit` is not refused its last request by rounding.
                "window": float(window_s) + 1e-3 * float(interval_s),
            },
        )
        assert row is not None  # an upsert with RETURNING always returns its row
        tat, now, allowed = row
        return Hit(allowed=bool(allowed), tat=float(tat), now=float(now))

    def report(self, served: Sequence[tuple[str, int, float]]) -> dict[str, tuple[float, float]]:
        """Count requests already served, for many subjects in one statement; decide nothing.

        ``served`` holds ``(key, requests, interval_s)``; the answer maps each
        key to its theoretical arrival time after the count and the database's
        clock, in epoch seconds.
        """
        ordered = sorted(served)  # one lock order for every process: no deadlock
        params: dict[str, object]
        if self._dialect == "postgresql":
            params = {
                "buckets": [key for key, _, _ in ordered],
                "pendings": [float(n) for _, n, _ in ordered],
                "steps": [float(step) for _, _, step in ordered],
            }
        else:
            params = {"subjects": json.dumps([[k, float(n), float(s)] for k, n, s in ordered])}
        rows = self._storage.fetch_all(self._sql["report"], params)
        return {bucket: (float(tat), float(now)) for bucket, tat, now in rows}

    def peek(self, key: str) -> tuple[float | None, float]:
        """The subject's theoretical arrival time (``None`` if it has none) and the clock."""
        row = self._storage.fetch_one(self._sql["peek"], {"bucket": key})
        assert row is not None
        tat, now = row
        return (None if tat is None else float(tat)), float(now)

    def prune(self) -> int:
        """Drop rows whose quota is whole again (they mean what no row means)."""
        return self._storage.execute(self._sql["prune"], {})

    def ping(self) -> None:
        """Prove the table answers; ``Unavailable`` (e.g. not migrated) otherwise."""
        self._storage.fetch_all(self._sql["ping"], {})
