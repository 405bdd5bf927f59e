"""The audit plugin: one event per change in the change's transaction, and a chain that holds.

Writes only insert their events; they are linked into the chain after commit,
by a read (``events``, ``verify``), by ``chained`` here, or by a serving
process's chainer. Every test taking ``database_url`` runs on SQLite and
PostgreSQL (``conftest.py``).
Tampering is done as an intruder would: raw SQL on the plugin's tables, then
``verify`` must name the first event that no longer holds. The HTTP and CLI
frontends are in ``test_audit_http.py`` and ``test_audit_cli.py``, which use the
helpers here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from userplane import Registry, Settings
from userplane.frontends.http.testing import PrincipalTokens
from userplane.keyring import NamedKey
from userplane.plugin import (
    ConfigurationError,
    Conflict,
    NotFound,
    PreconditionFailed,
    Unavailable,
    UserChanges,
)
from userplane.plugins import api_keys, audit
from userplane.plugins.audit import trail_of
from userplane.plugins.audit.chain import Head
from userplane.plugins.audit.events import GENESIS
from userplane.plugins.audit.heads import HeadLogger
from userplane.plugins.audit.query import parse_query
from userplane.plugins.audit.trail import AuditTrail
from userplane.sealed_storage import INDEX_KEYS_SETTING, KEYS_SETTING
from userplane.users import NewUser

MakeRegistry = Callable[..., Registry]


# -- helpers (the HTTP and CLI tests import them) --------------------------------------------

#: How long a test lets chaining wait for transactions of other sessions to finish: on
#: PostgreSQL the horizon is the cluster's, so another database's long transaction delays it.
CATCH_UP = 30.0


@contextlib.contextmanager
def opened(database_url: str, **env: str) -> Iterator[Registry]:
    """A migrated registry with the audit plugin (and test tokens), ``env`` as extra settings."""
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": database_url, **env})
    with Registry(settings, plugins=[audit, PrincipalTokens()]) as registry:
        registry.migrate()
        trail_of(registry).read_wait = CATCH_UP
        yield registry


def encryption_env(keys: Sequence[NamedKey], index: NamedKey) -> dict[str, str]:
    """The settings that turn personal-data encryption on with these keys."""
    return {KEYS_SETTING: ",".join(k.entry() for k in keys), INDEX_KEYS_SETTING: index.entry()}


def events(registry: Registry, **filters: str) -> list[dict[str, Any]]:
    """Every event matching ``filters``, oldest first, as readers see them."""
    query = {k.replace("-", "_"): v for k, v in filters.items()}
    out: list[dict[str, Any]] = []
    # An event is listed once every transaction older than it has ended, in any database
    # of the cluster: beside other suites' transactions, that may take longer than a
    # reader's own wait.
    trail_of(registry).catch_up(wait=30)
    while True:
        page = trail_of(registry).list(parse_query({**query, "limit": "500"}))
        out += page.items
        if page.next is None:
            return out
        query["cursor"] = page.next


def sql(registry: Registry, statement: str, **params: Any) -> int:
    """Run raw SQL (``:name`` parameters) on the registry's database: the intruder's tool."""
    storage: Any = registry.storage
    return int(storage.execute(storage.dialect.compile(statement), storage.params(params)))


def rows(registry: Registry, statement: str, **params: Any) -> list[Sequence[Any]]:
    storage: Any = registry.storage
    return list(storage.fetch_all(storage.dialect.compile(statement), storage.params(params)))


def chained(registry: Registry) -> int:
    """Link every committed event into the chain now, as a read does; how many were linked."""
    result = trail_of(registry).catch_up()
    assert result.refused is None, result.refused
    return result.count


def head(registry: Registry) -> Head:
    """The chain head once everything finished is chained."""
    chained(registry)
    return trail_of(registry).head()


def verified(registry: Registry) -> int:
    """Verify the chain, which must hold; how many events it walked."""
    result = trail_of(registry).verify()
    assert result.ok, result.summary()
    return result.count


@pytest.fixture
def make_registry(database_url: str) -> Iterator[MakeRegistry]:
    """Registries over this test's database with the audit plugin; closed afterwards."""
    with contextlib.ExitStack() as stack:

        def make(**env: str) -> Registry:
            return stack.enter_context(opened(database_url, **env))

        yield make


@pytest.fixture
def reg(make_registry: MakeRegistry) -> Registry:
    return make_registry()


# -- what is recorded ------------------------------------------------------------------------


