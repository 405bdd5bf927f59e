"""The scale suite's fixtures: a cluster of instances behind HAProxy, per test module.

Every test here is marked ``scale``. Each module starts
its own cluster (``cluster.running_cluster``) on a PostgreSQL database of its
own, made from ``USERPLANE_TEST_POSTGRESQL_URL`` by the shared
``create_postgresql_database`` and dropped when the module is done. Without
HAProxy or PostgreSQL the tests are skipped, except under CI, where they
must run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from scale.cluster import HAPROXY, Cluster, StartCluster, running_cluster


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: under CI the scale tests must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def haproxy() -> str:
    """The HAProxy binary, which must run."""
    if not os.access(HAPROXY, os.X_OK):
        _unavailable(f"{HAPROXY} is missing (apt-get install haproxy)")
    return HAPROXY


@pytest.fixture(scope="session")
def start_cluster(
    haproxy: str,
    postgresql_server: str,
    create_postgresql_database: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> StartCluster:
    """``with start_cluster(name, env) as cluster``: a cluster on a database of its own.

    With ``pgbouncer`` (a port), the instances reach the database through it; the
    cluster's ``query`` still reads it directly. The database is dropped when the
    cluster has stopped; an instance that logged a traceback meanwhile fails the
    module's last test (at teardown).
    """

    @contextlib.contextmanager
    def start(name: str, env: dict[str, str], pgbouncer: int | None = None) -> Iterator[Cluster]:
        import psycopg
        from pgbouncer import through

        url: str = create_postgresql_database()
        served = url if pgbouncer is None else through(url, pgbouncer)
        try:
            with running_cluster(tmp_path_factory.mktemp(name), served, env) as cluster:
                cluster.database_url = url
                yield cluster
            # Stopped: whatever the tests asked of them, no instance failed inside.
            for server in cluster.instances:
                assert "Traceback" not in server.log(), server.log()
        finally:
            database = url.rsplit("/", 1)[1]
            with psycopg.connect(postgresql_server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    return start
