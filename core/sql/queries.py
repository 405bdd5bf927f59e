"""Named SQL queries kept in ``.sql`` files, for storage plugins.

A file holds blocks that each start with a ``-- name: NAME`` line; the text up
to the next such line is that query. Keeping SQL in its own file lets it be
read, reviewed and ``EXPLAIN``ed as SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.resources import files

import attrs

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split ``text`` into ``{name: sql}``; comment-only lines are kept, blanks trimmed."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


def load_queries(package: str, resource: str = "queries.sql") -> dict[str, str]:
    """The named queries of ``resource`` shipped inside ``package``."""
    return parse_queries(files(package).joinpath(resource).read_text(encoding="utf-8"))


@attrs.frozen
class NamedQuery:
    """One statement a ``SQLStorage`` subclass supplies in its ``queries``."""

    name: str
    #: The named parameters it takes.
    params: tuple[str, ...]
    #: What it must do and return.
    result: str


_USER = "one row of USER_COLUMNS"
_WRITE = f"{_USER} (RETURNING), or none if nothing matched; without RETURNING: no rows"

#: Every named query the kit runs, with its parameters and result. A store's
#: ``queries`` must hold each of them (``check_queries``); the list query is
#: composed by the kit (``userplane.sql.list_users_sql``) and is not among them.
NAMED_QUERIES: tuple[NamedQuery, ...] = (
    NamedQuery(
        "insert_user",
        (
            "id",
            "email",
            "email_key",
            "email_next",
            "full_name",
            "full_name_folded",
            "is_active",
            "created_at",
            "updated_at",
            "version",
            "external_source",
            "external_id",
            "attributes",
        ),
        f"insert a row (email_index_next = email_next); {_WRITE}; a taken email_normalized, "
        "email_index_next or (external_source, external_id) raises Conflict",
    ),
    NamedQuery(
        "get_user", ("id", "include_deleted"), f"{_USER}, or none; deleted only if include_deleted"
    ),
    NamedQuery(
        "lock_user",
        ("id",),
        f"{_USER} (deleted too), or none, locked for the rest of the transaction "
        "(FOR UPDATE where the database locks rows)",
    ),
    NamedQuery(
        "get_user_by_email",
        ("email_key", "include_deleted"),
        f"{_USER} whose email_normalized is email_key (exact, binary comparison), or none",
    ),
    NamedQuery(
        "get_user_by_email_keys",
        ("email_key", "email_next", "include_deleted"),
        f"{_USER} whose email_normalized is email_key or whose email_index_next is "
        "email_next (exact), in one statement, or none",
    ),
    NamedQuery(
        "update_user",
        (
            "id",
            "expected_version",
            "now",
            "set_email",
            "email",
            "email_key",
            "email_next",
            "set_full_name",
            "full_name",
            "full_name_folded",
            "set_is_active",
            "is_active",
            "set_external",
            "external_source",
            "external_id",
            "set_attributes",
            "attributes",
        ),
        "one conditional UPDATE of a live user (version = expected_version when that is not "
        "NULL): set each field whose set_<field> is true (the email with email_normalized = "
        "email_key and email_index_next = email_next; external_source with external_id), "
        f"version + 1, updated_at = now; {_WRITE}",
    ),
    NamedQuery(
        "delete_user",
        ("id", "expected_version", "now"),
        f"set deleted_at = updated_at = now, version + 1, of a live user, conditionally; {_WRITE}",
    ),
    NamedQuery(
        "restore_user",
        ("id", "now"),
        f"clear deleted_at, updated_at = now, version + 1, of a deleted user; {_WRITE}",
    ),
    NamedQuery("purge_users", ("before",), "delete users with deleted_at < before; the row count"),
    NamedQuery(
        "deleted_user_ids",
        ("before", "limit"),
        "the ids of at most limit users with deleted_at < before, by id",
    ),
    NamedQuery(
        "purge_user_responses",
        ("before",),
        "delete the idempotency keys whose user_id is a user purge_users(before) will delete",
    ),
    NamedQuery(
        "purge_user", ("id",), "delete the user with id if deleted_at is set; the row count"
    ),
    NamedQuery(
        "purge_orphan_responses",
        (),
        "delete the idempotency keys whose user_id is not NULL and names no user; the kit "
        "runs it after purge_users",
    ),
    NamedQuery(
        "reseal_user",
        (
            "id",
            "version",
            "set_email",
            "email",
            "email_key",
            "email_next",
            "set_full_name",
            "full_name",
            "full_name_folded",
        ),
        "one UPDATE of the user at version, deleted or not: set email (and full_name with "
        "full_name_folded) when its set_ flag is true, email_normalized = email_key and "
        "email_index_next = email_next, each unless NULL; "
        "version and updated_at unchanged; the count of rows it matched (not only changed)",
    ),
    NamedQuery("user_version", ("id",), "the version of a live user (one column), or none"),
    NamedQuery(
        "claim_idempotency_key",
        ("key", "fingerprint", "now", "expires_at", "stale_before"),
        "one upsert: insert the key, or take it over when expires_at <= now or it is unfinished "
        "(status NULL) and claimed_at < stale_before, clearing status, headers, body and "
        "user_id; "
        "a row (RETURNING key) or, without RETURNING, a non-zero row count when claimed",
    ),
    NamedQuery(
        "get_idempotency_record",
        ("key", "now"),
        "fingerprint, status, headers, body, user_id of an unexpired key (expires_at > now), "
        "or none",
    ),
    NamedQuery(
        "complete_idempotency_key",
        ("key", "status", "headers", "body", "user_id"),
        "store the response of a claimed key, and the user it is about",
    ),
    NamedQuery(
        "release_idempotency_key", ("key",), "delete the key if it is unfinished (status NULL)"
    ),
    NamedQuery(
        "purge_idempotency_keys", ("now",), "delete keys with expires_at <= now; the row count"
    ),
    NamedQuery("count_users", (), "the number of users, deleted ones included (one column)"),
    NamedQuery(
        "key_records",
        (),
        "name, purpose, fingerprint, created_at, retired_at, home, ready_at of every "
        "encryption key, "
        "by name (code point order)",
    ),
    NamedQuery(
        "add_key_record",
        ("name", "purpose", "fingerprint", "created_at", "home", "ready_at"),
        "insert an encryption key unless its name is taken (no error then); the row count",
    ),
    NamedQuery(
        "retire_key_record", ("name", "at"), "set retired_at = at of the key, unless retired"
    ),
    NamedQuery("mark_key_ready", ("name", "at"), "set ready_at = at of the key, unless set"),
    NamedQuery(
        "index_entries",
        ("after", "limit"),
        "at most limit rows of USER_COLUMNS then email_normalized, email_index_next, of every "
        "user (deleted too) whose id > after (all when after is NULL), ordered by id",
    ),
)


def check_queries(queries: Mapping[str, str]) -> list[str]:
    """The names of ``NAMED_QUERIES`` missing from ``queries``."""
    return [q.name for q in NAMED_QUERIES if q.name not in queries]
