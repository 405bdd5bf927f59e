"""Failover under load: a multi-host URL, the standby promoted, the primary stopped.

A real ``userplane serve`` (two workers) on
``postgresql://…@primary,standby/db?target_session_attrs=read-write`` takes
writes from several clients while the primary is stopped and its synchronous
standby promoted. Nothing restarts userplane. Every write it acknowledged is on
the new primary; a write it could not make was answered with a 503 problem and
``Retry-After``, never a hang, a reset or a 500; and writes succeed again
within 10 s of the promotion.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from serving import PROBLEM_JSON, running_server, unique_email

from .cluster import ReplicatedCluster

pytestmark = [pytest.mark.replication, pytest.mark.e2e]

#: Writers sending creates all along, and how long the run goes on after the promotion.
WRITERS = 4
AFTER_PROMOTION_S = 12.0
RECOVERY_BOUND_S = 10.0


@dataclass
class Outcome:
    at: float
    email: str
    status: int | None
    retry_after: str | None = None
    content_type: str = ""
    error: str = ""


def test_failover_loses_no_acknowledged_write_and_recovers_without_a_restart(
    make_replicated_cluster: type[ReplicatedCluster], tmp_path: Path
) -> None:
    cluster = make_replicated_cluster(1, synchronous=True)  # type: ignore[call-arg]
    url = cluster.multi_host_url("read-write", connect_timeout=2)
    env = {"USERPLANE_DB_POOL_TIMEOUT_MS": "2000"}
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    with running_server(tmp_path, url, "postgresql", env) as server:

        def write(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                email = unique_email(f"w{n}-{i}")
                at = time.monotonic()
                try:
                    resp = server.request("POST", "/api/v1/users", {"email": email})
                except OSError as exc:
                    outcome = Outcome(at, email, None, error=f"{type(exc).__name__}: {exc}")
                else:
                    outcome = Outcome(
                        at,
                        email,
                        resp.status,
                        resp.headers.get("Retry-After"),
                        resp.content_type,
                    )
                with lock:
                    outcomes.append(outcome)
                time.sleep(0.02)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(2.0)
            stopped = time.monotonic()
            cluster.stop_primary("fast")
            cluster.promote(0)
            promoted = time.monotonic()
            time.sleep(AFTER_PROMOTION_S)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        log = server.log()

    before = [o for o in outcomes if o.at < stopped]
    after = [o for o in outcomes if o.at >= promoted]
    assert before, "no write before the switch"
    assert all(o.status == 201 for o in before), [o for o in before if o.status != 201][:3]

    # Only 201s and 503 problems with Retry-After, ever: no reset, no hang, no 500.
    assert [o for o in outcomes if o.error] == []
    assert {o.status for o in outcomes} <= {201, 503}
    refused = [o for o in outcomes if o.status == 503]
    for o in refused:
        assert o.content_type == PROBLEM_JSON
        assert o.retry_after is not None
        assert int(o.retry_after) >= 1

    # Writes succeed again within the bound after the promotion, and keep succeeding.
    first_success = min(o.at for o in after if o.status == 201)
    last_refusal = max((o.at for o in refused), default=stopped)
    recovered_in = max(first_success, last_refusal) - promoted
    assert recovered_in <= RECOVERY_BOUND_S, recovered_in
    assert len([o for o in after if o.status == 201]) >= WRITERS * 10

    # Every acknowledged write is on the new primary; nothing refused was half made.
    acknowledged = {o.email for o in outcomes if o.status == 201}
    with cluster.connect() as conn:
        stored = {email for (email,) in conn.execute("SELECT email FROM users")}
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert acknowledged <= stored, sorted(acknowledged - stored)[:5]
    assert stored <= {o.email for o in outcomes}
    assert "Traceback" not in log
    print(
        f"failover: {len(outcomes)} writes, {len(acknowledged)} acknowledged, "
        f"{len(refused)} refused with 503; writes again {first_success - promoted:.2f} s "
        f"after the promotion, last 503 at {last_refusal - promoted:+.2f} s"
    )
