"""The benchmark run: targets, scenarios, interleaved rounds, and the report.

See ``benchmarks/README.md`` for what is measured and how to read it.
"""

# Starting tools (userplane, gunicorn, wrk, pgbench, apt-get) with fixed
# arguments is this module's job.
# ruff: noqa: S603, S607

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from benchmarks import bulk, database, load, processes, report
from benchmarks.sql import PAGE_SIZE, columns, statements
from benchmarks.targets import HttpTarget, OtlpSink, free_port, request

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGETS = ("userplane", "seed", "bare", "pgbench")
#: Targets run only when named: userplane with rate limits off (what checking them
#: costs); with telemetry exported (otlp-http to a no-op sink); the same app under
#: gunicorn's stock gthread worker, to measure what the slow-client worker (request
#: heads read in the event loop) costs.
#: userplane-encrypted serves a database of its own, seeded with the same users sealed
#: (field-level encryption on), to measure what encryption costs.
#: userplane-unrecorded runs with the audit and webhooks plugins disabled, to measure
#: what the audit trail and one webhook subscription cost (every other target has both).
#: userplane-granian serves the same app under granian (a Rust HTTP server, WSGI
#: interface; `pip install granian`), the same workers and threads, to measure an
#: alternative server.
EXTRA_TARGETS = (
    "userplane-nolimits",
    "userplane-otel",
    "userplane-gthread",
    "userplane-encrypted",
    "userplane-unrecorded",
    "userplane-granian",
)
#: The target whose personal data is sealed (docs/encryption.md).
ENCRYPTED = "userplane-encrypted"
#: The target that records no changes (docs/audit.md, docs/webhooks.md).
UNRECORDED = "userplane-unrecorded"
#: The reference peer (issue 21): FastAPI + SQLModel + asyncpg under gunicorn with
#: uvicorn workers, started by its own run.sh (which creates its tables).
SEED = "seed"
SEED_DIR = Path(os.environ.get("BENCH_SEED_DIR", "/work/shared/peers/fastapi_seed"))
#: Where the peer's virtualenv is made from its requirements.txt and kept between
#: runs (its own folder is read-only).
SEED_VENV = Path(
    os.environ.get("BENCH_SEED_VENV", Path.home() / ".cache" / "userplane-bench" / "seed-venv")
)
#: The template's pool per worker (APP_DB_POOL_SIZE 20 + APP_DB_MAX_OVERFLOW 10).
SEED_POOL, SEED_OVERFLOW = 20, 10
#: Connections kept free when the seed's pool is cut to fit max_connections.
SPARE = 4
#: API keys the load spreads its requests over, a different one per request in
#: turn, so that the rate limits stay at their production defaults (read=600/60s,
#: write=120/60s per key) and are checked on every request without refusing:
#: 256 keys admit 2,560 reads/s and 512 writes/s sustained, and bursts of 600
#: and 120 per key on top (see README.md).
API_KEYS = 256
#: How a baseline revision is installed: its code only, on this environment's packages.
PIP_INSTALL = (sys.executable, "-m", "pip", "install", "--quiet", "--no-deps")
#: Targets serving an earlier revision are named userplane@REV.
BASELINE_PREFIX = "userplane@"
#: Of the seeded users, the mix updates every MIX_UPDATE_EVERY-th (and reads the others).
MIX_UPDATE_EVERY = 10


@dataclass(frozen=True)
class Scenario:
    """One kind of load: a wrk script for HTTP targets, weighted pgbench scripts for pgbench."""

    name: str
    script: str
    pgbench: tuple[tuple[str, int], ...]
    #: Creates or updates rows: the table is reset after each run.
    writes: bool = False
    #: Which users the run updates with If-Match ("all" seeded users, or the "mix" share).
    updates: str | None = None
    #: The list page the run GETs (1-based).
    page: int | None = None
    #: Whether the reference peer has the route (it has no email lookup).
    on_seed: bool = True


