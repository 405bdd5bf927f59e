"""The User domain: plain attrs models and the ``UserService`` use-cases."""

from __future__ import annotations

import contextlib
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from userplane.attributes import check_attributes, merge_patch, same_json
from userplane.auth import USERS_READ_DELETED, check_may_grant, current_principal
from userplane.changes import (
    USER_CREATED,
    USER_DELETED,
    USER_PURGED,
    USER_RESTORED,
    USER_UPDATED,
)
from userplane.emails import normalize_email
from userplane.errors import ConfigurationError, Conflict, FieldError, InvalidInput, NotFound
from userplane.filtering import And, Compare, Expr, Linked, Not, Or
from userplane.filtering import check as check_filter
from userplane.pagination import (
    CURSOR_FIELD,
    Position,
    Sort,
    decode_cursor,
    encode_cursor,
)
from userplane.text import fold, is_invisible_format

if TYPE_CHECKING:
    from userplane.hooks import Hooks
    from userplane.registry import Registry
    from userplane.storage import Storage

T = TypeVar("T")

MAX_FULL_NAME = 200
#: The longest a name or an email key may be once folded (e.g. every "ß" becomes "ss").
MAX_FOLDED = 2 * MAX_FULL_NAME
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: Users a recorded purge removes per transaction.
PURGE_BATCH: Final = 100


class Unset(Enum):
    """Marks a field a partial update leaves alone (``None`` is a value: "clear it")."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


@attrs.frozen
class User:
    """A stored user. ``version`` starts at 1 and grows by one on every write.

    ``deleted_at`` is set while the user is (softly) deleted: hidden from reads
    and lists, its email still reserved, restorable until purged.
    """

    id: uuid.UUID
    email: str
    full_name: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    version: int
    deleted_at: datetime | None = None
    #: Who issued ``external_id`` (an identity provider, a provisioning client): the pair
    #: is unique, so two providers may use the same id for different people.
    external_source: str | None = None
    external_id: str | None = None
    #: The caller's own metadata: a bounded JSON object (``userplane.attributes``).
    attributes: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class NewUser:
    """What a caller supplies to create a user."""

    email: str
    full_name: str | None = None
    is_active: bool = True
    external_source: str | None = None
    external_id: str | None = None
    attributes: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class UserChanges:
    """A partial update: fields left ``UNSET`` are not touched."""

    email: str | Unset = UNSET
    full_name: str | Unset | None = UNSET
    is_active: bool | Unset = UNSET
    #: Set with ``external_id``: the two are one value.
    external_source: str | Unset | None = UNSET
    external_id: str | Unset | None = UNSET
    #: A JSON merge patch (RFC 7396) of the attributes: ``None`` removes a key.
    attributes: dict[str, Any] | Unset | None = UNSET

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {k: v for k, v in attrs.asdict(self, recurse=False).items() if v is not UNSET}


@attrs.frozen
class UserFilter:
    """Filters of a list, already normalised: ``email`` is an email key, ``q`` folded text.

    ``q`` matches a substring of the email key or of the folded full name.
    """

    is_active: bool | None = None
    email: str | None = None
    q: str | None = None
    #: Deleted users too (an administrator's view); otherwise only live ones.
    include_deleted: bool = False
    #: With ``email``: a user whose second index value (``email_index_next``) is this matches too.
    email_next: str | None = None
    #: Users from this source; users with this external id (from any source, unless given).
    external_source: str | None = None
    external_id: str | None = None


@attrs.frozen
class UserQuery:
    """A list request as a client states it (sort and cursor still as text)."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    is_active: bool | None = None
    email: str | None = None
    q: str | None = None
    sort: str = "created_at"
    include_deleted: bool = False
    external_source: str | None = None
    external_id: str | None = None


@attrs.frozen
class UserSelection:
    """One page of the users a filter selects, and how many it selects in all.

    ``next`` is the cursor of the page after this one, when the selection was
    paged by cursor and there is one.
    """

    items: tuple[User, ...]
    total: int
    next: str | None = None


