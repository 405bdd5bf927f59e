"""PostgreSQL restarted under load: 503s during the outage, full recovery, no lost write.

Stops and starts the machine's PostgreSQL cluster, so it runs only against a
local cluster (and always does under CI).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serving import PROBLEM_JSON, Server, running_server, unique_email

pytestmark = pytest.mark.e2e

#: How long a request may take before it counts as hung (the pool timeout is 1 s).
HANG = 8.0


@dataclass
class Outcome:
    started: float
    method: str
    status: int | None  # None: no HTTP answer at all
    content_type: str
    retry_after: str | None
    body: bytes
    error: str = ""


@pytest.fixture
def server(tmp_path: Path, create_postgresql_database: Callable[[], str]) -> Iterator[Server]:
    with running_server(
        tmp_path,
        create_postgresql_database(),
        "postgresql",
        {"USERPLANE_DB_POOL_TIMEOUT_MS": "1000", "USERPLANE_DB_POOL_MIN_SIZE": "2"},
    ) as srv:
        yield srv


def _load(server: Server, stop: threading.Event, outcomes: list[Outcome], acked: list[str]) -> None:
    lock = threading.Lock()

    def record(method: str, started: float, call: Callable[[], Any]) -> Any:
        try:
            resp = call()
        except Exception as exc:
            outcome = Outcome(started, method, None, "", None, b"", repr(exc))
            resp = None
        else:
            outcome = Outcome(
                started,
                method,
                resp.status,
                resp.content_type,
                resp.headers.get("Retry-After"),
                resp.body,
            )
        with lock:
            outcomes.append(outcome)
        return resp

    mine: list[str] = []
    while not stop.is_set():
        started = time.monotonic()
        resp = record(
            "POST",
            started,
            lambda: server.request("POST", "/api/v1/users", {"email": unique_email("load")}),
        )
        if resp is not None and resp.status == 201:
            user_id = resp.json()["id"]
            with lock:
                acked.append(user_id)
            mine.append(user_id)
        if mine:
            started = time.monotonic()
            record("GET", started, lambda: server.request("GET", f"/api/v1/users/{mine[-1]}"))


def test_a_restart_under_load_costs_only_503s_and_loses_nothing(
    server: Server, postgresql_cluster: Any
) -> None:
    outcomes: list[Outcome] = []
    acked: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(server, stop, outcomes, acked)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        outage_started = time.monotonic()
        postgresql_cluster.stop()
        # Down: not ready (a 503 problem), but alive, so no orchestrator kills it.
        ready = server.request("GET", "/health/ready")
        assert ready.status == 503, ready.body
        assert ready.content_type == PROBLEM_JSON
        assert ready.headers.get("Retry-After")
        assert server.request("GET", "/health/live").status == 200
        time.sleep(2.0)
        postgresql_cluster.start()
        # Recovered: the service answers ready again, by itself.
        deadline = time.monotonic() + 30
        while server.request("GET", "/health/ready").status != 200:
            assert time.monotonic() < deadline, "the service did not recover within 30 s"
            time.sleep(0.2)
        recovered = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    # Every request got an HTTP answer: no dropped connection, no hang.
    unanswered = [o for o in outcomes if o.status is None]
    assert not unanswered, unanswered[:5]
    # Only successes and 503 problems; never a 500.
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 201, 503}, statuses
    failures = [o for o in outcomes if o.status == 503]
    assert failures, "the outage was not observed: did PostgreSQL stop?"
    for o in failures:
        assert o.content_type == PROBLEM_JSON
        assert o.retry_after is not None
        assert int(o.retry_after) >= 1
        problem = json.loads(o.body)
        assert problem["status"] == 503
        assert problem["type"] == "urn:userplane:problem:unavailable"
        assert b"Traceback" not in o.body
        assert o.started >= outage_started - HANG  # 503s belong to the outage
    # After recovery (plus the one pool timeout a request may already be waiting out),
    # everything succeeds again without a restart.
    settled = recovered + 1.5
    late = [o for o in outcomes if o.started >= settled]
    assert late, "no load after recovery"
    assert all(o.status in {200, 201} for o in late), [
        (round(o.started - recovered, 2), o.status) for o in late if o.status not in {200, 201}
    ]
    assert server.proc.poll() is None  # the same server, never restarted

    # No acknowledged write is lost.
    for user_id in acked:
        resp = server.request("GET", f"/api/v1/users/{user_id}")
        assert resp.status == 200, (user_id, resp.status)
    assert len(acked) > 0
    assert len({uuid.UUID(i) for i in acked}) == len(acked)
    log = server.log()
    assert "Traceback" not in log