def test_every_user_action_writes_exactly_one_event_with_before_and_after(reg: Registry) -> None:
    users = reg.users
    ann = users.create(NewUser("ann@example.org", "Ann"))
    updated = users.update(ann.id, UserChanges(full_name="Anna", is_active=False))
    deleted = users.delete(ann.id)
    restored = users.restore(ann.id)
    users.delete(ann.id)
    users.purge_user(ann.id)  # shred
    bob = users.create(NewUser("bob@example.org"))
    users.delete(bob.id)
    assert users.purge(timedelta(0)) == 1

    got = events(reg)
    assert [e["action"] for e in got] == [
        "user.created",
        "user.updated",
        "user.deleted",
        "user.restored",
        "user.deleted",
        "user.purged",
        "user.created",
        "user.deleted",
        "user.purged",
    ]
    assert [e["seq"] for e in got] == list(range(1, 10))
    created, update, delete, restore = got[:4]
    assert created["changes"] == {
        "email": {"before": None, "after": "ann@example.org"},
        "full_name": {"before": None, "after": "Ann"},
        "is_active": {"before": None, "after": True},
        "version": {"before": None, "after": 1},
    }
    assert update["changes"] == {
        "full_name": {"before": "Ann", "after": "Anna"},
        "is_active": {"before": True, "after": False},
        "version": {"before": 1, "after": 2},
    }
    assert delete["changes"]["deleted_at"]["before"] is None
    assert delete["changes"]["deleted_at"]["after"].startswith(
        deleted.deleted_at.strftime("%Y-%m-%dT%H:%M:%S")  # type: ignore[union-attr]
    )
    assert restore["changes"]["deleted_at"]["after"] is None
    assert restore["changes"]["version"] == {"before": 3, "after": restored.version}
    assert updated.version == 2
    for event in got:
        assert event["target"]["type"] == "user"
        assert event["user_id"] == event["target"]["id"]
        assert event["actor"] is None  # code embedding the core acts without a principal
    # An erasure keeps nothing of what it erased.
    assert got[5]["changes"] == {}
    assert got[8]["changes"] == {}
    assert got[8]["user_id"] == str(bob.id)
    assert verified(reg) == 9


def test_api_keys_created_and_revoked_are_recorded_without_their_secret(reg: Registry) -> None:
    service = api_keys.service(reg)
    record, key = service.create("ci", "viewer")
    service.revoke(record.id)
    service.revoke(record.id)  # again: nothing changes, nothing is recorded
    created, revoked = events(reg, target_type="api_key")
    assert created["action"] == "api_key.created"
    assert revoked["action"] == "api_key.revoked"
    assert created["target"] == {"type": "api_key", "id": str(record.id)}
    assert created["changes"]["role"] == {"before": None, "after": "viewer"}
    assert revoked["changes"]["revoked_at"]["before"] is None
    assert revoked["changes"]["revoked_at"]["after"] is not None
    assert created["user_id"] is None
    dump = json.dumps(list(trail_of(reg).export()))
    assert key not in dump
    assert key[3:] not in dump
    assert verified(reg) == 2


def test_actor_and_request_context_are_recorded(reg: Registry) -> None:
    from userplane.plugin import Principal, acting_as, request_context

    someone = Principal(id="key:0f0f", kind="key", roles=frozenset({"admin"}))
    with (
        acting_as(someone),
        request_context(request_id="req-1", client_address="203.0.113.7", trace_id="ab" * 16),
    ):
        reg.users.create(NewUser("ctx@example.org"))
    [event] = events(reg)
    assert event["actor"] == "key:0f0f"
    assert event["actor_kind"] == "key"
    assert event["request_id"] == "req-1"
    assert event["client_address"] == "203.0.113.7"
    assert event["trace_id"] == "ab" * 16


def test_a_failing_write_leaves_no_event(reg: Registry) -> None:
    users = reg.users
    ann = users.create(NewUser("ann@example.org"))
    bob = users.create(NewUser("bob@example.org"))
    before = head(reg)
    with pytest.raises(Conflict):
        users.create(NewUser("ANN@example.org"))
    with pytest.raises(Conflict):
        users.update(bob.id, UserChanges(email="ann@example.org"))
    with pytest.raises(PreconditionFailed):
        users.update(ann.id, UserChanges(full_name="Stale"), expected_version=7)
    with pytest.raises(PreconditionFailed):
        users.delete(ann.id, expected_version=7)
    with pytest.raises(NotFound):
        users.update(uuid.uuid4(), UserChanges(full_name="Nobody"))
    with pytest.raises(NotFound):
        users.delete(uuid.uuid4())
    with pytest.raises(NotFound):
        users.purge_user(ann.id)  # live: delete it first
    with pytest.raises(NotFound):
        api_keys.service(reg).revoke(uuid.uuid4())
    assert head(reg) == before
    assert len(events(reg)) == 2
    assert rows(reg, "SELECT count(*) FROM audit_events") == [(2,)]  # none unchained either
    # The next event follows on.
    users.update(ann.id, UserChanges(full_name="Ann"))
    assert [e["seq"] for e in events(reg)] == [1, 2, 3]
    assert verified(reg) == 3


