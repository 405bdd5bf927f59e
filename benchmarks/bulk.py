"""Bulk import and export against a raw ``COPY`` of the same rows, on PostgreSQL.

``python -m benchmarks`` runs it after the HTTP scenarios (``--bulk-users 0``
skips it); ``python -m benchmarks.bulk`` runs it alone and prints its table.

Each round, interleaved: a raw ``COPY`` of the rows, already built as the
users table stores them, into a freshly migrated database (the floor: no
parsing, no validation, no lookups, no records of change); ``userplane users
import`` of the same users from an NDJSON file into another fresh database,
with the default plugins (audit on), and again with the audit and webhooks
plugins disabled; then ``userplane users export`` of what was imported.
Imports and exports run as real subprocesses of the ``userplane`` entry point;
their peak RSS is the process's own high-water mark (VmHWM) at exit.
"""

# Starting userplane with fixed arguments is this module's job.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from benchmarks import database

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
COLUMNS = (
    "id",
    "email",
    "email_normalized",
    "full_name",
    "full_name_folded",
    "is_active",
    "created_at",
    "updated_at",
    "version",
)
#: What an import must reach, as a share of the raw COPY's rows per second.
IMPORT_TARGET = 0.5
#: The most an export of the users may hold at its peak (RSS).
EXPORT_RSS_MIB = 100


@dataclass
class Run:
    """One timed run: seconds, and peak RSS of the child process (MiB) when there is one."""

    seconds: float
    rss_mib: float | None = None


@dataclass
class BulkResults:
    """Every round's runs, by name."""

    users: int
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, name: str, run: Run) -> None:
        """Record a run of ``name``."""
        self.runs.setdefault(name, []).append(run)

    def median(self, name: str) -> float:
        """The median seconds of ``name``."""
        return statistics.median(r.seconds for r in self.runs[name])

    def peak_rss(self, name: str) -> float | None:
        """The highest peak RSS of ``name`` over its runs."""
        values = [r.rss_mib for r in self.runs[name] if r.rss_mib is not None]
        return max(values) if values else None


def _log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def write_rows(path: Path, users: int) -> None:
    """``users`` NDJSON rows: a distinct address and a name each."""
    with path.open("w", encoding="utf-8") as out:
        for n in range(users):
            out.write(
                json.dumps({"email": f"Bulk.User{n}@Bulk.Example.org", "full_name": f"Bulk {n}"})
                + "\n"
            )


def stored_rows(users: int) -> list[tuple[object, ...]]:
    """The same users as the users table stores them (what the raw COPY sends)."""
    from userplane.emails import normalize_email
    from userplane.text import fold

    now = datetime.now(UTC)
    rows = []
    for n in range(users):
        email = f"Bulk.User{n}@Bulk.Example.org"
        name = f"Bulk {n}"
        rows.append(
            (uuid.uuid4(), email, normalize_email(email), name, fold(name), True, now, now, 1)
        )
    return rows


def raw_copy(url: str, rows: Sequence[tuple[object, ...]]) -> Run:
    """One ``COPY users … FROM STDIN`` of ``rows`` in one transaction."""
    statement = f"COPY users ({', '.join(COLUMNS)}) FROM STDIN"
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return Run(time.perf_counter() - started)


#: Runs the ``userplane`` entry point and reports the process's own peak RSS at exit.
#: VmHWM, not the parent's wait4 ru_maxrss: that counts the forked copy of the parent
#: (this harness, holding the rows) between fork and exec.
_MEASURED = """
import atexit, sys

def report():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write("bench-vmhwm-kib " + line.split()[1] + chr(10))

atexit.register(report)
sys.argv = ["userplane", *sys.argv[1:]]
from userplane.frontends.cli import main
main()
"""


