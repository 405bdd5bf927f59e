"""Faults injected into a real ``userplane serve`` on a real PostgreSQL.

A worker killed with SIGKILL under load, SIGTERM while requests are slow, and a
pool exhausted by statements stuck behind a lock. Slowness comes from the test
holding a PostgreSQL table lock of its own: no product change, no sleep in the
server. A PostgreSQL restart under load is ``test_postgresql_outage.py``'s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from serving import (
    GRACEFUL_TIMEOUT,
    PROBLEM_JSON,
    REQUEST_TIMEOUT,
    Response,
    Server,
    running_server,
    unique_email,
)

pytestmark = pytest.mark.e2e

#: Threads per gunicorn worker, set explicitly: the bound on what one worker has in flight.
THREADS = 4
#: Safety limit for anything the tests wait for; never an expectation.
SAFETY = 20.0
#: Test 3's pool settings: small enough that 2 workers cannot serve the burst from the pool.
POOL_ENV = {
    "USERPLANE_THREADS": str(THREADS),
    "USERPLANE_DB_POOL_MAX_SIZE": "2",
    "USERPLANE_DB_POOL_MIN_SIZE": "1",
    "USERPLANE_DB_STATEMENT_TIMEOUT_MS": "500",
    "USERPLANE_DB_POOL_TIMEOUT_MS": "500",
    # The burst outnumbers the threads: the last requests queue for one first.
    "USERPLANE_QUEUE_TIMEOUT_MS": "1000",
}
#: Test 3's promise: with those bounds (a queue of 1 s at most, then 0.5 s for a
#: connection or for the statement), every answer (a 503 or not) comes within this.
BOUND = 2.5
#: A request still unanswered after this is hung (test 3's client timeout).
HANG = 8.0


# Processes ----------------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (a gunicorn master's workers)."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] not in {"Z", "X"}:
                found.add(int(stat.parent.name))
    return found


def wait_for(what: str, check: Callable[[], Any], timeout: float = SAFETY) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def workers(server: Server, count: int = 2) -> set[int]:
    """The master's workers, once there are ``count`` of them."""

    def found() -> set[int] | None:
        pids = children(server.proc.pid)
        return pids if len(pids) == count else None

    pids: set[int] = wait_for(f"{count} workers", found)
    return pids