def test_an_audit_failure_fails_the_write(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """No change without its event: a trail that cannot be written refuses the write."""
    ann = reg.users.create(NewUser("ann@example.org"))
    store = trail_of(reg).store

    def fail(*args: Any) -> None:
        raise Unavailable("the audit trail cannot be written")

    monkeypatch.setattr(store, "append", fail)
    with pytest.raises(Unavailable, match="audit trail"):
        reg.users.create(NewUser("lost@example.org"))
    with pytest.raises(Unavailable):
        reg.users.update(ann.id, UserChanges(full_name="Lost"))
    monkeypatch.undo()
    with pytest.raises(NotFound):
        reg.users.get_by_email("lost@example.org")
    assert reg.users.get(ann.id).full_name is None
    assert [e["seq"] for e in events(reg)] == [1]
    assert head(reg).seq == 1


# -- the chain ---------------------------------------------------------------------------------


def test_the_hash_is_the_documented_construction(reg: Registry) -> None:
    """A third party recomputes every hash from an export with nothing but the docs' recipe."""
    reg.users.create(NewUser("zoë@example.org", "Zoë Ünïcödé"))
    reg.users.update(reg.users.get_by_email("zoë@example.org").id, UserChanges(full_name=None))
    header, *lines = trail_of(reg).export()
    assert header["start"] == {"seq": 0, "hash": GENESIS}
    prev = GENESIS
    for line in lines:
        body = {k: v for k, v in line.items() if k != "hash"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == line["hash"]
        assert line["prev_hash"] == prev
        assert len(line["occurred_at"]) == 27
        assert line["occurred_at"].endswith("Z")
        prev = line["hash"]
    assert "Zoë Ünïcödé" in json.dumps(lines, ensure_ascii=False)
    assert header["head"] == {"seq": 2, "hash": prev}


def test_event_times_come_from_the_database_clock_in_order(reg: Registry) -> None:
    for i in range(5):
        reg.users.create(NewUser(f"t{i}@example.org"))
    times = [e["occurred_at"] for e in events(reg)]
    assert times == sorted(times)
    now = trail_of(reg).store.now()
    assert all(t <= now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in times)


@pytest.fixture
def five(reg: Registry) -> Registry:
    """A registry whose chain holds five events."""
    for i in range(5):
        reg.users.create(NewUser(f"u{i}@example.org", f"User {i}"))
    assert chained(reg) == 5
    return reg


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "key:someone-else"),
        ("action", "user.updated"),
        ("fields", '{"email":{"after":"mallory@example.org","before":null}}'),
        ("fields", "not json"),
        ("target_id", "00000000-0000-0000-0000-000000000000"),
        ("request_id", "forged"),
        ("hash", "f" * 64),
    ],
)
def test_editing_a_column_fails_verification_naming_the_event(
    five: Registry, column: str, value: str
) -> None:
    [(event_id,)] = rows(five, "SELECT id FROM audit_events WHERE seq = 3")
    sql(five, f"UPDATE audit_events SET {column} = :value WHERE seq = 3", value=value)
    result = trail_of(five).verify()
    assert not result.ok
    assert result.broken is not None
    assert result.broken.seq == 3
    assert result.broken.id == str(event_id)
    assert "edited" in result.broken.problem
    assert result.summary().startswith(f"audit chain broken at seq 3 (event {event_id}):")


def test_editing_a_time_fails_verification(five: Registry) -> None:
    sql(
        five,
        "UPDATE audit_events SET occurred_at = (SELECT occurred_at FROM audit_events WHERE seq = 1)"
        " WHERE seq = 4",
    )
    broken = trail_of(five).verify().broken
    assert broken is not None
    assert broken.seq == 4
    assert "edited" in broken.problem


def test_removing_a_middle_event_fails_naming_the_gap(five: Registry) -> None:
    sql(five, "DELETE FROM audit_events WHERE seq = 3")
    broken = trail_of(five).verify().broken
    assert broken is not None
    assert broken.seq == 3
    assert "seq 3 missing" in broken.problem
    assert "removed" in broken.problem


def test_removing_and_renumbering_fails_at_the_link(five: Registry) -> None:
    """An intruder closing the gap by renumbering: the renumbered event no longer hashes."""
    sql(five, "DELETE FROM audit_events WHERE seq = 3")
    sql(five, "UPDATE audit_events SET seq = seq - 1 WHERE seq = 4")
    broken = trail_of(five).verify().broken
    assert broken is not None
    assert broken.seq == 3