def userplane(env: dict[str, str], *args: str) -> Run:
    """``userplane ARGS`` as a subprocess: wall time and its own peak RSS (VmHWM)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"userplane {' '.join(args)} failed: {done.stderr[-2000:]}")
    kib = [
        int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("bench-vmhwm")
    ]
    return Run(seconds, kib[-1] / 1024 if kib else None)


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERPLANE_")}
    env.update(USERPLANE_DATABASE_URL=url, USERPLANE_ENV="prod", USERPLANE_LOG_LEVEL="warning")
    env.update(extra)
    return env


@contextlib.contextmanager
def _fresh(admin_url: str, env: dict[str, str]) -> Iterator[str]:
    """A new migrated database (the plugins of ``env``), dropped after."""
    with database.temporary_database(admin_url) as url:
        userplane(_env(url, **env), "migrate")
        yield url


def measure(admin_url: str, users: int, rounds: int, workdir: Path) -> BulkResults:
    """``rounds`` interleaved rounds of raw COPY, imports and exports."""
    results = BulkResults(users)
    source = workdir / "bulk-users.ndjson"
    write_rows(source, users)
    rows = stored_rows(users)
    unrecorded = {"USERPLANE_DISABLED_PLUGINS": "audit,webhooks"}
    for rnd in range(1, rounds + 1):
        with _fresh(admin_url, {}) as url:
            results.add("raw COPY", raw_copy(url, rows))
        with _fresh(admin_url, {}) as url:
            results.add("import", userplane(_env(url), "users", "import", str(source)))
            out = workdir / "bulk-export.ndjson"
            results.add("export ndjson", userplane(_env(url), "users", "export", "-o", str(out)))
            results.add(
                "export csv",
                userplane(_env(url), "users", "export", "--format", "csv", "-o", str(out)),
            )
            out.unlink()
        with _fresh(admin_url, unrecorded) as url:
            results.add(
                "import (audit, webhooks off)",
                userplane(_env(url, **unrecorded), "users", "import", str(source)),
            )
        _log(
            f"bulk round {rnd}: raw COPY {results.runs['raw COPY'][-1].seconds:.2f} s, "
            f"import {results.runs['import'][-1].seconds:.2f} s, "
            f"export {results.runs['export ndjson'][-1].seconds:.2f} s"
        )
    return results


def table(results: BulkResults) -> str:
    """The Markdown section of the report."""
    copy_rate = results.users / results.median("raw COPY")
    lines = [
        f"{results.users:,} users; medians of {len(results.runs['raw COPY'])} interleaved rounds, "
        "each into a freshly migrated database. Imports and exports are `userplane` "
        "subprocesses (start-up included); RSS is the process's own peak (VmHWM).",
        "",
        "| run | seconds | rows/s | vs raw COPY | peak RSS |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in results.runs:
        seconds = results.median(name)
        rate = results.users / seconds
        rss = results.peak_rss(name)
        lines.append(
            f"| {name} | {seconds:.2f} | {rate:,.0f} | {rate / copy_rate:.2f}x | "
            f"{'-' if rss is None else f'{rss:.0f} MiB'} |"
        )
    ratio = (results.users / results.median("import")) / copy_rate
    export_rss = max(
        r for r in (results.peak_rss("export ndjson"), results.peak_rss("export csv")) if r
    )
    lines += [
        "",
        "| target | measured | met |",
        "| --- | ---: | :---: |",
        f"| import >= {IMPORT_TARGET:.0%} of raw COPY's rows/s | {ratio:.2f}x | "
        f"{'yes' if ratio >= IMPORT_TARGET else '**no**'} |",
        f"| export peak RSS < {EXPORT_RSS_MIB} MiB | {export_rss:.0f} MiB | "
        f"{'yes' if export_rss < EXPORT_RSS_MIB else '**no**'} |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bulk``: the bulk benchmark alone, its table on stdout."""
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bulk", description=__doc__)
    parser.add_argument("--users", type=int, default=100_000, help="rows [100000]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3]")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("USERPLANE_BENCH_PG_URL", DEFAULT_PG_URL),
        help="a database to create the benchmark databases from",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="userplane-bulk-") as workdir:
        results = measure(args.pg_url, args.users, args.rounds, Path(workdir))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
