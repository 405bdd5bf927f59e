"""Load generators: wrk (with the Lua scripts in ``lua/``) and pgbench, and their results."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import processes
from benchmarks.sql import PAGE_SIZE, for_pgbench

LUA = Path(__file__).resolve().parent / "lua"
_MARK = "BENCH_JSON "


@dataclass
class Result:
    """One measured run of one scenario against one target."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    #: Non-2xx answers except 412, plus socket errors (connect, read, write, timeout).
    errors: int
    #: 412 Precondition Failed answers, counted apart from errors.
    precondition_failed: int
    statuses: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    #: CPU seconds of the server processes (master and workers) during the run.
    app_cpu_s: float | None = None
    #: CPU seconds of every PostgreSQL process during the run.
    db_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        """Requests (or pgbench transactions) per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def per_request_ms(self, cpu_s: float | None) -> float | None:
        """``cpu_s`` per request, in milliseconds."""
        if cpu_s is None or not self.requests:
            return None
        return cpu_s * 1000 / self.requests


def wrk(
    url: str,
    script: str,
    args: Mapping[str, str],
    *,
    duration: float,
    connections: int,
    threads: int,
    env: Mapping[str, str],
) -> Result:
    """Run wrk with ``lua/<script>.lua``; ``args`` go to the script's ``init``."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        # Slow answers are measured rather than dropped as timeouts.
        "--timeout",
        "10s",
        "-s",
        str(LUA / f"{script}.lua"),
        url,
        "--",
        *(f"{k}={v}" for k, v in args.items()),
    ]
    done = processes.run_tool(cmd, env, timeout=duration + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
        )
    data = json.loads(line[len(_MARK) :])
    statuses = {str(k): int(v) for k, v in data["statuses"].items()}
    sockets = {k: int(v) for k, v in data["errors"].items() if k != "status"}
    bad = sum(n for s, n in statuses.items() if not s.startswith("2") and s != "412")
    latency = data["latency_us"]
    detail = ", ".join(f"{k} {v}" for k, v in sockets.items() if v)
    return Result(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
        errors=bad + sum(sockets.values()),
        precondition_failed=statuses.get("412", 0),
        statuses=statuses,
        detail=detail,
    )


# -- pgbench ----------------------------------------------------------------------

#: A random seeded user, drawn from bench_ids (filled by ``database.seed``).
_USER_ID = "(SELECT id FROM bench_ids WHERE n = :n)"
_EMAIL_KEY = "(SELECT email_key FROM bench_ids WHERE n = :n)"
_RANDOM_USER = "\\set n random(1, :users)\n"
_RANDOM_64 = "\\set r random(1, 9223372036854775806)\n"


def pgbench_scripts(directory: Path, statements: Mapping[str, str]) -> dict[str, Path]:
    """Write one pgbench script per statement; ``{statement name: path}``.

    Each is the very statement userplane runs, as one transaction (autocommit),
    with its parameters as pgbench variables (bind parameters under ``-M
    prepared``). Where userplane sends a value pgbench cannot make, an SQL
    expression stands in: a random seeded user's id or email key from
    ``bench_ids``, ``gen_random_uuid()``, ``now()``, or a literal NULL.
    """
    bodies = {
        "get_user": _RANDOM_USER + for_pgbench(statements["get_user"], {"id": _USER_ID}),
        "list_email": _RANDOM_USER
        + for_pgbench(statements["list_email"], {"email_key": _EMAIL_KEY}),
        "list_first": for_pgbench(statements["list_first"], {}),
        "list_after": for_pgbench(statements["list_after"], {}),
        "insert_user": _RANDOM_64
        + for_pgbench(
            statements["insert_user"],
            {
                "id": "gen_random_uuid()",
                "email": "('pgb-' || :r || '@bench.example.org')",
                "email_key": "('pgb-' || :r || '@bench.example.org')",
                "email_next": "NULL",
                "full_name": "('Created ' || :r)",
                "full_name_folded": "('created ' || :r)",
                "created_at": "now()",
                "updated_at": "now()",
                "external_source": "NULL",
                "external_id": "NULL",
                "attributes": "NULL",
            },
        ),
        # If-Match is a version check in the same statement; pgbench updates
        # unconditionally (NULL), which takes the same row lock and writes alike.
        "update_user": _RANDOM_USER
        + for_pgbench(
            statements["update_user"],
            {
                "id": _USER_ID,
                "expected_version": "NULL",
                "now": "now()",
                "email": "NULL",
                "email_key": "NULL",
                "email_next": "NULL",
                "full_name": "('Updated ' || :n)",
                "full_name_folded": "('updated ' || :n)",
                "is_active": "NULL",
                "external_source": "NULL",
                "external_id": "NULL",
                "attributes": "NULL",
            },
        ),
    }
    paths = {}
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        path = directory / f"{name}.sql"
        path.write_text(body + "\n", encoding="utf-8")
        paths[name] = path
    return paths


