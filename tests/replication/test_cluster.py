"""The replication harness itself: every operation of ``ReplicatedCluster``, via psycopg."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from .cluster import (
    ClusterError,
    ClusterTimeoutError,
    ReplicatedCluster,
    _alive,
    _children,
    poll,
)
from .conftest import MakeCluster

pytestmark = pytest.mark.replication


def count(url: str, table: str = "t") -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def server(url: str) -> tuple[int, bool]:
    """(port, in recovery) of the server ``url`` reaches."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def execute(url: str, query: str, params: Any = None) -> None:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(query, params)


def test_a_row_written_on_the_primary_appears_on_the_standby(
    replicated_cluster: ReplicatedCluster,
) -> None:
    cluster = replicated_cluster
    assert cluster.timings["create"] < 15, cluster.timings
    primary, standby = cluster.primary, cluster.standbys[0]
    assert primary is not None
    assert cluster.primary_url == f"postgresql://postgres@127.0.0.1:{primary.port}/userplane_test"
    assert cluster.standby_urls == [
        f"postgresql://postgres@127.0.0.1:{standby.port}/userplane_test"
    ]
    assert server(cluster.primary_url) == (primary.port, False)
    assert server(cluster.standby_urls[0]) == (standby.port, True)

    execute(cluster.primary_url, "CREATE TABLE t (x int)")
    execute(cluster.primary_url, "INSERT INTO t VALUES (1)")
    cluster.wait_caught_up(0)
    assert count(cluster.standby_urls[0]) == 1

    with pytest.raises(errors.ReadOnlySqlTransaction):
        execute(cluster.standby_urls[0], "INSERT INTO t VALUES (2)")
    with psycopg.connect(cluster.primary_url) as conn:
        row = conn.execute(
            "SELECT application_name, state, sync_state FROM pg_stat_replication"
        ).fetchone()
    assert row == ("standby0", "streaming", "async")


def test_with_replay_paused_a_row_appears_only_once_resumed(
    replicated_cluster: ReplicatedCluster,
) -> None:
    cluster = replicated_cluster
    execute(cluster.primary_url, "CREATE TABLE t (x int)")
    cluster.wait_caught_up(0)

    cluster.pause_replay(0)
    assert cluster.replay_paused(0)
    execute(cluster.primary_url, "INSERT INTO t VALUES (1)")
    with psycopg.connect(cluster.primary_url) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert lsn is not None

    # The standby has the WAL (received and flushed): only replay holds the row back.
    def received() -> bool:
        with psycopg.connect(cluster.standby_urls[0]) as conn:
            row = conn.execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", lsn).fetchone()
        return bool(row and row[0])

    poll(received, 10, "the standby to receive the WAL")
    with pytest.raises(ClusterTimeoutError, match="replay paused"):
        cluster.wait_caught_up(0, timeout=0.5)
    assert count(cluster.standby_urls[0]) == 0

    cluster.resume_replay(0)
    assert not cluster.replay_paused(0)
    cluster.wait_caught_up(0)
    assert count(cluster.standby_urls[0]) == 1


def test_the_multi_host_url_reaches_the_server_asked_for(
    replicated_cluster: ReplicatedCluster,
) -> None:
    cluster = replicated_cluster
    primary, standby = cluster.primary, cluster.standbys[0]
    assert primary is not None
    url = cluster.multi_host_url()
    assert url == (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        "/userplane_test?target_session_attrs=read-write"
    )
    assert server(url) == (primary.port, False)
    # Wherever the primary is in the list.
    assert server(cluster.multi_host_url(nodes=[0, "primary"])) == (primary.port, False)
    assert server(cluster.multi_host_url("standby")) == (standby.port, True)
    assert server(cluster.multi_host_url("read-only")) == (standby.port, True)
    assert server(cluster.multi_host_url(None, nodes=[0, "primary"])) == (standby.port, True)
    assert "connect_timeout=3" in cluster.multi_host_url(connect_timeout=3)