@contextlib.contextmanager
def serve(directory: Path, url: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``running_server`` on PostgreSQL; afterwards, nothing of it survives, not even a worker."""
    server: Server | None = None
    # Two workers, set explicitly: the tests count them and size bursts by them.
    env = {"USERPLANE_WORKERS": "2", **(env or {})}
    try:
        with running_server(directory, url, "postgresql", env) as server:
            yield server
    finally:
        if server is not None:
            # Its own session: the process group is the master's pid. Stopped
            # (gracefully) by running_server already, unless a test left strays.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.proc.pid, signal.SIGKILL)


# PostgreSQL ---------------------------------------------------------------


@contextlib.contextmanager
def table_lock(url: str, mode: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold ``LOCK TABLE users IN <mode> MODE`` until the block ends (or the caller rolls back)."""
    conn = psycopg.connect(url, connect_timeout=10)
    try:
        conn.execute(f"LOCK TABLE users IN {mode} MODE")
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()


def blocked_on_users(url: str) -> int:
    """How many sessions wait for a lock on ``users``."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'users'::regclass AND NOT granted"
        ).fetchone()
    assert row is not None
    return int(row[0])


def locks_held(url: str) -> int:
    """Locks on ``users`` held by anyone else: must be none after each test."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'users'::regclass"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def user_ids(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return {str(i) for (i,) in conn.execute("SELECT id FROM users")}


# HTTP ---------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    elapsed: float
    status: int | None  # None: no HTTP answer (connection error or timeout)
    resp: Response | None
    error: str = ""


def call(
    server: Server,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float = REQUEST_TIMEOUT,
    auth: bool = True,
) -> Outcome:
    """One request on a fresh connection, timed; an exception is an outcome too."""
    headers = {"X-Request-ID": uuid.uuid4().hex, "Connection": "close"}
    if auth:
        headers["Authorization"] = f"Bearer {server.key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        raw = conn.getresponse()
        resp = Response(raw.status, raw.headers, raw.read())
    except Exception as exc:
        return Outcome(started, time.monotonic() - started, None, None, repr(exc))
    finally:
        conn.close()
    return Outcome(started, time.monotonic() - started, resp.status, resp)


def assert_unavailable(o: Outcome) -> None:
    """``o`` is a 503 ``unavailable`` problem that says when to retry."""
    assert o.resp is not None, o.error
    assert o.status == 503, (o.status, o.resp.body)
    assert o.resp.content_type == PROBLEM_JSON
    retry_after = o.resp.headers.get("Retry-After")
    assert retry_after is not None
    assert int(retry_after) >= 1, retry_after
    problem = o.resp.json()
    assert problem["status"] == 503
    assert problem["type"] == "urn:userplane:problem:unavailable"
    assert b"Traceback" not in o.resp.body


def refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused; it is closed at once if not."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def pg_url(create_postgresql_database: Callable[[], str]) -> Iterator[str]:
    url = create_postgresql_database()
    yield url
    # Whatever the test did, it left no session holding a lock on the table.
    assert locks_held(url) == 0


# 1. SIGKILL ---------------------------------------------------------------


def tcp_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process ``pid`` has open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def blocked_client_ports(url: str) -> list[int]:
    """The client ports of the sessions waiting for a lock on ``users``."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.relation = 'users'::regclass AND NOT l.granted"
        ).fetchall()
    return [int(port) for (port,) in rows]


def test_a_worker_killed_under_load_costs_only_its_in_flight_requests(
    tmp_path: Path, pg_url: str
) -> None:
    env = {"USERPLANE_THREADS": str(THREADS)}
    with serve(tmp_path, pg_url, env) as srv:
        before = workers(srv)
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                o = call(srv, "POST", "/api/v1/users", {"email": unique_email("kill")})
                with lock:
                    outcomes.append(o)

        def created_since(t: float) -> int:
            with lock:
                return sum(1 for o in outcomes if o.started >= t and o.status == 201)

        # As many clients as one worker has threads: wherever they land, each
        # request is on a thread, none queued.
        clients = [threading.Thread(target=load) for _ in range(THREADS)]
        for t in clients:
            t.start()
        try:
            wait_for("load before the kill", lambda: created_since(0) >= 30)
            # Freeze the load for an instant, so that the kill provably lands on
            # requests in flight: every client's POST waits for the lock, inside a worker.
            with table_lock(pg_url, "SHARE ROW EXCLUSIVE"):
                ports = wait_for(
                    "every client's POST to block",
                    lambda: (p := blocked_client_ports(pg_url)) and len(p) == THREADS and p,
                )
                in_flight = {pid: len(tcp_ports(pid) & set(ports)) for pid in before}
                assert sum(in_flight.values()) == THREADS, in_flight
                victim = max(in_flight, key=lambda pid: in_flight[pid])
                killed = time.monotonic()
                os.kill(victim, signal.SIGKILL)

            def replaced() -> set[int] | None:
                pids = children(srv.proc.pid)
                return pids if len(pids) == 2 and victim not in pids else None

            after = wait_for("a replacement worker", replaced)
            replacement_seen = time.monotonic()
            # The service keeps answering: writes succeed after the replacement.
            wait_for("writes after the replacement", lambda: created_since(replacement_seen) >= 30)
        finally:
            stop.set()
            for t in clients:
                t.join(timeout=REQUEST_TIMEOUT + 5)
        assert srv.proc.poll() is None, srv.log()

        new = after - before
        assert len(new) == 1, (before, after)
        assert after - new == before - {victim}, (before, after)
        failures = [o for o in outcomes if o.status != 201]
        print(
            f"\n[sigkill] {len(outcomes)} POSTs; {in_flight[victim]} in flight on the victim, "
            f"{len(failures)} failed ({[o.error or o.status for o in failures]}); "
            f"replacement seen {replacement_seen - killed:.2f}s after the kill"
        )
        # Exactly what the victim had in flight failed, which is at most its threads.
        assert len(failures) == in_flight[victim], [o.error or o.status for o in failures]
        assert len(failures) <= THREADS
        for o in failures:
            if o.status is not None:
                assert_unavailable(o)  # an HTTP failure is a 503 problem, never a 500
            assert o.started < killed
        late = [o for o in outcomes if o.started >= replacement_seen]
        assert late
        assert all(o.status == 201 for o in late), [o.error or o.status for o in late]

        acked = [o.resp.json()["id"] for o in outcomes if o.status == 201 and o.resp]
        assert len(set(acked)) == len(acked)
        listed = srv.cli("users", "list", "--format", "json", "--include-deleted")
        assert listed.returncode == 0, listed.stderr
        stored = {json.loads(line)["id"] for line in listed.stdout.splitlines()}
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged users lost"
        print(f"[sigkill] {len(stored) - len(acked)} users written but never acknowledged")
        log = srv.log()
        assert f"Worker (pid:{victim}) was sent SIGKILL" in log
        assert "Traceback" not in log


# 2. SIGTERM ---------------------------------------------------------------

#: POSTs in flight when SIGTERM arrives: no more than one worker's threads, so none queues.
IN_FLIGHT = 4
#: The lock must not outlast a statement: the POSTs are to be slow, not cancelled.
SLOW_ENV = {"USERPLANE_DB_STATEMENT_TIMEOUT_MS": "15000", "USERPLANE_THREADS": str(THREADS)}


def _slow_posts(srv: Server, results: list[Outcome]) -> list[threading.Thread]:
    def post(i: int) -> None:
        results[i] = call(srv, "POST", "/api/v1/users", {"email": unique_email("term")})

    posts = [threading.Thread(target=post, args=(i,)) for i in range(len(results))]
    for t in posts:
        t.start()
    return posts


def test_sigterm_lets_slow_in_flight_writes_finish_then_exits(tmp_path: Path, pg_url: str) -> None:
    with serve(tmp_path, pg_url, SLOW_ENV) as srv:
        results: list[Outcome] = [Outcome(0, 0, None, None, "not run")] * IN_FLIGHT
        with table_lock(pg_url, "SHARE ROW EXCLUSIVE") as held:
            posts = _slow_posts(srv, results)
            # Every POST is inside a worker, its INSERT waiting for the lock.
            wait_for("the POSTs to block", lambda: blocked_on_users(pg_url) == IN_FLIGHT)
            srv.proc.send_signal(signal.SIGTERM)
            termed = time.monotonic()
            wait_for("the master to handle SIGTERM", lambda: "Handling signal: term" in srv.log())
            # The scenario: the writes stay slow for a second of the shutdown.
            time.sleep(1.0)
            assert srv.proc.poll() is None, "the server exited with writes in flight"
            held.rollback()
        for t in posts:
            t.join(timeout=GRACEFUL_TIMEOUT + 5)
        try:
            code = srv.proc.wait(timeout=GRACEFUL_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit:\n{srv.log()}")
        exited = time.monotonic()
        log = srv.log()

        print(
            f"\n[sigterm] POSTs answered {[o.status for o in results]} at "
            f"{[round(o.started + o.elapsed - termed, 2) for o in results]}s after SIGTERM; "
            f"exit {code} at {exited - termed:.2f}s"
        )
        for o in results:
            assert o.status == 201, (o.error, o.resp and o.resp.body)
            assert o.started + o.elapsed - termed < GRACEFUL_TIMEOUT
        assert code == 0, log
        # It exited because the work was done, not because the graceful timeout ran out.
        assert exited - termed < GRACEFUL_TIMEOUT, log
        assert "Traceback" not in log
        # Gone: a new connection is refused, not left hanging.
        assert refused(srv.port)
        # Every acknowledged user is in the database.
        acked = {o.resp.json()["id"] for o in results if o.resp is not None}
        assert len(acked) == IN_FLIGHT
        assert acked <= user_ids(pg_url)


def test_new_connections_are_refused_while_slow_requests_drain(tmp_path: Path, pg_url: str) -> None:
    with serve(tmp_path, pg_url, SLOW_ENV) as srv:
        results: list[Outcome] = [Outcome(0, 0, None, None, "not run")]
        with table_lock(pg_url, "SHARE ROW EXCLUSIVE"):
            posts = _slow_posts(srv, results)
            wait_for("the POST to block", lambda: blocked_on_users(pg_url) == 1)
            srv.proc.send_signal(signal.SIGTERM)
            wait_for("the master to handle SIGTERM", lambda: "Handling signal: term" in srv.log())
            # Shutting down, a request still in flight: a newcomer must be turned
            # away at once (and so try another instance), not queued to no one.
            deadline = time.monotonic() + 3
            while not refused(srv.port) and time.monotonic() < deadline:
                time.sleep(0.05)
            late = call(srv, "GET", "/health/live", timeout=2, auth=False)
        for t in posts:
            t.join(timeout=GRACEFUL_TIMEOUT + 5)
        assert "ConnectionRefusedError" in late.error, (
            "a new connection while a request drained was not refused: "
            f"{late.error or late.status} after {late.elapsed:.1f}s"
        )
        assert results[0].status == 201


# 3. Pool exhausted --------------------------------------------------------


def test_an_exhausted_pool_answers_fast_503s_and_recovers(tmp_path: Path, pg_url: str) -> None:
    with serve(tmp_path, pg_url, POOL_ENV) as srv:
        before = workers(srv)
        # Warm, concurrently so that both workers take some: each has its pool
        # open and the API key in its cache (its lookup is not what is measured).
        with ThreadPoolExecutor(max_workers=2 * THREADS) as pool:
            warm = list(pool.map(lambda _: call(srv, "GET", "/api/v1/users"), range(2 * THREADS)))
        assert all(o.status == 200 for o in warm), [o.status for o in warm]

        burst = 3 * 2 * int(POOL_ENV["USERPLANE_DB_POOL_MAX_SIZE"])  # > pool size x workers
        results: list[Outcome] = [Outcome(0, 0, None, None, "not run")] * burst
        probes: list[Outcome] = []
        probing = threading.Event()
        go = threading.Barrier(burst)

        def get(i: int) -> None:
            go.wait(timeout=SAFETY)
            results[i] = call(srv, "GET", "/api/v1/users", timeout=HANG)

        def probe() -> None:
            while not probing.is_set():
                probes.append(call(srv, "GET", "/health/live", timeout=HANG, auth=False))
                time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            with table_lock(pg_url, "ACCESS EXCLUSIVE"):
                getters = [threading.Thread(target=get, args=(i,)) for i in range(burst)]
                for t in getters:
                    t.start()
                for t in getters:
                    t.join(timeout=HANG + 5)
            # The lock is gone: the service serves again, by itself.
            recovered = wait_for(
                "a 200 after the lock is released",
                lambda: call(srv, "GET", "/api/v1/users").status == 200,
                timeout=10,
            )
            after = [call(srv, "GET", "/api/v1/users") for _ in range(6)]
        finally:
            probing.set()
            prober.join(timeout=HANG + 5)

        times = sorted(o.elapsed for o in results)
        print(
            f"\n[pool] {burst} GETs under the lock: statuses "
            f"{sorted({o.status for o in results}, key=str)}, p50 {statistics.median(times):.2f}s, "
            f"max {times[-1]:.2f}s; {len(probes)} live probes, max "
            f"{max(o.elapsed for o in probes):.2f}s; details "
            f"{dict(Counter(o.resp.json().get('detail') for o in results if o.resp))}"
        )
        hung = [o.error for o in results if o.status is None]
        assert not hung, f"{len(hung)} of {burst} requests got no answer: {hung[:3]}"
        assert 500 not in {o.status for o in results}
        for o in results:
            assert_unavailable(o)
            assert o.elapsed < BOUND, f"a 503 took {o.elapsed:.2f}s"
        assert recovered
        assert all(o.status == 200 for o in after), [o.status for o in after]
        # Never unhealthy: liveness answered 200 all along, promptly.
        assert probes
        assert all(o.status == 200 for o in probes), [o.error or o.status for o in probes]
        assert max(o.elapsed for o in probes) < BOUND
        # And nothing was restarted to get there.
        assert srv.proc.poll() is None
        assert children(srv.proc.pid) == before
        assert "Traceback" not in srv.log()
