"""Bulk import of users: records read from NDJSON or CSV, validated, written by the batch.

Every row passes the API's rules (``convert.new_user_from``, then the domain
rules of ``check_fields``); a row at fault is rejected with its line number
and the import goes on. Rows are written a batch per transaction through
``BulkStorage`` (``COPY`` on PostgreSQL, one ``executemany`` on SQLite, one
``insert_user`` per row on a storage without the capability), with a record
of change per user and the user-event hooks after commit, as if each had
been created through the API. The normalised email decides whether a row is
new, so a re-run is idempotent: a user already there is skipped, updated, or
reported (``OnConflict``).
"""

from __future__ import annotations

import contextlib
import csv
import enum
import io
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from userplane.auth import current_principal
from userplane.changes import USER_CREATED, USER_UPDATED
from userplane.errors import Conflict, FieldError, InvalidInput, NotFound, PreconditionFailed
from userplane.pagination import Sort
from userplane.storage import UserRow
from userplane.users import User, UserFilter, check_fields, utcnow

if TYPE_CHECKING:
    from userplane.registry import Registry

#: The fields a row may set, as the API's create takes them.
FIELDS: Final = ("email", "full_name", "is_active", "external_source", "external_id", "attributes")
#: What an export holds besides: accepted and ignored (``deleted_at`` only when empty).
EXPORTED: Final = ("id", "created_at", "updated_at", "version", "deleted_at")
DEFAULT_BATCH: Final = 1000
#: The longest CSV cell read; a longer one rejects its row without its text.
MAX_CELL: Final = 16 << 20
MAX_BATCH: Final = 10_000
#: How often a batch is tried again when a concurrent writer took one of its addresses.
RETRIES: Final = 3
#: Spreadsheet formula starters: an exported cell beginning with one gets a ``'`` first.
FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_ESCAPED: Final = (*FORMULA_START, "'")
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


class OnConflict(enum.Enum):
    """What a row whose normalised email is taken does."""

    #: Leave the stored user as it is (a re-run of an import changes nothing).
    SKIP = "skip"
    #: Set the row's fields on the stored user (a no-op when they are equal).
    UPDATE = "update"
    #: Reject the row, as an invalid one is.
    FAIL = "fail"


@attrs.frozen
class Record:
    """One row as read: its first line, its text (for the rejects file), and its fields."""

    line: int
    raw: str
    data: Mapping[str, Any] | None
    #: Why the row could not even be read (bad JSON, not an object).
    error: FieldError | None = None


@attrs.frozen
class Rejected:
    """A row not imported, and every reason."""

    line: int
    raw: str
    errors: tuple[FieldError, ...]

    def lines(self) -> list[str]:
        """``line 12: $.email: …`` for each error."""
        return [f"line {self.line}: {e.field}: {e.message}" for e in self.errors]


@attrs.define
class Counts:
    """What an import did (or, dry, would do)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    rejected: int = 0

    @property
    def rows(self) -> int:
        """Every row read."""
        return self.created + self.updated + self.unchanged + self.skipped + self.rejected

    def add(self, other: Counts) -> None:
        """Add ``other``'s counts to these."""
        for field in attrs.fields(Counts):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return attrs.asdict(self)


@attrs.frozen
class BatchResult:
    """One batch's counts and rejected rows."""

    counts: Counts
    rejected: tuple[Rejected, ...]


@attrs.frozen
class _Row:
    """A valid row: its record, its fields (those present only) and its email key."""

    record: Record
    fields: dict[str, Any]
    email_key: str


# -- reading -------------------------------------------------------------------------------


def read_ndjson(lines: Iterable[str], start: int = 1) -> Iterator[Record]:
    """One record per non-blank line of JSON; a line that is not an object is one at fault."""
    import orjson

    for number, line in enumerate(lines, start):
        text = line.rstrip("\r\n")
        if number == start:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        if not text.strip():
            continue
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield Record(number, text, None, FieldError("$", f"is not valid JSON ({exc})"))
            continue
        if not isinstance(data, dict):
            yield Record(number, text, None, FieldError("$", "must be a JSON object"))
            continue
        yield Record(number, text, data)