def test_after_the_primary_stops_and_a_standby_is_promoted_the_url_reaches_it(
    replicated_cluster: ReplicatedCluster,
) -> None:
    cluster = replicated_cluster
    standby = cluster.standbys[0]
    url = cluster.multi_host_url(connect_timeout=3)
    execute(url, "CREATE TABLE t (x int)")
    execute(url, "INSERT INTO t VALUES (1)")
    cluster.wait_caught_up(0)

    cluster.stop_primary("immediate")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.primary_url, connect_timeout=3)
    with pytest.raises(psycopg.OperationalError):  # only a read-only server is left
        psycopg.connect(url)

    took = cluster.promote(0)
    assert took < 15
    assert cluster.current_primary is standby
    assert cluster.current_primary_url == cluster.standby_urls[0]
    assert server(url) == (standby.port, False)
    execute(url, "INSERT INTO t VALUES (2)")
    assert count(url) == 2


def test_a_stopped_primary_comes_back(replicated_cluster: ReplicatedCluster) -> None:
    cluster = replicated_cluster
    execute(cluster.primary_url, "CREATE TABLE t (x int)")
    cluster.stop_primary()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.primary_url, connect_timeout=3)
    cluster.start_primary()
    execute(cluster.primary_url, "INSERT INTO t VALUES (1)")
    cluster.wait_caught_up(0)
    assert count(cluster.standby_urls[0]) == 1


def test_a_stopped_standby_refuses_connections_then_catches_up(
    replicated_cluster: ReplicatedCluster,
) -> None:
    cluster = replicated_cluster
    execute(cluster.primary_url, "CREATE TABLE t (x int)")
    cluster.stop_standby(0)
    assert not cluster.standbys[0].running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.standby_urls[0], connect_timeout=3)
    # The primary goes on, and the multi-host URL skips the standby that is down.
    execute(cluster.primary_url, "INSERT INTO t VALUES (1)")
    assert server(cluster.multi_host_url("any", nodes=[0, "primary"])) == (
        cluster.current_primary.port,
        False,
    )

    cluster.start_standby(0)
    cluster.wait_caught_up(0)
    assert count(cluster.standby_urls[0]) == 1


def test_synchronous_commits_are_on_the_standby_when_acknowledged(
    make_replicated_cluster: MakeCluster,
) -> None:
    cluster = make_replicated_cluster(1, synchronous=True, synchronous_commit="remote_apply")
    with psycopg.connect(cluster.primary_url) as conn:
        rows = conn.execute(
            "SELECT application_name, sync_state FROM pg_stat_replication"
        ).fetchall()
        setting = conn.execute("SHOW synchronous_standby_names").fetchone()
    assert rows == [("standby0", "sync")]
    assert setting == ("FIRST 1 (standby0)",)

    execute(cluster.primary_url, "CREATE TABLE t (x int)")
    for n in range(1, 4):  # remote_apply: visible there as soon as COMMIT returns
        execute(cluster.primary_url, "INSERT INTO t VALUES (%s)", (n,))
        assert count(cluster.standby_urls[0]) == n

    # With the synchronous standby down, a commit waits: until cancelled, here (the
    # statement_timeout does not apply to that wait). A cancelled wait leaves the
    # transaction committed on the primary alone, with a warning.
    cluster.stop_standby(0)
    warnings: list[str] = []
    with psycopg.connect(cluster.primary_url, autocommit=True) as conn:
        conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
        cancel = threading.Timer(0.5, conn.cancel_safe)
        release = threading.Timer(20, cluster.make_asynchronous)  # rather than hang
        cancel.start()
        release.start()
        try:
            began = time.monotonic()
            conn.execute("INSERT INTO t VALUES (4)")
            waited = time.monotonic() - began
        finally:
            cancel.cancel()
            release.cancel()
    assert 0.4 <= waited < 15
    assert any("synchronous replication" in warning for warning in warnings), warnings

    cluster.make_asynchronous()
    began = time.monotonic()
    execute(cluster.primary_url, "INSERT INTO t VALUES (5)")
    assert time.monotonic() - began < 0.4
    cluster.start_standby(0)
    cluster.wait_caught_up(0)
    assert count(cluster.standby_urls[0]) == 5


def test_make_synchronous_on_a_running_cluster(make_replicated_cluster: MakeCluster) -> None:
    cluster = make_replicated_cluster(2)
    assert cluster.make_synchronous(1) == "FIRST 1 (standby1)"
    with psycopg.connect(cluster.primary_url) as conn:
        rows: dict[str, str] = dict(
            conn.execute("SELECT application_name, sync_state FROM pg_stat_replication").fetchall()
        )
    assert rows == {"standby0": "async", "standby1": "sync"}

    # A synchronous standby's replay may lag (synchronous_commit=on: flushed, not applied)
    cluster.pause_replay(1)
    execute(cluster.primary_url, "CREATE TABLE t (x int)")
    with pytest.raises(errors.UndefinedTable):
        count(cluster.standby_urls[1])
    cluster.resume_replay(1)
    cluster.wait_caught_up(1)
    assert count(cluster.standby_urls[1]) == 0


