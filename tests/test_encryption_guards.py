"""What keeps sealed data whole against races and stale processes: two first starts,
a re-index cut short, a process whose keyring the database has moved past, an update
racing a backfill, a key announced during a rotation, purges racing stored responses,
and cursors or misconfigured keyrings that would tell more than they should.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from keyrings import opened
from test_encryption import stored

from userplane import NewUser, UserChanges, UserQuery
from userplane.emails import normalize_email
from userplane.errors import ConfigurationError, InvalidInput, Undecryptable
from userplane.idempotency import StoredResponse
from userplane.keyring import Keyring, NamedKey, new_key, parse_keys
from userplane.rotation import rotate
from userplane.sealed_storage import (
    INDEX_KEYS_SETTING,
    KEYS_SETTING,
    SealedStorage,
    fingerprint,
)
from userplane.sealing import Sealer, is_sealed
from userplane.storage import KeyRecord, Storage
from userplane.users import User, utcnow

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def _execute(database_url: str, statement: str) -> None:
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(statement)
        return
    with psycopg.connect(database_url) as conn:
        conn.execute(statement)


def test_two_blind_index_keys_recorded_in_force_are_refused(
    database_url: str, k1: NamedKey, i1: NamedKey, i2: NamedKey
) -> None:
    # As two first starts at once with different index keys leave them: both refuse.
    with opened(database_url, [k1], i1.entry()) as first:
        first.sealed.verify()
        first.storage.add_key_record(
            KeyRecord(i2.name, "index", fingerprint(i2), T0, home="a", ready_at=T0)
        )
    for index in (i1.entry(), i2.entry()):
        with (
            opened(database_url, [k1], index) as registry,
            pytest.raises(ConfigurationError) as info,
        ):
            registry.users.list(UserQuery())
        assert "both recorded in force" in info.value.detail


def test_a_re_index_cut_short_before_retiring_is_finished_by_running_rotate_again(
    database_url: str, k1: NamedKey, i1: NamedKey, i2: NamedKey
) -> None:
    with opened(database_url, [k1], i1.entry()) as first:
        ann = first.users.create(NewUser("Ann@Example.org"))
    moving = f"{i2.entry()},{i1.entry()}"
    with opened(database_url, [k1], moving) as registry:
        sealer = registry.sealed.sealer
        assert sealer is not None
        # The walk done and the new key recorded ready, then the run died before
        # retiring the old one: both are recorded in force.
        rotate(registry.storage, sealer, utcnow, plan=registry.sealed.plan)
    _execute(
        database_url,
        f"UPDATE encryption_keys SET retired_at = NULL WHERE name = '{i1.name}'",
    )
    # The old key alone is refused: it would key users by an index no longer kept.
    with (
        opened(database_url, [k1], i1.entry()) as old,
        pytest.raises(ConfigurationError, match="both recorded in force"),
    ):
        old.users.get(ann.id)
    # The transition keyring serves (the new index is complete), and rotate finishes.
    with opened(database_url, [k1], moving) as again:
        assert again.users.get_by_email("ann@example.org") == ann
        report = rotate(again.storage, again.sealed.sealer, utcnow)  # type: ignore[arg-type]
        assert report.retired == (i1.name,)
    with opened(database_url, [k1], i2.entry()) as after:
        assert after.users.get_by_email("ANN@example.org") == ann


def test_a_process_the_database_has_moved_past_refuses_and_says_so_in_its_readiness(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from userplane import sealed_storage

    monkeypatch.setattr(sealed_storage, "RECHECK_S", 0.0)
    with opened(database_url, [k1], i1.entry()) as stale:
        ann = stale.users.create(NewUser("ann@example.org"))
        assert all(c.ok for c in stale.check())
        with opened(database_url, [k2, k1], i1.entry()) as rotating:
            report = rotate(rotating.storage, rotating.sealed.sealer, utcnow)  # type: ignore[arg-type]
            assert report.retired == ("kek-1",)
        # The stale process would wrap new users under the retired key: it refuses.
        with pytest.raises(ConfigurationError, match="was retired"):
            stale.users.create(NewUser("bob@example.org"))
        checks = {c.name: c for c in stale.check()}
        assert not checks["encryption"].ok
        assert "was retired" in (checks["encryption"].error or "")
        with pytest.raises(ConfigurationError):
            stale.users.get(ann.id)


class _ResealsBetween:
    """A raw storage that lets a backfill seal the user between an update's read and write."""

    def __init__(self, inner: Storage, reseal: Any) -> None:
        self._inner = inner
        self._reseal = reseal
        self.reads = 0

    def get_user(self, user_id: uuid.UUID, include_deleted: bool = False) -> User | None:
        user = self._inner.get_user(user_id, include_deleted)
        self.reads += 1
        if self.reads == 1 and user is not None:
            self._reseal(user)
        return user

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_an_update_racing_the_backfill_leaves_the_user_whole_and_loses_nothing(
    database_url: str, k1: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, None, None) as plain:
        ann = plain.users.create(NewUser("ann@example.org", "Ann Before"))
    keyring = Keyring((k1,), (i1,), plain_before=True)
    with opened(database_url, [k1], f"{i1.entry()},plain") as registry:
        sealer = Sealer(keyring)

        def backfill_meanwhile(user: User) -> None:
            # The backfill seals the user (another data key), and another writer renames it.
            key = sealer.new_data_key(user.id)
            fields = sealer.seal_fields(
                user.id, key, {"email": user.email, "full_name": user.full_name}
            )
            assert registry.storage.reseal_user(user.id, user.version, fields, None)
            registry.users.update(user.id, UserChanges(full_name="Ann Renamed"))

        racing = SealedStorage(
            _ResealsBetween(registry.storage, backfill_meanwhile),  # type: ignore[arg-type]
            sealer,
            utcnow,
        )
        updated = racing.update_user(
            ann.id,
            {"email": "ann.new@example.org"},
            normalize_email("ann.new@example.org"),
            None,
            utcnow(),
        )
        # Sealed again after the rename was read: both fields open, the rename kept.
        assert (updated.email, updated.full_name) == ("ann.new@example.org", "Ann Renamed")
        assert registry.users.get(ann.id) == updated
        assert is_sealed(stored(registry, ann.id).full_name or "")


