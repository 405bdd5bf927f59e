"""Changes: what a write did, recorded in the transaction of the write.

Every write the core makes (a user created, updated, deleted, restored or
purged; an API key created or revoked; a key rotation) is described by one
``Change``: who acted, on what, from which request, and the before and after
values of the fields it changed. ``ChangeRecorder`` hands each to the
``userplane_record_change`` hook *inside* the storage transaction of the
write, so that what a plugin writes there (an audit event, a webhook's
outbox row) commits with the change or not at all: no change without its
record, no record without its change. Once the transaction has committed,
``userplane_changes_committed`` hears of them.

Without any ``userplane_record_change`` implementation nothing is built and
no transaction is opened: a write costs what it cost before.

Personal fields (``email``, ``full_name``) are never handed over in clear
when personal data is encrypted: their values are sealed under the user's
data key (``FieldChange.sealed``), so that erasing the user (its data key)
erases them from every record too. ``ChangeRecorder.reveal`` opens them for
a reader, or says they were erased.
"""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import attrs

from userplane.attributes import same_json
from userplane.auth import current_principal
from userplane.errors import UserplaneError

if TYPE_CHECKING:
    from userplane.registry import Registry
    from userplane.sealed_storage import SealedStorage
    from userplane.storage import Storage
    from userplane.users import User

#: The fields of a user that hold personal data.
PERSONAL_FIELDS: Final = ("email", "full_name")
#: The fields of a user a change reports, in order.
USER_FIELDS: Final = (
    "email",
    "full_name",
    "is_active",
    "deleted_at",
    "version",
    "external_source",
    "external_id",
    "attributes",
)

#: Actions on users.
USER_CREATED: Final = "user.created"
USER_UPDATED: Final = "user.updated"
USER_DELETED: Final = "user.deleted"
USER_RESTORED: Final = "user.restored"
USER_PURGED: Final = "user.purged"


@attrs.frozen
class RequestContext:
    """Where the current request or command came from, as a frontend knows it."""

    #: The request's id (``X-Request-ID``), or ``None`` outside a request.
    request_id: str | None = None
    #: The client's address, resolved through trusted proxies.
    client_address: str | None = None
    #: The OpenTelemetry trace id (32 hex digits) when tracing is on.
    trace_id: str | None = None


_context: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "userplane_request_context",
    default=RequestContext(),  # noqa: B039 (frozen: never mutated, only replaced)
)


def current_context() -> RequestContext:
    """The current request's context (empty outside a request)."""
    return _context.get()


@contextlib.contextmanager
def request_context(**fields: str | None) -> Iterator[RequestContext]:
    """Run the block with the current context's ``fields`` replaced (``request_id=…``)."""
    token = _context.set(attrs.evolve(_context.get(), **fields))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def set_request_context(context: RequestContext) -> contextvars.Token[RequestContext]:
    """Set the current context; pass the token to ``reset_request_context`` when done."""
    return _context.set(context)


def reset_request_context(token: contextvars.Token[RequestContext]) -> None:
    """Undo ``set_request_context``."""
    _context.reset(token)


