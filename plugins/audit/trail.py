"""The audit trail of one registry: recording, chaining, reading, verifying, exporting, pruning.

Recording is one insert in the write's transaction; chaining follows, after
commit (``chain``): every ``USERPLANE_AUDIT_CHAIN_SECONDS`` in each serving
process (``heads``), and before every read that must see everything
committed (``catch_up``): listing, one event, verifying, exporting, pruning.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from userplane.plugin import Change, Conflict, FieldChange, InvalidInput, NotFound
from userplane.plugins.audit.chain import (
    START,
    Break,
    Head,
    check_end,
    check_expected,
    walk,
)
from userplane.plugins.audit.events import PERSONAL_FIELDS, REDACTED, AuditEvent
from userplane.plugins.audit.query import AuditQuery, EventFilter, encode_cursor
from userplane.plugins.audit.store import AuditStore, Checkpoint

if TYPE_CHECKING:
    from userplane.plugin import Registry

#: Where the chain head is logged (event ``audit.head``, with ``seq`` and ``hash``).
LOGGER: Final = "userplane.audit"
_log = logging.getLogger(LOGGER)

#: The action of the event a prune records.
PRUNED: Final = "audit.pruned"
#: How many times a verification starts again when a prune moved its start meanwhile.
_RESTARTS: Final = 3
#: How many events one chaining transaction links at most.
CHAIN_BATCH: Final = 1000
#: How long a read waits, at most, for transactions that had begun before it to finish
#: (PostgreSQL: the chain follows their ids, so a later one's events wait for them).
CATCH_UP_SECONDS: Final = 2.0


@attrs.frozen
class Verification:
    """What ``verify`` found: how many events held, where the chain starts and ends."""

    count: int
    start: Head
    head: Head
    broken: Break | None = None
    #: Notes for the operator (an expected head that was pruned, say).
    notes: tuple[str, ...] = ()
    #: Events not chained yet: their transactions (or ones before them) were still running.
    unchained: int = 0

    @property
    def ok(self) -> bool:
        """Whether every link held."""
        return self.broken is None

    def summary(self) -> str:
        """One line: ``verified N events, head SEQ HASH`` (or the first broken link)."""
        if self.broken is not None:
            return str(self.broken)
        line = f"verified {self.count} events, head {self.head.seq} {self.head.hash}"
        if self.start.seq:
            line += f" (from the checkpoint at seq {self.start.seq})"
        notes = list(self.notes)
        if self.unchained:
            notes.append(
                f"{self.unchained} later event{'s' if self.unchained != 1 else ''} not chained "
                "yet (transactions still running)"
            )
        return "; ".join((line, *notes))


@attrs.frozen
class Pruned:
    """What ``prune`` removed: how many events, and the checkpoint it left."""

    count: int
    checkpoint: Checkpoint | None


@attrs.frozen
class Chained:
    """What one chaining did: how many events it linked, and why it could not, if so."""

    count: int
    #: Another chainer held the head when it last looked (it is linking them).
    busy: bool = False
    #: Why nothing can be chained (the head row is missing, the head was moved back).
    refused: str | None = None


@attrs.frozen
class AuditPage:
    """One page of events, as readers see them, and the cursor of the next."""

    items: tuple[dict[str, Any], ...]
    next: str | None


def log_head(head: Head, **extra: Any) -> None:
    """Log the chain head (``audit.head``): keep these lines to catch a chain cut short later."""
    _log.info("audit.head", extra={"seq": head.seq, "hash": head.hash, **extra})


class AuditTrail:
    """This plugin's state in one registry: the store, and the operations over it."""

    def __init__(self, registry: Registry, store: AuditStore, redact_personal: bool) -> None:
        self._registry = registry
        self.store = store
        self._redact = redact_personal
        #: How long a read waits, at most, for the events committed before it to be chained.
        self.read_wait = CATCH_UP_SECONDS

    # -- recording -------------------------------------------------------------------------

    def _fields(self, fields: Mapping[str, FieldChange]) -> dict[str, Any]:
        return {
            name: dict(REDACTED) if self._redact and name in PERSONAL_FIELDS else change.as_json()
            for name, change in fields.items()
        }

    def record(self, changes: Sequence[Change]) -> None:
        """Store each change's event, unchained, in the transaction of its write.

        One batch of inserts, no lock on any shared row: writers never wait
        for each other here. The events join the chain once their
        transaction has finished (``chain``).
        """
        self.store.append([(c, self._fields(c.fields)) for c in changes])

    # -- chaining --------------------------------------------------------------------------

    def chain(self, batch: int = CHAIN_BATCH) -> Chained:
        """Link every event that is final now into the chain, a batch per transaction.

        Never inside another transaction. Two chainers at once (threads,
        processes) never fork the chain: the head decides, and the one that
        finds it held returns (``busy``). A chain that cannot go on (its head
        row missing, or moved back behind chained events) links nothing: it is
        logged (``audit.chain.refused``) and ``verify`` names the break.
        """
        total = 0
        while True:
            try:
                linked = self.store.link_batch(batch)
            except Conflict as exc:
                _log.error("audit.chain.refused", extra={"error": exc.detail})
                return Chained(total, refused=exc.detail)
            if linked.refused is not None:
                _log.error("audit.chain.refused", extra={"error": linked.refused})
                return Chained(total, refused=linked.refused)
            total += linked.count
            if linked.busy or linked.count < batch:
                return Chained(total, busy=linked.busy)

    def catch_up(self, wait: float | None = None) -> Chained:
        """Chain what was committed before this call, for a read that must see it.

        On SQLite one chaining links every committed event. On PostgreSQL an
        event is final only once every transaction with a lower id finished,
        and another process's chainer may be linking meanwhile: this chains,
        then waits (``wait`` seconds at most, ``read_wait`` by default),
        chaining again, while events of transactions that had their id before
        the call are unchained still.
        """
        mark = self.store.mark()
        deadline = time.monotonic() + (self.read_wait if wait is None else wait)
        delay = 0.001
        total = 0
        while True:
            chained = self.chain()
            total += chained.count
            chained = attrs.evolve(chained, count=total)
            if chained.refused is not None or mark is None or not self.store.pending(mark):
                return chained
            if time.monotonic() >= deadline:
                return chained
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- reading ---------------------------------------------------------------------------

    def present(self, event: AuditEvent) -> dict[str, Any]:
        """An event as a reader sees it: sealed values opened, or ``{"erased": true}``."""
        return {
            "seq": event.seq,
            "id": event.id,
            "occurred_at": event.occurred_at,
            "actor": event.actor,
            "actor_kind": event.actor_kind,
            "action": event.action,
            "target": {"type": event.target_type, "id": event.target_id},
            "user_id": event.user_id,
            "request_id": event.request_id,
            "trace_id": event.trace_id,
            "client_address": event.client_address,
            "changes": self.changes_of(event),
            "prev_hash": event.prev_hash,
            "hash": event.hash,
        }

    def changes_of(self, event: AuditEvent) -> dict[str, Any]:
        """The event's changed fields for a reader (``ChangeRecorder.reveal``)."""
        stored = event.fields if isinstance(event.fields, dict) else {}
        out: dict[str, Any] = {}
        sealed: dict[str, FieldChange] = {}
        for name, value in stored.items():
            if not isinstance(value, dict) or value.get("redacted"):
                out[name] = dict(REDACTED) if isinstance(value, dict) else value
            else:
                sealed[name] = FieldChange.from_json(value)
        user_id = None if event.user_id is None else uuid.UUID(event.user_id)
        out.update(self._registry.changes.reveal(user_id, sealed))
        return {name: out[name] for name in stored}

    def list(self, query: AuditQuery) -> AuditPage:
        """One page of chained events matching ``query`` (chaining what was committed first)."""
        self.catch_up()
        rows = self.store.list(query.flt, query.after, query.descending, query.limit + 1)
        events = rows[: query.limit]
        nxt = None
        if len(rows) > query.limit:
            nxt = encode_cursor(events[-1].seq, query.descending)
        return AuditPage(tuple(self.present(e) for e in events), nxt)

    def get(self, event_id: uuid.UUID) -> dict[str, Any]:
        """One event, as a reader sees it; ``NotFound`` if there is none (or it was pruned)."""
        self.catch_up()
        event = self.store.get(event_id)
        if event is None:
            raise NotFound(f"no audit event with id {event_id}")
        return self.present(event)

    # -- the chain -------------------------------------------------------------------------

    def head(self) -> Head:
        """The chain head (``0`` and 64 zeros before the first event)."""
        return self.store.head() or START

    def start(self) -> tuple[Head, Checkpoint | None]:
        """Where the stored chain starts: the latest checkpoint, or the genesis."""
        checkpoint = self.store.latest_checkpoint()
        return (START if checkpoint is None else checkpoint.head), checkpoint

    def verify(self, expect: Head | None = None, batch: int = 1000) -> Verification:
        """Chain what was committed, then walk the chain from its start to its head.

        Recomputes every hash. Reads the head first: events chained meanwhile
        lie beyond it and are left for the next run. A prune that moves the
        start meanwhile makes the walk start again from its checkpoint. Events
        that could not be chained yet (their transactions, or ones before them,
        still running) are counted in the result, never a failure.
        """
        self.catch_up()
        for _ in range(_RESTARTS):
            result, start = self._verify_once(expect, batch)
            if result.ok or self.start()[0] == start:
                break
        return attrs.evolve(result, unchained=self.store.unchained())

    def _verify_once(self, expect: Head | None, batch: int) -> tuple[Verification, Head]:
        stored_head = self.store.head()
        start, checkpoint = self.start()
        end = stored_head.seq if stored_head is not None else 2**63 - 1
        seen: dict[int, str] = {}

        def events() -> Iterator[AuditEvent]:
            for event in self.store.events_after(start.seq, end, batch):
                if expect is not None and event.seq == expect.seq:
                    seen[event.seq] = event.hash
                yield event

        walked = walk(start, events())
        broken = walked.broken or self._attested(checkpoint)
        broken = broken or check_end(walked, stored_head)
        notes: list[str] = []
        if broken is None and expect is not None:
            broken = check_expected(expect, start, walked, seen.get(expect.seq))
            if broken is None and 0 < expect.seq < start.seq:
                notes.append(f"the expected seq {expect.seq} was pruned (before the checkpoint)")
        head = stored_head or walked.last
        return Verification(walked.count, start, head, broken, tuple(notes)), start

    def _attested(self, checkpoint: Checkpoint | None) -> Break | None:
        """A checkpoint is only trusted when the prune that made it is in the chain.

        A prune that committed after this verification chained has its event
        unchained still: it is chained, and looked for again, before failing.
        """
        if checkpoint is None:
            return None
        if self._prune_recorded(checkpoint):
            return None
        self.catch_up()
        if self._prune_recorded(checkpoint):
            return None
        return Break(
            checkpoint.seq,
            None,
            "the checkpoint there is not recorded by an audit.pruned event in the chain: "
            "events were removed without a prune",
        )

    def _prune_recorded(self, checkpoint: Checkpoint) -> bool:
        for event in self.store.list(EventFilter(action=PRUNED), checkpoint.seq, False, 100):
            fields = event.fields if isinstance(event.fields, dict) else {}
            through = fields.get("checkpoint_seq", {})
            digest = fields.get("checkpoint_hash", {})
            if (
                isinstance(through, dict)
                and isinstance(digest, dict)
                and through.get("after") == checkpoint.seq
                and digest.get("after") == checkpoint.hash
            ):
                return True
        return False

    def export(self) -> Iterator[dict[str, Any]]:
        """The stored chain, for JSON Lines: where it starts, then every event as stored.

        Chains what was committed first, then reads in batches, beside writers
        (events chained meanwhile lie beyond the head it starts with); a prune
        running at the same time can leave a gap in it, which verifying the
        export then reports.
        """
        self.catch_up()
        head = self.head()
        start, checkpoint = self.start()
        yield {
            "format": "userplane-audit-export/1",
            "start": {"seq": start.seq, "hash": start.hash},
            "checkpoint": None
            if checkpoint is None
            else {
                "seq": checkpoint.seq,
                "hash": checkpoint.hash,
                "created_at": checkpoint.created_at.astimezone(UTC).isoformat(),
                "pruned": checkpoint.pruned,
            },
            "head": {"seq": head.seq, "hash": head.hash},
        }
        for event in self.store.events_after(start.seq, head.seq):
            yield event.stored()

    # -- pruning ---------------------------------------------------------------------------

    def prune(self, older_than: timedelta) -> Pruned:
        """Remove the oldest events older than ``older_than``, leaving a checkpoint.

        Only a run from the oldest event on is removed (an event stays while an
        older-looking one follows a younger one), in one transaction with the
        checkpoint and with the ``audit.pruned`` event that records it. Only
        chained events are pruned: it chains what was committed first, and its
        own event after.
        """
        if older_than < timedelta(0):
            raise InvalidInput.for_field("$.older_than", "must not be negative")
        self.catch_up()
        pruned = self._prune(older_than)
        self.catch_up()
        return pruned

    def _prune(self, older_than: timedelta) -> Pruned:
        changes = self._registry.changes
        with changes.writing():
            now = self.store.now()
            try:
                cutoff = now - older_than
            except OverflowError:
                cutoff = datetime.min.replace(tzinfo=UTC)
            through = self.store.prune_bound(cutoff)
            if through is None:
                return Pruned(0, None)
            previous = self.store.latest_checkpoint()
            count = self.store.prune(through, now)
            if not count:  # a prune running at once removed them first
                return Pruned(0, None)
            changes.record(
                PRUNED,
                "audit",
                "checkpoint",
                {
                    "checkpoint_seq": FieldChange(
                        None if previous is None else previous.seq, through.seq
                    ),
                    "checkpoint_hash": FieldChange(
                        None if previous is None else previous.hash, through.hash
                    ),
                    "pruned": FieldChange(None, count),
                },
            )
        return Pruned(count, Checkpoint(through.seq, through.hash, now, count))