def read_csv(stream: Iterable[str]) -> Iterator[Record]:
    """One record per CSV row after the header; cells are text, as a spreadsheet wrote them.

    The header names the columns: ``email`` is required, ``full_name`` and
    ``is_active`` optional, an export's other columns ignored, any other a
    file-level ``InvalidInput``. An empty cell is an absent field; a cell
    beginning with ``'`` before a formula character loses it (``export``
    adds it). ``is_active`` takes true/false, 1/0 or yes/no.
    """
    # A cell as long as a line may be (the rules reject it by its length, with its row
    # kept in the rejects file), not the csv module's 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InvalidInput.for_field("line 1", f"is not CSV ({exc})") from None
    names = [h.strip().lstrip("\ufeff") for h in header]
    unknown = [n for n in names if n not in FIELDS and n not in EXPORTED]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise InvalidInput.for_field("line 1", f"the header names {doubled[0]!r} twice")
    if unknown or "email" not in names:
        problem = (
            f"unknown column {unknown[0]!r} (columns: {', '.join(FIELDS + EXPORTED)})"
            if unknown
            else "the header has no email column"
        )
        raise InvalidInput.for_field("line 1", problem)
    line = reader.line_num
    while True:
        first = line + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            problem = f"is not CSV ({exc}); the row is too damaged to keep in the rejects file"
            yield Record(first, "", None, FieldError("$", problem))
            continue
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        raw = _csv_line(cells)
        error: FieldError | None = None
        if len(cells) != len(names):
            error = FieldError("$", f"has {len(cells)} cells; the header names {len(names)}")
            yield Record(first, raw, None, error)
            continue
        data: dict[str, Any] = {}
        for name, cell in zip(names, cells, strict=True):
            if cell == "":
                continue
            value: Any = _unescaped(cell)
            if name == "is_active":
                value = _boolean(cell)
                if value is None:
                    error = FieldError("$.is_active", "must be true or false (or 1/0, yes/no)")
            elif name == "attributes":
                value = _json_object(value)
                if value is None:
                    error = FieldError("$.attributes", "must be a JSON object, as JSON text")
            data[name] = value
        yield Record(first, raw, None if error else data, error)


def _json_object(cell: str) -> dict[str, Any] | None:
    try:
        value = json.loads(cell)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _boolean(cell: str) -> bool | None:
    text = cell.strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _unescaped(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:2] in _ESCAPED else cell


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


