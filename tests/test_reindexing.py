"""Re-indexing while the service runs: sealing a plaintext database (a backfill) and moving
the blind index to a new key, on real SQLite and PostgreSQL.

Throughout, lookups by email find every user, the unique email holds (the database
decides, as ever), and nothing written meanwhile is lost; afterwards no plaintext and
no old index value is left in the database.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from keyrings import opened
from test_encryption import dump, leaks, stored

from userplane import NewUser, Registry, UserChanges
from userplane.emails import normalize_email
from userplane.errors import ConfigurationError, Conflict
from userplane.keyring import NamedKey
from userplane.rotation import rotate
from userplane.sealing import Sealer, is_sealed
from userplane.users import utcnow

NAMES = [f"Person{n} Example" for n in range(12)]
EMAILS = [f"Person{n}.Example@Example.org" for n in range(12)]


def audit_fields(registry: Registry) -> list[tuple[str, str, dict[str, Any]]]:
    """Every audit event's target id, action and fields, as stored."""
    from userplane.sql import SQLStorage

    storage = registry.storage
    assert isinstance(storage, SQLStorage)
    rows = storage.fetch_all("SELECT target_id, action, fields FROM audit_events", {})
    return [(str(t), a, json.loads(f)) for t, a, f in rows]


def _index_values(registry: Registry) -> list[tuple[str, str | None]]:
    out = []
    after = None
    while page := registry.storage.index_entries(after, 100):
        out += [(e.email_key, e.next_key) for e in page]
        after = page[-1].user.id
    return out


def test_a_backfill_seals_a_plaintext_database_while_it_serves(
    database_url: str, k1: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, None, None) as plain:
        users = [plain.users.create(NewUser(e, n)) for e, n in zip(EMAILS, NAMES, strict=True)]
        plain.users.delete(users[3].id)  # deleted users are sealed too

    # Keys alone over plaintext users: refused, saying how to backfill.
    with (
        opened(database_url, [k1], i1.entry()) as refused,
        pytest.raises(ConfigurationError) as info,
    ):
        refused.users.get(users[0].id)
    assert f"{i1.name},plain" in info.value.detail
    assert "userplane encryption backfill" in info.value.detail

    with opened(database_url, [k1], f"{i1.entry()},plain") as registry:
        # While under way: plain and sealed users side by side, all found by email.
        assert registry.users.get(users[0].id) == users[0]
        assert registry.users.get_by_email(EMAILS[1].upper()) == users[1]
        with pytest.raises(Conflict):
            registry.users.create(NewUser(EMAILS[2].lower()))
        fresh = registry.users.create(NewUser("Fresh.Person@Example.org", "Fresh Person"))
        assert is_sealed(stored(registry, fresh.id).email)
        with pytest.raises(Conflict):
            registry.users.create(NewUser("fresh.person@example.org"))
        # A plain user written now is sealed whole, name included.
        renamed = registry.users.update(users[4].id, UserChanges(full_name="Renamed Person"))
        assert is_sealed(stored(registry, users[4].id).full_name or "")
        assert registry.users.get_by_email(EMAILS[4]) == renamed

        report = rotate(registry.storage, registry.sealed.sealer, utcnow, batch=5)  # type: ignore[arg-type]
        assert report.sealed == len(EMAILS) - 1  # users[4] was sealed by its update
        assert report.indexed == i1.name
        sealer = registry.sealed.sealer
        assert sealer is not None
        for email_key, next_key in _index_values(registry):
            assert next_key == email_key  # the blind index, in both columns
            assert len(email_key) == 43
        assert registry.users.get_by_email(EMAILS[5].lower()) == users[5]

    # Finished: the plain entry may go; everything reads and nothing is in clear.
    with opened(database_url, [k1], i1.entry()) as after:
        for user in users:
            if user.id != users[3].id:
                assert after.users.get_by_email(user.email).id == user.id
        assert after.users.get(users[3].id, include_deleted=True).email == users[3].email
        with pytest.raises(Conflict):
            after.users.create(NewUser(EMAILS[0].upper()))
    # The audit trail is append-only and hash-chained: the events recorded before the keys
    # were configured stay as they were recorded (docs/audit.md, "Personal data and
    # erasure"); every other row is sealed, and so is every event recorded since.
    written = [*EMAILS, *NAMES, "Fresh.Person@Example.org"]
    assert leaks(dump(database_url, without_rows_of="audit_events"), written) == []
    with opened(database_url, [k1], i1.entry()) as after:
        since = [
            e
            for e in audit_fields(after)
            if e[0] == str(fresh.id) or (e[0] == str(users[4].id) and e[1] == "user.updated")
        ]
        assert since, "the writes made with the keys on were recorded"
        for _, action, fields in since:
            if action in ("user.created", "user.updated"):
                for name in ("email", "full_name"):
                    if name in fields:
                        assert fields[name].get("sealed") is True, (action, name)
        assert (
            leaks(str(since), ["Fresh.Person@Example.org", "Fresh Person", "Renamed Person"]) == []
        )
    # A plaintext process may not serve the sealed database any more.
    with opened(database_url, None, None) as plain, pytest.raises(ConfigurationError):
        plain.users.get(users[0].id)


