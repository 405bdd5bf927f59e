"""Three real ``userplane serve`` instances on one PostgreSQL database, behind a real HAProxy.

Each instance is ``tests/serving.py``'s ``running_server`` (gunicorn, two
workers, ``--migrate``), in a directory of its own; the first makes the admin
key every instance then sends. HAProxy (Debian's ``/usr/sbin/haproxy``, or
``USERPLANE_TEST_HAPROXY``) runs in the foreground with a generated
configuration: ``balance roundrobin`` over the three, each health-checked on
``/health/ready``, ``option forwardfor`` (the instances trust 127.0.0.1 as
their proxy, as the README says to), and ``X-Served-By`` on every answer
naming the instance that served it. The balancer is a ``serving.Server`` too,
so ``request`` works the same through it as directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from serving import REQUEST_TIMEOUT, STARTUP_TIMEOUT, Response, Server, free_port, running_server

HAPROXY = os.environ.get("USERPLANE_TEST_HAPROXY", "/usr/sbin/haproxy")
INSTANCES = 3
#: Gunicorn workers per instance: what ``running_server`` starts.
WORKERS = 2
#: The header HAProxy adds to every answer: the name of the instance that served it.
SERVED_BY = "X-Served-By"
#: What every instance runs with, whatever the module adds: behind our balancer.
BASE_ENV = {"USERPLANE_TRUSTED_PROXIES": "127.0.0.1"}


@dataclass
class Cluster:
    """The instances, the balancer in front of them, and their one database."""

    instances: list[Server]
    balancer: Server
    database_url: str

    @property
    def names(self) -> list[str]:
        """HAProxy's names for the instances, in order: what ``X-Served-By`` says."""
        return [instance_name(i) for i in range(len(self.instances))]

    @property
    def processes(self) -> int:
        """``P`` of the rate-limit bound: instances x workers."""
        return len(self.instances) * WORKERS

    @property
    def key(self) -> str:
        return self.balancer.key

    def everyone(self) -> list[Server]:
        """The balancer, then each instance directly."""
        return [self.balancer, *self.instances]

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on the cluster's database, read directly (not through the API)."""
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def check_alive(self) -> None:
        for server in self.everyone():
            assert server.proc.poll() is None, f"a process of the cluster stopped:\n{server.log()}"


#: ``with start_cluster(name, env) as cluster``: the ``start_cluster`` fixture (conftest).
StartCluster = Callable[..., contextlib.AbstractContextManager[Cluster]]


def instance_name(index: int) -> str:
    return f"up{index + 1}"


def served_by(responses: Sequence[Response]) -> set[str]:
    return {r.headers.get(SERVED_BY, "?") for r in responses}


def haproxy_config(port: int, backends: Sequence[int]) -> str:
    servers = "\n".join(
        f"    server {instance_name(i)} 127.0.0.1:{p} check" for i, p in enumerate(backends)
    )
    return f"""\
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    option forwardfor

frontend scale
    bind 127.0.0.1:{port}
    default_backend userplane
    http-response set-header {SERVED_BY} %[srv_name]

backend userplane
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health/ready
    http-check expect status 200
    default-server inter 500ms fastinter 200ms downinter 500ms fall 2 rise 1
{servers}
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_haproxy(directory: Path, backends: Sequence[Server]) -> Iterator[Server]:
    """HAProxy in the foreground over ``backends``, until every one serves through it."""
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(port, [b.port for b in backends]), encoding="utf-8")
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, check=False, timeout=30
    )
    assert checked.returncode == 0, f"haproxy refuses {config}:\n{checked.stdout}{checked.stderr}"
    logs = (directory / "haproxy.stdout", directory / "haproxy.stderr")
    files: list[IO[bytes]] = [p.open("wb") for p in logs]
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)],
        cwd=directory,
        stdout=files[0],
        stderr=files[1],
        start_new_session=True,
    )
    first = backends[0]
    balancer = Server(
        proc=proc,
        port=port,
        directory=directory,
        env=first.env,
        logs=logs,
        backend=first.backend,
        key=first.key,
    )
    try:
        wanted = {instance_name(i) for i in range(len(backends))}
        seen: set[str] = set()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while seen != wanted:
            if proc.poll() is not None:
                pytest.fail(f"haproxy exited with {proc.returncode}:\n{balancer.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"only {sorted(seen)} served through haproxy:\n{balancer.log()}")
            with contextlib.suppress(OSError):
                resp = balancer.request("GET", "/health/ready")
                if resp.status == 200:
                    seen.add(resp.headers[SERVED_BY])
            time.sleep(0.05)
        yield balancer
    finally:
        _stop(proc)
        for f in files:
            f.close()


@contextlib.contextmanager
def running_cluster(
    directory: Path, database_url: str, extra_env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """``INSTANCES`` instances on ``database_url`` behind HAProxy, stopped afterwards."""
    env = {**BASE_ENV, **(extra_env or {})}
    dirs = [directory / instance_name(i) for i in range(INSTANCES)]
    for d in dirs:
        d.mkdir()
    with contextlib.ExitStack() as stack:
        # The first migrates and makes the key; the others start side by side.
        first = stack.enter_context(running_server(dirs[0], database_url, "postgresql", env))
        managers = [
            running_server(d, database_url, "postgresql", env, with_key=False) for d in dirs[1:]
        ]
        with ThreadPoolExecutor(max_workers=len(managers)) as pool:
            futures = [pool.submit(m.__enter__) for m in managers]
        others: list[Server] = []
        failure: BaseException | None = None
        for manager, future in zip(managers, futures, strict=True):
            error = future.exception()
            if error is None:
                others.append(future.result())
                stack.push(manager.__exit__)
            else:
                failure = failure or error
        if failure is not None:
            raise failure
        instances = [first, *others]
        for instance in others:
            instance.key = first.key
        balancer = stack.enter_context(running_haproxy(directory, instances))
        yield Cluster(instances=instances, balancer=balancer, database_url=database_url)


def race(calls: Sequence[Callable[[], Response]]) -> list[Response]:
    """Every call at once (released together by a barrier), each in a thread of its own."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Response]) -> Response:
        barrier.wait(timeout=REQUEST_TIMEOUT)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def targets(cluster: Cluster, via: str, count: int) -> list[Server]:
    """``count`` servers to send to: the balancer, each instance in turn, or both in turn."""
    pool = {
        "balancer": [cluster.balancer],
        "instances": cluster.instances,
        "everyone": cluster.everyone(),
    }[via]
    return [pool[i % len(pool)] for i in range(count)]
