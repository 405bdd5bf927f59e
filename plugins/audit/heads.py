"""Logging the chain head while serving, so that a chain cut short later can be caught.

Hashes chain each event to the one before, so nothing can be removed from
the middle unseen; events removed from the *end* leave a shorter chain that
still verifies. The heads logged meanwhile (kept by the log pipeline, out
of the database's reach) say how far the chain went: ``audit verify
--expect SEQ:HASH`` with the last one logged fails if that event is gone or
differs.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from userplane.plugin import UserplaneError
from userplane.plugins.audit.trail import LOGGER, log_head

if TYPE_CHECKING:
    from userplane.plugins.audit.trail import AuditTrail

_log = logging.getLogger(LOGGER)


class HeadLogger:
    """A daemon thread logging the chain head every ``interval`` seconds until stopped."""

    def __init__(self, trail: AuditTrail, interval: float) -> None:
        self._trail = trail
        self._interval = interval
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

    def _run(self) -> None:
        # Once at start, then every interval: a restart leaves a head in the log at once.
        self.log_once()
        while not self._stop.wait(self._interval):
            self.log_once()