@attrs.frozen
class UserPage:
    """One page of users in the query's sort order; ``next`` is ``None`` on the last."""

    items: tuple[User, ...]
    next: str | None


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _check_full_name(value: str | None) -> list[FieldError]:
    if value is None:
        return []
    if not value.strip():
        return [FieldError("$.full_name", "must not be blank; use null to clear it")]
    return check_display_text("$.full_name", value, MAX_FULL_NAME)


def check_display_text(field: str, value: str, longest: int) -> list[FieldError]:
    """The rules for a name shown to people (a user's, a group's): what is wrong with ``value``.

    Not blank, at most ``longest`` characters (and twice that once folded),
    no control characters, no invisible formatting characters.
    """
    if not value.strip():
        return [FieldError(field, "must not be blank")]
    if len(value) > longest:
        return [FieldError(field, f"must be at most {longest} characters")]
    # Printable ASCII folds to its own length and holds no control or formatting
    # character: the checks below cannot fail on it (the common case, and imports').
    if value.isascii() and value.isprintable():
        return []
    # Normalising can multiply a character (U+FDFA becomes 18); the folded name is
    # the sort key a cursor carries, so it is bounded too.
    if len(fold(value)) > 2 * longest:
        return [FieldError(field, "is too long once Unicode-normalised")]
    # Cc covers C0, DEL and C1 (terminal escapes); Cs are lone surrogates.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        return [FieldError(field, "must not contain control characters")]
    # A name is shown to people (lists, audit logs, emails): a right-to-left override
    # or a zero-width character would let one name pass for another. Emoji joined by
    # ZWJ are refused with them: a sequence's parts still show, and no name needs it.
    if any(is_invisible_format(c) for c in value):
        return [
            FieldError(
                field,
                "must not contain invisible formatting characters "
                "(bidirectional controls, zero-width or tag characters)",
            )
        ]
    return []


def _check_email(value: str) -> tuple[str | None, list[FieldError]]:
    try:
        return normalize_email(value), []
    except InvalidInput as exc:
        return None, list(exc.errors)


def check_fields(values: Mapping[str, Any]) -> tuple[str | None, list[FieldError]]:
    """The domain rules for the user fields present in ``values``.

    Returns the email key (when a valid email is present) and every field at
    fault. Values of the wrong type are skipped: the converter reports those,
    and merges these errors with its own so that one answer names every field.
    """
    key: str | None = None
    errors: list[FieldError] = []
    email = values.get("email")
    if isinstance(email, str):
        key, errors = _check_email(email)
    full_name = values.get("full_name")
    if isinstance(full_name, str):
        errors += _check_full_name(full_name)
    if "external_id" in values or "external_source" in values:
        errors += check_external(values.get("external_source"), values.get("external_id"))
        if values.get("external_source") is not None and "external_id" not in values:
            errors.append(FieldError("$.external_id", "is required with external_source"))
    attributes = values.get("attributes")
    if attributes is not None:
        errors += check_attributes(attributes)
    return key, errors


#: The longest external id, and source name.
MAX_EXTERNAL_ID: Final = 255
MAX_EXTERNAL_SOURCE: Final = 64


def check_external_id(field: str, value: Any) -> list[FieldError]:
    """An external id: ``None``, or 1 to 255 characters, no control character, no outer space."""
    if value is None:
        return []
    if not isinstance(value, str):
        return [FieldError(field, "must be a string or null")]
    if not value or len(value) > MAX_EXTERNAL_ID:
        return [FieldError(field, f"must be 1 to {MAX_EXTERNAL_ID} characters")]
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        return [FieldError(field, "must not contain control characters")]
    if value[0].isspace() or value[-1].isspace():
        return [FieldError(field, "must not begin or end with whitespace")]
    return []


def check_external(source: Any, external_id: Any) -> list[FieldError]:
    """An external id with its source: an id needs its source (no id: the source goes too)."""
    errors = check_external_id("$.external_id", external_id)
    source_errors = check_external_source(source)
    errors += source_errors
    if not source_errors and external_id is not None and source is None:
        errors.append(FieldError("$.external_source", "is required with external_id"))
    return errors