def test_other_standbys_follow_the_promoted_one(make_replicated_cluster: MakeCluster) -> None:
    cluster = make_replicated_cluster(2)
    execute(cluster.primary_url, "CREATE TABLE t (x int)")
    cluster.wait_caught_up(0)
    cluster.wait_caught_up(1)
    cluster.stop_primary("fast")
    cluster.promote(0)
    cluster.follow(1)
    assert cluster.standbys[1].upstream is cluster.standbys[0]

    execute(cluster.current_primary_url, "INSERT INTO t VALUES (1)")
    cluster.wait_caught_up(1)
    assert count(cluster.standby_urls[1]) == 1
    # And a new standby can be made from the promoted one.
    index = cluster.add_standby()
    cluster.wait_caught_up(index)
    assert count(cluster.standby_urls[index]) == 1
    assert server(cluster.multi_host_url(nodes=[0, 1, 2])) == (cluster.standbys[0].port, False)


def processes_of(cluster: ReplicatedCluster) -> list[int]:
    pids = []
    for node in cluster._all_nodes():
        assert node.pid is not None
        pids += [node.pid, *_children(node.pid)]
    return pids


def test_close_stops_every_process_and_removes_the_directory(
    replication_requirements: None,
) -> None:
    with ReplicatedCluster(1) as cluster:
        base = cluster.base_dir
        assert base is not None
        assert base.is_dir()
        pids = processes_of(cluster)
        assert len(pids) > 6  # postmasters, walsender, walreceiver, startup, ...
    assert not any(_alive(pid) for pid in pids)
    assert not base.exists()
    cluster.close()  # again: nothing to do


def test_close_also_cleans_up_stopped_and_promoted_nodes(
    replication_requirements: None,
) -> None:
    cluster = ReplicatedCluster(2).start()
    try:
        pids = processes_of(cluster)
        cluster.stop_primary("immediate")
        cluster.promote(1)
        cluster.stop_standby(0)
    finally:
        cluster.close()
    assert not any(_alive(pid) for pid in pids)
    assert cluster.base_dir is not None
    assert not cluster.base_dir.exists()


def test_a_failed_start_cleans_up(
    replication_requirements: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []

    def broken_add_standby(self: ReplicatedCluster, **kwargs: Any) -> int:
        assert self.primary is not None
        assert self.primary.pid is not None
        started.append(self.primary.pid)
        raise ClusterError("no standby today")

    monkeypatch.setattr(ReplicatedCluster, "add_standby", broken_add_standby)
    cluster = ReplicatedCluster(1)
    with pytest.raises(ClusterError, match="no standby today"):
        cluster.start()
    assert started
    assert not _alive(started[0])
    assert cluster.base_dir is not None
    assert not cluster.base_dir.exists()


def test_a_server_that_cannot_start_is_reported_with_its_log(
    replication_requirements: None,
) -> None:
    cluster = ReplicatedCluster(0, settings={"shared_buffers": "nonsense"})
    with pytest.raises(ClusterError, match="primary did not start") as raised:
        cluster.start()
    assert "shared_buffers" in str(raised.value)
    assert cluster.base_dir is not None
    assert not Path(cluster.base_dir).exists()


def test_a_directory_the_postgres_user_cannot_use_is_reported(
    replication_requirements: None,
) -> None:
    hidden = Path(tempfile.mkdtemp(prefix="userplane-repl-hidden-"))  # 0700, ours
    try:
        cluster = ReplicatedCluster(0, base_dir=hidden)
        if os.geteuid() == 0:  # the servers run as postgres, which cannot get in
            with pytest.raises(ClusterError, match="must be searchable"):
                cluster.start()
        else:  # they run as ourselves: fine
            with cluster:
                assert server(cluster.primary_url)[1] is False
        assert cluster.base_dir is not None
        assert not cluster.base_dir.exists()
    finally:
        shutil.rmtree(hidden)
