"""What one instance does reaches every other: key revocation, and webhook deliveries.

- an API key revoked through the balancer is refused by every instance within
  ``USERPLANE_API_KEYS_CACHE_SECONDS`` (default 5 s, left at it) of the
  revocation, although each instance's cache held it;
- users created through the balancer, their ``user.created`` events sent by
  the dispatchers of all six processes: each arrives exactly once, signed,
  none missing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from serving import Server, assert_problem, unique_email
from test_e2e_webhooks import FAST, subscribe
from test_webhooks_receiver import Receiver

from scale.cluster import Cluster, StartCluster, served_by

pytestmark = pytest.mark.scale

#: ``USERPLANE_API_KEYS_CACHE_SECONDS``' default: the documented bound on revocation delay.
CACHE_SECONDS = 5.0
#: What a revocation may take beyond it: the poll's own round trips.
MARGIN = 1.5
#: Users whose events the receiver must get exactly once.
WEBHOOK_USERS = 120
READ = "/api/v1/users/?limit=1"


@pytest.fixture(scope="module")
def cluster(start_cluster: StartCluster) -> Iterator[Cluster]:
    # The key cache is left at its default; webhooks may go to the local receiver.
    with start_cluster("propagation", {**FAST, "USERPLANE_RATE_LIMITS": "off"}) as running:
        yield running


@pytest.fixture
def live(cluster: Cluster) -> Cluster:
    cluster.check_alive()
    return cluster


def _poll(server: Server, headers: dict[str, str | None], t0: float, until: float) -> list[Any]:
    """``(seconds since t0, status)`` of reads with ``headers`` until ``until``."""
    seen: list[tuple[float, int]] = []
    while time.monotonic() < until:
        resp = server.request("GET", READ, headers=headers)
        seen.append((time.monotonic() - t0, resp.status))
        if resp.status != 200:
            problem = assert_problem(resp, 401, "unauthenticated")
            assert resp.headers["WWW-Authenticate"].startswith("Bearer"), problem
        time.sleep(0.05)
    return seen


def test_a_revoked_key_is_refused_by_every_instance_within_the_cache_window(
    live: Cluster,
) -> None:
    made = live.balancer.request(
        "POST",
        "/api/v1/keys",
        {"name": f"scale revocation {uuid.uuid4().hex[:6]}", "role": "viewer"},
    )
    assert made.status == 201, made.body
    record = made.json()
    viewer: dict[str, str | None] = {"Authorization": f"Bearer {record['key']}"}

    # Warm every instance's cache (each worker's, as far as new connections spread).
    for server in live.instances:
        for _ in range(8):
            assert server.request("GET", READ, headers=viewer).status == 200
    warm = [live.balancer.request("GET", READ, headers=viewer) for _ in range(6)]
    assert {r.status for r in warm} == {200}
    assert served_by(warm) == set(live.names)

    revoked = live.balancer.request("DELETE", f"/api/v1/keys/{record['id']}")
    t0 = time.monotonic()
    assert revoked.status == 200, revoked.body
    assert revoked.json()["revoked_at"] is not None
    [(revoked_at,)] = live.query(
        "SELECT revoked_at FROM api_keys WHERE id = %s", uuid.UUID(record["id"])
    )
    assert revoked_at is not None

    # Every instance directly, and the balancer, polled side by side past the window.
    until = t0 + CACHE_SECONDS + MARGIN + 1.0
    pollers = live.everyone()
    with ThreadPoolExecutor(max_workers=len(pollers)) as pool:
        observed = list(pool.map(lambda s: _poll(s, viewer, t0, until), pollers))

    report = []
    for name, seen in zip(["balancer", *live.names], observed, strict=True):
        accepted = [t for t, status in seen if status == 200]
        refused = [t for t, status in seen if status == 401]
        last_accepted = max(accepted, default=None)
        first_refused = min(refused, default=None)
        report.append(
            f"{name}: {len(seen)} polls, last accepted "
            f"{'never' if last_accepted is None else f'{last_accepted:.2f}s'}, first refused "
            f"{'never' if first_refused is None else f'{first_refused:.2f}s'}"
        )
        assert refused, f"{name} never refused the revoked key: {seen}"
        # Refused within the window, and for good: nothing accepted after it.
        assert last_accepted is None or last_accepted <= CACHE_SECONDS + MARGIN, (name, seen)
        assert all(status == 401 for t, status in seen if t > CACHE_SECONDS + MARGIN), seen
        assert seen[-1][1] == 401
    print("\nrevocation (seconds after the DELETE answered):\n  " + "\n  ".join(report))


def test_every_user_created_through_the_balancer_is_delivered_exactly_once(
    live: Cluster,
) -> None:
    with Receiver() as receiver:
        sub = subscribe(live.balancer, receiver.url(), "user.created")
        try:
            lock = threading.Lock()
            made: list[dict[str, Any]] = []
            served: list[str] = []

            def create(i: int) -> None:
                resp = live.balancer.request(
                    "POST", "/api/v1/users/", {"email": unique_email(f"hook{i}")}
                )
                assert resp.status == 201, resp.body
                with lock:
                    made.append(resp.json())
                    served.append(resp.headers["X-Served-By"])

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=6) as pool:
                list(pool.map(create, range(WEBHOOK_USERS)))
            assert set(served) == set(live.names)

            receiver.wait_for(WEBHOOK_USERS, timeout=30)
            took = time.monotonic() - started
            time.sleep(1.5)  # time for a second copy, if any dispatcher were to send one
            arrived = list(receiver.requests)
        finally:
            gone = live.balancer.request("DELETE", f"/api/v1/webhooks/{sub['id']}")
            assert gone.status == 204, gone.body

    events = [r.verify(sub["secret"]) for r in arrived]
    ids = [r.webhook_id for r in arrived]
    print(
        f"\nwebhooks: {len(arrived)} deliveries for {WEBHOOK_USERS} users in {took:.2f}s "
        f"over {receiver.connections} connections"
    )
    assert len(set(ids)) == len(ids), "a delivery arrived twice"
    assert len(ids) == WEBHOOK_USERS
    assert {e["type"] for e in events} == {"user.created"}
    assert sorted(e["data"]["id"] for e in events) == sorted(u["id"] for u in made)
    assert len({e["data"]["change_id"] for e in events}) == WEBHOOK_USERS

    outbox = live.query(
        "SELECT id::text, status, attempts FROM webhook_deliveries WHERE subscription_id = %s",
        uuid.UUID(sub["id"]),
    )
    assert sorted(row[0] for row in outbox) == sorted(ids)
    assert {row[1] for row in outbox} == {"delivered"}
    assert {row[2] for row in outbox} == {1}
