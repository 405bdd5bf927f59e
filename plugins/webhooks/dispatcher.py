"""The dispatcher: one thread per serving process, sending what the outbox holds.

It claims due deliveries (``WebhookStore.claim``: the head of each
subscription and user only, under a lease, ``SKIP LOCKED`` on PostgreSQL)
as long as a sender is free, and hands each to a small pool of sender
threads, so that a slow receiver holds one sender, not the queue. It wakes
when a change commits in this process (``wake``) and otherwise every
``POLL_SECONDS``, which is how it hears of other processes' changes, of
retries that fell due and of claims a crashed process left. A claim is never
older than its send: each is taken for a free sender, and the lease outlives
the send's deadline, so no two dispatchers send one delivery at once unless
one of them died. That makes delivery at-least-once, de-duplicated by the
receiver on ``webhook-id``.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import attrs

from userplane.plugins.webhooks.addresses import Resolver
from userplane.plugins.webhooks.records import Claimed, Subscription
from userplane.plugins.webhooks.sender import Outcome, SendLimits, send, signed_headers
from userplane.plugins.webhooks.store import WebhookStore

_log = logging.getLogger("userplane.webhooks")

#: The outcomes ``userplane.webhooks.deliveries`` counts.
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
DEAD: Final = "dead"


@attrs.frozen
class Backoff:
    """When to try again: full jitter over an exponential bound, capped."""

    base_s: float
    cap_s: float
    max_attempts: int

    def bound(self, attempts: int) -> float:
        """The longest wait after ``attempts`` failed attempts: base·2^(attempts-1), capped."""
        return float(min(self.cap_s, self.base_s * 2 ** min(attempts - 1, 64)))

    def delay(self, attempts: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        """A wait drawn uniformly between 0 and ``bound(attempts)`` (full jitter)."""
        return rng(0.0, self.bound(attempts))

    def gives_up(self, attempts: int) -> bool:
        """Whether ``attempts`` failed attempts make a delivery dead."""
        return attempts >= self.max_attempts


class Dispatcher:
    """Claims and sends deliveries for one process; ``start``, ``wake``, ``stop``."""

    def __init__(
        self,
        store: WebhookStore,
        *,
        limits: SendLimits,
        backoff: Backoff,
        lease_s: float,
        poll_s: float,
        senders: int,
        resolver: Resolver,
        clock: Callable[[], datetime],
        count: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._backoff = backoff
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._senders = senders
        self._resolver = resolver
        self._clock = clock
        self._count = count
        #: Who claims: host, process and this dispatcher, for the claimed_by column.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._work: queue.Queue[tuple[Claimed, Subscription | None] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._last_problem = ""

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the claiming thread and the senders (daemons: they never hold an exit)."""
        if self._threads:
            return
        for i in range(self._senders):
            self._threads.append(
                threading.Thread(
                    target=self._send_loop, name=f"userplane-webhooks-send-{i}", daemon=True
                )
            )
        self._threads.append(
            threading.Thread(target=self._claim_loop, name="userplane-webhooks", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Look for due deliveries now (a change committed)."""
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop claiming, let sends in flight finish within ``timeout`` seconds, and join.

        A send cut short leaves its claim to expire: another dispatcher sends it then.
        """
        self._stopping.set()
        self._wake.set()
        for _ in range(self._senders):
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    # -- one round ---------------------------------------------------------------------

    def claim(self, limit: int) -> list[tuple[Claimed, Subscription | None]]:
        """Claim up to ``limit`` due deliveries, each with its (live) subscription."""
        if limit <= 0:
            return []
        claimed = self._store.claim(self.worker, limit, self._lease_s)
        subs = self._store.subscriptions_by_id(c.subscription_id for c in claimed)
        return [(c, subs.get(c.subscription_id)) for c in claimed]

    def deliver(self, claimed: Claimed, sub: Subscription | None) -> str | None:
        """Send one claimed delivery and record the outcome; which it was (``None``: dropped)."""
        if sub is None or not sub.secret:
            return None  # deleted since: its pending deliveries were buried with it
        body = claimed.payload.encode()
        headers = signed_headers(sub.secret, str(claimed.id), body, self._clock())
        try:
            outcome = send(sub.url, body, headers, self._limits, self._resolver)
        except Exception as exc:  # a bug in sending must not kill the sender: a failure
            _log.exception("sending webhook delivery %s failed unexpectedly", claimed.id)
            outcome = Outcome(False, None, f"internal error ({type(exc).__name__})")
        return self._record(claimed, sub, outcome)

    def _record(self, claimed: Claimed, sub: Subscription, outcome: Outcome) -> str:
        if outcome.ok:
            assert outcome.status is not None
            self._store.mark_delivered(claimed.id, outcome.status)
            self._count(DELIVERED)
            return DELIVERED
        attempts = claimed.attempts + 1
        dead = self._backoff.gives_up(attempts)
        delay = 0.0 if dead else self._backoff.delay(attempts)
        self._store.mark_failed(
            claimed.id,
            self.worker,
            dead=dead,
            delay_s=delay,
            status=outcome.status,
            error=outcome.error,
        )
        # Never the secret nor the payload: the ids say which, the error says why.
        if dead:
            _log.warning(
                "webhook delivery %s (%s) to subscription %s is dead after %d attempts: %s",
                claimed.id,
                claimed.event_type,
                sub.id,
                attempts,
                outcome.error,
                extra={"delivery_id": str(claimed.id), "subscription_id": str(sub.id)},
            )
        else:
            _log.warning(
                "webhook delivery %s (%s) to subscription %s failed (attempt %d), "
                "retrying in %.1fs: %s",
                claimed.id,
                claimed.event_type,
                sub.id,
                attempts,
                delay,
                outcome.error,
                extra={"delivery_id": str(claimed.id), "subscription_id": str(sub.id)},
            )
        self._count(FAILED)
        if dead:
            self._count(DEAD)
        return DEAD if dead else FAILED

    def run_once(self) -> list[str | None]:
        """Claim what is due (as many as there are senders) and send it here; the outcomes."""
        return [self.deliver(c, s) for c, s in self.claim(self._senders)]

    # -- the threads -------------------------------------------------------------------

    def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the claim: a commit announced from now on is seen by this
            # claim or ends the wait below; so does a sender that finishes (then the
            # user's next event may be due, and a sender is free for it).
            self._wake.clear()
            try:
                self._claim_free()
            except Exception as exc:
                self._problem(exc)
            else:
                self._problem(None)
            self._wake.wait(self._poll_s)

    def _claim_free(self) -> None:
        with self._lock:
            free = self._senders - self._in_flight
        items = self.claim(free)
        with self._lock:
            self._in_flight += len(items)
        for item in items:
            self._work.put(item)

    def _send_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                self.deliver(*item)
            except Exception as exc:
                # The outcome could not be recorded: the claim expires and it is sent again.
                self._problem(exc)
            finally:
                with self._lock:
                    self._in_flight -= 1
                self._wake.set()  # a sender is free, and the user's next event may be due

    def _problem(self, exc: BaseException | None) -> None:
        """Log a failing outbox once per new reason, and when it recovers."""
        text = "" if exc is None else f"{type(exc).__name__}: {exc}"
        if text == self._last_problem:
            return
        self._last_problem = text
        if exc is None:
            _log.info("the webhook outbox answers again")
        else:
            _log.warning("the webhook outbox cannot be read or written now: %s", text)

    def queue_state(self) -> tuple[int, float]:
        """Pending deliveries and the seconds the longest-due one has waited."""
        return self._store.queue()

    def describe(self) -> dict[str, Any]:
        """For start-up lines and tests: who this dispatcher is."""
        return {"worker": self.worker, "senders": self._senders}
