"""Rate limits over three instances of two workers: one limit, shared through the database.

The stated accuracy (README, ``plugins/rate_limits/limiter.py``): with ``P``
processes (instances x workers) a subject gets at most
``limit x (1 + P x slack)`` requests in a window. The slack is left at its
default (0.05); the window is an hour, so that what the quota regains while
the test hammers (``limit x elapsed / window``) is well under one request.
Failed authentications are counted per client address, which the instances
resolve through the balancer's ``X-Forwarded-For`` (127.0.0.1 is their
trusted proxy): one client's guesses refuse that client on every instance,
and no one else.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving import PROBLEM_JSON, Response, Server, assert_problem

from scale.cluster import Cluster, StartCluster, served_by, targets

pytestmark = pytest.mark.scale

LIMIT = 60
WINDOW_S = 3600
SLACK = 0.05
FAILURES = 5
#: Requests sent per hammer: well past any bound.
HAMMER = 150
THREADS = 6
READ = "/api/v1/users/?limit=1"


@pytest.fixture(scope="module")
def cluster(start_cluster: StartCluster) -> Iterator[Cluster]:
    env = {
        "USERPLANE_ENV": "prod",
        "USERPLANE_RATE_LIMITS": f"read={LIMIT}/1h,auth-failure={FAILURES}/300s",
        "USERPLANE_RATE_LIMIT_SLACK": str(SLACK),
    }
    with start_cluster("rate-limits", env) as running:
        yield running


@pytest.fixture
def live(cluster: Cluster) -> Cluster:
    cluster.check_alive()
    return cluster


def new_principal(cluster: Cluster) -> dict[str, str | None]:
    """The headers of a fresh viewer key: a subject no request has counted against yet."""
    made = cluster.balancer.request(
        "POST", "/api/v1/keys", {"name": f"scale {uuid.uuid4().hex[:8]}", "role": "viewer"}
    )
    assert made.status == 201, made.body
    return {"Authorization": f"Bearer {made.json()['key']}"}


@pytest.mark.parametrize("via", ["balancer", "instances"])
def test_one_principal_gets_at_most_the_stated_bound_over_every_instance(
    live: Cluster, via: str
) -> None:
    headers = new_principal(live)
    servers = targets(live, via, HAMMER)

    def read(server: Server) -> Response:
        return server.request("GET", READ, headers=headers)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        answers = list(pool.map(read, servers))
    elapsed = time.monotonic() - started

    statuses = Counter(a.status for a in answers)
    admitted = statuses[200]
    # What the quota regained meanwhile (GCRA) is part of what may be admitted.
    bound = LIMIT * (1 + live.processes * SLACK) + LIMIT * elapsed / WINDOW_S
    print(
        f"\nrate limit via {via}: {dict(statuses)} in {elapsed:.2f}s; limit {LIMIT}, "
        f"P={live.processes}, slack {SLACK}: stated bound {bound:.2f}"
    )
    assert set(statuses) == {200, 429}, statuses
    assert LIMIT <= admitted <= bound, statuses

    for ok in (a for a in answers if a.status == 200):
        assert ok.content_type == "application/json"
        assert set(ok.json()) == {"items", "next"}
        assert ok.headers["RateLimit-Policy"] == f'"read";q={LIMIT};w={WINDOW_S}'
    refused = [a for a in answers if a.status == 429]
    for answer in refused:
        assert_problem(answer, 429)
        assert answer.content_type == PROBLEM_JSON
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.headers["RateLimit-Policy"] == f'"read";q={LIMIT};w={WINDOW_S}'
        assert answer.headers["RateLimit"].startswith('"read";r=0;t=')
    if via == "balancer":
        # Every instance refused some: the limit is the cluster's, not one process's.
        assert served_by(refused) == set(live.names)

    # Once every process's view is older than USERPLANE_RATE_LIMIT_SYNC_MS (1 s), every
    # request is the database's to decide: refused everywhere. Another principal is not.
    time.sleep(1.2)
    for server in live.everyone():
        for _ in range(2):
            assert_problem(read(server), 429)
    other = new_principal(live)
    for server in live.everyone():
        assert server.request("GET", READ, headers=other).status == 200


def test_one_clients_failed_authentications_refuse_it_on_every_instance_and_no_one_else(
    live: Cluster,
) -> None:
    guesser: dict[str, str | None] = {
        "X-Forwarded-For": "198.51.100.23",
        "Authorization": "Bearer up_" + "A" * 44,
    }
    guesses = [live.balancer.request("GET", READ, headers=guesser) for _ in range(FAILURES)]
    for guess in guesses:
        assert_problem(guess, 401, "unauthenticated")
    assert served_by(guesses) == set(live.names)
    time.sleep(1.2)  # past USERPLANE_RATE_LIMIT_SYNC_MS: every process has heard

    refused = [live.balancer.request("GET", READ, headers=guesser) for _ in range(6)]
    for answer in refused:
        assert_problem(answer, 429)
        assert int(answer.headers["Retry-After"]) >= 1
    assert served_by(refused) == set(live.names)

    # Another client behind the same balancer has its own budget.
    other: dict[str, str | None] = {
        "X-Forwarded-For": "198.51.100.99",
        "Authorization": "Bearer up_" + "B" * 44,
    }
    for _ in range(3):
        assert_problem(live.balancer.request("GET", READ, headers=other), 401, "unauthenticated")