def test_an_inserted_event_with_a_valid_hash_fails_at_its_link(five: Registry) -> None:
    """A forged event hashed correctly, put in place of one removed: its link gives it away."""
    trail = trail_of(five)
    [original] = list(trail.store.events_after(2, 3))
    forged = {**original.body(), "actor": "forged", "prev_hash": "a" * 64}
    from userplane.plugins.audit.events import hash_of

    sql(
        five,
        "UPDATE audit_events SET actor = 'forged', prev_hash = :prev, hash = :hash WHERE seq = 3",
        prev="a" * 64,
        hash=hash_of(forged),
    )
    broken = trail.verify().broken
    assert broken is not None
    assert broken.seq == 3
    assert "prev_hash" in broken.problem


def test_cutting_the_tail_is_caught_by_the_head_and_by_an_expected_head(five: Registry) -> None:
    trail = trail_of(five)
    logged = trail.head()
    assert logged.seq == 5
    sql(five, "DELETE FROM audit_events WHERE seq >= 4")
    broken = trail.verify().broken
    assert broken is not None
    assert broken.seq == 4
    assert "from the end" in broken.problem
    # The intruder moves the head back too: the chain holds, but not the head logged before.
    [(seq3_hash,)] = rows(five, "SELECT hash FROM audit_events WHERE seq = 3")
    sql(five, "UPDATE audit_chain SET seq = 3, hash = :hash", hash=seq3_hash)
    assert trail.verify().ok
    expected = trail.verify(logged)
    assert expected.broken is not None
    assert expected.broken.seq == 5
    assert "missing" in expected.broken.problem
    # A head logged earlier that is still there holds.
    assert trail.verify(Head(3, seq3_hash)).ok
    assert not trail.verify(Head(3, "0" * 63 + "1")).ok


def test_a_rewritten_chain_fails_the_expected_head(five: Registry) -> None:
    trail = trail_of(five)
    logged = trail.head()
    sql(five, "DELETE FROM audit_events")
    sql(five, "UPDATE audit_chain SET seq = 0, hash = :genesis", genesis=GENESIS)
    for i in range(5):
        five.users.create(NewUser(f"again{i}@example.org"))
    assert trail.verify().ok  # a chain of its own that holds, but not the one logged
    result = trail.verify(logged)
    assert result.broken is not None
    assert "rewritten" in result.broken.problem


def test_expect_parses_seq_colon_hash() -> None:
    assert Head.parse(f"12:{'A' * 64}") == Head(12, "a" * 64)
    for bad in ("12", f"x:{'a' * 64}", "12:abc", f"-1:{'a' * 64}", f"12:{'g' * 64}"):
        with pytest.raises(ValueError, match="SEQ:HASH"):
            Head.parse(bad)


def test_a_missing_head_row_stops_chaining_and_never_forks(five: Registry) -> None:
    sql(five, "DELETE FROM audit_chain")
    result = trail_of(five).verify()
    assert result.broken is not None
    assert "head row is missing" in result.broken.problem
    # Writers never touch the head: the write succeeds. Chaining again would restart at seq
    # 1, which is taken: nothing is chained, the event waits, and the chain never forks.
    user = five.users.create(NewUser("fork@example.org"))
    assert trail_of(five).chain().refused == "the chain head row is missing"
    assert rows(
        five, "SELECT seq, hash FROM audit_events WHERE target_id = :t", t=str(user.id)
    ) == [(None, None)]
    assert [e["seq"] for e in events(five)] == [1, 2, 3, 4, 5]
    # The head restored by hand: the chain goes on from it.
    sql(
        five,
        "INSERT INTO audit_chain (id, seq, hash) SELECT 1, seq, hash FROM audit_events "
        "WHERE seq = 5",
    )
    assert verified(five) == 6


# -- pruning ---------------------------------------------------------------------------------


def _age(registry: Registry, *seqs: int) -> None:
    """Make events look a year old (their hashes stop matching: they are to be pruned)."""
    for seq in seqs:
        sql(
            registry,
            "UPDATE audit_events SET occurred_at = :old WHERE seq = :seq",
            old=trail_of(registry).store.now() - timedelta(days=365),
            seq=seq,
        )


