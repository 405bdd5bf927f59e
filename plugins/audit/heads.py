"""The serving process's chainer: links events into the chain, and logs the chain head.

Writers only insert their events; a daemon thread in each serving process
links them into the chain every ``USERPLANE_AUDIT_CHAIN_SECONDS`` (``AuditTrail.chain``;
processes that find the head held by another's chainer leave it the work).

Hashes chain each event to the one before, so nothing can be removed from
the middle unseen; events removed from the *end* leave a shorter chain that
still verifies. The heads the thread logs every ``USERPLANE_AUDIT_HEAD_LOG_SECONDS``
(kept by the log pipeline, out of the database's reach) say how far the chain
went: ``audit verify --expect SEQ:HASH`` with the last one logged fails if
that event is gone or differs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from userplane.plugin import UserplaneError
from userplane.plugins.audit.trail import LOGGER, log_head

if TYPE_CHECKING:
    from userplane.plugins.audit.trail import AuditTrail

_log = logging.getLogger(LOGGER)


class HeadLogger:
    """A daemon thread chaining every ``chain_interval`` and logging the head every ``interval``.

    It chains once more when stopped, so that a process shutting down leaves
    its last events chained.
    """

    def __init__(self, trail: AuditTrail, interval: float, chain_interval: float = 1.0) -> None:
        self._trail = trail
        self._interval = interval
        self._chain_interval = chain_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once; again is a no-op while it runs)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="userplane-audit-head", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def log_once(self) -> None:
        """Log the head now; a database that does not answer is logged, never raised."""
        try:
            log_head(self._trail.head())
        except UserplaneError as exc:
            _log.warning("audit.head.unavailable", extra={"error": exc.detail})

    def chain_once(self) -> None:
        """Chain what is final now; a database that does not answer is logged, never raised."""
        try:
            self._trail.chain()
        except UserplaneError as exc:
            _log.warning("audit.chain.unavailable", extra={"error": exc.detail})
        except Exception:  # the thread must outlive any one failure
            _log.exception("audit.chain.failed")

    def _run(self) -> None:
        # Chain and log at start, so that a restart leaves a head in the log at once.
        next_log = time.monotonic()
        while True:
            self.chain_once()
            if time.monotonic() >= next_log:
                self.log_once()
                next_log = time.monotonic() + self._interval
            wait = min(self._chain_interval, max(next_log - time.monotonic(), 0.0))
            if self._stop.wait(wait):
                break
        self.chain_once()