@contextlib.contextmanager
def _external_conflicts(source: str | None, external_id: str | None) -> Iterator[None]:
    """A storage ``Conflict`` on the external id, said as such (an email's is said already)."""
    try:
        yield
    except Conflict as exc:
        if external_id is not None and "external" in exc.detail:
            raise Conflict(
                f"a user with external id {external_id!r} from {source!r} exists"
            ) from None
        raise


def check_external_source(source: Any) -> list[FieldError]:
    """A source of external ids: ``None``, or 1 to 64 ASCII letters, digits and ``._-:``."""
    if source is None or (
        isinstance(source, str)
        and 0 < len(source) <= MAX_EXTERNAL_SOURCE
        and _is_source_name(source)
    ):
        return []
    return [
        FieldError(
            "$.external_source",
            f"must be 1 to {MAX_EXTERNAL_SOURCE} letters, digits, '.', '_', '-' or ':'",
        )
    ]


def _is_source_name(text: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "._-:") for c in text)


@attrs.frozen
class ResolvedQuery:
    """A list request resolved for storage, or the parameters at fault."""

    flt: UserFilter
    sort: Sort
    after: Position | None
    errors: list[FieldError]


def check_query(query: UserQuery) -> ResolvedQuery:
    """Resolve a list request: filter, sort, position, and every parameter at fault."""
    errors: list[FieldError] = []
    if not 1 <= query.limit <= MAX_LIMIT:
        errors.append(FieldError("$.limit", f"must be between 1 and {MAX_LIMIT}"))
    sort = Sort()
    sort_known = True
    try:
        sort = Sort.parse(query.sort)
    except InvalidInput as exc:
        errors += exc.errors
        sort_known = False
    after: Position | None = None
    # A cursor can only be read in the order it was made for.
    if query.cursor is not None and sort_known:
        try:
            after = decode_cursor(query.cursor, sort)
        except InvalidInput as exc:
            errors += exc.errors
    email_key: str | None = None
    if query.email is not None:
        try:
            email_key = normalize_email(query.email)
        except InvalidInput as exc:
            errors += exc.errors
    if query.q is not None and len(query.q) > MAX_FULL_NAME:
        errors.append(FieldError("$.q", f"must be at most {MAX_FULL_NAME} characters"))
    elif query.q is not None and not _sendable(query.q):
        errors.append(FieldError("$.q", "must be text without NUL characters"))
    q = fold(query.q) if query.q else None
    # Each on its own in a list: every user from a source, or with an id from any.
    errors += check_external_id("$.external_id", query.external_id)
    errors += check_external_source(query.external_source)
    flt = UserFilter(
        is_active=query.is_active,
        email=email_key,
        q=q,
        include_deleted=query.include_deleted,
        external_source=query.external_source,
        external_id=query.external_id,
    )
    return ResolvedQuery(flt, sort, after, errors)


def _sendable(text: str) -> bool:
    """Whether every database can take ``text``: no NUL, no lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeError:
        return False
    return True


def cursor_key(user: User, field: str) -> datetime | None:
    """What a cursor holds of ``user`` in a sort by ``field``: the time, never personal data."""
    return user.created_at if field == "created_at" else None


def sort_key(user: User, field: str) -> datetime | str:
    """``user``'s key in a sort by ``field``: what storage orders by."""
    if field == "created_at":
        return user.created_at
    if field == "email":
        return normalize_email(user.email)
    return fold(user.full_name or "")


def _unchanged(user: User, fields: Mapping[str, Any], expected_version: int | None) -> bool:
    """Whether writing ``fields`` to ``user`` would change nothing a client can see.

    Only for a live user at ``expected_version`` (when given): anything else
    is the write's to refuse. Values compare exactly (``Ann@x.org`` is not
    ``ann@x.org``: the stored spelling would change), as the service sees
    them (opened, when sealed).
    """
    if user.deleted_at is not None:
        return False
    if expected_version is not None and user.version != expected_version:
        return False
    return all(_same(getattr(user, name), value) for name, value in fields.items())


def _same(stored: Any, value: Any) -> bool:
    """Whether ``value`` is ``stored`` as a client sees it: JSON ``true`` is not ``1``."""
    if isinstance(stored, Mapping) and isinstance(value, Mapping):
        return same_json(stored, value)
    return type(stored) is type(value) and stored == value


