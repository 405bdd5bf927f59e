"""Fixtures for tests against throwaway streaming-replication clusters (``cluster.py``).

Without the PostgreSQL server binaries (or psycopg) these tests are skipped, except
under CI, where they must run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .cluster import ReplicatedCluster, missing_requirements

MakeCluster = Callable[..., ReplicatedCluster]


@pytest.fixture(scope="session")
def replication_requirements() -> None:
    """Skip (fail under CI) when no cluster can be made on this machine."""
    reason = missing_requirements()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: under CI the replication tests must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def make_replicated_cluster(replication_requirements: None) -> Iterator[MakeCluster]:
    """A factory: ``make_replicated_cluster(standbys=1, **options)`` gives a started
    :class:`ReplicatedCluster`; every one is stopped and removed after the test."""
    made: list[ReplicatedCluster] = []

    def make(standbys: int = 1, **options: Any) -> ReplicatedCluster:
        cluster = ReplicatedCluster(standbys, **options)
        made.append(cluster)
        return cluster.start()

    yield make
    errors = []
    for cluster in reversed(made):
        try:
            cluster.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def replicated_cluster(make_replicated_cluster: MakeCluster) -> ReplicatedCluster:
    """A started primary with one asynchronous hot standby, for this test only."""
    return make_replicated_cluster(1)