def escape_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: ``'`` before a formula's first character.

    And before a ``'`` of its own, so that import, which takes one ``'`` off
    such a cell, gives the value back as it was.
    """
    return "'" + value if value.startswith(_ESCAPED) else value


# -- validating ----------------------------------------------------------------------------


def validate(record: Record) -> _Row | Rejected:
    """The row's fields by the API's rules, or every reason it is rejected."""
    from userplane import convert

    if record.data is None:
        assert record.error is not None
        return Rejected(record.line, record.raw, (record.error,))
    data = dict(record.data)
    errors: list[FieldError] = []
    if data.get("deleted_at") not in (None, ""):
        errors.append(
            FieldError(
                "$.deleted_at",
                "a deleted user is not imported (`userplane copy` moves whole instances)",
            )
        )
    for name in EXPORTED:
        data.pop(name, None)
    if not _well_typed(data):
        try:
            convert.new_user_from(data)
        except InvalidInput as exc:
            errors += exc.errors
    key, domain = check_fields(data)
    errors += [e for e in domain if e not in errors]
    if errors:
        return Rejected(record.line, record.raw, tuple(errors))
    assert key is not None
    return _Row(record, data, key)


def _well_typed(data: Mapping[str, Any]) -> bool:
    """Whether ``convert.new_user_from`` would take ``data`` as it is, checked without it.

    The common row skips the converter's machinery; any other goes through
    it, for its exact errors (a test holds the two to the same answer).
    """
    return (
        isinstance(data.get("email"), str)
        and isinstance(data.get("full_name", ""), str | None)
        and isinstance(data.get("is_active", True), bool)
        and isinstance(data.get("external_source"), str | None)
        and isinstance(data.get("external_id"), str | None)
        and isinstance(data.get("attributes", {}), dict)
        and data.keys() <= _FIELD_SET
    )


_FIELD_SET: Final = frozenset(FIELDS)


# -- writing -------------------------------------------------------------------------------


class UserImporter:
    """Imports batches of records into a registry's users.

    ``dry_run`` reads (the lookups) but writes nothing: the counts are what
    the import would do now.
    """

    def __init__(
        self,
        registry: Registry,
        on_conflict: OnConflict = OnConflict.SKIP,
        *,
        dry_run: bool = False,
        clock: Callable[[], Any] = utcnow,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self._registry = registry
        self._on_conflict = on_conflict
        self._dry_run = dry_run
        self._clock = clock
        self._new_id = new_id
        #: A dry run's users as earlier batches would have left them (nothing is
        #: stored): a later row naming one finds it, as in a real import.
        self._dry: dict[str, User] = {}

    def import_batch(self, records: Iterable[Record]) -> BatchResult:
        """Validate and write one batch, in one transaction (tried again on a lost race)."""
        rejected: list[Rejected] = []
        rows: list[_Row] = []
        for record in records:
            checked = validate(record)
            if isinstance(checked, Rejected):
                rejected.append(checked)
            else:
                rows.append(checked)

        def call() -> BatchResult:
            for attempt in range(RETRIES):
                try:
                    return self._write(rows, rejected)
                except (Conflict, PreconditionFailed, NotFound):
                    # Another writer took an address, or changed, deleted or purged a
                    # user, between this batch's lookup and its write: look again.
                    if attempt == RETRIES - 1:
                        raise
            raise AssertionError("unreachable")

        return self._registry.hooks.operation("users.import", call, self._registry)

    def _write(self, rows: list[_Row], invalid: list[Rejected]) -> BatchResult:
        registry = self._registry
        storage = registry.sealed
        changes = registry.changes
        counts = Counts(rejected=len(invalid))
        rejected = list(invalid)
        created: list[User] = []
        updated: list[tuple[User, User, frozenset[str]]] = []
        writing = contextlib.nullcontext() if self._dry_run else changes.writing()
        with writing, contextlib.nullcontext() if self._dry_run else storage.transaction():
            found = storage.users_by_email_keys([r.email_key for r in rows])
            if self._dry_run:
                found.update(
                    {r.email_key: self._dry[r.email_key] for r in rows if r.email_key in self._dry}
                )
            # A user created earlier in this batch is "found" by the rows after it.
            pending: dict[str, int] = {}
            new: list[UserRow] = []
            now = self._clock()
            externals = _Externals(storage, self._registry.encrypted)
            for n, row in enumerate(rows):
                key = row.email_key
                at = pending.get(key)
                stored = found.get(key) if at is None else new[at].user
                refused = externals.refused(row, stored)
                if refused is not None:
                    rejected.append(refused)
                    continue
                if stored is None:
                    # A microsecond apart: the default order (created_at, then id) is the
                    # file's, in an export as in a list.
                    at = now + timedelta(microseconds=n)
                    user = User(
                        id=self._new_id(),
                        email=row.fields["email"],
                        full_name=row.fields.get("full_name"),
                        is_active=row.fields.get("is_active", True),
                        created_at=at,
                        updated_at=at,
                        version=1,
                        # No id, no source: as a create over the API stores it.
                        external_source=(
                            row.fields.get("external_source")
                            if row.fields.get("external_id") is not None
                            else None
                        ),
                        external_id=row.fields.get("external_id"),
                        attributes=row.fields.get("attributes") or {},
                    )
                    pending[key] = len(new)
                    new.append(UserRow(user, key))
                    continue
                outcome = self._conflict(row, stored)
                if isinstance(outcome, Rejected):
                    rejected.append(outcome)
                elif outcome is None:
                    counts.skipped += 1
                elif not outcome:
                    counts.unchanged += 1
                elif at is not None:
                    # The file names one address twice: the later row's values win.
                    new[at] = UserRow(attrs.evolve(new[at].user, **outcome), key)
                    counts.updated += 1
                elif not self._dry_run:
                    email_key = key if "email" in outcome else None
                    after = storage.update_user(
                        stored.id, outcome, email_key, stored.version, self._clock()
                    )
                    changes.record_user(USER_UPDATED, stored, after)
                    updated.append((stored, after, frozenset(outcome)))
                    found[key] = after  # a later row of the file finds it as it is now
                else:
                    found[key] = self._dry[key] = attrs.evolve(stored, **outcome)
                    counts.updated += 1
            counts.created = len(new)
            counts.updated += len(updated)
            counts.rejected = len(rejected)
            if self._dry_run:
                self._dry.update({r.email_key: r.user for r in new})
            else:
                storage.insert_users(new)
                for user_row in new:
                    changes.record_user(USER_CREATED, None, user_row.user)
                created = [r.user for r in new]
        principal = current_principal()
        for user in created:
            registry.hooks.user_created(user, principal, registry)
        for _, after, names in updated:
            registry.hooks.user_updated(after, names, principal, registry)
        rejected.sort(key=lambda r: r.line)
        return BatchResult(counts, tuple(rejected))

    def _conflict(self, row: _Row, stored: User) -> Rejected | dict[str, Any] | None:
        """What a row whose address is taken by ``stored`` does.

        ``None``: skipped; a dict: the fields that differ (empty: unchanged);
        ``Rejected``: the row fails.
        """
        if self._on_conflict is OnConflict.SKIP:
            return None
        if self._on_conflict is OnConflict.FAIL:
            return Rejected(
                row.record.line,
                row.record.raw,
                (FieldError("$.email", "a user with that email already exists"),),
            )
        if stored.deleted_at is not None:
            return Rejected(
                row.record.line,
                row.record.raw,
                (
                    FieldError(
                        "$.email",
                        f"belongs to the deleted user {stored.id}: restore it first to update it",
                    ),
                ),
            )
        changed = {k: v for k, v in row.fields.items() if getattr(stored, k) != v}
        if "external_source" in changed or "external_id" in changed:
            # One value: written together.
            changed["external_source"] = row.fields.get("external_source")
            changed["external_id"] = row.fields.get("external_id")
        return changed


class _Externals:
    """What an import checks of external ids and attributes before it writes a row.

    The database's unique index would refuse a taken external id with the
    whole batch; a row is rejected instead, alone: one whose external id
    belongs to another user (stored, or an earlier row of the batch), and,
    while personal data is encrypted, one with custom attributes (not sealed).
    """

    def __init__(self, storage: Any, encrypted: bool) -> None:
        self._storage = storage
        self._encrypted = encrypted
        #: The batch's external ids so far, by (source, id): the user (email key) holding it.
        self._claimed: dict[tuple[str, str], str] = {}

    def refused(self, row: _Row, stored: User | None) -> Rejected | None:
        """A rejection of ``row`` (going to ``stored``, or a new user), or ``None``."""
        fields = row.fields
        if self._encrypted and fields.get("attributes"):
            return self._reject(
                row,
                "$.attributes",
                "custom attributes are stored unsealed, so they are refused while "
                "personal data is encrypted",
            )
        source, external_id = fields.get("external_source"), fields.get("external_id")
        if source is None or external_id is None:
            return None
        pair = (source, external_id)
        holder = self._claimed.get(pair)
        if holder is not None and holder != row.email_key:
            return self._reject(row, "$.external_id", "is given to another row of the file")
        if stored is None or (stored.external_source, stored.external_id) != pair:
            taken = self._storage.list_users(
                UserFilter(external_source=source, external_id=external_id, include_deleted=True),
                Sort(),
                None,
                1,
            )
            if taken and (stored is None or taken[0].id != stored.id):
                return self._reject(
                    row, "$.external_id", f"from {source!r} belongs to user {taken[0].id}"
                )
        self._claimed[pair] = row.email_key
        return None

    @staticmethod
    def _reject(row: _Row, field: str, message: str) -> Rejected:
        return Rejected(row.record.line, row.record.raw, (FieldError(field, message),))


def batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """``records`` in lists of ``size`` (the last may be shorter)."""
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
