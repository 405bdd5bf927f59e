"""Read replicas: which reads may lag, and how a client still reads its own writes.

A storage with read replicas (``ReadReplicas``, as the PostgreSQL plugin's
``USERPLANE_DATABASE_REPLICA_URLS``) serves a read from a replica only inside
``replica_reads()``; everything else, and every write, goes to the primary.
The HTTP frontend opens that scope around a ``GET``'s handler (after
authentication and rate limiting, whose reads must be current), unless:

- the same principal wrote within ``USERPLANE_DB_READ_YOUR_WRITES_MS``
  through this process (``RecentWriters``), or
- the client sends the position its last write answered with
  (``Userplane-Position``), which a replica must have replayed to serve it:
  the way to read your writes through any instance.

A replica is skipped while it is down, or further behind than
``USERPLANE_DB_REPLICA_MAX_LAG_MS``; the primary serves instead.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import attrs

#: The header a write's response carries and a read may send back.
POSITION_HEADER = "Userplane-Position"


@attrs.define
class ReplicaRead:
    """Reads here may come from a replica that has replayed at least ``after``."""

    #: A position parsed by the storage's ``ReadReplicas.parse_position``, or ``None``.
    after: Any = None
    #: The replica this scope reads from, once the storage chose one: every read of
    #: one request from the same replica, so that one answer never mixes two states.
    pinned: Any = None


_scope: contextvars.ContextVar[ReplicaRead | None] = contextvars.ContextVar(
    "userplane_replica_read", default=None
)


def replica_read() -> ReplicaRead | None:
    """The replica scope in force, or ``None``: then every read goes to the primary."""
    return _scope.get()


def set_replica_read(scope: ReplicaRead | None) -> contextvars.Token[ReplicaRead | None]:
    """Enter (or, with ``None``, leave) a replica scope; reset it with the token."""
    return _scope.set(scope)


def reset_replica_read(token: contextvars.Token[ReplicaRead | None]) -> None:
    """Restore the scope ``set_replica_read`` replaced."""
    _scope.reset(token)


@contextlib.contextmanager
def replica_reads(after: Any = None) -> Iterator[None]:
    """Within, plain reads outside a transaction may be served by a replica."""
    token = _scope.set(ReplicaRead(after))
    try:
        yield
    finally:
        _scope.reset(token)


@attrs.frozen
class ReplicaState:
    """What one process knows of one replica, for ``describe`` and the logs."""

    #: The replica's URL, its password masked.
    name: str
    #: Whether reads may go there now.
    usable: bool
    #: How far behind the primary it was at the last check, in ms (``None``: unknown).
    lag_ms: float | None
    #: Why not, when it is not usable.
    reason: str = ""


@runtime_checkable
class ReadReplicas(Protocol):
    """A storage's read replicas (``storage.read_replicas``, ``None`` without any).

    Positions are the storage's own (a PostgreSQL WAL location): opaque text
    to clients, parsed back by ``parse_position``.
    """

    def position(self) -> str:
        """The primary's position now: a replica that has replayed it holds every commit so far."""
        ...

    def parse_position(self, text: str) -> Any:
        """``text`` as ``position`` wrote it; ``ValueError`` if it is not one."""
        ...

    def states(self) -> list[ReplicaState]:
        """Each replica as this process last saw it."""
        ...


class RecentWriters:
    """Principals that wrote through this process lately, so that they read the primary.

    Bounded: past ``limit`` principals the least recently written are
    forgotten, which only sends their reads to a replica sooner.
    """

    def __init__(
        self, window_s: float, limit: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._limit = limit
        self._clock = clock
        self._wrote: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def wrote(self, principal: str) -> None:
        """``principal`` has just written."""
        with self._lock:
            self._wrote[principal] = self._clock()
            self._wrote.move_to_end(principal)
            while len(self._wrote) > self._limit:
                self._wrote.popitem(last=False)

    def recent(self, principal: str) -> bool:
        """Did ``principal`` write within the window?"""
        at = self._wrote.get(principal)
        return at is not None and self._clock() - at < self.window_s
