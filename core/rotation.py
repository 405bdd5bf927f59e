"""Key rotation and re-indexing: every user brought under the keys in force, online.

One walk over every user (deleted ones too, by id, in batches) does what the
keyring asks:

- re-wraps each data key under the active key-encryption key (only the
  wrapping changes, a few dozen bytes; ciphertexts stay);
- seals the users still stored in plaintext (a backfill);
- gives every user the incoming blind index (re-indexing under a new
  blind-index key, or from the plain email key), in both index columns
  (``userplane.indexing``).

Each user is rewritten by one statement conditional on the version it was read
at (``Storage.reseal_user``), which keeps ``version`` and ``updated_at``: a
concurrent write wins, and the next pass looks at the user again, so nothing
written meanwhile is lost. Passes repeat until one finds nothing to do; then
the incoming blind index is recorded ready and the keys no longer needed are
retired, and may leave the keyring. An interrupted run is resumed by running
it again: users already done cost a read.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from userplane.changes import ChangeRecorder, FieldChange
from userplane.emails import normalize_email
from userplane.errors import ConfigurationError
from userplane.indexing import PLAIN, IndexPlan
from userplane.sealing import Sealer, is_sealed, key_name
from userplane.storage import IndexEntry, Storage

#: Passes after which rotation gives up: writers keep sealing under an old key.
MAX_PASSES = 5


@attrs.frozen
class RotationReport:
    """What a run did: users seen (largest pass), rewritten, passes run, keys retired."""

    scanned: int
    rewrapped: int
    passes: int
    retired: tuple[str, ...]
    #: Users sealed by this run (they were stored in plaintext).
    sealed: int = 0
    #: The blind-index key recorded ready by this run, if it finished a re-index.
    indexed: str | None = None
    #: Users whose other index column held a stale value (an old index, a plain email key,
    #: written by processes still on the transition keyring): replaced, not counted above.
    tidied: int = 0


@attrs.frozen
class _Change:
    fields: dict[str, Any]
    email_key: str | None
    next_key: str | None
    #: Needed for the keys in force (not only tidying a stale copy of an index value).
    essential: bool
    sealing: bool


def _change(entry: IndexEntry, sealer: Sealer, plan: IndexPlan) -> _Change | None:
    """What ``entry`` needs, or ``None``."""
    user = entry.user
    target = plan.target
    fields: dict[str, Any] = {}
    sealing = not is_sealed(user.email)
    if sealing:
        if plan.current.name != PLAIN and not sealer.keyring.plain_before:
            # Plain text where sealed text belongs: not ours to seal (or to trust).
            sealer.open_user(user)  # raises Undecryptable naming the user
        email = user.email
        key = sealer.new_data_key(user.id)
        fields = sealer.seal_fields(user.id, key, {"email": email, "full_name": user.full_name})
    else:
        data_key = sealer.data_key(user.id, user.email)
        email = sealer.open_value(user.id, data_key, "email", user.email)
        if key_name(user.email) != sealer.keyring.active.name:
            fields = {"email": sealer.rewrapped(user.id, user.email)}
    value = target.index(normalize_email(email))
    both = plan.incoming is not None or target.home == "b"
    home_value = entry.email_key if target.home == "a" else entry.next_key
    essential = bool(fields) or home_value != value
    tidy = entry.email_key != value or (both and entry.next_key != value)
    if not essential and not tidy:
        return None
    return _Change(fields, value, value if both else None, essential, sealing)


def rotate(
    storage: Storage,
    sealer: Sealer,
    now: Callable[[], datetime],
    *,
    batch: int = 500,
    progress: Callable[[int], None] = lambda _: None,
    plan: IndexPlan | None = None,
    changes: ChangeRecorder | None = None,
) -> RotationReport:
    """Bring every user under the keys of ``sealer``; retire what is left over.

    ``storage`` is the inner (unsealed) storage; ``plan`` how emails are
    indexed (by default what ``verify_keys`` makes of the keyring and the
    database). ``progress(n)`` is told of every ``n`` users read. Raises
    ``ConfigurationError`` if writers keep using old keys for ``MAX_PASSES``
    passes (an instance still runs with the old keyring), and
    ``Undecryptable`` naming a user whose data fails to open. With
    ``changes``, the run's outcome is recorded (``encryption.rotated``) in the
    transaction that marks the index ready and retires the keys.
    """
    if plan is None:
        from userplane.sealed_storage import verify_keys

        plan = verify_keys(storage, sealer.keyring, now())
        assert plan is not None
    # Only keys known before the walk may be retired after it: one recorded meanwhile
    # (an instance started with a newer keyring) may wrap users the walk never saw.
    known = {r.name for r in storage.key_records() if r.retired_at is None}
    tidied = 0
    scanned = rewritten = sealed = passes = 0
    pending = True
    while pending and passes < MAX_PASSES:
        passes += 1
        seen = 0
        pending = False
        after: uuid.UUID | None = None
        while True:
            page = storage.index_entries(after, batch)
            for entry in page:
                change = _change(entry, sealer, plan)
                if change is None:
                    continue
                done = storage.reseal_user(
                    entry.user.id,
                    entry.user.version,
                    change.fields,
                    change.email_key,
                    change.next_key,
                )
                if done and change.essential:
                    rewritten += 1
                    sealed += change.sealing
                elif done:
                    tidied += 1
                # A write won the race: the next pass looks at the user again.
                pending |= change.essential
            seen += len(page)
            progress(len(page))
            if len(page) < batch:
                break
            after = page[-1].user.id
        scanned = max(scanned, seen)
    if pending:
        raise ConfigurationError(
            f"users were still stored under old keys after {MAX_PASSES} passes: "
            "is every instance running with the new keyring?"
        )
    with contextlib.nullcontext() if changes is None else changes.writing():
        report = _finish(storage, sealer, plan, known, now())
        report = attrs.evolve(
            report,
            scanned=scanned,
            rewrapped=rewritten,
            passes=passes,
            sealed=sealed,
            tidied=tidied,
        )
        if changes is not None:
            outcome: dict[str, object] = {
                "active_key": sealer.keyring.active.name,
                "index_key": report.indexed or plan.target.name,
                "retired": list(report.retired),
                "rewrapped": rewritten,
                "sealed": sealed,
            }
            fields = {name: FieldChange(None, value) for name, value in outcome.items()}
            changes.record("encryption.rotated", "keyring", sealer.keyring.active.name, fields)
    return report


def _finish(
    storage: Storage, sealer: Sealer, plan: IndexPlan, known: set[str], at: datetime
) -> RotationReport:
    """Mark the incoming index ready and retire the keys nothing is sealed under any more."""
    indexed = None
    retired = []
    if plan.incoming is not None:
        storage.mark_key_ready(plan.incoming.name, at)
        indexed = plan.incoming.name
    active = sealer.keyring.active.name
    index_key = plan.target.name
    ring = {k.name for k in (*sealer.keyring.keys, *sealer.keyring.index_keys)}
    for record in storage.key_records():
        if record.retired_at is not None or record.name not in known & ring:
            continue
        if (record.purpose == "kek" and record.name != active) or (
            record.purpose == "index" and record.name != index_key
        ):
            storage.retire_key_record(record.name, at)
            retired.append(record.name)
    return RotationReport(0, 0, 0, tuple(retired), 0, indexed, 0)