@attrs.frozen
class FieldChange:
    """One field's value before and after a change, as JSON values.

    With ``sealed``, ``before`` and ``after`` are ciphertexts (a personal
    field while personal data is encrypted; ``None`` stays ``None``):
    ``ChangeRecorder.reveal`` opens them.
    """

    before: Any = None
    after: Any = None
    sealed: bool = False

    def as_json(self) -> dict[str, Any]:
        """``{"before": …, "after": …}``, with ``"sealed": true`` when sealed."""
        out: dict[str, Any] = {"before": self.before, "after": self.after}
        if self.sealed:
            out["sealed"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldChange:
        """The inverse of ``as_json``."""
        return cls(data.get("before"), data.get("after"), bool(data.get("sealed", False)))


@attrs.frozen
class Change:
    """One write, as the ``userplane_record_change`` hook receives it.

    ``action`` is ``"<target type>.<verb>"`` (``"user.updated"``,
    ``"api_key.revoked"``); ``target_type`` and ``target_id`` name what
    changed. ``fields`` holds each changed field's before and after value (a
    created user: every field, ``before`` ``None``). ``user_id`` is the user
    the change is about, if any (what orders a user's changes). ``actor`` is
    the acting principal's id (``"key:<uuid>"``, ``"local:<login>"``), or
    ``None`` when code embedding the core acted without one.
    """

    id: uuid.UUID
    action: str
    target_type: str
    target_id: str
    fields: Mapping[str, FieldChange]
    actor: str | None
    actor_kind: str | None
    request_id: str | None
    trace_id: str | None
    client_address: str | None
    user_id: uuid.UUID | None = None

    @property
    def changed(self) -> tuple[str, ...]:
        """The names of the changed fields."""
        return tuple(self.fields)


def json_value(value: Any) -> Any:
    """``value`` as JSON holds it: times as RFC 3339 UTC text, ids as text."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def user_fields(before: User | None, after: User | None) -> dict[str, tuple[Any, Any]]:
    """The user fields that differ between ``before`` and ``after`` (``None``: no user)."""
    out: dict[str, tuple[Any, Any]] = {}
    for name in USER_FIELDS:
        old = None if before is None else getattr(before, name)
        new = None if after is None else getattr(after, name)
        if name == "attributes":  # none is none, whether the user exists or not
            old, new = old or None, new or None
            if old is not None and new is not None and same_json(old, new):
                continue
            if (old is None) != (new is None) or old is not None:
                out[name] = (old, new)
            continue
        if old != new:
            out[name] = (json_value(old), json_value(new))
    return out


#: What a reader is shown of a sealed value it cannot open: the user (its data key) is gone.
ERASED: Final = {"erased": True}


class ChangeRecorder:
    """Builds ``Change`` records and hands them to plugins in the write's transaction.

    ``registry.changes``. Writers use it as::

        with changes.writing():
            user = storage.update_user(...)
            changes.record_user(USER_UPDATED, before, user)

    ``writing()`` opens a storage transaction only when some plugin records
    changes (``active``); ``record…`` does nothing otherwise.
    """

    def __init__(
        self,
        registry: Registry,
        storage: Storage,
        sealed: SealedStorage,
        *,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self._registry = registry
        self._storage = storage
        self._sealed = sealed
        self._new_id = new_id
        self._pending: contextvars.ContextVar[list[Change] | None] = contextvars.ContextVar(
            "userplane_pending_changes", default=None
        )
        #: What runs once the outermost ``writing()`` block has committed.
        self._after: contextvars.ContextVar[list[Callable[[], None]] | None] = (
            contextvars.ContextVar("userplane_after_commit", default=None)
        )
        #: Whether any plugin implements ``userplane_record_change``; asked once.
        self.active = registry.hooks.records_changes

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One storage transaction for a write and its records; then ``changes_committed``.

        The changes ``record`` collects in the block are handed to
        ``userplane_record_change`` at its end, still inside the transaction,
        just before it commits. So whatever a recorder locks is locked last,
        after the rows the writes locked: a transaction of several writes (a
        purge's batch) cannot deadlock with a single write waiting on one of
        its rows.
        Nested blocks join the outer one; only the outermost records and
        announces. Without an active recorder the block runs as it is.
        """
        if self._after.get() is not None:  # inside another block: it commits, then announces
            if self.active:
                with self._storage.transaction():
                    yield
            else:
                yield
            return
        after: list[Callable[[], None]] = []
        after_token = self._after.set(after)
        try:
            if not self.active:
                yield
            else:
                collected: list[Change] = []
                token = self._pending.set(collected)
                try:
                    with self._storage.transaction():
                        yield
                        if collected:
                            self._registry.hooks.record_changes(collected, self._registry)
                finally:
                    self._pending.reset(token)
                if collected:
                    self._registry.hooks.changes_committed(collected, self._registry)
        finally:
            self._after.reset(after_token)
        for call in after:
            call()

    def after_commit(self, call: Callable[[], None]) -> None:
        """Run ``call`` once the outermost ``writing()`` block has committed; at once outside one.

        For what announces a write (the ``userplane_user_*`` hooks): a write
        inside a larger block (a plugin's request of several writes) is not
        announced if the block then fails and rolls it back.
        """
        after = self._after.get()
        if after is None:
            call()
        else:
            after.append(call)

    def record(
        self,
        action: str,
        target_type: str,
        target_id: str,
        fields: Mapping[str, FieldChange],
        *,
        user_id: uuid.UUID | None = None,
    ) -> Change | None:
        """Collect one change for ``userplane_record_change``, inside ``writing()``.

        The hook is called when the outermost block ends, before it commits.
        Returns the change, or ``None`` when nothing records changes. A plugin
        that raises fails the write: the transaction rolls back.
        """
        if not self.active:
            return None
        pending = self._pending.get()
        if pending is None:
            raise RuntimeError("ChangeRecorder.record is called inside writing() only")
        principal = current_principal()
        context = current_context()
        change = Change(
            id=self._new_id(),
            action=action,
            target_type=target_type,
            target_id=target_id,
            fields=dict(fields),
            actor=None if principal is None else principal.id,
            actor_kind=None if principal is None else principal.kind,
            request_id=context.request_id,
            trace_id=context.trace_id,
            client_address=context.client_address,
            user_id=user_id,
        )
        pending.append(change)
        return change

    def record_user(self, action: str, before: User | None, after: User | None) -> Change | None:
        """Record a change of one user from its state ``before`` to ``after`` (opened users)."""
        if not self.active:
            return None
        user = after or before
        assert user is not None
        diff = user_fields(before, after)
        fields = {name: FieldChange(old, new) for name, (old, new) in diff.items()}
        personal = {n: v for n, v in diff.items() if n in PERSONAL_FIELDS}
        if personal and self._registry.encrypted:
            for name, (old, new) in self._sealed.seal_record_values(user.id, personal).items():
                fields[name] = FieldChange(old, new, sealed=True)
        return self.record(action, "user", str(user.id), fields, user_id=user.id)

    def reveal(
        self, user_id: uuid.UUID | None, fields: Mapping[str, FieldChange]
    ) -> dict[str, Any]:
        """``fields`` as JSON for a reader, sealed values opened.

        A sealed value whose user is gone (purged, shredded: its data key
        with it) shows as ``{"erased": true}``; so does one that no longer
        opens.
        """
        out: dict[str, Any] = {n: c.as_json() for n, c in fields.items() if not c.sealed}
        sealed = {n: (c.before, c.after) for n, c in fields.items() if c.sealed}
        opened: Mapping[str, tuple[Any, Any] | None] = {}
        if sealed and user_id is not None:
            with contextlib.suppress(UserplaneError):  # the user (its data key) is gone
                opened = self._sealed.open_record_values(user_id, sealed)
        for name in sealed:
            pair = opened.get(name)
            out[name] = dict(ERASED) if pair is None else {"before": pair[0], "after": pair[1]}
        return {name: out[name] for name in fields}
