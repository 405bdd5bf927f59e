"""The audit trail of one registry: recording, reading, verifying, exporting and pruning."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from userplane.plugin import Change, FieldChange, InvalidInput, NotFound
from userplane.plugins.audit.chain import (
    START,
    Break,
    Head,
    check_end,
    check_expected,
    walk,
)
from userplane.plugins.audit.events import (
    PERSONAL_FIELDS,
    REDACTED,
    AuditEvent,
    hash_of,
)
from userplane.plugins.audit.query import AuditQuery, encode_cursor
from userplane.plugins.audit.store import AuditStore, Checkpoint, EventFilter

if TYPE_CHECKING:
    from userplane.plugin import Registry

#: Where the chain head is logged (event ``audit.head``, with ``seq`` and ``hash``).
LOGGER: Final = "userplane.audit"
_log = logging.getLogger(LOGGER)

#: The action of the event a prune records.
PRUNED: Final = "audit.pruned"
#: How many times a verification starts again when a prune moved its start meanwhile.
_RESTARTS: Final = 3


@attrs.frozen
class Verification:
    """What ``verify`` found: how many events held, where the chain starts and ends."""

    count: int
    start: Head
    head: Head
    broken: Break | None = None
    #: Notes for the operator (an expected head that was pruned, say).
    notes: tuple[str, ...] = ()

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
        return "; ".join((line, *self.notes))


@attrs.frozen
class Pruned:
    """What ``prune`` removed: how many events, and the checkpoint it left."""

    count: int
    checkpoint: Checkpoint | None


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

    # -- recording -------------------------------------------------------------------------

    def _fields(self, fields: Mapping[str, FieldChange]) -> dict[str, Any]:
        return {
            name: dict(REDACTED) if self._redact and name in PERSONAL_FIELDS else change.as_json()
            for name, change in fields.items()
        }

    def record(self, change: Change) -> AuditEvent:
        """Append ``change`` to the chain, in the transaction of its write."""
        with self._registry.storage.transaction():  # joins the write's
            seq, prev_hash, occurred_text, occurred = self.store.advance()
            body: dict[str, Any] = {
                "seq": seq,
                "id": str(change.id),
                "occurred_at": occurred_text,
                "actor": change.actor,
                "actor_kind": change.actor_kind,
                "action": change.action,
                "target_type": change.target_type,
                "target_id": change.target_id,
                "user_id": None if change.user_id is None else str(change.user_id),
                "request_id": change.request_id,
                "trace_id": change.trace_id,
                "client_address": change.client_address,
                "fields": self._fields(change.fields),
                "prev_hash": prev_hash,
            }
            event = AuditEvent(**body, hash=hash_of(body))
            self.store.append(event, occurred)
        return event

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
        """One page of events matching ``query``."""
        rows = self.store.list(query.flt, query.after, query.descending, query.limit + 1)
        events = rows[: query.limit]
        nxt = None
        if len(rows) > query.limit:
            nxt = encode_cursor(events[-1].seq, query.descending)
        return AuditPage(tuple(self.present(e) for e in events), nxt)

    def get(self, event_id: uuid.UUID) -> dict[str, Any]:
        """One event, as a reader sees it; ``NotFound`` if there is none (or it was pruned)."""
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
        """Walk the chain from its start to its head, recomputing every hash.

        Reads the head first: events appended meanwhile lie beyond it and are
        left for the next run. A prune that moves the start meanwhile makes the
        walk start again from its checkpoint.
        """
        for _ in range(_RESTARTS):
            result, start = self._verify_once(expect, batch)
            if result.ok or self.start()[0] == start:
                return result
        return result

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
        """A checkpoint is only trusted when the prune that made it is in the chain."""
        if checkpoint is None:
            return None
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
                return None
        return Break(
            checkpoint.seq,
            None,
            "the checkpoint there is not recorded by an audit.pruned event in the chain: "
            "events were removed without a prune",
        )

    def export(self) -> Iterator[dict[str, Any]]:
        """The stored chain, for JSON Lines: where it starts, then every event as stored.

        Read in batches, beside writers (events appended meanwhile lie beyond
        the head it starts with); a prune running at the same time can leave a
        gap in it, which verifying the export then reports.
        """
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
        checkpoint and with the ``audit.pruned`` event that records it.
        """
        if older_than < timedelta(0):
            raise InvalidInput.for_field("$.older_than", "must not be negative")
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