def pgbench_defines(users: int, after_key: str, after_id: str) -> dict[str, str]:
    """The ``-D`` variables of the scripts: constant parameters and the page-100 position."""
    return {
        "users": str(users),
        "include_deleted": "false",
        "limit": str(PAGE_SIZE + 1),
        "is_active": "true",
        "version": "1",
        "set_email": "false",
        "set_full_name": "true",
        "set_is_active": "false",
        "set_external": "false",
        "set_attributes": "false",
        "after_key": after_key,
        "after_id": after_id,
    }


def pgbench(
    url: str,
    scripts: Sequence[tuple[Path, int]],
    defines: Mapping[str, str],
    *,
    duration: float,
    clients: int,
    threads: int,
    log_prefix: Path | None,
) -> Result:
    """Run pgbench with weighted ``scripts``; latencies from its per-transaction log."""
    cmd = ["pgbench", "-n", "-M", "prepared", f"-c{clients}", f"-j{threads}"]
    cmd += [f"-T{max(1, round(duration))}"]
    for path, weight in scripts:
        cmd += ["-f", f"{path}@{weight}"]
    for name, value in defines.items():
        cmd += ["-D", f"{name}={value}"]
    if log_prefix is not None:
        cmd += ["--log", f"--log-prefix={log_prefix}"]
    cmd.append(url)
    done = processes.run_tool(cmd, timeout=duration + 120)
    values = _pgbench_summary(done.stdout)
    if "tps" not in values:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    aborted = sum(1 for line in done.stderr.splitlines() if "aborted" in line)
    failed = int(values.get("failed", 0))
    requests = int(values["processed"])
    latencies = _pgbench_latencies(log_prefix) if log_prefix is not None else []
    p50 = p99 = values.get("latency", 0.0)
    if latencies:
        p50, p99 = percentile(latencies, 50) / 1000, percentile(latencies, 99) / 1000
    return Result(
        requests=requests,
        seconds=requests / values["tps"] if values["tps"] else 0.0,
        p50_ms=p50,
        p99_ms=p99,
        errors=failed + aborted,
        precondition_failed=0,
        detail=f"{aborted} clients aborted" if aborted else "",
    )


def _pgbench_summary(stdout: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in stdout.splitlines():
        key, _, rest = line.partition(":")
        rest = rest.strip()
        if line.startswith("tps = "):
            values["tps"] = float(line.split()[2])
        elif key == "number of transactions actually processed":
            values["processed"] = float(rest.split()[0].split("/")[0])
        elif key == "number of failed transactions":
            values["failed"] = float(rest.split()[0])
        elif line.startswith("latency average = "):
            values["latency"] = float(line.split()[3])
    return values


def _pgbench_latencies(prefix: Path) -> list[int]:
    """Every transaction's time in µs, from pgbench's logs (one file per thread), removed after."""
    times: list[int] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open(encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    times.append(int(fields[2]))
        path.unlink()
    return times


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile ``pct`` of ``values``."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for none)."""
    return statistics.median(values) if values else float("nan")
