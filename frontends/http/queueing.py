"""How long the current request waited for a worker thread (load shedding).

Under overload, requests queue inside each gunicorn worker until a thread is
free; served late, they only make the queue longer. ``userplane serve``'s worker
stamps each request when it joins that queue, and the ``ShedLoad`` middleware
refuses one that waited past ``USERPLANE_QUEUE_TIMEOUT_MS`` with a fast 503,
before it costs a database round trip, so admitted requests keep a bounded
latency and the excess learns at once to retry later.
"""

from __future__ import annotations

import threading
import time

_local = threading.local()


def mark_queued(at: float | None) -> None:
    """Record (in this thread) when the request it is about to handle was queued."""
    _local.queued_at = at


def queued_for() -> float | None:
    """Seconds the current request waited for this thread; ``None`` when unknown."""
    at: float | None = getattr(_local, "queued_at", None)
    return None if at is None else time.monotonic() - at
