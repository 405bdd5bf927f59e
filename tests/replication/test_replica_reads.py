"""Read replicas (``USERPLANE_DATABASE_REPLICA_URLS``) on a real streaming replica.

A throwaway primary with two hot standbys made by ``pg_basebackup``. Which
server answered is told by ``pg_is_in_recovery()``, and staleness is made on
purpose by pausing a standby's replay.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import client_for, new_key
from databases import empty
from serving import running_server, unique_email

from userplane import Registry, Settings
from userplane.plugins.postgresql.replicas import format_lsn, parse_lsn
from userplane.plugins.postgresql.store import PostgreSQLStorage
from userplane.replicas import POSITION_HEADER, ReadReplicas, RecentWriters, replica_reads
from userplane.testing import insert, make_user

from .cluster import ReplicatedCluster, poll

pytestmark = pytest.mark.replication

LAG_MS = 600


@pytest.fixture(scope="module")
def cluster(replication_requirements: None) -> Iterator[ReplicatedCluster]:
    with ReplicatedCluster(2) as made:
        with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": made.primary_url})) as reg:
            reg.migrate()
        for standby in (0, 1):
            made.wait_caught_up(standby)
        yield made


@pytest.fixture
def clean(cluster: ReplicatedCluster) -> Iterator[ReplicatedCluster]:
    """The cluster with its users gone and both standbys replaying and caught up."""
    empty(cluster.primary_url)
    for standby in (0, 1):
        if cluster.replay_paused(standby):
            cluster.resume_replay(standby)
        cluster.wait_caught_up(standby)
    yield cluster
    for standby in (0, 1):
        if cluster.replay_paused(standby):
            cluster.resume_replay(standby)


def _store(cluster: ReplicatedCluster, *standbys: int, lag_ms: int = LAG_MS) -> PostgreSQLStorage:
    return PostgreSQLStorage(
        cluster.primary_url,
        replica_urls=[cluster.standby_urls[i] for i in standbys],
        replica_max_lag_ms=lag_ms,
    )


def _on_replica(store: PostgreSQLStorage) -> bool:
    row = store.fetch_one("SELECT pg_is_in_recovery()", {})
    assert row is not None
    return bool(row[0])


def _usable(store: PostgreSQLStorage, expected: bool) -> None:
    assert store.read_replicas is not None
    poll(
        lambda: all(s.usable == expected for s in store.read_replicas.states()) or None,  # type: ignore[union-attr]
        10,
        f"every replica to be {'usable' if expected else 'skipped'}",
    )


def test_reads_in_scope_go_to_a_replica_and_the_rest_to_the_primary(
    clean: ReplicatedCluster,
) -> None:
    store = _store(clean, 0, 1)
    try:
        assert isinstance(store.read_replicas, ReadReplicas)
        user = insert(store, make_user())
        assert not _on_replica(store)  # no scope: the primary
        with replica_reads():
            _usable(store, True)
            assert {_on_replica(store) for _ in range(10)} == {True}
            clean.wait_caught_up(0)
            clean.wait_caught_up(1)
            assert store.get_user(user.id) == user
            # Writes, and reads inside a transaction, are the primary's in any scope.
            other = insert(store, make_user("bo@example.org"))
            with store.transaction():
                assert not _on_replica(store)
                assert store.get_user(other.id) == other
            # Row locks are the primary's too.
            assert store.fetch_one("SELECT pg_is_in_recovery() FROM users LIMIT 1 FOR UPDATE", {})
        # Both replicas serve, in turn: a request (a scope) to each.
        ports = set()
        for _ in range(10):
            with replica_reads():
                ports.add(store.fetch_one("SELECT inet_server_port()", {})[0])  # type: ignore[index]
        assert ports == {clean.node(0).port, clean.node(1).port}
    finally:
        store.close()


def test_a_lagging_replica_serves_within_the_bound_and_is_skipped_past_it(
    clean: ReplicatedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(clean, 0)
    try:
        with replica_reads():
            _usable(store, True)
        clean.pause_replay(0)
        user = insert(store, make_user())
        written = time.monotonic()
        with replica_reads():
            # Within the bound the replica still serves: a read that may lag, lags.
            assert store.get_user(user.id) is None
            assert _on_replica(store)
            with caplog.at_level(logging.WARNING, "userplane.postgresql"):
                _usable(store, False)
            skipped_after = time.monotonic() - written
            assert store.get_user(user.id) == user
            assert not _on_replica(store)
        [state] = store.read_replicas.states()  # type: ignore[union-attr]
        assert "lags" in state.reason
        assert any("is skipped" in r.getMessage() for r in caplog.records)
        # Skipped once it fell behind by the bound, give or take a check (0.1 s).
        assert LAG_MS / 1000 - 0.05 <= skipped_after <= LAG_MS / 1000 + 1.0
        clean.resume_replay(0)
        with replica_reads():
            _usable(store, True)
            assert store.get_user(user.id) == user
            assert _on_replica(store)
    finally:
        store.close()


def test_a_position_keeps_reads_off_replicas_that_have_not_replayed_it(
    clean: ReplicatedCluster,
) -> None:
    store = _store(clean, 0, lag_ms=60_000)  # a bound that never skips it here
    try:
        assert store.read_replicas is not None
        with replica_reads():
            _usable(store, True)
        clean.pause_replay(0)
        user = insert(store, make_user())
        after = store.read_replicas.parse_position(store.read_replicas.position())
        with replica_reads():
            assert store.get_user(user.id) is None  # stale, as allowed
        with replica_reads(after):
            assert store.get_user(user.id) == user  # the primary's
            assert not _on_replica(store)
        clean.resume_replay(0)
        clean.wait_caught_up(0)

        def served() -> bool | None:
            with replica_reads(after):
                return _on_replica(store) or None

        poll(served, 10, "the replica to serve once it replayed the position")
        with replica_reads(after):
            assert store.get_user(user.id) == user
    finally:
        store.close()


def test_a_replica_that_is_down_is_skipped_without_a_failed_read(
    clean: ReplicatedCluster,
) -> None:
    store = _store(clean, 0)
    try:
        user = insert(store, make_user())
        clean.wait_caught_up(0)
        with replica_reads():
            _usable(store, True)
            assert _on_replica(store)
        clean.stop_standby(0)
        try:
            with replica_reads():
                # Every read succeeds: the first that meets the dead replica is retried
                # on the primary, and the monitor skips it from then on.
                assert [store.get_user(user.id) for _ in range(20)] == [user] * 20
                _usable(store, False)
                assert not _on_replica(store)
            [state] = store.read_replicas.states()  # type: ignore[union-attr]
            assert state.lag_ms is not None or state.reason
            assert "reached" in state.reason or "failed" in state.reason
        finally:
            clean.start_standby(0)
        with replica_reads():
            _usable(store, True)
            assert _on_replica(store)
    finally:
        store.close()


def test_positions_round_trip_and_bad_ones_are_refused() -> None:
    for text in ("0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")
    for bad in ("", "16", "x/1", "1/2/3", "123456789/0", "1/0; DROP"):
        with pytest.raises(ValueError, match="not a position"):
            parse_lsn(bad)


def test_recent_writers_forget_after_the_window_and_past_the_bound() -> None:
    now = [0.0]
    writers = RecentWriters(5.0, limit=2, clock=lambda: now[0])
    writers.wrote("a")
    assert writers.recent("a")
    assert not writers.recent("b")
    now[0] = 4.9
    assert writers.recent("a")
    now[0] = 5.0
    assert not writers.recent("a")
    writers.wrote("a")
    writers.wrote("b")
    writers.wrote("c")  # past the bound: "a", the least recent, is forgotten
    assert not writers.recent("a")
    assert writers.recent("b")
    assert writers.recent("c")


def test_replica_urls_need_a_storage_with_replicas(tmp_path: Path) -> None:
    from userplane import ConfigurationError

    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}",
            "USERPLANE_DATABASE_REPLICA_URLS": "postgresql://u:secret@replica/db",
        }
    )
    with pytest.raises(ConfigurationError, match="has no read replicas") as raised:
        Registry(settings)
    assert "secret" not in str(raised.value)


# -- over HTTP ----------------------------------------------------------------------------


@pytest.fixture
def replicated_registry(clean: ReplicatedCluster) -> Iterator[Registry]:
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": clean.primary_url,
            "USERPLANE_DATABASE_REPLICA_URLS": clean.standby_urls[0],
            "USERPLANE_DB_REPLICA_MAX_LAG_MS": "60000",
            "USERPLANE_DB_READ_YOUR_WRITES_MS": "60000",
        }
    )
    with Registry(settings) as registry:
        yield registry


def test_over_http_a_client_reads_its_own_writes(
    clean: ReplicatedCluster, replicated_registry: Registry
) -> None:
    writer = client_for(replicated_registry)
    other = {"Authorization": f"Bearer {new_key(replicated_registry)}"}
    assert writer.simulate_get("/api/v1/users").status_code == 200  # the replicas are watched
    _usable(replicated_registry.storage, True)  # type: ignore[arg-type]
    clean.pause_replay(0)

    created = writer.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert created.status_code == 201
    position = created.headers[POSITION_HEADER]
    parse_lsn(position)
    path = created.headers["Location"]
    # The writer reads its write at once (the window); another principal, through a
    # replica that has not replayed it, may not see it yet; with the position, it does.
    assert writer.simulate_get(path).status_code == 200
    assert writer.simulate_get(path, headers=other).status_code == 404
    seen = writer.simulate_get(path, headers={**other, POSITION_HEADER: position})
    assert seen.status_code == 200
    assert seen.json["email"] == "ann@example.org"
    # Reads in one response never mix: a list from the replica is the replica's.
    listed = writer.simulate_get("/api/v1/users", headers=other)
    assert listed.json["items"] == []

    bad = writer.simulate_get(path, headers={**other, POSITION_HEADER: "yesterday"})
    assert bad.status_code == 422
    assert bad.headers["Content-Type"] == "application/problem+json"
    assert bad.json["errors"] == [
        {"field": POSITION_HEADER, "detail": "not a position this service wrote"}
    ]
    # A failed write names no position; a read names none either.
    taken = writer.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
    assert taken.status_code == 409
    assert POSITION_HEADER not in taken.headers
    assert POSITION_HEADER not in seen.headers
    clean.resume_replay(0)
    clean.wait_caught_up(0)
    assert writer.simulate_get(path, headers=other).status_code == 200


def test_without_replicas_no_position_is_named(registry: Registry) -> None:
    created = client_for(registry).simulate_post(
        "/api/v1/users", json={"email": f"{uuid.uuid4().hex}@example.org"}
    )
    assert created.status_code == 201
    assert POSITION_HEADER not in created.headers


@pytest.mark.e2e
def test_serve_with_a_replica(clean: ReplicatedCluster, tmp_path: Path) -> None:
    env = {
        "USERPLANE_DATABASE_REPLICA_URLS": ",".join(clean.standby_urls),
        "USERPLANE_DB_REPLICA_MAX_LAG_MS": "60000",
        "USERPLANE_DB_READ_YOUR_WRITES_MS": "60000",
    }
    with running_server(tmp_path, clean.primary_url, "postgresql", env) as server:
        clean.pause_replay(0)
        clean.pause_replay(1)

        def create_then_read(i: int) -> tuple[int, int]:
            made = server.request("POST", "/api/v1/users", {"email": unique_email(f"r{i}")})
            read = server.request(
                "GET",
                made.headers["Location"],
                headers={POSITION_HEADER: made.headers[POSITION_HEADER]},
            )
            return made.status, read.status

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert set(pool.map(create_then_read, range(20))) == {(201, 200)}
        assert "Traceback" not in server.log()


def test_replica_urls_must_name_postgresql() -> None:
    from userplane import ConfigurationError

    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": "postgresql://u@127.0.0.1:1/db",
            "USERPLANE_DATABASE_REPLICA_URLS": "postgresql://u@r1/db, mysql://u:secret@r2/db",
        }
    )
    with pytest.raises(ConfigurationError, match="every replica is a postgresql") as raised:
        Registry(settings)
    assert "secret" not in str(raised.value)


def test_metrics_report_each_replicas_lag_and_use(clean: ReplicatedCluster) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from userplane.plugins import telemetry

    reader = InMemoryMetricReader()
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": clean.primary_url,
            "USERPLANE_DATABASE_REPLICA_URLS": ",".join(clean.standby_urls),
            "USERPLANE_DB_REPLICA_MAX_LAG_MS": str(LAG_MS),
            "USERPLANE_OTEL_ENABLED": "true",
            "USERPLANE_OTEL_EXPORTER": "none",
        }
    )
    with Registry(settings, plugins=[telemetry.Exporters(metrics=reader)]) as registry:
        store = registry.storage
        assert isinstance(store, PostgreSQLStorage)
        with replica_reads():
            _usable(store, True)
        clean.pause_replay(1)
        insert(store, make_user())
        assert store.read_replicas is not None
        poll(
            lambda: [s.usable for s in store.read_replicas.states()] == [True, False] or None,  # type: ignore[union-attr]
            10,
            "the paused replica to be skipped",
        )
        data = reader.get_metrics_data()
    points: dict[str, dict[str, float]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    replica = (point.attributes or {}).get("userplane.db.replica")
                    if replica is not None:
                        points.setdefault(metric.name, {})[str(replica)] = point.value
    first, second = clean.standby_urls  # no password: the names are the URLs
    assert points["userplane.db.replica.usable"] == {first: 1, second: 0}
    lag = points["userplane.db.replica.lag"]
    assert lag[first] < LAG_MS
    assert lag[second] > LAG_MS


def test_the_window_must_cover_the_lag_bound() -> None:
    from userplane import ConfigurationError

    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": "postgresql://u@127.0.0.1:1/db",
            "USERPLANE_DATABASE_REPLICA_URLS": "postgresql://u@r1/db",
            "USERPLANE_DB_REPLICA_MAX_LAG_MS": "2000",
            "USERPLANE_DB_READ_YOUR_WRITES_MS": "1000",
        }
    )
    with pytest.raises(ConfigurationError, match="READ_YOUR_WRITES_MS: must be at least"):
        Registry(settings)


def test_a_replica_down_or_promoted_from_the_start_never_holds_a_read(
    clean: ReplicatedCluster,
) -> None:
    # One "replica" is the primary itself (as after a failover, with the promoted node
    # still listed), the other is stopped before the first read.
    clean.stop_standby(1)
    store = PostgreSQLStorage(
        clean.primary_url,
        replica_urls=[clean.primary_url, clean.standby_urls[1]],
        replica_max_lag_ms=LAG_MS,
    )
    try:
        user = insert(store, make_user())
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool, replica_reads():
            got = list(pool.map(lambda _: store.get_user(user.id), range(40)))
        assert got == [user] * 40
        assert time.monotonic() - started < 5
        assert store.read_replicas is not None

        def reasons() -> list[str] | None:
            found = [s.reason for s in store.read_replicas.states()]  # type: ignore[union-attr]
            return found if all(r != "not checked yet" for r in found) else None

        promoted, stopped = poll(reasons, 10, "both replicas to be checked")
        assert "not in recovery" in promoted
        assert "cannot be reached" in stopped
        with replica_reads():
            assert not _on_replica(store)
    finally:
        store.close()
        clean.start_standby(1)


def test_a_slow_read_on_a_replica_is_a_503_and_leaves_it_in_use(
    clean: ReplicatedCluster,
) -> None:
    from userplane.errors import Unavailable

    store = PostgreSQLStorage(
        clean.primary_url,
        replica_urls=[clean.standby_urls[0]],
        statement_timeout_ms=200,
    )
    try:
        with replica_reads():
            _usable(store, True)
            with pytest.raises(Unavailable, match="did not answer in time"):
                store.fetch_one("SELECT pg_sleep(1)", {})
            [state] = store.read_replicas.states()  # type: ignore[union-attr]
            assert state.usable
            assert _on_replica(store)
    finally:
        store.close()


def test_one_request_reads_one_replica(clean: ReplicatedCluster) -> None:
    store = _store(clean, 0, 1)
    try:
        with replica_reads():
            _usable(store, True)
        for _ in range(5):
            with replica_reads():
                ports = {store.fetch_one("SELECT inet_server_port()", {})[0] for _ in range(6)}  # type: ignore[index]
            assert len(ports) == 1
    finally:
        store.close()