SCENARIOS = (
    Scenario("get_by_id", "get_by_id", (("get_user", 1),)),
    Scenario("get_by_email", "get_by_email", (("list_email", 1),), on_seed=False),
    Scenario("list_page_1", "list", (("list_first", 1),), page=1),
    Scenario("list_page_100", "list", (("list_after", 1),), page=100),
    Scenario("create", "create", (("insert_user", 1),), writes=True),
    Scenario("update", "update", (("update_user", 1),), writes=True, updates="all"),
    Scenario(
        "mix",
        "mix",
        (
            ("get_user", 40),
            ("list_email", 40),
            ("list_first", 10),
            ("insert_user", 5),
            ("update_user", 5),
        ),
        writes=True,
        updates="mix",
    ),
)


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark userplane serve on PostgreSQL against the reference peer, "
        "a bare stack and pgbench.",
    )
    parser.add_argument("--duration", type=float, default=8, help="seconds per run [8]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3]")
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of warm-up before each first run [2]"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 s x 1 round")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads [2]")
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers [USERPLANE default]"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per worker [USERPLANE default]"
    )
    parser.add_argument("--users", type=int, default=10_000, help="seeded users [10000]")
    parser.add_argument(
        "--api-keys",
        type=int,
        default=API_KEYS,
        help="API keys the userplane targets' load is spread over, a different one per "
        f"request in turn, so that the default rate limits are not reached [{API_KEYS}]",
    )
    parser.add_argument(
        "--bulk-users",
        type=int,
        default=None,
        help="users imported and exported against a raw COPY (benchmarks/bulk.py) "
        "[100000; 10000 with --quick; 0 skips it]",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("USERPLANE_BENCH_PG_URL", DEFAULT_PG_URL),
        help="a database to create the benchmark database from "
        "[USERPLANE_BENCH_PG_URL or %(default)s]",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="comma-separated subset [all]",
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the report [benchmarks/RESULTS.md; none with --quick]",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and data files")
    parser.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        default=[],
        metavar="REV",
        help="also serve userplane as of this git revision, as target userplane@REV, "
        "interleaved with the others: what changes since REV bought, from one run; "
        "repeatable",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="USERPLANE_NAME=VALUE",
        help="a setting for the userplane targets, for ablations "
        "(e.g. USERPLANE_DISABLED_PLUGINS=logging); repeatable; the report lists them",
    )
    args = parser.parse_args(argv)
    for item in args.settings:
        name, sep, _ = item.partition("=")
        if not sep or not name.startswith("USERPLANE_"):
            parser.error(f"--set takes USERPLANE_NAME=VALUE, not {item!r}")
    if args.bulk_users is None:
        args.bulk_users = 10_000 if args.quick else 100_000
    if args.quick:
        args.duration, args.rounds, args.warmup = 3.0, 1, 1.0
    elif args.output is None:
        args.output = HERE / "RESULTS.md"
    known = {s.name for s in SCENARIOS}
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.targets = [t for t in args.targets.split(",") if t]
    if unknown := set(args.scenarios) - known:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if unknown := set(args.targets) - set(TARGETS) - set(EXTRA_TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    for rev in args.baselines:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            parser.error(f"--baseline {rev}: not a commit of {ROOT}")
    args.targets += [f"{BASELINE_PREFIX}{rev}" for rev in args.baselines]
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration must be at least 1 and --rounds at least 1")
    if args.api_keys < 1:
        parser.error("--api-keys must be at least 1")
    return args


def ensure_tools() -> None:
    """wrk (installed with apt-get when missing and possible) and pgbench, or a clear error."""
    if shutil.which("wrk") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("wrk is missing: apt-get install -y wrk")
            done = subprocess.run(
                ["apt-get", "install", "-y", "wrk"], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                subprocess.run(["apt-get", "update"], capture_output=True, check=False)
                subprocess.run(
                    ["apt-get", "install", "-y", "wrk"], capture_output=True, check=False
                )
        if shutil.which("wrk") is None:
            raise SystemExit(
                "bench: wrk is not installed and could not be installed here; "
                "install it (Debian/Ubuntu: `apt-get install -y wrk`) and run again"
            )
    if shutil.which("pgbench") is None:
        raise SystemExit(
            "bench: pgbench is not installed; install PostgreSQL's client tools "
            "(Debian/Ubuntu: `apt-get install -y postgresql-client`) and run again"
        )
    for tool in ("userplane", "gunicorn"):
        if not (BIN / tool).exists():
            raise SystemExit(
                f"bench: {BIN / tool} is missing: run from an environment with "
                "userplane installed with its extras (pip install -e '.[all]')"
            )


def _version(tool: Sequence[str]) -> str:
    with contextlib.suppress(OSError):
        done = subprocess.run(tool, capture_output=True, text=True, check=False, timeout=10)
        text = (done.stdout or done.stderr).strip().splitlines()
        return text[0] if text else "?"
    return "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "?"


def _memory() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


def _packages() -> str:
    names = (
        "userplane",
        "falcon",
        "gunicorn",
        "psycopg",
        "psycopg-pool",
        "orjson",
        "structlog",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
    )
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return ", ".join(found)


class Bench:
    """One benchmark run: its database, targets and results; everything stopped by ``close``."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        from userplane.settings import Settings

        self.args = args
        self.stack = stack
        self.defaults = Settings()
        self.workers = args.workers or self.defaults.workers
        self.threads = args.threads or self.defaults.threads
        self.pool_max = Settings(threads=self.threads).db_pool_max_size
        self.workdir = Path(tempfile.mkdtemp(prefix="userplane-bench-"))
        self.data = self.workdir / "data"
        self.data.mkdir()
        (self.workdir / "empty.env").touch()
        self.results: dict[tuple[str, str], list[load.Result]] = {}
        self.http: dict[str, HttpTarget] = {}
        self.facts: dict[str, Any] = {}
        self.url = ""
        #: The database of the encrypted target, and its keyring settings.
        self.encrypted_url = ""
        self.encryption_env: dict[str, str] = {}
        self.key = ""
        self.postmaster: int | None = None
        self.seeded: database.Seeded | None = None
        self.bulk: bulk.BulkResults | None = None
        self.paths: dict[tuple[str, int], str] = {}
        self.pg_scripts: dict[str, Path] = {}
        self.pg_defines: dict[str, str] = {}
        self.sink: OtlpSink | None = None
        #: The reference peer's database, and its pool per worker (size, overflow).
        self.seed_url = ""
        self.seed_pool = (SEED_POOL, SEED_OVERFLOW)

    def ordered_targets(self) -> list[str]:
        """The targets in a fixed order: baselines right after the current userplane."""
        fixed = [t for t in (*TARGETS, *EXTRA_TARGETS) if t in self.args.targets]
        baselines = [t for t in self.args.targets if t.startswith(BASELINE_PREFIX)]
        at = fixed.index("userplane") + 1 if "userplane" in fixed else 0
        return fixed[:at] + baselines + fixed[at:]

    # -- setup ----------------------------------------------------------------------

    def install_baseline(self, rev: str) -> Path:
        """``rev``'s userplane, built from ``git archive`` into a folder of its own.

        Installed without dependencies: it runs on this environment's packages,
        ahead of the current code on PYTHONPATH, so only our code differs.
        """
        src = self.workdir / f"baseline-{rev}" / "src"
        site = self.workdir / f"baseline-{rev}" / "site"
        src.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        subprocess.run(
            [*PIP_INSTALL, "--target", str(site), str(src)],
            capture_output=True,
            check=True,
            timeout=600,
        )
        log(f"baseline {rev} built in {site}")
        return site

    def base_env(self) -> dict[str, str]:
        """A clean environment for child processes (no stray USERPLANE_* or OTEL_*)."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.setdefault("LANG", "C.UTF-8")
        env["XDG_RUNTIME_DIR"] = str(self.workdir)
        return env

    def db_url(self, target: str) -> str:
        """The database ``target`` serves."""
        if target == SEED:
            return self.seed_url
        return self.encrypted_url if target == ENCRYPTED else self.url

    def userplane_env(
        self, port: int, telemetry: bool, *, encrypted: bool = False
    ) -> dict[str, str]:
        """Production settings: prod, JSON logs, auth on; telemetry on or off."""
        env = self.base_env()
        env.update(
            USERPLANE_ENV="prod",
            USERPLANE_LOG_FORMAT="json",
            USERPLANE_DATABASE_URL=self.encrypted_url if encrypted else self.url,
            # An empty env file: nothing is read from the working directory's .env,
            # and `userplane check` (which refuses a missing one) passes.
            USERPLANE_ENV_FILE=str(self.workdir / "empty.env"),
            USERPLANE_HOST="127.0.0.1",
            USERPLANE_PORT=str(port),
            USERPLANE_WORKERS=str(self.workers),
            USERPLANE_THREADS=str(self.threads),
            USERPLANE_GRACEFUL_TIMEOUT="5",
            USERPLANE_OTEL_ENABLED="false",
            # Explicit, so that baselines of other revisions use the same pools.
            USERPLANE_DB_POOL_MIN_SIZE=str(self.defaults.db_pool_min_size),
            USERPLANE_DB_POOL_MAX_SIZE=str(self.pool_max),
            # Rate limits at their defaults (read=600/60s, write=120/60s per
            # principal): the load spreads over --api-keys keys so none is reached.
            # The subscription's receiver is the harness's sink, on loopback.
            USERPLANE_WEBHOOKS_ALLOW_PRIVATE="true",
        )
        env.update(item.split("=", 1) for item in self.args.settings)
        if encrypted:
            env.update(self.encryption_env)
        if telemetry:
            assert self.sink is not None
            env.update(
                USERPLANE_OTEL_ENABLED="true",
                USERPLANE_OTEL_EXPORTER="otlp-http",
                USERPLANE_OTEL_ENDPOINT=self.sink.endpoint,
                USERPLANE_OTEL_SAMPLE_RATIO="0.1",
            )
        return env

    def cli(self, *args: str, encrypted: bool = False) -> str:
        """``userplane ARGS`` against the benchmark database; its stdout."""
        done = subprocess.run(
            [str(BIN / "userplane"), *args],
            env=self.userplane_env(0, telemetry=False, encrypted=encrypted),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"userplane {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def setup_database(self) -> None:
        """Create, migrate and seed the database; make the admin key."""
        self.url = self.stack.enter_context(database.temporary_database(self.args.pg_url))
        log(f"database {self.url.rsplit('/', 1)[-1]} created")
        self.cli("migrate")
        created = self.cli(
            "keys", "create", "--name", "bench", "--role", "admin", "--format", "json"
        )
        self.key = json.loads(created)["key"]
        keys = database.make_api_keys(self.url, self.args.api_keys)
        (self.data / "keys.txt").write_text("".join(f"{k}\n" for k in keys))
        log(f"{len(keys)} API keys made for the load to spread over")
        # One subscription to every event: each write also queues a signed delivery,
        # which the targets' dispatchers send to the sink while the load runs.
        assert self.sink is not None
        self.cli(
            "webhooks",
            "create",
            "--url",
            os.environ.get("BENCH_WEBHOOK_URL", f"{self.sink.endpoint}/webhook"),
            "--event",
            "*",
        )
        self.seeded = database.seed(self.url, self.args.users)
        log(f"seeded {self.args.users} users with copy_users in {self.seeded.seconds:.2f} s")
        if ENCRYPTED in self.args.targets:
            self.setup_encrypted_database()
        if SEED in self.args.targets:
            # Created and dropped like the others; its tables come from the peer's
            # own scripts (run.sh), its users after it started (seed_peer_users).
            self.seed_url = self.stack.enter_context(
                database.temporary_database(self.args.pg_url, "_seed")
            )
            log(f"database {self.seed_url.rsplit('/', 1)[-1]} created for {SEED}")
        lines = [
            f"{i} {quote(e, safe='')}"
            for i, e in zip(self.seeded.ids, self.seeded.emails, strict=True)
        ]
        (self.data / "users.txt").write_text("\n".join(lines) + "\n")
        version, self.postmaster = database.server_facts(self.url)
        self.facts["postgres"] = version
        self.facts["pg_settings"] = database.settings(
            self.url, ["max_connections", "shared_buffers", "synchronous_commit", "fsync"]
        )
        sql = statements()
        product = {"statements": sql, "columns": columns()}
        (self.workdir / "statements.json").write_text(json.dumps(product))
        self.pg_scripts = load.pgbench_scripts(self.workdir / "pgbench", sql)

    def setup_encrypted_database(self) -> None:
        """A second database: the same API key and the same users, sealed."""
        self.encrypted_url = self.stack.enter_context(database.temporary_database(self.args.pg_url))
        keys = self.cli("encryption", "new-key", "--name", "bench-kek").strip()
        index = self.cli("encryption", "new-key", "--name", "bench-index").strip()
        self.encryption_env = {
            "USERPLANE_ENCRYPTION_KEYS": keys,
            "USERPLANE_ENCRYPTION_INDEX_KEYS": index,
        }
        self.cli("migrate", encrypted=True)
        # Records the keys while the database is empty, as a first start would.
        self.cli("check", encrypted=True)
        database.copy_table(self.url, self.encrypted_url, "api_keys")
        assert self.seeded is not None
        seconds = database.seed_sealed(self.encrypted_url, self.seeded, self.encryption_env)
        log(f"sealed and seeded {len(self.seeded.ids)} users in {seconds:.2f} s")

    def ensure_seed_venv(self) -> Path:
        """The peer's virtualenv, made from its requirements.txt unless already there.

        Kept between runs (``SEED_VENV``); made again when the requirements changed.
        """
        wanted = (SEED_DIR / "requirements.txt").read_text(encoding="utf-8")
        stamp = SEED_VENV / "bench-requirements.txt"
        ready = (SEED_VENV / "bin" / "gunicorn").exists() and stamp.exists()
        if ready and stamp.read_text(encoding="utf-8") == wanted:
            return SEED_VENV
        python = shutil.which("python3") or sys.executable
        log(f"making the {SEED} virtualenv in {SEED_VENV} (pip install -r requirements.txt)")
        SEED_VENV.parent.mkdir(parents=True, exist_ok=True)
        if not (SEED_VENV / "bin" / "python").exists():
            subprocess.run([python, "-m", "venv", str(SEED_VENV)], check=True, timeout=300)
        pip = [str(SEED_VENV / "bin" / "pip"), "install", "--quiet"]
        done = subprocess.run(
            [*pip, "-r", str(SEED_DIR / "requirements.txt")],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if done.returncode != 0 or not (SEED_VENV / "bin" / "gunicorn").exists():
            raise RuntimeError(f"{SEED}: pip install failed:\n{done.stdout}\n{done.stderr}")
        stamp.write_text(wanted, encoding="utf-8")
        return SEED_VENV

    def seed_target(self, port: int, log_path: Path) -> HttpTarget:
        """The reference peer, started by its own ``run.sh`` (which creates its tables)."""
        parts = urlsplit(self.seed_url)
        env = self.base_env()
        env.update(
            PEER_DB=parts.path.lstrip("/"),
            WORKERS=str(self.workers),
            VENV=str(self.ensure_seed_venv()),
            PGHOST=parts.hostname or "127.0.0.1",
            PGPORT=str(parts.port or 5432),
            PGUSER=unquote(parts.username or "postgres"),
            # The template's pool (20 + 10 overflow per worker), unless the
            # server's max_connections leaves less: see check_connection_budget.
            APP_DB_POOL_SIZE=str(self.seed_pool[0]),
            APP_DB_MAX_OVERFLOW=str(self.seed_pool[1]),
        )
        if parts.password:
            env["PGPASSWORD"] = unquote(parts.password)
        cmd = ["bash", str(SEED_DIR / "run.sh"), str(port)]
        pool = f"pool {self.seed_pool[0]} + {self.seed_pool[1]} overflow per worker"
        if self.seed_pool != (SEED_POOL, SEED_OVERFLOW):
            pool += f" (the template's {SEED_POOL} + {SEED_OVERFLOW} does not fit max_connections)"
        what = (
            f"the reference peer {SEED_DIR.name} (FastAPI + SQLModel + asyncpg, gunicorn with "
            f"{self.workers} uvicorn workers, {pool}; no auth, no rate limits, no per-request "
            "log line), its own database, the same users"
        )
        return HttpTarget(SEED, cmd, env, port, log_path, what, ready_path="/health")

    def new_target(self, name: str) -> HttpTarget:
        """A target (not started) on a free port."""
        port = free_port()
        log_path = self.workdir / f"{name}.log"
        if name == SEED:
            return self.seed_target(port, log_path)
        if name == "bare":
            env = self.base_env()
            env.update(
                BARE_DATABASE_URL=self.url,
                BARE_SQL_FILE=str(self.workdir / "statements.json"),
                BARE_POOL_MIN_SIZE=str(self.defaults.db_pool_min_size),
                BARE_POOL_MAX_SIZE=str(self.pool_max),
                BARE_POOL_TIMEOUT_S=str(self.defaults.db_pool_timeout_ms / 1000),
                BARE_POOL_MAX_WAITING=str(self.defaults.db_pool_max_waiting),
                BARE_STATEMENT_TIMEOUT_MS=str(self.defaults.db_statement_timeout_ms),
            )
            cmd = [
                str(BIN / "gunicorn"),
                *("--workers", str(self.workers), "--threads", str(self.threads)),
                *("--worker-class", "gthread", "--bind", f"127.0.0.1:{port}"),
                *("--pythonpath", str(ROOT), "--graceful-timeout", "5", "--no-control-socket"),
                "benchmarks.bare_app:app",
            ]
            what = "Falcon + psycopg_pool, same SQL, same gunicorn settings, nothing else"
            return HttpTarget(name, cmd, env, port, log_path, what)
        if name == "userplane-gthread":
            env = self.userplane_env(port, telemetry=False)
            cmd = [
                str(BIN / "gunicorn"),
                *("--workers", str(self.workers), "--threads", str(self.threads)),
                *("--worker-class", "gthread", "--bind", f"127.0.0.1:{port}"),
                *("--graceful-timeout", "5", "--no-control-socket"),
                "userplane.frontends.http:get_app()",
            ]
            what = (
                "the userplane app under gunicorn's stock gthread worker (no head deadlines, "
                "no load shedding), otherwise as userplane"
            )
            return HttpTarget(name, cmd, env, port, log_path, what)
        if name == "userplane-granian":
            if not (BIN / "granian").exists():
                raise SystemExit("userplane-granian: granian is missing (pip install granian)")
            env = self.userplane_env(port, telemetry=False)
            cmd = [
                str(BIN / "granian"),
                *("--interface", "wsgi", "--factory", "--host", "127.0.0.1", "--port", str(port)),
                *("--workers", str(self.workers), "--blocking-threads", str(self.threads)),
                "userplane.frontends.http:get_app",
            ]
            what = (
                "the userplane app under granian's WSGI interface (no head deadlines, no load "
                "shedding of ours), the same workers and threads, otherwise as userplane"
            )
            return HttpTarget(name, cmd, env, port, log_path, what)
        if name.startswith(BASELINE_PREFIX):
            rev = name.removeprefix(BASELINE_PREFIX)
            env = self.userplane_env(port, telemetry=False)
            env["PYTHONPATH"] = str(self.install_baseline(rev))
            cmd = [str(BIN / "python"), "-c", "from userplane.frontends.cli import main; main()"]
            what = f"as userplane, from git revision {rev}"
            return HttpTarget(name, [*cmd, "serve"], env, port, log_path, what)
        telemetry = name == "userplane-otel"
        cmd = [str(BIN / "userplane"), "serve"]
        what = "userplane serve, prod, JSON logs, API-key auth, telemetry " + (
            "on (otlp-http to a no-op sink, sampling 0.1)" if telemetry else "off"
        )
        env = self.userplane_env(port, telemetry, encrypted=name == ENCRYPTED)
        if name == "userplane-nolimits":
            env["USERPLANE_RATE_LIMITS"] = "off"
            what += ", rate limits off"
        elif name == UNRECORDED:
            env["USERPLANE_DISABLED_PLUGINS"] = "audit,webhooks"
            what += ", rate limits on as userplane, audit trail and webhooks off"
        elif name == ENCRYPTED:
            what += (
                ", rate limits on as userplane, personal data encrypted "
                "(its own database, the same users sealed)"
            )
        else:
            what += (
                ", rate limits on at their defaults (the load spread over "
                f"{self.args.api_keys} API keys), audit trail and one webhook subscription"
            )
        return HttpTarget(name, cmd, env, port, log_path, what)

    def cold_starts(self) -> None:
        """``userplane --help`` (median of 10) and ``serve`` until ready (median of 3)."""
        helps = 3 if self.args.quick else 10
        serves = 1 if self.args.quick else 3
        env = self.userplane_env(0, telemetry=False)
        times = []
        for _ in range(helps):
            started = time.perf_counter()
            subprocess.run(
                [str(BIN / "userplane"), "--help"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            times.append((time.perf_counter() - started) * 1000)
        self.facts["help_ms"] = times
        starts = []
        for i in range(serves):
            target = self.new_target("userplane")
            target.log_path = self.workdir / f"cold-start-{i}.log"
            with target:
                starts.append(target.start() * 1000)
        self.facts["serve_ms"] = starts
        log(
            f"cold start: --help {statistics.median(times):.0f} ms, "
            f"serve until ready {statistics.median(starts):.0f} ms"
        )

    def check_connection_budget(self) -> None:
        """Stop before starting anything if the targets could exhaust ``max_connections``.

        A worker holds at most its pool's maximum; pgbench holds one
        connection per client; the harness needs a couple.
        """
        http = [t for t in self.args.targets if t not in ("pgbench", SEED)]
        per_worker = self.pool_max
        need = len(http) * self.workers * per_worker + 2
        if "pgbench" in self.args.targets:
            need += self.args.connections
        # Connections other clients of the server hold now (a shared server) are not ours.
        limit = int(self.facts["pg_settings"]["max_connections"]) - self.facts.get("pg_in_use", 0)
        if need > limit:
            raise SystemExit(
                f"bench: {len(http)} HTTP targets x {self.workers} workers x {per_worker} "
                f"connections{' and pgbench' if 'pgbench' in self.args.targets else ''} may "
                f"hold {need} PostgreSQL connections, more than the {limit} that "
                "max_connections leaves (less those in use by others): "
                "run fewer --targets or --baseline revisions, or fewer --workers"
            )
        if SEED in self.args.targets:
            # The peer's pool is 20 + 10 per worker: SQLAlchemy keeps what it opened,
            # so the peer may hold up to 30 per worker for the whole run. It gets
            # that, or what max_connections leaves after the others.
            # A few spare: the server may be shared, and others' use varies.
            fits = min(SEED_POOL + SEED_OVERFLOW, (limit - need - SPARE) // self.workers)
            if fits < 1:
                raise SystemExit(
                    f"bench: no PostgreSQL connections left for {SEED} under "
                    f"max_connections (less those in use by others: {limit} for the "
                    "benchmark): run fewer --targets or fewer --workers"
                )
            size = min(SEED_POOL, fits)
            self.seed_pool = (size, fits - size)

    def start_targets(self) -> None:
        """Start the HTTP targets, check they answer alike, and find each one's list pages."""
        self.facts["pg_in_use"] = database.connections_in_use(self.url)
        self.check_connection_budget()
        headers = {"Authorization": f"Bearer {self.key}"}
        for name in self.args.targets:
            if name == "pgbench":
                continue
            target = self.stack.enter_context(self.new_target(name))
            seconds = target.start(timeout=120 if name == SEED else 60)
            self.http[name] = target
            log(f"{name} ready on :{target.port} in {seconds:.1f} s (pid {target.proc.pid})")
            if name == SEED:
                # run.sh (re)created its tables before starting: seed them now.
                assert self.seeded is not None
                took = database.seed_peer(self.seed_url, self.seeded)
                log(f"{SEED}: seeded {len(self.seeded.ids)} users with COPY in {took:.2f} s")
        assert self.seeded is not None
        probe = self.seeded.ids[len(self.seeded.ids) // 2]
        for name, target in self.http.items():
            first = "/api/v1/users/?offset=0&limit=50" if name == SEED else "/api/v1/users"
            for path in (f"/api/v1/users/{probe}", first):
                status, body = request(target.port, "GET", path, headers)
                if status != 200:
                    raise RuntimeError(f"{name}: GET {path} answered {status}: {body[:300]!r}")
            for page in sorted({s.page for s in SCENARIOS if s.page}):
                if name == SEED:
                    # Offset paging: page N is the N-th 50 in (created_at, id) order.
                    path = f"/api/v1/users/?offset={(page - 1) * PAGE_SIZE}&limit={PAGE_SIZE}"
                else:
                    path = target.page_path(page, headers)[0]
                self.paths[(name, page)] = path
        self.check_same_pages(headers)
        self.pg_defines = load.pgbench_defines(self.args.users, *self.page_position(100))

    def check_same_pages(self, headers: Mapping[str, str]) -> None:
        """The peer's list pages hold the same users as userplane's (same ids, same order)."""
        if SEED not in self.http or "userplane" not in self.http:
            return
        for page in sorted({s.page for s in SCENARIOS if s.page}):
            ids = []
            for name in ("userplane", SEED):
                path = self.paths[(name, page)]
                status, body = request(self.http[name].port, "GET", path, headers)
                if status != 200:
                    raise RuntimeError(f"{name}: GET {path} answered {status}: {body[:300]!r}")
                data = json.loads(body)
                items = data if isinstance(data, list) else data.get("items", data.get("data"))
                ids.append([u["id"] for u in items or []])
            if ids[0] != ids[1]:
                raise RuntimeError(f"{SEED}: list page {page} differs from userplane's")

    def page_position(self, page: int) -> tuple[str, str]:
        """The keyset position (created_at, id) page ``page`` starts after, from its cursor."""
        path = next((p for (t, n), p in self.paths.items() if n == page and t != SEED), None)
        if path is None:  # no HTTP target: walk the database instead
            import psycopg

            with psycopg.connect(self.url) as conn:
                row = conn.execute(
                    "SELECT created_at, id FROM users WHERE deleted_at IS NULL "
                    "ORDER BY created_at, id OFFSET %s LIMIT 1",
                    ((page - 1) * 50 - 1,),
                ).fetchone()
            assert row is not None
            return row[0].isoformat(), str(row[1])
        cursor = path.partition("cursor=")[2]
        _, key, user_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return key, user_id

    # -- runs -------------------------------------------------------------------------

    def write_versions(self, scenario: Scenario, target: str) -> None:
        """``versions.txt``: the users the run updates, at their current versions."""
        assert self.seeded is not None
        ids = self.seeded.ids
        if scenario.updates == "mix":
            ids = ids[::MIX_UPDATE_EVERY]
        rows = database.versions(self.db_url(target), ids, versioned=target != SEED)
        (self.data / "versions.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))

    def db_cpu(self) -> float | None:
        """CPU seconds used so far by the PostgreSQL server (when it runs on this machine)."""
        return processes.tree_cpu(self.postmaster) if self.postmaster else None

    def run(self, scenario: Scenario, target: str, duration: float, tag: str) -> load.Result:
        """One run of ``scenario`` against ``target``, with the CPU it cost."""
        if scenario.updates:
            self.write_versions(scenario, target)
        http = self.http.get(target)
        app_before = http.cpu() if http else None
        db_before = self.db_cpu()
        if http is None:
            prefix = self.workdir / "pgbench-logs" / tag
            prefix.parent.mkdir(exist_ok=True)
            result = load.pgbench(
                self.url,
                [(self.pg_scripts[name], weight) for name, weight in scenario.pgbench],
                self.pg_defines,
                duration=duration,
                clients=self.args.connections,
                threads=self.args.wrk_threads,
                log_prefix=prefix,
            )
        else:
            args = {"data": str(self.data), "tag": tag, "threads": str(self.args.wrk_threads)}
            if scenario.page:
                args["path"] = self.paths[(target, scenario.page)]
            env = self.base_env()
            if target == SEED:
                args["flavor"] = "seed"  # no auth: it has none
            else:
                # The bare stack gets (and ignores) the header too, as ever.
                env["BENCH_AUTHORIZATION"] = f"Bearer {self.key}"
            if target.startswith("userplane"):
                # A different API key per request in turn (lua/common.lua).
                args["keys"] = "1"
            result = load.wrk(
                http.url,
                scenario.script,
                args,
                duration=duration,
                connections=self.args.connections,
                threads=self.args.wrk_threads,
                env=env,
            )
        if http is not None and app_before is not None:
            result.app_cpu_s = http.cpu() - app_before
        db_after = self.db_cpu()
        if db_before is not None and db_after is not None:
            result.db_cpu_s = db_after - db_before
        if scenario.writes:
            if http is not None:
                # Answers still in flight when wrk stopped would otherwise write after
                # the reset, or after the next run's versions were read (a 412 then).
                http.settle()
            database.reset(self.db_url(target))
        if http is not None:
            if not http.alive():
                raise RuntimeError(f"{target} died during {scenario.name}:\n{http.log_tail()}")
            http.trim_log()
        return result

    def measure(self) -> None:
        """Every round: every scenario, every target in turn (A B C D, B C D A, …)."""
        scenarios = [s for s in SCENARIOS if s.name in self.args.scenarios]
        targets = self.ordered_targets()
        per_run = self.args.duration + 1.5
        total = len(scenarios) * len(targets) * (self.args.rounds * per_run + self.args.warmup)
        log(
            f"{len(scenarios)} scenarios x {len(targets)} targets x {self.args.rounds} rounds "
            f"of {self.args.duration:g} s: about {total / 60:.1f} min"
        )
        for rnd in range(1, self.args.rounds + 1):
            # Each round starts one target later: a fixed order showed a bias of
            # 5-10 % against whichever target ran first (an A/A run of one
            # revision as two targets), from what the run before left behind.
            shift = (rnd - 1) % len(targets)
            order = targets[shift:] + targets[:shift]
            for scenario in scenarios:
                for target in order:
                    if target == SEED and not scenario.on_seed:
                        continue  # no such route on the peer: "n/a" in the report
                    # Tags go into created emails: letters and digits only.
                    short = "".join(
                        c for c in target.replace("userplane", "up") if c.isascii() and c.isalnum()
                    )
                    if rnd == 1 and self.args.warmup > 0:
                        self.run(scenario, target, self.args.warmup, f"w-{scenario.name}-{short}")
                    tag = f"r{rnd}-{scenario.name}-{short}".replace("_", "")
                    result = self.run(scenario, target, self.args.duration, tag)
                    self.results.setdefault((scenario.name, target), []).append(result)
                    codes = " ".join(f"{k}:{v}" for k, v in sorted(result.statuses.items()))
                    extra = f" [{codes}]" if codes else ""
                    log(
                        f"round {rnd} {scenario.name:<14} {target:<15} {result.rps:9,.0f} req/s "
                        f"p50 {result.p50_ms:7.2f} ms p99 {result.p99_ms:7.2f} ms "
                        f"errors {result.errors}{extra}"
                    )

    # -- report ---------------------------------------------------------------------

    def render(self, started: float, load_before: str) -> str:
        """The Markdown report."""
        summaries = {k: report.summarize(v) for k, v in self.results.items()}
        scenarios = [s.name for s in SCENARIOS if s.name in self.args.scenarios]
        targets = self.ordered_targets()
        help_ms = statistics.median(self.facts["help_ms"]) if self.facts.get("help_ms") else None
        serve_ms = self.facts.get("serve_ms") or []
        out = [
            "# userplane benchmark results",
            "",
            f"Generated by `python -m benchmarks` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
            f"({'--quick smoke test' if self.args.quick else 'full run'}). "
            "Medians over the rounds; errors and 412s are summed over the rounds.",
            "",
            "## Results",
            "",
            report.results_table(summaries, scenarios, targets),
            "",
            *(
                [
                    f"*n/a*: {SEED} has no email lookup route, so get_by_email is not run "
                    f"against it; in its mix the 40 % by email are by id (80 % by id in all). "
                    f"Its list pages are offset pages (`?offset=0&limit=50`, "
                    f"`?offset=4950&limit=50`) holding the same users as userplane's keyset "
                    f"pages; its updates are PATCH without If-Match (it has no versions).",
                    "",
                ]
                if SEED in targets
                else []
            ),
            "Targets: "
            + "; ".join(f"**{n}**: {t.description}" for n, t in self.http.items())
            + (
                "; **pgbench**: the same statements straight to PostgreSQL, same client count"
                if "pgbench" in targets
                else ""
            )
            + ".",
            "",
            "Columns: *errors* are non-2xx answers except 412 plus socket errors (pgbench: failed "
            "transactions and aborted clients); *412* counts If-Match conflicts apart; *app CPU* "
            "is utime+stime of the gunicorn master and workers from /proc over the run, per "
            "request; *DB CPU* the same for every PostgreSQL process (backends, and those that "
            "exited through the postmaster's cutime).",
            "",
        ]
        for name in ("userplane", "userplane-otel"):
            if name in targets and (SEED in targets or "bare" in targets):
                title = (
                    "The issue's targets (issue 21: against the reference peer"
                    if name == "userplane"
                    else "Same, telemetry on ("
                )
                out += [
                    f"## {title}{', ' if name == 'userplane' else ''}{name})",
                    "",
                    report.checks_table(report.peer_checks(summaries, name, self.args.connections)),
                    "",
                ]
        if "userplane" in targets and "bare" in targets:
            out += [
                "## Earlier targets (against the bare stack; userplane)",
                "",
                report.checks_table(report.checks(summaries, help_ms, "userplane")),
                "",
            ]
        if ENCRYPTED in targets and "userplane" in targets:
            out += [
                f"## Field-level encryption ({ENCRYPTED} vs userplane)",
                "",
                report.checks_table(report.encryption_checks(summaries, ENCRYPTED)),
                "",
            ]
        if UNRECORDED in targets and "userplane" in targets:
            out += [
                f"## Audit trail and one webhook subscription (userplane vs {UNRECORDED})",
                "",
                report.checks_table(report.recording_checks(summaries, UNRECORDED)),
                "",
            ]
        if self.bulk is not None:
            out += [
                "## Bulk import and export (`benchmarks/bulk.py`)",
                "",
                bulk.table(self.bulk),
                "",
            ]
        out += ["## Cold start, memory, telemetry export", ""]
        pairs = []
        if help_ms is not None:
            values = ", ".join(f"{v:.0f}" for v in self.facts["help_ms"])
            pairs.append(
                (
                    f"`userplane --help` (median of {len(self.facts['help_ms'])})",
                    f"{help_ms:.0f} ms (runs: {values})",
                )
            )
        if serve_ms:
            values = ", ".join(f"{v:.0f}" for v in serve_ms)
            pairs.append(
                (
                    f"`userplane serve` until /health/ready is 200 (median of {len(serve_ms)})",
                    f"{statistics.median(serve_ms):.0f} ms (runs: {values})",
                )
            )
        for name, kib in self.facts.get("rss", {}).items():
            workers = ", ".join(f"{k / 1024:.1f}" for k in kib) or "?"
            pairs.append((f"peak RSS per worker (VmHWM), {name}", f"{workers} MiB"))
        if self.sink is not None and self.sink.counts:
            sent = ", ".join(
                f"{path}: {n} requests, {size / 1024:.0f} KiB"
                for path, (n, size) in sorted(self.sink.counts.items())
            )
            pairs.append(("OTLP/HTTP exports and webhook deliveries received by the sink", sent))
        out += [report.bullet_table(pairs), ""]
        assert self.seeded is not None
        env_pairs = [
            ("CPU", f"{os.cpu_count()} x {_cpu_model()}, {_memory()} RAM"),
            ("kernel", platform.platform()),
            ("load average before / after", f"{load_before} / {_loadavg()}"),
            ("Python", platform.python_version()),
            ("packages", _packages()),
            ("PostgreSQL", f"{self.facts['postgres']} ({_settings(self.facts['pg_settings'])})"),
            ("wrk", _version(["wrk", "-v"])),
            ("pgbench", _version(["pgbench", "--version"])),
            (
                "server settings",
                f"gunicorn gthread, {self.workers} workers x {self.threads} threads; "
                f"DB pool {self.defaults.db_pool_min_size}-{self.pool_max} "
                "per worker" + "".join(f"; {item}" for item in self.args.settings),
            ),
            (
                "userplane's production features",
                "API-key auth; rate limits at their defaults (read=600/60s, write=120/60s per "
                f"key), the load spread over {self.args.api_keys} keys, a different one per "
                "request in turn; JSON access logs to a file; audit trail on; one webhook "
                "subscription to every event, delivered to a no-op receiver in the harness",
            ),
            (
                "load",
                f"{self.args.connections} connections (pgbench: clients), "
                f"{self.args.wrk_threads} wrk threads (pgbench: -j)",
            ),
            (
                "durations",
                f"{self.args.rounds} rounds x {self.args.duration:g} s per run, "
                f"{self.args.warmup:g} s warm-up before each first run; "
                f"total {(time.monotonic() - started) / 60:.1f} min",
            ),
            (
                "data",
                f"{self.args.users} users seeded with PostgreSQLStorage.copy_users in "
                f"{self.seeded.seconds:.2f} s"
                + (
                    f" ({SEED}: the same rows by COPY into its own table)"
                    if SEED in targets
                    else ""
                )
                + "; rows a run creates are deleted (and the table vacuumed) after it",
            ),
        ]
        out += ["## Environment", "", report.bullet_table(env_pairs), ""]
        return "\n".join(out)


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def _settings(values: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` runs."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


#: In a report file, everything from this line on is written by hand and kept by new runs.
NOTES_MARKER = "<!-- notes below: written by hand, kept when the benchmark rewrites this file -->"


def _kept_notes(path: Path) -> str:
    """The hand-written part of the report at ``path``, from ``NOTES_MARKER`` on, if any."""
    with contextlib.suppress(OSError):
        old = path.read_text(encoding="utf-8")
        at = old.find(NOTES_MARKER)
        if at >= 0:
            return "\n" + old[at:]
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the report and write it to ``--output``."""
    args = parse_args(argv)
    ensure_tools()
    started = time.monotonic()
    load_before = _loadavg()
    failed = True
    with _terminate_on_sigterm(), contextlib.ExitStack() as stack:
        bench = Bench(args, stack)
        try:
            bench.sink = stack.enter_context(OtlpSink())
            bench.setup_database()
            bench.cold_starts()
            bench.start_targets()
            bench.measure()
            bench.facts["rss"] = {n: t.peak_rss_kib() for n, t in bench.http.items()}
            if args.bulk_users > 0:
                # After the HTTP runs, with their servers still up but idle: the bulk
                # runs use databases of their own.
                bench.bulk = bulk.measure(args.pg_url, args.bulk_users, args.rounds, bench.workdir)
            text = bench.render(started, load_before)
            failed = False
        finally:
            stack.close()  # servers stopped, sink closed, database dropped
            if failed or args.keep_workdir:
                log(f"logs and data kept in {bench.workdir}")
            else:
                shutil.rmtree(bench.workdir, ignore_errors=True)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n" + _kept_notes(args.output), encoding="utf-8")
        log(f"report written to {args.output}")
    return 0