def test_prune_removes_the_oldest_run_and_leaves_a_checkpoint_that_verifies(
    five: Registry,
) -> None:
    trail = trail_of(five)
    _age(five, 1, 2, 4)  # 4 is old, but 3 is not: only 1 and 2 go
    [(seq2_hash,)] = rows(five, "SELECT hash FROM audit_events WHERE seq = 2")
    pruned = trail.prune(timedelta(days=90))
    assert pruned.count == 2
    assert pruned.checkpoint is not None
    assert (pruned.checkpoint.seq, pruned.checkpoint.hash) == (2, seq2_hash)
    checkpoint = trail.store.latest_checkpoint()
    assert checkpoint is not None
    assert (checkpoint.seq, checkpoint.pruned) == (2, 2)
    remaining = [e["seq"] for e in events(five)]
    assert remaining == [3, 4, 5, 6]
    recorded = events(five, action="audit.pruned")[0]
    assert recorded["changes"]["checkpoint_seq"] == {"before": None, "after": 2}
    assert recorded["changes"]["pruned"] == {"before": None, "after": 2}
    # Event 4's time was edited: the chain says so, from the checkpoint on.
    broken = trail.verify().broken
    assert broken is not None
    assert broken.seq == 4


def test_prune_everything_twice_still_verifies(five: Registry) -> None:
    trail = trail_of(five)
    time.sleep(0.01)  # SQLite's clock counts milliseconds: let the last event be older
    assert trail.prune(timedelta(0)).count == 5
    five.users.create(NewUser("after@example.org"))
    time.sleep(0.01)
    second = trail.prune(timedelta(0))
    assert second.count == 2  # the first prune's event and the new user's
    assert second.checkpoint is not None
    assert second.checkpoint.seq == 7
    result = trail.verify()
    assert result.ok, result.summary()
    assert result.start == Head(7, second.checkpoint.hash)
    assert result.count == 1
    assert result.head.seq == 8
    assert "from the checkpoint at seq 7" in result.summary()


def test_prune_with_nothing_old_enough_changes_nothing(five: Registry) -> None:
    trail = trail_of(five)
    before = trail.head()
    pruned = trail.prune(timedelta(days=1))
    assert (pruned.count, pruned.checkpoint) == (0, None)
    assert trail.head() == before
    assert trail.store.latest_checkpoint() is None


def test_a_checkpoint_without_its_prune_event_is_caught(five: Registry) -> None:
    """Removing events and forging the checkpoint a prune would leave: no prune recorded it."""
    [(seq2_hash,)] = rows(five, "SELECT hash FROM audit_events WHERE seq = 2")
    sql(five, "DELETE FROM audit_events WHERE seq <= 2")
    sql(
        five,
        "INSERT INTO audit_checkpoints (seq, hash, created_at, pruned) VALUES (2, :h, :t, 2)",
        h=seq2_hash,
        t=trail_of(five).store.now(),
    )
    broken = trail_of(five).verify().broken
    assert broken is not None
    assert broken.seq == 2
    assert "audit.pruned" in broken.problem


def test_an_expected_head_before_the_checkpoint_was_pruned(five: Registry) -> None:
    trail = trail_of(five)
    early = trail.head()
    five.users.create(NewUser("later@example.org"))
    time.sleep(0.01)
    trail.prune(timedelta(0))
    result = trail.verify(early)
    assert result.ok
    assert "pruned" in result.summary()


# -- concurrency -------------------------------------------------------------------------------


