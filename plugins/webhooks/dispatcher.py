"""The dispatcher: one thread per serving process, sending what the outbox holds.

It claims due deliveries in batches (``WebhookStore.claim``: the head of
each subscription and user only, under a lease, ``SKIP LOCKED`` on
PostgreSQL) while a sender is free, groups each claim by subscription and
hands every group to one of a small pool of sender threads, which sends it in
outbox order over one kept-alive connection (``sender.Channel``) and records
the deliveries that arrived with one statement. A slow receiver holds one
sender, not the queue.

It wakes when a change commits in this process (``wake``) or a sender
finishes, then lingers ``LINGER_SECONDS`` so that the commits of that moment
share one claim, and otherwise looks every ``POLL_SECONDS``, which is how it
hears of other processes' changes, of retries that fell due and of claims a
crashed process left. Under load that bounds the claims to a few dozen a
second per process, each taking up to ``BATCH_SIZE`` deliveries: the queue
grows, and drains in larger batches, rather than the dispatcher taking the
processor from requests.

A claim is never older than its send: a delivery is sent only while its
claim's lease has room for the whole send (``TIMEOUT_SECONDS``) and for
recording it; what a batch cannot send in time is released, unsent and no
attempt counted, for any dispatcher to claim again. So no two dispatchers
send one delivery at once unless one of them died, and a dead one's claims
come free when their lease ends. That makes delivery at-least-once,
de-duplicated by the receiver on ``webhook-id``.
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
from userplane.plugins.webhooks.sender import Channel, Outcome, SendLimits, Signer, Watchdog
from userplane.plugins.webhooks.store import WebhookStore

_log = logging.getLogger("userplane.webhooks")

#: How often, in seconds, a dispatcher buries deliveries to deleted subscriptions.
SWEEP_S: Final = 30.0
#: The outcomes ``userplane.webhooks.deliveries`` counts.
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
DEAD: Final = "dead"
#: Claimed, not sent: its lease had no room for the send, or the process stopped.
RELEASED: Final = "released"
#: The longest deliveries that arrived wait to be recorded while their batch goes on.
RECORD_EVERY_S: Final = 0.5
#: The process is busy serving when the rest of it (all but the dispatcher) used more
#: than this share of one processor over the last ``BUSY_WINDOW_S`` ...
BUSY_CPU: Final = 0.1
BUSY_WINDOW_S: Final = 0.5
#: ... and the machine's processors were idle less than this share of that time
#: (where ``/proc/stat`` tells; elsewhere the first test alone decides).
BUSY_IDLE: Final = 0.2
_PROC_STAT: Final = "/proc/stat"


def machine_times() -> tuple[float, float] | None:
    """The machine's processors' (idle, total) time so far, in ticks; ``None`` if unknown."""
    try:
        with open(_PROC_STAT, "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != b"cpu":
        return None
    ticks = [float(f) for f in fields[1:9]]
    return ticks[3] + ticks[4], sum(ticks)  # idle and iowait; all but guest time


#: The most processor time (in seconds of the busy share) the dispatcher saves up.
BURST_S: Final = 1.0


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


def _saturated(before: tuple[float, float] | None, after: tuple[float, float] | None) -> bool:
    """Whether the machine's processors were idle less than ``BUSY_IDLE`` in between
    (``True`` when that is unknown: then the process's own load decides)."""
    if before is None or after is None or after[1] <= before[1]:
        return True
    return (after[0] - before[0]) / (after[1] - before[1]) < BUSY_IDLE


@attrs.frozen
class Batch:
    """One subscription's share of a claim: sent by one sender, in outbox order."""

    subscription: Subscription | None
    items: tuple[Claimed, ...]
    #: When the claim's lease ends (``time.monotonic``; the claim began before the lease).
    lease_until: float


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
        batch_size: int = 100,
        linger_s: float = 0.05,
        busy_share: float = 0.02,
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
        self._batch_size = batch_size
        self._linger_s = linger_s
        #: Room a send leaves in its lease to record its outcome.
        self._margin_s = min(1.0, max(0.0, lease_s - limits.timeout_s) / 2)
        #: Who claims: host, process and this dispatcher, for the claimed_by column.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._work: queue.Queue[Batch | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._watchdog = Watchdog()
        self._last_problem = ""
        #: When ``_sweep`` last ran (monotonic; never yet).
        self._swept_at = -SWEEP_S
        #: Whether the process was busy serving when last looked at (``_throttle``).
        self.busy = False
        self._busy_share = busy_share
        #: Processor seconds the dispatcher's threads used, and what its share has left.
        self._cpu = 0.0
        self._tokens = busy_share * BURST_S
        self._refilled = time.monotonic()
        #: When the busy window began: (monotonic, process time, dispatcher time), and
        #: the machine's (idle, total) processor time then.
        self._window = (self._refilled, time.process_time(), 0.0)
        self._machine = machine_times()
        #: Claim rounds and connections made (for tests and tuning).
        self.claims = 0
        self.connections = 0

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
        """Look for due deliveries soon (a change committed)."""
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop claiming, let sends in flight finish within ``timeout`` seconds, and join.

        A batch stops at its next delivery and releases the rest, and batches
        no sender took are released: another dispatcher sends them at once. A
        send cut short leaves its claim to expire: another dispatcher sends it then.
        """
        self._stopping.set()
        self._wake.set()
        for _ in range(self._senders):
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t for t in self._threads if t.is_alive()]
        self._threads = []
        while True:
            try:
                batch = self._work.get_nowait()
            except queue.Empty:
                break
            if batch is not None:
                self._release(batch.items)
        if not left:
            self._watchdog.stop()

    # -- one round ---------------------------------------------------------------------

    def claim(self, limit: int) -> list[tuple[Claimed, Subscription | None]]:
        """Claim up to ``limit`` due deliveries, each with its (live) subscription."""
        if limit <= 0:
            return []
        self.claims += 1
        claimed = self._store.claim(self.worker, limit, self._lease_s)
        subs = self._store.subscriptions_by_id(c.subscription_id for c in claimed)
        return [(c, subs.get(c.subscription_id)) for c in claimed]

    def claim_batches(self, limit: int) -> list[Batch]:
        """Claim up to ``limit`` due deliveries, grouped by subscription, each in seq order."""
        began = time.monotonic()  # before the database's now(): the lease ends no earlier
        groups: dict[uuid.UUID, tuple[Subscription | None, list[Claimed]]] = {}
        for claimed, sub in self.claim(limit):
            groups.setdefault(claimed.subscription_id, (sub, []))[1].append(claimed)
        batches = [
            Batch(sub, tuple(sorted(items, key=lambda c: c.seq)), began + self._lease_s)
            for sub, items in groups.values()
        ]
        return sorted(batches, key=lambda b: b.items[0].seq)

    def deliver(self, claimed: Claimed, sub: Subscription | None) -> str | None:
        """Send one claimed delivery and record the outcome; which it was (``None``: dropped)."""
        batch = Batch(sub, (claimed,), time.monotonic() + self._lease_s)
        [outcome] = self.send_batch(batch)
        return outcome

    def send_batch(self, batch: Batch) -> list[str | None]:
        """Send ``batch`` in order over one connection and record the outcomes; each one.

        ``None``: dropped (the subscription was deleted: its pending deliveries
        were buried with it); ``RELEASED``: not sent, claimable again at once.
        """
        sub = batch.subscription
        if sub is None or not sub.secret:
            return [None] * len(batch.items)
        outcomes: list[str | None] = []
        arrived: dict[int, list[Claimed]] = {}
        oldest = 0.0
        signer = Signer(sub.secret)
        try:
            with Channel(sub.url, self._limits, self._resolver, self._watchdog) as channel:
                for i, claimed in enumerate(batch.items):
                    now = time.monotonic()
                    room = batch.lease_until - now - self._margin_s
                    if room < self._limits.timeout_s or self._stopping.is_set():
                        rest = batch.items[i:]
                        self._release(rest)
                        outcomes += [RELEASED] * len(rest)
                        break
                    outcome = self._send(channel, signer, claimed)
                    if outcome.ok:
                        assert outcome.status is not None
                        if not arrived:
                            oldest = now
                        arrived.setdefault(outcome.status, []).append(claimed)
                        outcomes.append(DELIVERED)
                        if now - oldest >= RECORD_EVERY_S:
                            self._record_arrived(arrived)
                    else:
                        outcomes.append(self._record_failure(claimed, sub, outcome))
                self.connections += channel.connections
        finally:
            self._record_arrived(arrived)
        return outcomes

    def _send(self, channel: Channel, signer: Signer, claimed: Claimed) -> Outcome:
        body = claimed.payload.encode()
        try:
            headers = signer.headers(str(claimed.id), body, self._clock())
            return channel.send(body, headers)
        except Exception as exc:  # a bug in sending must not kill the sender: a failure
            _log.exception("sending webhook delivery %s failed unexpectedly", claimed.id)
            channel.close()
            return Outcome(False, None, f"internal error ({type(exc).__name__})")

    def _record_arrived(self, arrived: dict[int, list[Claimed]]) -> None:
        """One statement per status for the deliveries that arrived; emptied after."""
        while arrived:
            status, items = next(iter(arrived.items()))
            self._store.mark_delivered_many((c.id for c in items), status)
            del arrived[status]
            for _ in items:
                self._count(DELIVERED)

    def _release(self, items: tuple[Claimed, ...]) -> None:
        if items:
            try:
                self._store.release((c.id for c in items), self.worker)
            except Exception as exc:  # their lease ends anyway: then they are claimable
                self._problem(exc)

    def _record_failure(self, claimed: Claimed, sub: Subscription, outcome: Outcome) -> str:
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
        """Claim one batch of what is due and send it here; the outcomes, batch by batch."""
        outcomes: list[str | None] = []
        for batch in self.claim_batches(self._batch_size):
            outcomes += self.send_batch(batch)
        return outcomes

    # -- the threads -------------------------------------------------------------------

    def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            self._throttle()
            # Cleared before the claim: a commit announced from now on is seen by this
            # claim or ends the wait below; so does a sender that finishes (then the
            # users' next events may be due, and a sender is free for them).
            self._wake.clear()
            began = time.thread_time()
            try:
                self._sweep()
                more = self._claim_free()
            except Exception as exc:
                self._problem(exc)
                more = False
            else:
                self._problem(None)
            finally:
                self._spent(time.thread_time() - began)
            if more:
                continue  # a full batch: more is due, and a sender is free for it
            if self._wake.wait(self._poll_s) and self._linger_s > 0:
                # Woken: let the commits of the next moments join this claim.
                self._stopping.wait(self._linger_s)

    def _sweep(self) -> None:
        """Now and then, bury what a write queued for a subscription deleted meanwhile.

        On PostgreSQL a write's deliveries and a deletion can commit in either
        order, so the deletion's own burial may miss a row: left pending, it
        would be counted in the queue for ever, though never sent.
        """
        now = time.monotonic()
        if now - self._swept_at < SWEEP_S:
            return
        self._swept_at = now
        buried = self._store.bury_stray()
        if buried:
            _log.info("buried %d deliveries to deleted subscriptions", buried)

    def _spent(self, cpu_s: float) -> None:
        """The dispatcher's threads used ``cpu_s`` seconds of processor time."""
        with self._lock:
            self._cpu += cpu_s
            self._tokens -= cpu_s

    def _throttle(self) -> None:
        """While the process is busy serving, wait until the dispatcher is within its share.

        Busy: the process, less the dispatcher's own threads, used more than
        ``BUSY_CPU`` of a processor over the last ``BUSY_WINDOW_S``, and the
        machine had less than ``BUSY_IDLE`` of its processors to spare. Then the
        dispatcher's threads may use ``BUSY_SHARE`` of one processor (a bucket
        of ``BURST_S`` seconds of it): each batch's processor time is paid for
        before the next claim, so the queue grows under load and drains at full
        speed once the load is gone. An idle process is never held back.
        """
        share = self._busy_share
        while not self._stopping.is_set():
            now = time.monotonic()
            with self._lock:
                elapsed = now - self._window[0]
                if elapsed >= BUSY_WINDOW_S:
                    process, machine = time.process_time(), machine_times()
                    others = (process - self._window[1]) - (self._cpu - self._window[2])
                    self.busy = others > BUSY_CPU * elapsed and _saturated(self._machine, machine)
                    self._window = (now, process, self._cpu)
                    self._machine = machine
                self._tokens = min(share * BURST_S, self._tokens + share * (now - self._refilled))
                self._refilled = now
                owed = -self._tokens
            if not self.busy or owed <= 0 or share >= 1:
                return
            self._stopping.wait(min(owed / share, BUSY_WINDOW_S))

    def _claim_free(self) -> bool:
        """Claim a batch if a sender is free; whether it was full and another sender is free."""
        with self._lock:
            free = self._senders - self._in_flight
        if free <= 0:
            return False
        batches = self.claim_batches(self._batch_size)
        with self._lock:
            self._in_flight += len(batches)
            free = self._senders - self._in_flight
        for batch in batches:
            self._work.put(batch)
        return free > 0 and sum(len(b.items) for b in batches) >= self._batch_size

    def _send_loop(self) -> None:
        while True:
            batch = self._work.get()
            if batch is None:
                return
            began = time.thread_time()
            try:
                self.send_batch(batch)
            except Exception as exc:
                # Outcomes could not be recorded: the claims expire and they are sent again.
                self._problem(exc)
            finally:
                self._spent(time.thread_time() - began)
                with self._lock:
                    self._in_flight -= 1
                self._wake.set()  # a sender is free, and the users' next events may be due

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
        return {
            "worker": self.worker,
            "senders": self._senders,
            "batch_size": self._batch_size,
            "linger_seconds": self._linger_s,
            "busy_share": self._busy_share,
        }