def test_moving_the_blind_index_to_a_new_key_keeps_lookups_and_uniqueness(
    database_url: str, k1: NamedKey, i1: NamedKey, i2: NamedKey
) -> None:
    with opened(database_url, [k1], i1.entry()) as first:
        users = [first.users.create(NewUser(e, n)) for e, n in zip(EMAILS, NAMES, strict=True)]
    # The new key alone: refused, saying how to move.
    with (
        opened(database_url, [k1], i2.entry()) as alone,
        pytest.raises(ConfigurationError) as info,
    ):
        alone.users.get(users[0].id)
    assert f"{i2.name},{i1.name}" in info.value.detail

    moving = f"{i2.entry()},{i1.entry()}"
    with opened(database_url, [k1], moving) as registry:
        made = registry.users.create(NewUser("Made.During@Example.org"))
        assert registry.users.get_by_email("made.during@example.org") == made
        with pytest.raises(Conflict):
            registry.users.create(NewUser(EMAILS[0].upper()))
        # Meanwhile the old key alone is refused: it would miss the users moved already.
        with (
            opened(database_url, [k1], i1.entry()) as old,
            pytest.raises(ConfigurationError) as info,
        ):
            old.users.get(users[0].id)
        assert "under way" in info.value.detail

        report = rotate(registry.storage, registry.sealed.sealer, utcnow, batch=4)  # type: ignore[arg-type]
        assert report.indexed == i2.name
        assert report.retired == (i1.name,)
        new_index = Sealer.index_under(i2)
        expected = {new_index(normalize_email(e)) for e in [*EMAILS, made.email]}
        assert {a for a, _ in _index_values(registry)} == expected
        assert {b for _, b in _index_values(registry)} == expected

    with opened(database_url, [k1], i2.entry()) as after:
        for user in users:
            assert after.users.get_by_email(user.email.lower()) == user
        with pytest.raises(Conflict):
            after.users.create(NewUser(EMAILS[1].lower()))
    with (
        opened(database_url, [k1], i1.entry()) as retired,
        pytest.raises(ConfigurationError) as info,
    ):
        retired.users.get(users[0].id)
    assert "retired" in info.value.detail


@pytest.mark.parametrize("move", ["backfill", "new index key"])
def test_a_re_index_under_concurrent_writes_loses_nothing_and_keeps_emails_unique(
    postgresql_url: str, k1: NamedKey, i1: NamedKey, i2: NamedKey, move: str
) -> None:
    before_ring, during = (
        (None, f"{i1.entry()},plain")
        if move == "backfill"
        else (i1.entry(), f"{i2.entry()},{i1.entry()}")
    )
    with opened(postgresql_url, None if before_ring is None else [k1], before_ring) as first:
        users = [
            first.users.create(NewUser(f"seed{n}@example.org", f"Seed {n}")) for n in range(60)
        ]
    with opened(postgresql_url, [k1], during) as registry:
        stop = threading.Event()
        expected: dict[uuid.UUID, str] = {u.id: u.email for u in users}
        claims: dict[str, list[uuid.UUID]] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def write(worker: int) -> None:
            n = 0
            try:
                while not stop.is_set():
                    user = users[(worker * 7 + n) % len(users)]
                    email = f"w{worker}-{n}@Example.org"
                    registry.users.update(user.id, UserChanges(email=email))
                    with lock:
                        expected[user.id] = email
                    # Two workers race for one new address: exactly one may have it.
                    contested = f"race{n}@example.org"
                    try:
                        made = registry.users.create(
                            NewUser(contested.upper() if worker else contested)
                        )
                    except Conflict:
                        pass
                    else:
                        with lock:
                            claims.setdefault(contested, []).append(made.id)
                    n += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        try:
            report = rotate(registry.storage, registry.sealed.sealer, utcnow, batch=16)  # type: ignore[arg-type]
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert errors == []
        assert report.indexed == i1.name if move == "backfill" else i2.name
        assert all(len(ids) == 1 for ids in claims.values())
        # Every write is there, found by its email, sealed.
        for user_id, email in expected.items():
            assert registry.users.get_by_email(email.lower()).id == user_id
            assert is_sealed(stored(registry, user_id).email)
    final = i1.entry() if move == "backfill" else i2.entry()
    with opened(postgresql_url, [k1], final) as after:
        for user_id, email in expected.items():
            assert after.users.get_by_email(email).id == user_id
        for contested in claims:
            with pytest.raises(Conflict):
                after.users.create(NewUser(contested))