def prepare_filter(expr: Expr) -> Expr:
    """``expr`` with its values as storage compares them: keys of addresses, folded text.

    What ``UserService.select`` hands a ``FilterableStorage``.
    """
    if isinstance(expr, And | Or):
        return type(expr)(tuple(prepare_filter(p) for p in expr.parts))
    if isinstance(expr, Not):
        return Not(prepare_filter(expr.part))
    if not isinstance(expr, Compare) or not isinstance(expr.value, str):
        return expr
    if expr.field == "email" and expr.op in ("eq", "ne"):
        try:
            key = normalize_email(expr.value)
        except InvalidInput:
            key = ""  # not an address: no user's key, so eq matches none and ne all
        return attrs.evolve(expr, value=key)
    if expr.field in ("email", "full_name") or (
        isinstance(expr.field, Linked) and expr.field.kind == "folded"
    ):
        return attrs.evolve(expr, value=fold(expr.value))
    return expr


def _raise_if(errors: list[FieldError]) -> None:
    if errors:
        raise InvalidInput.from_errors(errors)


class UserService:
    """The use-cases on users, shared by every frontend.

    Each operation runs inside the ``userplane_operation`` hook, so plugins
    (telemetry, audit, rate limiting) can wrap it without the core knowing
    them, and announces what it changed through the user-event hooks, once the
    write has committed (every write is one statement or one transaction).
    """

    def __init__(
        self,
        storage: Storage,
        hooks: Hooks,
        *,
        registry: Registry,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
        encrypted: bool = False,
    ) -> None:
        self._storage = storage
        # Sealed personal fields: no substring search, no order but created_at.
        self._encrypted = encrypted
        self._hooks = hooks
        self._registry = registry
        self._clock = clock
        self._new_id = new_id
        self._changes = registry.changes

    def _run(self, operation: str, call: Callable[[], T]) -> T:
        return self._hooks.operation(operation, call, self._registry)

    def create(self, new: NewUser) -> User:
        """Create a user; ``Conflict`` if the normalised email is taken."""

        def call() -> User:
            key, errors = check_fields(
                {
                    "email": new.email,
                    "full_name": new.full_name,
                    "external_source": new.external_source,
                    "external_id": new.external_id,
                    "attributes": new.attributes,
                }
            )
            errors += self._attributes_sealable(new.attributes)
            _raise_if(errors)
            assert key is not None
            now = self._clock()
            user = User(
                id=self._new_id(),
                email=new.email,
                full_name=new.full_name,
                is_active=new.is_active,
                created_at=now,
                updated_at=now,
                version=1,
                # No id, no source: a source alone says nothing.
                external_source=new.external_source if new.external_id is not None else None,
                external_id=new.external_id,
                attributes=dict(new.attributes),
            )
            with (
                _external_conflicts(user.external_source, user.external_id),
                self._changes.writing(),
            ):
                stored = self._storage.insert_user(user, key)
                self._changes.record_user(USER_CREATED, None, stored)
            self._announce(self._hooks.user_created, stored)
            return stored

        return self._run("users.create", call)

    def _may_hand_out_groups(self, user_id: uuid.UUID, doing: str) -> None:
        """``Forbidden`` unless the acting principal's roles cover those of ``user_id``'s groups.

        Changing a member's address, reactivating or restoring it hands its
        groups' roles to whoever the address (a token's email claim) or the
        account then is: the rule against escalation of groups applies.
        """
        groups = self._registry.groups
        principal = current_principal()
        if principal is None or not groups.available:
            return
        roles = frozenset().union(*(g.roles for g in groups.groups_of(user_id)))
        check_may_grant(principal, roles, self._registry.auth.roles, doing)

    def _attributes_sealable(self, attributes: Mapping[str, Any] | None) -> list[FieldError]:
        """Custom attributes are not sealed yet: with encryption on, none may be stored."""
        if self._encrypted and attributes:
            return [
                FieldError(
                    "$.attributes",
                    "custom attributes are stored unsealed, so they are refused while "
                    "personal data is encrypted",
                )
            ]
        return []

    def get(self, user_id: uuid.UUID, include_deleted: bool = False) -> User:
        """The user with ``user_id``, or ``NotFound`` (also when deleted, unless included)."""

        def call() -> User:
            user = self._storage.get_user(user_id, include_deleted)
            if user is None:
                raise NotFound(f"no user with id {user_id}")
            return user

        return self._run("users.get", call)

    def get_by_email(self, email: str, include_deleted: bool = False) -> User:
        """The user whose address normalises like ``email``, or ``NotFound``."""

        def call() -> User:
            user = self._storage.get_user_by_email(normalize_email(email), include_deleted)
            if user is None:
                raise NotFound("no user with that email")
            return user

        return self._run("users.get_by_email", call)

    def find(self, id_or_email: str, include_deleted: bool = False) -> User:
        """Look a user up by id if ``id_or_email`` is a UUID, else by email.

        Text that is neither (no ``@``: ``12345``, a mistyped id) is
        ``InvalidInput`` naming the argument, not an email address's syntax error.
        """
        try:
            user_id = uuid.UUID(id_or_email)
        except ValueError:
            if "@" not in id_or_email:
                shown = id_or_email if len(id_or_email) <= 80 else f"{id_or_email[:80]}…"
                raise InvalidInput.for_field(
                    "id_or_email",
                    f"{shown!r} is neither a user id (a UUID) nor an email address",
                ) from None
            return self.get_by_email(id_or_email, include_deleted)
        return self.get(user_id, include_deleted)

    def list(self, query: UserQuery) -> UserPage:
        """One page of users matching ``query``, in its sort order (oldest first by default)."""

        def call() -> UserPage:
            resolved = check_query(query)
            errors = resolved.errors
            if self._encrypted:
                from userplane.sealed_storage import encrypted_query_errors

                errors = errors + encrypted_query_errors(bool(query.q), resolved.sort.field)
            _raise_if(errors)
            sort = resolved.sort
            after = self._position(sort, resolved.after, resolved.flt.include_deleted)
            rows = self._storage.list_users(resolved.flt, sort, after, query.limit + 1)
            items = tuple(rows[: query.limit])
            nxt = None
            if len(rows) > query.limit:
                last = items[-1]
                nxt = encode_cursor(sort, Position(cursor_key(last, sort.field), last.id))
            return UserPage(items=items, next=nxt)

        return self._run("users.list", call)

    def select(
        self,
        expr: Expr,
        *,
        sort: str = "created_at",
        offset: int = 0,
        limit: int = DEFAULT_LIMIT,
        include_deleted: bool = False,
        cursor: str | None = None,
    ) -> UserSelection:
        """The users matching a filter (``userplane.filtering``), a page, and how many.

        For provisioning protocols, whose clients page by position
        (``startIndex``: ``offset``) and ask how many there are, or by cursor
        (``cursor``: ``""`` for the first page, then each answer's ``next``):
        a cursor is a place in the keyset order, so a page costs the same
        however deep, and users created or deleted meanwhile shift no page.
        ``InvalidInput`` at ``$.filter`` for a field or comparison the filter
        may not use, or one a sealed store cannot run; at ``$.sort``,
        ``$.offset``, ``$.limit``, ``$.cursor`` for the others.
        """

        def call() -> UserSelection:
            from userplane.storage import FilterableStorage

            errors: list[FieldError] = []
            try:
                check_filter(expr)
            except InvalidInput as exc:
                errors += exc.errors
            order = Sort()
            try:
                order = Sort.parse(sort)
            except InvalidInput as exc:
                errors += exc.errors
            if offset < 0:
                errors.append(FieldError("$.offset", "must not be negative"))
            if not 0 <= limit <= MAX_LIMIT:
                errors.append(FieldError("$.limit", f"must be between 0 and {MAX_LIMIT}"))
            after: Position | None = None
            if cursor:
                try:
                    after = decode_cursor(cursor, order)
                except InvalidInput as exc:
                    errors += exc.errors
            _raise_if(errors)
            if self._encrypted:
                from userplane.sealed_storage import encrypted_query_errors

                _raise_if(encrypted_query_errors(False, order.field))
            storage = self._storage
            if not isinstance(storage, FilterableStorage):
                raise ConfigurationError("this storage cannot filter users")
            prepared = prepare_filter(expr)
            total = storage.count_selected(prepared, include_deleted)
            if cursor is None:
                items: list[User] = []
                if limit and offset < total:
                    items = storage.select_users(prepared, order, offset, limit, include_deleted)
                return UserSelection(tuple(items), total)
            position = self._position(order, after, include_deleted)
            rows = storage.select_users(prepared, order, 0, limit + 1, include_deleted, position)
            page = tuple(rows[:limit])
            nxt = None
            if len(rows) > limit and page:
                last = page[-1]
                nxt = encode_cursor(order, Position(cursor_key(last, order.field), last.id))
            return UserSelection(page, total, nxt)

        return self._run("users.select", call)

    def _position(
        self, sort: Sort, after: Position | None, include_deleted: bool
    ) -> Position | None:
        """Where a page starts: a cursor in a personal order holds only the last id.

        A cursor travels in URLs, logs and browser history, so it must not
        carry an email or a name: the sort key is read from the user it
        names, as the list sees users (a deleted one only in a list that
        shows them, so a made-up cursor cannot tell deleted users from
        none). A user gone since cannot be continued from; the client is told
        to start again rather than given a wrong page.
        """
        if after is None or sort.field == "created_at":
            return after
        user = self._storage.get_user(after.id, include_deleted)
        if user is None:
            raise InvalidInput.for_field(
                CURSOR_FIELD,
                "the user this cursor continues from is gone (deleted or purged); "
                "start again from the first page",
            )
        return Position(sort_key(user, sort.field), after.id)

    def update(
        self, user_id: uuid.UUID, changes: UserChanges, expected_version: int | None = None
    ) -> User:
        """Apply ``changes``; with ``expected_version`` only if the user is still at it.

        A change that changes nothing (every requested field already holds
        that exact value, an empty change too) does not write: the user comes
        back as stored, with the same ``version`` and ``updated_at`` (so the
        same ETag), and nothing is recorded or announced. It still answers
        ``NotFound`` for a user that is not there (or deleted) and
        ``PreconditionFailed`` when ``expected_version`` is not the current
        one. Values are compared exactly as stored: an email differing only in
        letter case is a new spelling of the address, and is written.
        """

        def call() -> User:
            fields = changes.as_dict()
            # A merge patch, applied to the attributes as stored when the write runs.
            patch = fields.pop("attributes", UNSET)
            key, errors = check_fields(fields)
            if "external_source" in fields and "external_id" not in fields:
                if fields["external_source"] is None:  # a source is set with its id, only
                    errors.append(FieldError("$.external_id", "is required with external_source"))
            elif "external_id" in fields and fields["external_id"] is None:
                fields["external_source"] = None  # no id, no source
            if "is_active" in fields and not isinstance(fields["is_active"], bool):
                errors.append(FieldError("$.is_active", "must be a boolean"))
            if patch is not UNSET and patch is not None and not isinstance(patch, dict):
                errors.append(FieldError("$.attributes", "must be a JSON object or null"))
            elif isinstance(patch, dict) and errors:
                # Named with the others now; the merge is checked again as it is written.
                errors += check_attributes(patch)
            _raise_if(errors)
            updated, written = self._update(user_id, fields, patch, key, expected_version)
            if written:
                self._announce(self._hooks.user_updated, updated, frozenset(written))
            return updated

        return self._run("users.update", call)

    def _update(
        self,
        user_id: uuid.UUID,
        fields: dict[str, Any],
        patch: Mapping[str, Any] | Unset | None,
        key: str | None,
        expected_version: int | None,
    ) -> tuple[User, dict[str, Any] | None]:
        """One try of ``update``: the user, and the fields written (``None``: nothing was)."""
        merging = patch is not UNSET
        # A merge of attributes is written onto the state it read: in one transaction,
        # with the user locked from the read to the write, so no other writer's keys are
        # lost (and no client sees a 412 it did not ask for with If-Match).
        locked = contextlib.nullcontext() if not merging else self._storage.transaction()
        with self._changes.writing(), locked:
            before = self._locked(user_id)
            # What a no-op is compared with. With records, the user read locked in
            # the write's own transaction: no writer can slip between the comparison
            # and the write it replaces, so the "before" of every record is the
            # state the previous record left. Without records, a plain read is
            # enough: a writer racing with it makes either order valid (this no-op
            # before its write; or, read after it, a real write), and a user that
            # does not match is left to the conditional UPDATE, which decides.
            if self._changes.active:
                current = before
            elif merging:
                current = self._storage.lock_user(user_id)
            else:
                current = self._storage.get_user(user_id)
            condition = expected_version
            if merging:
                if current is None or current.deleted_at is not None:
                    raise NotFound(f"no user with id {user_id}")
                merged = (
                    merge_patch(current.attributes, patch) if isinstance(patch, Mapping) else {}
                )
                _raise_if(check_attributes(merged) + self._attributes_sealable(merged))
                fields = {**fields, "attributes": merged}
            if current is not None and _unchanged(current, fields, expected_version):
                return current, None
            if "email" in fields or fields.get("is_active") is True:
                # Who the user is (a token may name it by address), or that it may act
                # again: either hands its groups' roles to someone.
                self._may_hand_out_groups(user_id, "change a user whose groups grant role")
            with _external_conflicts(fields.get("external_source"), fields.get("external_id")):
                updated = self._storage.update_user(user_id, fields, key, condition, self._clock())
            self._changes.record_user(USER_UPDATED, before, updated)
        return updated, fields

    def touch(self, user_id: uuid.UUID, expected_version: int | None = None) -> User:
        """A new version of the user, its fields left as they are.

        For a plugin that keeps data of a user beyond its fields (the SCIM
        plugin: the userName a client gave): when that data changes, the user's
        ``version`` and ``updated_at`` must move too, so that ETags, ``If-Match``
        and "modified since" see the change, and two writers of it are decided
        by the version like any other. Call it in the transaction that writes
        the plugin's data (``registry.changes.writing()``). Recorded and
        announced as ``user.updated`` with no field of the user's changed.
        ``NotFound`` and ``PreconditionFailed`` as ``update``.
        """

        def call() -> User:
            with self._changes.writing():
                before = self._locked(user_id)
                touched = self._storage.update_user(
                    user_id, {}, None, expected_version, self._clock()
                )
                self._changes.record_user(USER_UPDATED, before, touched)
            self._announce(self._hooks.user_updated, touched, frozenset())
            return touched

        return self._run("users.touch", call)

    def delete(self, user_id: uuid.UUID, expected_version: int | None = None) -> User:
        """Softly delete the user (only if still at ``expected_version`` when given).

        The user is hidden from reads and lists and keeps its email reserved
        until ``restore`` or ``purge``. Returns it as deleted.
        """

        def call() -> User:
            with self._changes.writing(), self._storage.transaction():
                self._touch_groups(user_id)
                before = self._locked(user_id)
                deleted = self._storage.delete_user(user_id, expected_version, self._clock())
                self._changes.record_user(USER_DELETED, before, deleted)
            self._announce(self._hooks.user_deleted, deleted)
            return deleted

        return self._run("users.delete", call)

    def _may_see_deleted(self, user_id: uuid.UUID) -> bool:
        """Whether the current principal may see ``user_id`` while it is deleted.

        Without a principal the caller is code embedding the service, trusted
        like the CLI's administrator; a frontend always sets one.
        """
        principal = current_principal()
        if principal is None:
            return True
        return self._registry.auth.allows(principal, USERS_READ_DELETED, user_id)

    def restore(self, user_id: uuid.UUID) -> User:
        """Bring a deleted user back; a live user is returned as it is (retries are safe).

        Restoring answers with the user, so it needs seeing deleted users
        (``users:read-deleted``) besides ``users:restore``: for a principal that
        may not, a deleted user is hidden, not confirmed (``NotFound`` as for
        an id that does not exist) and stays deleted.
        """

        def call() -> User:
            if not self._may_see_deleted(user_id):
                return self._live(user_id)
            self._may_hand_out_groups(user_id, "restore a user whose groups grant role")
            with self._changes.writing(), self._storage.transaction():
                self._touch_groups(user_id)
                before = self._locked(user_id)
                restored = self._storage.restore_user(user_id, self._clock())
                if restored is not None:
                    self._changes.record_user(USER_RESTORED, before, restored)
            if restored is None:
                return self._live(user_id)  # live already, or no such user
            self._announce(self._hooks.user_restored, restored)
            return restored

        return self._run("users.restore", call)

    def _live(self, user_id: uuid.UUID) -> User:
        """What restore answers a principal that may not see deleted users: live ones only.

        The same ``NotFound`` for a deleted user as for one that never existed.
        """
        user = self._storage.get_user(user_id, False)
        if user is None:
            raise NotFound(f"no deleted or live user with id {user_id}")
        return user

    def purge(self, older_than: timedelta) -> int:
        """Remove for good the users deleted more than ``older_than`` ago; returns how many."""

        def call() -> int:
            if older_than < timedelta(0):
                raise InvalidInput.for_field("$.older_than", "must not be negative")
            try:
                before = self._clock() - older_than
            except OverflowError:  # before the calendar began: nothing is that old
                before = datetime.min.replace(tzinfo=UTC)
            count = (
                self._purge_recorded(before)
                if self._changes.active
                else self._storage.purge_users(before)
            )
            self._hooks.users_purged(count, before, current_principal(), self._registry)
            return count

        return self._run("users.purge", call)

    def purge_user(self, user_id: uuid.UUID) -> None:
        """Remove one deleted user for good, now: its row and, when sealed, its data key.

        For erasure on request (``userplane users shred``): what ``purge`` does
        for users deleted long enough ago, for this one user at once.
        ``NotFound`` unless the user exists and is deleted (delete it first).
        """

        def call() -> None:
            with self._changes.writing():
                if not self._storage.purge_user(user_id):
                    raise NotFound(f"no deleted user with id {user_id} (delete it first)")
                self._record_purged(user_id)
            self._announce(self._hooks.user_purged, user_id)

        self._run("users.purge_user", call)

    def _announce(self, hook: Callable[..., Any], *args: Any) -> None:
        """Call a ``userplane_user_*`` hook once the write has committed.

        At once for a write of its own; inside a larger block (a plugin's
        request of several writes, ``registry.changes.writing()``) when that
        commits, so that no plugin hears of a write the block rolled back.
        """
        principal = current_principal()
        self._changes.after_commit(lambda: hook(*args, principal, self._registry))

    def _touch_groups(self, user_id: uuid.UUID) -> None:
        """A member's groups get a new version: who they list changes with the member.

        Before the user is locked, in the write's transaction: the order in
        which member changes lock (group, then user), so the two never deadlock.
        """
        from userplane.storage import GroupStorage

        store = self._storage
        inner = getattr(store, "inner", store)  # a sealed store keeps groups if its inner one does
        if isinstance(inner, GroupStorage) and isinstance(store, GroupStorage):
            store.touch_groups_of(user_id, self._clock())

    def _locked(self, user_id: uuid.UUID) -> User | None:
        """The user as it is before a recorded write (locked till commit); ``None`` unrecorded."""
        return self._storage.lock_user(user_id) if self._changes.active else None

    def _record_purged(self, user_id: uuid.UUID) -> None:
        # No values: the record of an erasure must not keep what was erased.
        self._changes.record(USER_PURGED, "user", str(user_id), {}, user_id=user_id)

    def _purge_recorded(self, before: datetime) -> int:
        """Purge one user at a time, each with its record, a batch per transaction."""
        count = 0
        while True:
            with self._changes.writing():
                ids = self._storage.deleted_user_ids(before, PURGE_BATCH)
                for user_id in ids:
                    if self._storage.purge_user(user_id):
                        self._record_purged(user_id)
                        count += 1
            if len(ids) < PURGE_BATCH:
                # A response completed while its user went outlives it: swept, as
                # purge_users sweeps them, though no user was purged this time.
                self._storage.purge_orphan_responses()
                return count

    def set_active(self, user_id: uuid.UUID, active: bool) -> User:
        """Activate or deactivate a user (an update of ``is_active`` alone)."""
        return self.update(user_id, UserChanges(is_active=active))
