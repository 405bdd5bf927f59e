"""The limiter: GCRA in the database, with an in-process fast path far from the limit.

Every check could be one statement in the database (``store``), but a
request far under its limit need not wait for one. A process that last heard
from the database that a subject has ``remaining`` requests left admits up
to ``batch = floor(slack x limit)`` more on its own, and a reporter thread
reports what it admitted, for every subject at once, in one statement every
``sync_s`` (where they are counted whatever happens); the answers refresh
this process's view of each subject. Near the limit (fewer left than the
batch), or once a subject is refused, every request is decided by the
database, and a refusal holds locally until the time the database named. A
subject this process has not heard of yet is asked about on the request
thread, once.

Why a reporter rather than a statement per subject and ``sync_s``: with many
principals (a service's API keys) each process would otherwise send one
statement per subject per ``sync_s``, on a request thread; the reporter sends
one per process, off the request path, whatever the number of subjects.

The accuracy that costs: ``P`` processes (instances x workers) each hold at
most ``batch`` unreported requests (those in a statement still on its way
count, so a process's threads share one batch), so a subject gets at most
``limit + P x batch = limit x (1 + P x slack)`` requests in a window. With
``slack = 0`` every check is a statement, and the limit is exact; so it is
with ``sync_s = 0`` (no reporter).

A store that fails costs no request: the check answers ``None`` (no limit),
a warning is logged (at most every ``_WARN_EVERY_S``) and the failure is
counted (``RateLimitCounters.store_failures``, exported as a metric); a
report that fails is sent again with the next. Failed authentications are
the exception: they are then counted in the process alone, so that an
outage of the store does not make guessing free.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

import attrs

from userplane.plugin import AUTH_FAILURE, Quota, RateLimit, RateLimitCounters, forks
from userplane.plugins.rate_limits.store import Hit, RateStore, state_key

_log = logging.getLogger("userplane.rate_limits")

#: Subjects remembered per process; the least recently seen are forgotten beyond it.
MAX_SUBJECTS = 100_000
#: Seconds between two warnings about a failing store, per process.
_WARN_EVERY_S = 10.0
#: Seconds between two prunes of whole quotas from the table, per process.
_PRUNE_EVERY_S = 60.0


@attrs.define
class _Subject:
    """What this process knows of one subject's quota under one policy."""

    #: When the database last answered (monotonic seconds).
    synced_at: float
    #: Requests left as of that answer.
    remaining: int
    #: When the quota is whole again (monotonic seconds), as of that answer.
    reset_at: float
    #: Refused until then (monotonic seconds), as the database said.
    blocked_until: float = 0.0
    #: Requests admitted here since that answer, not yet reported.
    pending: int = 0
    #: Requests reported by statements that have not answered yet.
    in_flight: int = 0
    #: The database's clock in the answer applied last: an older answer is not applied.
    db_now: float = -math.inf
    #: The policy the subject is limited by (its key names one class).
    policy: RateLimit | None = None


