"""Read replicas of the PostgreSQL store: which may serve a read now, and serving it there.

Each process watches its replicas from one background thread (started on the
first read that may go to one, so after gunicorn forks). Every ``interval``
it samples the primary's WAL position (``pg_current_wal_insert_lsn()``) and each
replica's replayed position (``pg_last_wal_replay_lsn()``). A replica's lag is
how long ago the primary first held a position the replica has not replayed
yet: measured in time, by the primary's own history, whatever the write
rate, and zero for an idle primary. A replica is usable while it answers, is
in recovery (a promoted one is no replica), lags at most ``max_lag_s``, and
was checked lately (a stalled monitor vouches for nothing). A request reads
from one replica (``ReplicaRead.pinned``), so one answer never mixes two
replicas' states. A read a replica cannot serve is served by the primary; a
replica whose connection broke is skipped until a check finds it back.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from userplane.plugin import ReplicaState, mask_url

_log = logging.getLogger("userplane.postgresql")

_UNCHECKED = "not checked yet"
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """A WAL location as PostgreSQL writes it (``16/B374D848``) as a number."""
    found = _LSN.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"not a position: {text[:40]!r}")
    return (int(found.group(1), 16) << 32) | int(found.group(2), 16)


def format_lsn(lsn: int) -> str:
    """The inverse of ``parse_lsn``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class Replica:
    """One replica, as this process sees it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = mask_url(url)
        #: The position it had replayed at the last check (``None``: unknown).
        self.replayed: int | None = None
        #: How far behind it was then, in seconds (``None``: unknown).
        self.lag_s: float | None = None
        #: When the monitor last heard from it (monotonic seconds).
        self.checked_at = 0.0
        #: Whether reads may go there, and if not, why.
        self.usable = False
        self.reason = _UNCHECKED
        self.pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        #: The monitor's own connection to it.
        self.watch: psycopg.Connection[Any] | None = None

    def state(self) -> ReplicaState:
        lag = None if self.lag_s is None else round(self.lag_s * 1000, 1)
        return ReplicaState(self.name, self.usable, lag, "" if self.usable else self.reason)


class PostgreSQLReplicas:
    """``ReadReplicas`` for ``PostgreSQLStorage``: the replicas, their monitor, and routing."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        primary_position: Callable[[], int],
        pool_args: Mapping[str, Any],
        connection_args: Callable[[], dict[str, Any]],
        configure: Callable[[psycopg.Connection[Any]], None],
        check: Callable[[psycopg.Connection[Any]], None],
        max_lag_s: float = 1.0,
        interval_s: float = 0.1,
    ) -> None:
        self._urls = list(urls)
        self._primary_position = primary_position
        self._pool_args = dict(pool_args)
        self._connection_args = connection_args
        self._configure = configure
        self._check = check
        self.max_lag_s = max_lag_s
        self.interval_s = interval_s
        self._replicas: list[Replica] = []
        self._pid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._turn = itertools.count()
        #: The primary's positions as sampled: (monotonic seconds, position), oldest first.
        self._history: collections.deque[tuple[float, int]] = collections.deque()

    # -- ReadReplicas -----------------------------------------------------------------

    def position(self) -> str:
        """The primary's WAL position now."""
        return format_lsn(self._primary_position())

    def parse_position(self, text: str) -> int:
        """A position ``position`` wrote; ``ValueError`` otherwise."""
        return parse_lsn(text)

    def states(self) -> list[ReplicaState]:
        """Each replica as this process last saw it (started on first use)."""
        return [r.state() for r in self._mine()]

    # -- routing ----------------------------------------------------------------------

    def pick(self, after: int | None, pinned: Replica | None = None) -> Replica | None:
        """A usable replica that has replayed ``after`` (``pinned`` if it still is); else ``None``.

        Replicas are taken in turn, one per request: the caller pins the first.
        """
        replicas = self._mine()
        fresh = time.monotonic() - max(3 * self.interval_s, self.max_lag_s)

        def serves(r: Replica) -> bool:
            return (
                r.usable
                and r.checked_at >= fresh
                and (after is None or (r.replayed is not None and r.replayed >= after))
            )

        if pinned is not None:
            return pinned if serves(pinned) else None
        usable = [r for r in replicas if serves(r)]
        if not usable:
            return None
        return usable[next(self._turn) % len(usable)]

    def read(
        self, replica: Replica, sql: str, params: Mapping[str, Any], prepare: bool | None, one: bool
    ) -> tuple[bool, Any]:
        """``(True, rows)`` from ``replica``, or ``(False, None)``: ask the primary instead.

        A statement cancelled for taking too long raises (the primary would take as
        long). Anything else the replica cannot do goes to the primary: a busy pool,
        a conflict with recovery, a write after all, a table a migration has not
        replayed yet. Only a broken connection takes the replica out.
        """
        conn: psycopg.Connection[Any] | None = None
        try:
            with self._pool(replica).connection() as conn, conn.cursor() as cur:
                if prepare is None and conn.prepare_threshold is not None:
                    conn.prepare_threshold = None
                cur.execute(sql, params, prepare=prepare)
                return True, (cur.fetchone() if one else cur.fetchall())
        except psycopg.errors.QueryCanceled:
            raise
        except (PoolTimeout, TooManyRequests):
            return False, None
        except PoolClosed:
            return False, None  # taken out meanwhile
        except psycopg.Error as exc:
            if conn is None or conn.closed or conn.broken:
                reason = f"a read failed: {type(exc).__name__}: {exc}".splitlines()[0]
                self._down(replica, reason)
            return False, None

    # -- this process's replicas and monitor --------------------------------------------

    def _mine(self) -> list[Replica]:
        pid = os.getpid()
        if self._pid == pid:
            return self._replicas
        with self._lock:
            if self._pid != pid:
                # Inherited through fork: the parent's pools and sockets are not ours.
                # No I/O here: until the monitor's first check (at once, in its
                # thread), every replica is unchecked and reads go to the primary.
                self._replicas = [Replica(url) for url in self._urls]
                self._history = collections.deque()
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._watch, name="userplane-replicas", daemon=True
                )
                self._thread.start()
                self._pid = pid
        return self._replicas

    def _pool(self, replica: Replica) -> ConnectionPool[psycopg.Connection[Any]]:
        pool = replica.pool
        if pool is None:
            with self._lock:
                if replica.pool is None:
                    replica.pool = ConnectionPool(
                        replica.url,
                        open=False,
                        check=self._check,
                        configure=self._configure,
                        kwargs=self._connection_args(),
                        name="userplane-replica",
                        reconnect_timeout=2.0,
                        **self._pool_args,
                    )
                    replica.pool.open(wait=False)
                pool = replica.pool
        return pool

    def _watch(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                self._check_all()
            except Exception:  # never let the monitor die (a stalled one vouches for nothing)
                _log.exception("checking the read replicas failed")
            stop.wait(self.interval_s)

    def _check_all(self) -> None:
        now = time.monotonic()
        try:
            self._history.append((now, self._primary_position()))
        except Exception as exc:
            # Without the primary's position no lag can be known: every replica
            # is judged by what it has replayed of the history known so far.
            _log.debug("the primary's position is unknown: %s", exc)
        keep = max(2 * self.max_lag_s, 2.0)
        while len(self._history) > 2 and self._history[1][0] < now - keep:
            self._history.popleft()
        for replica in self._replicas:
            self._check_one(replica, now)

    def _check_one(self, replica: Replica, now: float) -> None:
        try:
            conn = replica.watch
            if conn is None or conn.closed:
                # Keepalives: a replica cut off by the network must fail the check in
                # seconds, not hang it until TCP gives up.
                conn = replica.watch = psycopg.connect(
                    replica.url,
                    autocommit=True,
                    connect_timeout=2,
                    prepare_threshold=None,
                    keepalives=1,
                    keepalives_idle=2,
                    keepalives_interval=1,
                    keepalives_count=2,
                    tcp_user_timeout=3000,
                )
            row = conn.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
            ).fetchone()
        except psycopg.Error as exc:
            if replica.watch is not None:
                with contextlib.suppress(Exception):
                    replica.watch.close()
                replica.watch = None
            self._down(replica, f"it cannot be reached: {str(exc).strip().splitlines()[0]}")
            return
        if row is None or not row[0] or row[1] is None:
            self._down(replica, "it is not in recovery (a primary, or promoted)")
            return
        replica.checked_at = time.monotonic()
        replica.replayed = parse_lsn(row[1])
        replica.lag_s = self._lag(replica.replayed, now)
        if replica.lag_s > self.max_lag_s:
            lag = f"it lags {replica.lag_s * 1000:.0f} ms behind the primary"
            self._down(replica, lag, broken=False)
            return
        if not replica.usable:
            _log.info("read replica %s is usable (lag %.0f ms)", replica.name, replica.lag_s * 1000)
        replica.usable, replica.reason = True, ""

    def _lag(self, replayed: int, now: float) -> float:
        """How long ago the primary first held a position past ``replayed`` (0: none).

        Behind even the oldest sample, the replica may have been behind for
        longer than the history tells: it counts as too far behind until it
        catches up with a sample.
        """
        for index, (at, position) in enumerate(self._history):
            if position > replayed:
                return now - at if index else max(now - at, self.max_lag_s * 1.001 + 0.001)
        return 0.0

    def _down(self, replica: Replica, reason: str, *, broken: bool = True) -> None:
        if replica.usable or replica.reason == _UNCHECKED:
            _log.warning("read replica %s is skipped: %s", replica.name, reason)
        replica.usable, replica.reason = False, reason
        if not broken:
            return  # reachable: its connections are good for when it catches up
        # Its connections are dead or dying, and a pool that kept retrying them would
        # make the first reads after it is back wait out its backoff: a fresh one then.
        with self._lock:
            pool, replica.pool = replica.pool, None
        if pool is not None:
            threading.Thread(target=pool.close, kwargs={"timeout": 1.0}, daemon=True).start()

    def close(self) -> None:
        """Stop this process's monitor and close its pools."""
        self._stop.set()
        if self._pid != os.getpid():
            return
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for replica in self._replicas:
            if replica.pool is not None:
                replica.pool.close()
                replica.pool = None
            if replica.watch is not None:
                with contextlib.suppress(Exception):
                    replica.watch.close()
                replica.watch = None
