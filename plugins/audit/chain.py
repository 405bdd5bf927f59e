"""Walking a chain of events: the checks of ``audit verify``, on rows or on an export.

``walk`` follows events in ``seq`` order from where the chain starts (the
genesis, or the checkpoint pruning left) and stops at the first broken link:

- a ``seq`` missing: events were removed (or the walk was given a gap);
- a hash that is not the hash of the event's columns: the row was edited;
- a ``prev_hash`` that is not the hash of the event before: an event was
  removed, inserted or replaced before this one.

What it is told of the end (the chain head's row, a head logged earlier)
catches what no link can show: events cut from the end.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from userplane.plugins.audit.events import GENESIS, AuditEvent


@attrs.frozen
class Head:
    """A place in the chain: an event's ``seq`` and ``hash`` (``0`` and 64 zeros: none yet)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """``SEQ:HASH``, as ``audit verify`` prints a head; ``ValueError`` otherwise."""
        seq_text, sep, digest = text.strip().partition(":")
        if not sep or not seq_text.isdigit() or len(seq_text) > 18:
            raise ValueError(f"{text!r} is not SEQ:HASH (a whole number, a colon, 64 hex digits)")
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{text!r} is not SEQ:HASH: the hash is not 64 hex digits")
        return cls(int(seq_text), digest)


#: Where a chain without a checkpoint starts.
START = Head(0, GENESIS)


@attrs.frozen
class Break:
    """The first broken link: the event where the chain stops holding, and why."""

    seq: int
    #: The event's id, when there is an event at ``seq`` (not for a missing one).
    id: str | None
    problem: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" + (f" (event {self.id})" if self.id else "")
        return f"audit chain broken at {where}: {self.problem}"


@attrs.frozen
class Walked:
    """How far a walk got: events checked, the last one, or the first break."""

    count: int
    last: Head
    broken: Break | None = None


def walk(start: Head, events: Iterable[AuditEvent]) -> Walked:
    """Check ``events`` (in ``seq`` order) as the chain that follows ``start``."""
    prev = start
    count = 0
    for event in events:
        if event.seq != prev.seq + 1:
            if event.seq > prev.seq + 1:
                missing = (
                    f"seq {prev.seq + 1}"
                    if event.seq == prev.seq + 2
                    else f"seqs {prev.seq + 1} to {event.seq - 1}"
                )
                problem = f"{missing} missing before it: events were removed"
                return Walked(count, prev, Break(prev.seq + 1, None, problem))
            problem = f"out of order after seq {prev.seq}: the seq was edited"
            return Walked(count, prev, Break(event.seq, event.id, problem))
        if event.computed_hash() != event.hash:
            problem = "its hash is not the hash of its columns: the event was edited"
            return Walked(count, prev, Break(event.seq, event.id, problem))
        if event.prev_hash != prev.hash:
            after = "the chain's start" if prev.seq == start.seq else f"seq {prev.seq}"
            problem = (
                f"its prev_hash is not the hash of {after}: an event before it was "
                "removed, inserted or replaced"
            )
            return Walked(count, prev, Break(event.seq, event.id, problem))
        prev = Head(event.seq, event.hash)
        count += 1
    return Walked(count, prev)


def check_end(walked: Walked, head: Head | None) -> Break | None:
    """Whether the walk ended where the chain head says the chain ends."""
    if head is None:
        if walked.count:
            return Break(walked.last.seq, None, "the chain head row is missing")
        return None
    if walked.last.seq < head.seq:
        missing = (
            f"seq {head.seq}"
            if walked.last.seq + 1 == head.seq
            else f"seqs {walked.last.seq + 1} to {head.seq}"
        )
        return Break(
            walked.last.seq + 1,
            None,
            f"the chain head is at seq {head.seq} but {missing} "
            f"{'is' if walked.last.seq + 1 == head.seq else 'are'} missing: "
            "events were removed from the end",
        )
    if walked.last.hash != head.hash:
        return Break(
            head.seq, None, "the chain head's hash is not the last event's: the head was edited"
        )
    return None


def check_expected(expected: Head, start: Head, walked: Walked, found: str | None) -> Break | None:
    """Whether a head logged earlier (``--expect SEQ:HASH``) is still in the chain as it was.

    ``found`` is the hash the walk saw at ``expected.seq`` (``None`` if it did
    not reach it). An expected head the chain no longer reaches means the
    chain was cut short and rebuilt, or rolled back: it fails. One before the
    checkpoint was pruned and is checked against the checkpoint when it is
    the checkpoint's own event.
    """
    if expected.seq == 0:
        return None
    if expected.seq < start.seq:
        return None  # pruned: the checkpoint's own checks stand for it
    if expected.seq == start.seq:
        found = start.hash
    elif expected.seq > walked.last.seq:
        return Break(
            expected.seq,
            None,
            f"the expected event is missing: the chain ends at seq {walked.last.seq} "
            "(events were removed from the end, or the chain was rolled back)",
        )
    if found != expected.hash:
        return Break(
            expected.seq,
            None,
            f"its hash is {found}, not the expected {expected.hash}: the chain was rewritten",
        )
    return None
