"""Two real ``userplane serve`` instances on one PostgreSQL enforce one rate limit.

Each instance runs two worker processes: four processes share the limit
through the database. The stated accuracy (``plugins/rate_limits/limiter.py``):
a subject gets at most ``limit x (1 + processes x slack)`` requests a window.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from serving import PROBLEM_JSON, Response, Server, running_server

pytestmark = pytest.mark.e2e

LIMIT = 40
SLACK = 0.05
PROCESSES = 4  # two instances of two workers
FAILURES = 5


def test_two_instances_enforce_one_limit(tmp_path: Path, create_postgresql_database: Any) -> None:
    database_url = create_postgresql_database()
    env = {
        "USERPLANE_ENV": "prod",
        "USERPLANE_RATE_LIMITS": f"read={LIMIT}/60s,auth-failure={FAILURES}/300s",
        "USERPLANE_RATE_LIMIT_SLACK": str(SLACK),
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running_server(tmp_path / "a", database_url, "postgresql", env) as first,
        running_server(tmp_path / "b", database_url, "postgresql", env) as second,
    ):
        second.key = first.key  # one principal, two instances
        servers = [first, second]
        answers: list[Response] = []
        lock = threading.Lock()

        def hammer(server: Server) -> None:
            for _ in range(30):
                answer = server.request("GET", "/api/v1/users/?limit=1")
                with lock:
                    answers.append(answer)

        threads = [threading.Thread(target=hammer, args=(servers[i % 2],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

        statuses = Counter(a.status for a in answers)
        admitted = statuses[200]
        bound = LIMIT * (1 + PROCESSES * SLACK)
        print(f"\ntwo instances: {dict(statuses)}; limit {LIMIT}, stated bound {bound:g}")
        assert set(statuses) <= {200, 429}, statuses
        assert LIMIT <= admitted <= bound, statuses
        for refused in (a for a in answers if a.status == 429):
            assert refused.content_type == PROBLEM_JSON
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.headers["RateLimit-Policy"] == f'"read";q={LIMIT};w=60'
            assert refused.headers["RateLimit"].startswith('"read";r=0;t=')

        # Guessing keys, alternately on both instances, counts against one address.
        wrong = {"Authorization": "Bearer up_" + "A" * 44}
        guesses = [servers[i % 2].request("GET", "/api/v1/users/", headers=wrong) for i in range(8)]
        assert [g.status for g in guesses[:FAILURES]] == [401] * FAILURES
        time.sleep(1.2)  # past USERPLANE_RATE_LIMIT_SYNC_MS: every process has heard
        for server in servers:
            for _ in range(4):
                refused_guess = server.request("GET", "/api/v1/users/", headers=wrong)
                assert refused_guess.status == 429, refused_guess.body