def test_a_key_recorded_during_a_rotation_is_not_retired_by_it(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, [k1], i1.entry()) as first:
        for n in range(6):
            first.users.create(NewUser(f"u{n}@example.org"))
    k3 = new_key("kek-3")
    with opened(database_url, [k2, k1], i1.entry()) as registry:
        sealer = registry.sealed.sealer
        assert sealer is not None
        announced: list[bool] = []

        def newer_instance_starts(_: int) -> None:
            if not announced:
                announced.append(True)
                # An instance with a newer keyring starts: its key is recorded.
                with opened(database_url, [k3, k2, k1], i1.entry()) as newer:
                    newer.sealed.verify()

        report = rotate(registry.storage, sealer, utcnow, batch=2, progress=newer_instance_starts)
        assert report.retired == ("kek-1",)
        records = {r.name: r for r in registry.storage.key_records()}
        assert records["kek-3"].retired_at is None
        assert records["kek-2"].retired_at is None


def test_a_response_completed_while_its_user_is_purged_goes_with_it(
    database_url: str,
) -> None:
    with opened(database_url, None, None) as registry:
        storage = registry.storage
        gone = registry.users.create(NewUser("gone@example.org"))
        registry.users.delete(gone.id)
        assert storage.claim_idempotency_key("late", "fp", T0, T0 + timedelta(days=9), T0)
        assert registry.users.purge(timedelta(0)) == 1
        # Completed after the user went: the orphan is removed by the next purge.
        storage.complete_idempotency_key("late", StoredResponse(201, (), b"{}", gone.id))
        registry.users.purge(timedelta(0))
        assert storage.get_idempotency_record("late", T0) is None


def test_a_reclaimed_key_no_longer_names_the_user_of_its_expired_response(
    database_url: str,
) -> None:
    with opened(database_url, None, None) as registry:
        storage = registry.storage
        old = registry.users.create(NewUser("old@example.org"))
        assert storage.claim_idempotency_key("k", "fp", T0, T0 + timedelta(hours=1), T0)
        storage.complete_idempotency_key("k", StoredResponse(201, (), b"{}", old.id))
        later = T0 + timedelta(hours=2)
        assert storage.claim_idempotency_key("k", "fp2", later, later + timedelta(hours=1), later)
        registry.users.delete(old.id)
        registry.users.purge(timedelta(0))
        # The new request's claim is not the old user's: the purge left it.
        record = storage.get_idempotency_record("k", later)
        assert record is not None
        assert record.fingerprint == "fp2"


def test_a_cursor_cannot_tell_a_deleted_user_from_none(database_url: str) -> None:
    with opened(database_url, None, None) as registry:
        users = [registry.users.create(NewUser(f"c{n}@example.org")) for n in range(3)]
        registry.users.delete(users[1].id)
        from userplane.pagination import Position, Sort, encode_cursor

        def fault(user_id: uuid.UUID, include_deleted: bool) -> str:
            cursor = encode_cursor(Sort("email"), Position(None, user_id))
            with pytest.raises(InvalidInput) as info:
                registry.users.list(
                    UserQuery(sort="email", cursor=cursor, include_deleted=include_deleted)
                )
            return info.value.detail

        assert fault(users[1].id, False) == fault(uuid.uuid4(), False)
        # An administrator's list that shows deleted users continues from one.
        cursor = encode_cursor(Sort("email"), Position(None, users[1].id))
        page = registry.users.list(UserQuery(sort="email", cursor=cursor, include_deleted=True))
        assert [u.id for u in page.items] == [users[2].id]


def test_a_key_may_not_be_called_plain() -> None:
    with pytest.raises(ValueError, match="not plain"):
        new_key("plain")
    with pytest.raises(ValueError, match="not plain"):
        parse_keys(f"plain:{new_key('x').entry().partition(':')[2]}")


def test_sealed_rows_without_their_key_records_are_never_shown_as_addresses(
    database_url: str, k1: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, [k1], i1.entry()) as sealed:
        ann = sealed.users.create(NewUser("ann@example.org"))
    # The users table restored alone: the records of its keys are gone.
    _execute(database_url, "DELETE FROM encryption_keys")
    with (
        opened(database_url, None, None) as keyless,
        pytest.raises(Undecryptable, match="no keyring is configured"),
    ):
        keyless.users.get(ann.id)


def test_status_records_nothing_and_shows_the_keys_it_would_record(
    database_url: str, k1: NamedKey, i1: NamedKey
) -> None:
    from click.testing import CliRunner

    from userplane.frontends.cli import cli

    with opened(database_url, None, None):
        pass
    env = {
        "USERPLANE_DATABASE_URL": database_url,
        KEYS_SETTING: k1.entry(),
        INDEX_KEYS_SETTING: i1.entry(),
        "USERPLANE_ENV_FILE": "/nonexistent",
    }
    result = CliRunner().invoke(cli, ["encryption", "status", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    with opened(database_url, None, None) as registry:
        assert registry.storage.key_records() == []
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert {(r["name"], r["state"]) for r in rows} == {
        (k1.name, "not recorded"),
        (i1.name, "not recorded"),
    }
