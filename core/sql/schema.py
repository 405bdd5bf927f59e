"""The published schema: the tables, columns and constraints a SQL store must create.

The core ships migrations creating it for SQLite and PostgreSQL; a store of
another dialect ships its own (``SQLStorage.core_migrations``) and proves them
with ``userplane.testing.StorageContract``, which checks ``schema_version``.
``docs/schema.md`` is this module in prose.
"""

from __future__ import annotations

import attrs

#: Bumped with every core migration that changes the published schema.
SCHEMA_VERSION = 6

#: The user columns every query returns, in ``User``'s field order.
USER_COLUMNS = (
    "id, email, full_name, is_active, created_at, updated_at, version, deleted_at, "
    "external_source, external_id, attributes"
)
#: How many columns ``USER_COLUMNS`` names.
USER_COLUMN_COUNT = len(USER_COLUMNS.split(","))


@attrs.frozen
class Column:
    """One column of the published schema."""

    table: str
    name: str
    #: The kind of value: uuid, text, boolean, integer, timestamp, bytes.
    kind: str
    nullable: bool = False
    #: The longest value, in characters (text) or bytes (bytes), the column must hold.
    max_length: int | None = None
    notes: str = ""


_TIME = "UTC with microseconds; compared and sorted as time"

SCHEMA: tuple[Column, ...] = (
    Column("users", "id", "uuid", notes="primary key"),
    Column(
        "users",
        "email",
        "text",
        max_length=2048,
        notes="as given (320 characters at most), or sealed (docs/encryption.md)",
    ),
    Column(
        "users",
        "email_normalized",
        "text",
        max_length=320,
        notes="unique (users_email_normalized_key); compared and sorted by code point, "
        "trailing spaces significant; the blind index (43 characters of base64) when sealed",
    ),
    Column(
        "users",
        "full_name",
        "text",
        nullable=True,
        max_length=1280,
        notes="as given (200 characters at most), or sealed",
    ),
    Column(
        "users",
        "full_name_folded",
        "text",
        max_length=400,
        notes="fold(full_name or ''), '' when sealed; sorted by code point; indexed with id",
    ),
    Column(
        "users",
        "email_index_next",
        "text",
        nullable=True,
        max_length=320,
        notes="unique where not NULL (users_email_index_next_key), compared as "
        "email_normalized; the second email index, filled by a re-index",
    ),
    Column("users", "is_active", "boolean"),
    Column("users", "created_at", "timestamp", notes=f"{_TIME}; indexed with id"),
    Column("users", "updated_at", "timestamp", notes=_TIME),
    Column("users", "version", "integer", notes="1 to 2**31 - 1; bumped by every write"),
    Column("users", "deleted_at", "timestamp", nullable=True, notes=f"{_TIME}; set while deleted"),
    Column(
        "users",
        "external_source",
        "text",
        nullable=True,
        max_length=64,
        notes="who issued external_id; set with it, or NULL with it",
    ),
    Column(
        "users",
        "external_id",
        "text",
        nullable=True,
        max_length=255,
        notes="unique with external_source where not NULL (users_external_id_key)",
    ),
    Column(
        "users",
        "attributes",
        "text",
        nullable=True,
        max_length=65536,
        notes="a JSON object as compact text, NULL when empty",
    ),
    Column("idempotency_keys", "key", "text", max_length=768, notes="primary key, exact"),
    Column("idempotency_keys", "fingerprint", "text", max_length=64),
    Column("idempotency_keys", "claimed_at", "timestamp", notes=_TIME),
    Column("idempotency_keys", "expires_at", "timestamp", notes=f"{_TIME}; indexed"),
    Column("idempotency_keys", "status", "integer", nullable=True, notes="NULL while running"),
    Column("idempotency_keys", "headers", "text", nullable=True, max_length=65536),
    Column("idempotency_keys", "body", "bytes", nullable=True, max_length=1048576),
    Column(
        "idempotency_keys",
        "user_id",
        "uuid",
        nullable=True,
        notes="the user the response is about; indexed",
    ),
    Column("encryption_keys", "name", "text", max_length=32, notes="primary key"),
    Column("encryption_keys", "purpose", "text", max_length=5, notes="'kek' or 'index'"),
    Column("encryption_keys", "fingerprint", "text", max_length=64),
    Column("encryption_keys", "created_at", "timestamp", notes=_TIME),
    Column("encryption_keys", "retired_at", "timestamp", nullable=True, notes=_TIME),
    Column(
        "encryption_keys",
        "home",
        "text",
        nullable=True,
        max_length=1,
        notes="a blind-index key's column: 'a' (email_normalized) or 'b' (email_index_next)",
    ),
    Column(
        "encryption_keys",
        "ready_at",
        "timestamp",
        nullable=True,
        notes=f"{_TIME}; when every user had a blind-index key's index (NULL while re-indexing)",
    ),
    Column("user_groups", "id", "uuid", notes="primary key"),
    Column("user_groups", "display_name", "text", max_length=200),
    Column(
        "user_groups",
        "display_name_folded",
        "text",
        max_length=400,
        notes="fold(display_name); unique (user_groups_display_name_folded_key)",
    ),
    Column(
        "user_groups",
        "external_id",
        "text",
        nullable=True,
        max_length=255,
        notes="unique where not NULL (user_groups_external_id_key)",
    ),
    Column(
        "user_groups", "roles", "text", max_length=4096, notes="a JSON array of role names, sorted"
    ),
    Column("user_groups", "created_at", "timestamp", notes=f"{_TIME}; indexed with id"),
    Column("user_groups", "updated_at", "timestamp", notes=_TIME),
    Column("user_groups", "version", "integer", notes="bumped by every write, membership included"),
    Column(
        "group_members",
        "group_id",
        "uuid",
        notes="primary key with user_id; references user_groups, gone with the group",
    ),
    Column(
        "group_members",
        "user_id",
        "uuid",
        notes="references users, gone with the user (purged); indexed with group_id",
    ),
    Column("group_members", "added_at", "timestamp", notes=_TIME),
)