class Limiter:
    """Rate limits for one registry: the policies, the store, and this process's view."""

    def __init__(
        self,
        policies: Mapping[str, RateLimit],
        store: RateStore,
        slack: float,
        sync_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policies = dict(policies)
        self.counters = RateLimitCounters()
        self._store = store
        self._sync_s = sync_s
        self._batch = {name: math.floor(slack * p.limit) for name, p in self.policies.items()}
        self._clock = clock
        self._lock = threading.Lock()
        self._subjects: collections.OrderedDict[str, _Subject] = collections.OrderedDict()
        self._warned_at = -math.inf
        self._pruned_at = clock()
        #: Failures counted here while the store fails: subject key -> tat (monotonic).
        self._fallback_tat: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: The reporter thread, and ``forks()`` when it was started (gunicorn forks workers).
        self._reporter: threading.Thread | None = None
        self._reporter_forks = -1
        #: Subjects with requests admitted here and not reported: what the next report sends,
        #: found without walking every subject remembered (up to ``MAX_SUBJECTS``).
        self._unreported: set[str] = set()
        self._stop = threading.Event()

    def check(self, kind: str, subject: str, consume: bool) -> Quota | None:
        """Decide one request of ``kind`` by ``subject`` (``consume``: count it).

        An ``auth-failure`` is an event that already happened: counted whether
        or not it fits, so failures made in parallel all push the quota back.
        """
        policy = self.policies.get(kind)
        if policy is None:
            return None
        happened = consume and kind == AUTH_FAILURE
        key = state_key(kind, subject)
        now = self._clock()
        sent = 0
        with self._lock:
            known = self._subjects.get(key)
            if known is not None:
                self._subjects.move_to_end(key)
                unreported = known.pending + known.in_flight
                if now < known.blocked_until and not happened:
                    self.counters.refused += consume
                    return self._local(policy, known, now, allowed=False)
                fresh = now - known.synced_at < self._sync_s
                if fresh and not consume and known.remaining > unreported:
                    return self._local(policy, known, now, allowed=True)
                # The reporter reports what is admitted here within sync_s, however long
                # ago this view was refreshed: the batch is what bounds the error.
                if (
                    consume
                    and not happened
                    and self._sync_s > 0
                    and unreported < min(self._batch[kind], known.remaining)
                ):
                    known.pending += 1
                    self._unreported.add(key)
                    self._ensure_reporter()
                    return self._local(policy, known, now, allowed=True)
                if consume:
                    # To the database with what this process served meanwhile; in flight
                    # until it answers, so other threads cannot spend it a second time.
                    sent, known.pending = known.pending, 0
                    known.in_flight += sent
        try:
            if happened:
                hit = self._store.hit(key, sent + 1, 0, policy.interval_s, policy.window_s)
            elif consume:
                hit = self._store.hit(key, sent, 1, policy.interval_s, policy.window_s)
            else:
                hit = self._peek(key, policy)
        except Exception as exc:
            self._failed(exc, [(key, sent)])
            if kind == AUTH_FAILURE:
                # Guessing must not become free while the store is away: failures
                # are then counted in this process alone, exactly as GCRA would.
                return self._fallback(policy, key, happened)
            return None
        with self._lock:
            state = self._subjects.get(key)
            if state is None:
                state = self._subjects[key] = _Subject(now, 0, now, policy=policy)
                self._forget_beyond_bound()
            state.in_flight = max(0, state.in_flight - sent)
            quota = self._apply(state, policy, hit, now)
            self.counters.store_checks += 1
            self.counters.refused += consume and not happened and not quota.allowed
        if now - self._pruned_at >= _PRUNE_EVERY_S:
            self._prune(now)
        return quota

    def _ensure_reporter(self) -> None:
        """Start this process's reporter if it has none. Called with the lock held."""
        if self._reporter_forks == forks() and self._reporter is not None:
            return
        # A forked worker inherits the object but not the thread: it starts its own.
        self._reporter_forks = forks()
        self._stop.clear()
        self._reporter = threading.Thread(
            target=self._report_every, name="userplane-rate-limits", daemon=True
        )
        self._reporter.start()

    def _report_every(self) -> None:
        while not self._stop.wait(self._sync_s):
            try:
                self.report()
            except Exception:  # the thread must outlive any one failure
                _log.exception("the rate-limit reporter failed")

    def report(self) -> int:
        """Report what the fast path admitted, every subject in one statement; how many."""
        now = self._clock()
        with self._lock:
            keys, self._unreported = self._unreported, set()
            served = [
                (key, state.pending, state.policy)
                for key in keys
                if (state := self._subjects.get(key)) is not None
                and state.pending
                and state.policy is not None
            ]
            for key, sent, _ in served:
                state = self._subjects[key]
                state.pending, state.in_flight = 0, state.in_flight + sent
        if served:
            try:
                answers = self._store.report(
                    [(key, sent, policy.interval_s) for key, sent, policy in served]
                )
            except Exception as exc:
                self._failed(exc, [(key, sent) for key, sent, _ in served])
                return 0
            with self._lock:
                self.counters.store_checks += 1
                for key, sent, policy in served:
                    known = self._subjects.get(key)
                    if known is None:
                        continue
                    known.in_flight = max(0, known.in_flight - sent)
                    if key in answers:
                        tat, db_now = answers[key]
                        self._apply(known, policy, Hit(allowed=True, tat=tat, now=db_now), now)
        if now - self._pruned_at >= _PRUNE_EVERY_S:
            self._prune(now)
        return len(served)

    def close(self) -> None:
        """Stop the reporter, and report what is still unreported."""
        self._stop.set()
        reporter, self._reporter = self._reporter, None
        if reporter is not None and reporter is not threading.current_thread():
            reporter.join(5.0)
        self.report()

    @staticmethod
    def _apply(state: _Subject, policy: RateLimit, hit: Hit, now: float) -> Quota:
        """Refresh ``state`` from the database's answer ``hit`` (unless older); its ``Quota``.

        Called with the lock held.
        """
        quota = _quota(policy, hit)
        if hit.now >= state.db_now:  # an older answer than one applied says less
            state.db_now = hit.now
            state.synced_at = now
            state.remaining = quota.remaining
            state.reset_at = now + quota.reset_s
            # Refused, or just admitted the last of the quota: no more fits until the
            # database's tat says so, and this process knows when without asking again.
            state.blocked_until = now + _next_fits_in(policy, hit)
        return quota

    def _forget_beyond_bound(self) -> None:
        """Forget the least recently seen subjects beyond ``MAX_SUBJECTS``.

        Only those with nothing unreported: forgetting requests this process
        admitted but has not reported would let them go uncounted. Called with
        the lock held.
        """
        excess = len(self._subjects) - MAX_SUBJECTS
        if excess <= 0:
            return
        idle = [
            key
            for key, state in itertools.islice(self._subjects.items(), 4 * excess + 16)
            if state.pending == 0 and state.in_flight == 0
        ]
        for key in idle[:excess]:
            del self._subjects[key]

    def _peek(self, key: str, policy: RateLimit) -> Hit:
        """Whether one more would fit, counting nothing: a ``Hit`` with the state unchanged."""
        tat, now = self._store.peek(key)
        base = now if tat is None else max(tat, now)
        allowed = base + policy.interval_s - policy.window_s <= now + tolerance(policy)
        return Hit(allowed=allowed, tat=base, now=now)

    @staticmethod
    def _local(policy: RateLimit, known: _Subject, now: float, allowed: bool) -> Quota:
        """A decision made from this process's view, without the database."""
        reset = max(0.0, known.reset_at - now) + known.pending * policy.interval_s
        return Quota(
            policy=policy,
            allowed=allowed,
            remaining=max(0, known.remaining - known.pending) if allowed else 0,
            reset_s=min(reset, policy.window_s),
            retry_after_s=0.0 if allowed else known.blocked_until - now,
        )

    def _failed(self, exc: Exception, unreported: list[tuple[str, int]]) -> None:
        """The store failed: serve unlimited, take back what was not reported, say so."""
        now = self._clock()
        with self._lock:
            self.counters.store_failures += 1
            for key, sent in unreported:
                known = self._subjects.get(key)
                if known is not None:
                    known.in_flight = max(0, known.in_flight - sent)
                    known.pending += sent
                    if known.pending:
                        self._unreported.add(key)
            warn = now - self._warned_at >= _WARN_EVERY_S
            if warn:
                self._warned_at = now
        if warn:
            _log.warning(
                "rate limits not enforced: the rate-limit store failed (%s: %s); "
                "requests are served meanwhile",
                type(exc).__name__,
                exc,
                extra={"failures": self.counters.store_failures},
            )

    def _fallback(self, policy: RateLimit, key: str, happened: bool) -> Quota:
        """An ``auth-failure`` decision from this process's own count (the store failed)."""
        now = self._clock()
        with self._lock:
            tat = max(self._fallback_tat.get(key, now), now)
            if happened:
                tat += policy.interval_s
                self._fallback_tat[key] = tat
                self._fallback_tat.move_to_end(key)
                while len(self._fallback_tat) > MAX_SUBJECTS:
                    self._fallback_tat.popitem(last=False)
        hit = Hit(
            allowed=tat + (0 if happened else policy.interval_s) - policy.window_s
            <= now + tolerance(policy),
            tat=tat,
            now=now,
        )
        return _quota(policy, hit)

    def _prune(self, now: float) -> None:
        self._pruned_at = now
        try:
            self._store.prune()
        except Exception as exc:
            _log.warning("could not prune rate-limit state: %s: %s", type(exc).__name__, exc)


def tolerance(policy: RateLimit) -> float:
    """Slack in comparisons of times, in seconds: a thousandth of one request's interval.

    Times are epoch seconds in doubles (a quarter of a microsecond apart) and
    a burst adds ``limit`` intervals: without it, rounding could refuse the
    last request of a burst of exactly ``limit``.
    """
    return 1e-3 * policy.interval_s


def _next_fits_in(policy: RateLimit, hit: Hit) -> float:
    """Seconds until one more request fits, after ``hit`` (0 if one fits now)."""
    return max(0.0, hit.tat + policy.interval_s - policy.window_s - hit.now - tolerance(policy))


def _quota(policy: RateLimit, hit: Hit) -> Quota:
    """The ``Quota`` a database decision means for ``policy``."""
    room = hit.now + policy.window_s - hit.tat
    remaining = max(0, math.floor(room / policy.interval_s + 1e-9))
    retry_after = 0.0
    if not hit.allowed:
        # One more fits once tat - window + interval is in the past.
        retry_after = max(0.001, _next_fits_in(policy, hit))
    return Quota(
        policy=policy,
        allowed=hit.allowed,
        remaining=remaining,
        reset_s=min(policy.window_s, max(0.0, hit.tat - hit.now)),
        retry_after_s=retry_after,
    )