def _write_at_once(registries: Sequence[Registry], per_thread: int, threads: int) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads * len(registries))

    def work(registry: Registry, n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                user = registry.users.create(NewUser(f"w{n}-{i}@example.org"))
                registry.users.update(user.id, UserChanges(full_name=f"W {n} {i}"))
        except BaseException as exc:  # reported below, with every other thread's
            errors.append(exc)

    workers = [
        threading.Thread(target=work, args=(registry, n * len(registries) + r))
        for n in range(threads)
        for r, registry in enumerate(registries)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert errors == []


def test_concurrent_writers_make_one_gapless_chain(reg: Registry) -> None:
    _write_at_once([reg], per_thread=8, threads=6)
    total = 6 * 8 * 2
    assert [e["seq"] for e in events(reg)] == list(range(1, total + 1))
    assert verified(reg) == total


def test_two_registries_make_one_chain(make_registry: MakeRegistry) -> None:
    """Two registries (two pools or connection sets: as two processes would) never fork."""
    first, second = make_registry(), make_registry()
    _write_at_once([first, second], per_thread=6, threads=4)
    total = 2 * 4 * 6 * 2
    assert [e["seq"] for e in events(first)] == list(range(1, total + 1))
    assert verified(second) == total


# -- deferred chaining: writers never wait, the chain is linked after commit --------------------


#: Row locks and transaction ids are PostgreSQL's (SQLite has one writer at a time, and
#: every committed event is final there): these tests run on PostgreSQL only.
ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def pg(database_url: str) -> str:
    """This test's PostgreSQL database."""
    assert database_url.startswith("postgresql")
    return database_url


@ON_POSTGRESQL
def test_a_write_takes_no_lock_on_the_chain_head(reg: Registry, pg: str) -> None:
    """With the head locked by another session, writes go on; their events wait for it."""
    import psycopg

    from userplane.plugins.audit.trail import Chained

    trail = trail_of(reg)
    chained(reg)  # the head row is there (the emptied test database's chainer makes it)
    with psycopg.connect(pg) as other:  # a transaction, held open
        other.execute("SELECT seq FROM audit_chain WHERE id = 1 FOR UPDATE")
        started = time.monotonic()
        user = reg.users.create(NewUser("unlocked@example.org"))
        reg.users.update(user.id, UserChanges(full_name="Not waiting"))
        assert time.monotonic() - started < 2.0  # a wait would last the statement timeout
        assert trail.chain() == Chained(0, busy=True)  # a chainer finding it held leaves it
        assert trail.store.unchained() == 2
        other.rollback()
    assert chained(reg) == 2
    assert [e["action"] for e in events(reg)] == ["user.created", "user.updated"]
    assert verified(reg) == 2


@ON_POSTGRESQL
def test_an_open_transaction_holds_back_every_event_after_it(reg: Registry, pg: str) -> None:
    """Events chain in the order of their transactions' ids, once all before them finished."""
    import psycopg

    trail = trail_of(reg)
    trail.read_wait = 0.2
    chained(reg)
    early_id = uuid.uuid4()
    with psycopg.connect(pg) as other:
        # A writer whose transaction has its id (its user write), not yet its audit row.
        other.execute("SELECT pg_current_xact_id()")
        ann = reg.users.create(NewUser("ann@example.org"))
        bob = reg.users.create(NewUser("bob@example.org"))
        assert trail.chain().count == 0  # ann's and bob's are committed, but not final
        other.execute(
            "INSERT INTO audit_events (txid, id, occurred_at, action, target_type, target_id,"
            " fields) VALUES (pg_current_xact_id(), %s, clock_timestamp(), 'test.early',"
            " 'test', 'early', '{}')",
            (early_id,),
        )
        assert trail.chain().count == 0
        assert rows(reg, "SELECT count(*) FROM audit_events WHERE seq IS NULL") == [(2,)]
        assert events(reg) == []  # a read shows chained events only
        result = trail.verify()
        assert (result.ok, result.count, result.unchained) == (True, 0, 2)
        assert "2 later events not chained yet" in result.summary()
        other.commit()
    assert chained(reg) == 3
    got = events(reg)
    assert [(e["seq"], e["target"]["id"]) for e in got] == [
        (1, "early"),
        (2, str(ann.id)),
        (3, str(bob.id)),
    ]
    assert got[0]["id"] == str(early_id)
    assert got[0]["occurred_at"] > got[1]["occurred_at"]  # the chain's order is not the clock's
    assert verified(reg) == 3


def test_an_event_unchained_by_hand_is_caught_as_a_gap(five: Registry) -> None:
    """An old event NULLed: the chainer links it again at the end, and the gap stays."""
    [(event_id,)] = rows(five, "SELECT id FROM audit_events WHERE seq = 2")
    sql(five, "UPDATE audit_events SET seq = NULL, prev_hash = NULL, hash = NULL WHERE seq = 2")
    result = trail_of(five).verify()
    assert result.broken is not None
    assert result.broken.seq == 2
    assert "seq 2 missing" in result.broken.problem
    assert "removed" in result.broken.problem
    assert rows(five, "SELECT seq FROM audit_events WHERE id = :id", id=event_id) == [(6,)]


def test_two_chainers_at_once_never_fork_the_chain(make_registry: MakeRegistry) -> None:
    """Two registries (as two processes) chaining while writers write: one chain, gapless."""
    first, second = make_registry(), make_registry()
    stop = threading.Event()
    errors: list[BaseException] = []
    linked = [0, 0]

    def chain_loop(n: int, registry: Registry) -> None:
        try:
            while not stop.is_set():
                result = trail_of(registry).chain()
                assert result.refused is None, result.refused
                linked[n] += result.count
                stop.wait(0.002)
        except BaseException as exc:  # reported below
            errors.append(exc)

    chainers = [
        threading.Thread(target=chain_loop, args=(n, registry))
        for n, registry in enumerate((first, second))
    ]
    for chainer in chainers:
        chainer.start()
    try:
        _write_at_once([first, second], per_thread=5, threads=3)
    finally:
        stop.set()
        for chainer in chainers:
            chainer.join(60)
    assert errors == []
    total = 2 * 3 * 5 * 2
    # Every event chained exactly once: by one chainer or the other, or by this last one.
    assert sum(linked) + chained(second) == total
    assert rows(
        first, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM audit_events"
    ) == [(total, total, 1, total)]
    assert [e["seq"] for e in events(first)] == list(range(1, total + 1))
    assert verified(second) == total


# -- personal data -----------------------------------------------------------------------------


def test_sealed_values_are_stored_sealed_opened_for_readers_and_erased_with_the_user(
    database_url: str, k1: NamedKey, i1: NamedKey
) -> None:
    with opened(database_url, **encryption_env([k1], i1)) as registry:
        users = registry.users
        ann = users.create(NewUser("ann@example.org", "Ann Secret"))
        users.update(ann.id, UserChanges(full_name="Ann Other"))
        stored = json.dumps(list(trail_of(registry).export()))
        raw = json.dumps([list(r) for r in rows(registry, "SELECT fields FROM audit_events")])
        for text in (stored, raw):
            assert "ann@example.org" not in text
            assert "Ann Secret" not in text
        created, updated = events(registry)
        assert created["changes"]["email"] == {"before": None, "after": "ann@example.org"}
        assert updated["changes"]["full_name"] == {"before": "Ann Secret", "after": "Ann Other"}
        assert updated["changes"]["version"] == {"before": 1, "after": 2}
        users.delete(ann.id)
        users.purge_user(ann.id)
        created, updated, *_ = events(registry)
        assert created["changes"]["email"] == {"erased": True}
        assert updated["changes"]["full_name"] == {"erased": True}
        assert updated["changes"]["version"] == {"before": 1, "after": 2}  # not personal
        assert verified(registry) == 4  # erasure leaves the chain whole


def test_a_key_rotation_is_recorded(
    database_url: str, k1: NamedKey, k2: NamedKey, i1: NamedKey
) -> None:
    from userplane.plugin import utcnow
    from userplane.rotation import rotate

    with opened(database_url, **encryption_env([k1], i1)) as registry:
        registry.users.create(NewUser("ann@example.org", "Ann"))
    with opened(database_url, **encryption_env([k2, k1], i1)) as registry:
        assert registry.sealed.sealer is not None
        rotate(registry.storage, registry.sealed.sealer, utcnow, changes=registry.changes)
        [event] = events(registry, action="encryption.rotated")
        assert event["target"] == {"type": "keyring", "id": "kek-2"}
        assert event["changes"]["retired"] == {"before": None, "after": ["kek-1"]}
        assert event["changes"]["rewrapped"] == {"before": None, "after": 1}
        assert verified(registry) == 2


def test_redaction_keeps_no_personal_value(make_registry: MakeRegistry) -> None:
    registry = make_registry(USERPLANE_AUDIT_REDACT_PERSONAL="true")
    ann = registry.users.create(NewUser("ann@example.org", "Ann"))
    registry.users.update(ann.id, UserChanges(email="anne@example.org", is_active=False))
    created, updated = events(registry)
    assert created["changes"]["email"] == {"redacted": True}
    assert created["changes"]["full_name"] == {"redacted": True}
    assert updated["changes"]["email"] == {"redacted": True}
    assert updated["changes"]["is_active"] == {"before": True, "after": False}
    raw = json.dumps([list(r) for r in rows(registry, "SELECT fields FROM audit_events")])
    assert "example.org" not in raw
    assert "Ann" not in raw
    assert verified(registry) == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USERPLANE_AUDIT_HEAD_LOG_SECONDS", "0"),
        ("USERPLANE_AUDIT_HEAD_LOG_SECONDS", "-5"),
        ("USERPLANE_AUDIT_HEAD_LOG_SECONDS", "often"),
        ("USERPLANE_AUDIT_HEAD_LOG_SECONDS", "inf"),
        ("USERPLANE_AUDIT_CHAIN_SECONDS", "0"),
        ("USERPLANE_AUDIT_CHAIN_SECONDS", "-1"),
        ("USERPLANE_AUDIT_CHAIN_SECONDS", "61"),
        ("USERPLANE_AUDIT_CHAIN_SECONDS", "nan"),
        ("USERPLANE_AUDIT_CHAIN_SECONDS", "soon"),
        ("USERPLANE_AUDIT_REDACT_PERSONAL", "perhaps"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}", name: value}
    )
    with pytest.raises(ConfigurationError, match=name):
        Registry(settings, plugins=[audit])


def test_the_auditor_role_reads_the_trail_and_nothing_else(reg: Registry) -> None:
    assert reg.auth.roles["auditor"] == frozenset({"audit:read"})
    assert "audit:read" in reg.auth.roles["admin"] or "*" in reg.auth.roles["admin"]


def test_an_operators_own_auditor_role_stands(make_registry: MakeRegistry) -> None:
    registry = make_registry(USERPLANE_ROLES='{"auditor": ["users:read", "audit:read"]}')
    assert registry.auth.roles["auditor"] == frozenset({"users:read", "audit:read"})


# -- head logging ----------------------------------------------------------------------------


def test_the_head_is_logged_while_serving_and_the_thread_stops_at_shutdown(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="userplane.audit")
    env = {"USERPLANE_AUDIT_HEAD_LOG_SECONDS": "0.05", "USERPLANE_AUDIT_CHAIN_SECONDS": "0.02"}
    with opened(database_url, **env) as registry:
        trail = trail_of(registry)
        store = trail.store
        registry.users.create(NewUser("ann@example.org"))
        assert store.unchained() == 1  # written, not chained yet
        registry.hooks.serving(registry)
        heads = registry.services.get(HeadLogger)
        assert heads.running
        for _ in range(500):  # the thread chains it, with no read asking
            if trail.head().seq == 1:
                break
            threading.Event().wait(0.02)
        expected = trail.head()
        assert expected.seq == 1
        for _ in range(200):
            logged = [r for r in caplog.records if r.getMessage() == "audit.head"]
            if len(logged) >= 3 and getattr(logged[-1], "seq", 0) == 1:
                break
            threading.Event().wait(0.02)
        assert len(logged) >= 3
        record: Any = logged[-1]
        assert (record.seq, record.hash) == (expected.seq, expected.hash)
        assert record.name == "userplane.audit"
        registry.users.create(NewUser("bob@example.org"))
        for _ in range(500):
            if trail.head().seq == 2:
                break
            threading.Event().wait(0.02)
        assert trail.head().seq == 2
    assert not heads.running


def test_a_head_logger_survives_an_unavailable_database(
    reg: Registry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="userplane.audit")
    trail = trail_of(reg)

    def down() -> None:
        raise Unavailable("the database cannot be reached; retry shortly")

    monkeypatch.setattr(trail, "head", down)
    HeadLogger(trail, 60).log_once()
    [record] = [r for r in caplog.records if r.name == "userplane.audit"]
    assert record.getMessage() == "audit.head.unavailable"
    assert record.levelno == logging.WARNING


# -- a property: any history yields a chain that verifies and replays to the users ---------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["rename", "email", "toggle", "delete", "restore", "purge"]),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_OPS)
def test_any_history_verifies_and_its_events_replay_to_the_users(
    reg: Registry, ops: list[tuple[str, int]]
) -> None:
    users = reg.users
    run = uuid.uuid4().hex[:8]
    start = trail_of(reg).head().seq
    ids: dict[int, uuid.UUID] = {}
    for op, slot in ops:
        user_id = ids.get(slot)
        if user_id is None:
            ids[slot] = users.create(NewUser(f"p{slot}-{run}@example.org", f"P {slot}")).id
            continue
        current = users.get(user_id, include_deleted=True)
        with contextlib.suppress(NotFound):  # a deleted user cannot be updated
            if op == "rename":
                users.update(user_id, UserChanges(full_name=f"P {slot} {uuid.uuid4().hex[:4]}"))
            elif op == "email":
                email = f"p{slot}-{uuid.uuid4().hex[:6]}@example.org"
                users.update(user_id, UserChanges(email=email))
            elif op == "toggle":
                users.update(user_id, UserChanges(is_active=not current.is_active))
            elif op == "delete":
                users.delete(user_id)
            elif op == "restore":
                users.restore(user_id)
            elif op == "purge":
                if current.deleted_at is None:
                    users.delete(user_id)
                users.purge_user(user_id)
                ids.pop(slot)
    assert trail_of(reg).verify().ok

    # Replay: each event's before is the state the previous one left, per user.
    state: dict[str, dict[str, Any]] = {}
    for event in events(reg):
        if event["seq"] <= start:
            continue
        user = event["user_id"]
        if event["action"] == "user.purged":
            state.pop(user)
            continue
        if event["action"] == "user.created":
            assert user not in state
            state[user] = {"deleted_at": None}
        for name, change in event["changes"].items():
            assert state[user].get(name) == change["before"], (event, name)
            state[user][name] = change["after"]
    assert set(state) == {str(i) for i in ids.values()}
    for user_id in ids.values():
        user = users.get(user_id, include_deleted=True)
        replayed = state[str(user_id)]
        assert replayed["email"] == user.email
        assert replayed["full_name"] == user.full_name
        assert replayed["is_active"] == user.is_active
        assert replayed["version"] == user.version
        assert (replayed["deleted_at"] is None) == (user.deleted_at is None)


def test_the_trail_is_per_registry(make_registry: MakeRegistry) -> None:
    first, second = make_registry(), make_registry()
    assert first.services.get(AuditTrail) is not second.services.get(AuditTrail)
