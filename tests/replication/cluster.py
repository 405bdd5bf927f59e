"""Throwaway PostgreSQL streaming-replication clusters for replica and failover tests.

A :class:`ReplicatedCluster` makes, from scratch and in one temporary directory, a
primary (``initdb``) listening on a free TCP port of 127.0.0.1 and one or more hot
standbys (``pg_basebackup -R``) streaming from it, each on a port of its own::

    with ReplicatedCluster(standbys=1) as cluster:
        with psycopg.connect(cluster.primary_url) as conn:
            conn.execute("CREATE TABLE t (x int)")
        cluster.wait_caught_up(0)
        with psycopg.connect(cluster.standby_urls[0]) as conn:
            conn.execute("SELECT * FROM t")

Authentication is ``trust`` for local and 127.0.0.1 connections (replication ones
too), as the superuser ``postgres``. ``close()`` (and leaving the ``with`` block, and
a failed ``start()``, and interpreter exit as a last resort) stops every server and
removes the directory; set ``USERPLANE_TEST_KEEP_CLUSTER=1`` to keep the directory
(data and ``logs/``) for a post-mortem.

Nodes keep their identity: ``primary`` is always the node made by ``initdb`` and
``standbys[i]`` the i-th standby made, whatever their role after :meth:`promote`;
:attr:`ReplicatedCluster.current_primary` is the node that currently takes writes.

PostgreSQL refuses to run as root: when the tests run as root the servers and tools
run as the ``postgres`` OS user (``subprocess``'s ``user=``), in a directory of its
own under /tmp (pytest's ``tmp_path``, under /tmp/pytest-of-root, is not searchable by
other users). Not as root, they run as the current user.

The binaries come from ``USERPLANE_TEST_PG_BINDIR`` if set, else the newest
/usr/lib/postgresql/*/bin, else ``pg_config --bindir`` / ``initdb`` on ``PATH``.
PostgreSQL 14 or newer is needed (``pg_get_wal_replay_pause_state``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlencode

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "BINDIR_ENV",
    "KEEP_ENV",
    "ClusterError",
    "ClusterTimeoutError",
    "Node",
    "ReplicatedCluster",
    "find_bindir",
    "missing_requirements",
    "poll",
]

BINDIR_ENV = "USERPLANE_TEST_PG_BINDIR"
KEEP_ENV = "USERPLANE_TEST_KEEP_CLUSTER"
DIR_ENV = "USERPLANE_TEST_CLUSTER_DIR"
TOOLS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
SUPERUSER = "postgres"
HOST = "127.0.0.1"

StopMode = Literal["smart", "fast", "immediate"]

# Fresh initdb results kept for the process's later clusters, by (bindir, parent dir).
_TEMPLATES: dict[tuple[str, str], Path] = {}
_TEMPLATE_DIRS: list[Path] = []


def _remove_templates() -> None:
    for holder in _TEMPLATE_DIRS:
        shutil.rmtree(holder, ignore_errors=True)
    _TEMPLATE_DIRS.clear()
    _TEMPLATES.clear()


T = TypeVar("T")


class ClusterError(RuntimeError):
    """A cluster operation failed (the message carries the tool output or log tail)."""


class ClusterTimeoutError(ClusterError, TimeoutError):
    """A cluster did not reach an awaited state in time."""


# -- Finding the binaries ---------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in TOOLS)


def find_bindir() -> Path | None:
    """The PostgreSQL bin directory to use, or None when none has all of ``TOOLS``."""
    if explicit := os.environ.get(BINDIR_ENV):
        return Path(explicit) if _has_tools(Path(explicit)) else None
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    return next((c for c in candidates if _has_tools(c)), None)


def _run_as_user() -> str | None:
    """The OS user to run PostgreSQL as: ``postgres`` under root, else None (ourselves)."""
    return SUPERUSER if os.geteuid() == 0 else None


def missing_requirements() -> str | None:
    """Why no cluster can be made on this machine, or None when one can."""
    bindir = find_bindir()
    if bindir is None:
        where = os.environ.get(BINDIR_ENV) or "/usr/lib/postgresql/*/bin nor on PATH"
        return f"PostgreSQL server binaries ({', '.join(TOOLS)}) not found in {where}"
    if (user := _run_as_user()) is not None:
        import pwd

        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"running as root, but there is no {user!r} OS user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgresql]')"
    return None


# -- Small helpers ------------------------------------------------------------------------


def _free_port(taken: set[int]) -> int:
    """A TCP port of 127.0.0.1 free right now (and not one of ``taken``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in taken:
            return port
    raise ClusterError("could not find a free TCP port")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as dead
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _quote_conf(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


# -- Nodes --------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One PostgreSQL server of a cluster: its data directory, log and port."""

    name: str
    datadir: Path
    logfile: Path
    port: int
    role: Literal["primary", "standby"]
    upstream: Node | None = None  # whom a standby streams from
    running: bool = False
    history: list[str] = field(default_factory=list)

    def url(self, dbname: str) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DBNAME`` for this node."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid``, or None when there is none."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "up" if self.running else "down"
        return f"<Node {self.name} {self.role} :{self.port} {state}>"


# -- The cluster --------------------------------------------------------------------------


class ReplicatedCluster:
    """A throwaway primary with ``standbys`` streaming hot standbys; see the module doc.

    ``dbname`` is created on the primary before the standbys are made (so they have it).
    ``synchronous``: False, True (every standby synchronous) or standby indexes, applied
    with ``synchronous_commit`` by :meth:`make_synchronous` once the standbys stream.
    ``settings`` are extra ``postgresql.conf`` settings for every node. ``timeout`` is
    the default for every wait, in seconds. ``reuse_initdb``: copy the first cluster's
    fresh ``initdb`` result (kept until the process exits) rather than run ``initdb``.
    """

    def __init__(
        self,
        standbys: int = 1,
        *,
        dbname: str = "userplane_test",
        synchronous: bool | Sequence[int] = False,
        synchronous_commit: Literal["on", "remote_write", "remote_apply"] = "on",
        settings: Mapping[str, object] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        reuse_initdb: bool = True,
    ) -> None:
        if standbys < 0:
            raise ValueError("standbys must be >= 0")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", dbname):
            raise ValueError(f"dbname must be a plain lower-case identifier: {dbname!r}")
        self.dbname = dbname
        self.timeout = timeout
        self.timings: dict[str, float] = {}
        self.primary: Node | None = None  # set by start()
        self.standbys: list[Node] = []
        self.base_dir: Path | None = None
        self._n_standbys = standbys
        self._synchronous = synchronous
        self._synchronous_commit = synchronous_commit
        self._settings = dict(settings or {})
        self._reuse_initdb = reuse_initdb
        self._bindir = Path(bindir) if bindir else None
        self._parent_dir = base_dir or os.environ.get(DIR_ENV)
        self._current_primary: Node | None = None
        self._user = _run_as_user()
        self._started = False
        self._closed = False
        self._env: dict[str, str] = {}

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> ReplicatedCluster:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> ReplicatedCluster:
        """Make and start the primary and the standbys; on any failure, clean up and raise."""
        if self._started:
            raise ClusterError("this cluster was started already")
        self._started = True
        atexit.register(self.close)
        began = time.monotonic()
        try:
            self._setup_directory()
            self._make_primary()
            for _ in range(self._n_standbys):
                self.add_standby()
            if self._synchronous is True:
                self.make_synchronous(synchronous_commit=self._synchronous_commit)
            elif self._synchronous:
                self.make_synchronous(
                    *self._synchronous, synchronous_commit=self._synchronous_commit
                )
        except BaseException:
            self.close()
            raise
        self.timings["create"] = time.monotonic() - began
        return self

    def close(self) -> None:
        """Stop every server (immediately) and remove the directory; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[BaseException] = []
        nodes = [*self.standbys, *([self.primary] if self.primary else [])]
        for node in nodes:
            try:
                self._kill(node)
            except Exception as exc:
                errors.append(exc)
        if self.base_dir is not None:
            if os.environ.get(KEEP_ENV):
                print(f"kept the replication cluster's directory {self.base_dir}", file=sys.stderr)
            else:
                for attempt in range(20):
                    shutil.rmtree(self.base_dir, ignore_errors=True)
                    if not self.base_dir.exists():
                        break
                    time.sleep(0.05 * (attempt + 1))
                else:
                    errors.append(ClusterError(f"could not remove {self.base_dir}"))
        if errors:
            raise ClusterError(f"cleaning up the cluster failed: {errors!r}") from errors[0]

    # -- addresses -----------------------------------------------------------------------

    @property
    def primary_url(self) -> str:
        """The URL of the node made as primary (its port never changes)."""
        return self._require_primary().url(self.dbname)

    @property
    def standby_urls(self) -> list[str]:
        """The URLs of the standbys, by index."""
        return [node.url(self.dbname) for node in self.standbys]

    @property
    def current_primary(self) -> Node:
        """The node that takes writes now: the primary, or the last standby promoted."""
        if self._current_primary is None:
            raise ClusterError("the cluster is not started")
        return self._current_primary

    @property
    def current_primary_url(self) -> str:
        """The URL of :attr:`current_primary`."""
        return self.current_primary.url(self.dbname)

    def url(self, node: Node | int | str, dbname: str | None = None) -> str:
        """The URL of a node (a Node, a standby index, or a name such as ``"primary"``)."""
        return self.node(node).url(dbname or self.dbname)

    def multi_host_url(
        self,
        target_session_attrs: str | None = "read-write",
        *,
        nodes: Sequence[Node | int | str] | None = None,
        dbname: str | None = None,
        **params: str | int,
    ) -> str:
        """A libpq multi-host URL over ``nodes`` (default: the primary, then every standby).

        E.g. ``postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/db?target_session_attrs=
        read-write``; ``params`` are further URL parameters (``connect_timeout=2``, ...).
        """
        chosen = [self.node(n) for n in nodes] if nodes is not None else self._all_nodes()
        hosts = ",".join(f"{HOST}:{node.port}" for node in chosen)
        query: dict[str, str | int] = {}
        if target_session_attrs is not None:
            query["target_session_attrs"] = target_session_attrs
        query.update(params)
        suffix = f"?{urlencode(query)}" if query else ""
        return f"postgresql://{SUPERUSER}@{hosts}/{dbname or self.dbname}{suffix}"

    def node(self, ref: Node | int | str) -> Node:
        """A node by itself, standby index, or name (``primary``, ``standby0``, ...)."""
        if isinstance(ref, Node):
            return ref
        if isinstance(ref, int):
            try:
                return self.standbys[ref]
            except IndexError:
                raise ClusterError(f"no standby {ref}: there are {len(self.standbys)}") from None
        for node in self._all_nodes():
            if node.name == ref:
                return node
        raise ClusterError(f"no node named {ref!r}")

    def standby_name(self, standby: Node | int | str) -> str:
        """The standby's name, also its ``application_name`` on the primary."""
        return self.node(standby).name

    def connect(
        self, node: Node | int | str | None = None, *, dbname: str | None = None, **kwargs: Any
    ) -> psycopg.Connection[Any]:
        """An autocommit psycopg connection to a node (default: the current primary)."""
        import psycopg

        target = self.current_primary if node is None else self.node(node)
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(target.url(dbname or self.dbname), **kwargs)

    # -- standbys ------------------------------------------------------------------------

    def add_standby(self, *, upstream: Node | int | str | None = None) -> int:
        """Base-backup a new standby from ``upstream`` (default: current primary), start
        it and wait until it streams; its index."""
        source = self.current_primary if upstream is None else self.node(upstream)
        if not source.running:
            raise ClusterError(f"cannot base-backup from {source.name}: it is not running")
        base = self._require_base()
        index = len(self.standbys)
        name = f"standby{index}"
        node = Node(
            name=name,
            datadir=base / name,
            logfile=base / "logs" / f"{name}.log",
            port=self._new_port(),
            role="standby",
            upstream=source,
        )
        began = time.monotonic()
        self._pg(
            "pg_basebackup",
            "-D",
            str(node.datadir),
            "-R",
            "--checkpoint=fast",
            "--no-sync",
            "--no-manifest",
            "--wal-method=stream",
            "-d",
            self._conninfo(source, name),
        )
        self._write_harness_conf(node)
        self._write_primary_conninfo(node, source)
        self.standbys.append(node)
        self._start(node)
        self._wait_streaming(node)
        self.timings[f"{name}_create"] = time.monotonic() - began
        return index

    def wait_caught_up(self, standby: Node | int | str = 0, timeout: float | None = None) -> None:
        """Wait until the standby's replay LSN reaches the current primary's current LSN."""
        node = self.node(standby)
        source = self.current_primary
        if node is source:
            raise ClusterError(f"{node.name} is the current primary")
        with self._admin(source) as conn:
            target = self._scalar(conn, "SELECT pg_current_wal_lsn()::text")

        def caught_up() -> bool:
            with self._admin(node) as conn:
                return bool(
                    self._scalar(conn, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
                )

        def state() -> str:
            with self._admin(node) as conn:
                row = conn.execute(
                    "SELECT pg_last_wal_replay_lsn()::text, pg_get_wal_replay_pause_state(),"
                    " (SELECT status FROM pg_stat_wal_receiver)"
                ).fetchone()
            return f"replayed {row[0]}, replay {row[1]}, wal receiver {row[2]}" if row else "?"

        self._poll(caught_up, timeout, f"{node.name} to replay up to {target}", state)

    def pause_replay(self, standby: Node | int | str = 0, timeout: float | None = None) -> None:
        """Pause WAL replay and wait until it is paused: from then on nothing more the
        primary writes becomes visible on the standby (which still receives and flushes
        the WAL) until :meth:`resume_replay`."""
        node = self.node(standby)
        with self._admin(node) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

        def paused() -> bool:
            with self._admin(node) as conn:
                return self._scalar(conn, "SELECT pg_get_wal_replay_pause_state()") == "paused"

        self._poll(paused, timeout, f"replay on {node.name} to pause")

    def resume_replay(self, standby: Node | int | str = 0) -> None:
        """Resume WAL replay paused by :meth:`pause_replay`."""
        node = self.node(standby)
        with self._admin(node) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
            state = self._scalar(conn, "SELECT pg_get_wal_replay_pause_state()")
        if state != "not paused":
            raise ClusterError(f"replay on {node.name} is still {state}")

    def replay_paused(self, standby: Node | int | str = 0) -> bool:
        """Whether replay on the standby is paused (or a pause is requested)."""
        with self._admin(self.node(standby)) as conn:
            return self._scalar(conn, "SELECT pg_get_wal_replay_pause_state()") != "not paused"

    def stop_standby(self, standby: Node | int | str = 0, mode: StopMode = "fast") -> None:
        """Stop a standby (it then refuses connections)."""
        self.stop_node(self.node(standby), mode)

    def start_standby(self, standby: Node | int | str = 0, *, wait_streaming: bool = True) -> None:
        """Start a stopped standby; with ``wait_streaming``, also wait until it streams
        again (when its upstream is up)."""
        node = self.node(standby)
        self.start_node(node)
        if wait_streaming and node.role == "standby" and node.upstream and node.upstream.running:
            self._wait_streaming(node)

    def follow(self, standby: Node | int | str, upstream: Node | int | str | None = None) -> None:
        """Point a standby at ``upstream`` (default: the current primary, e.g. after a
        promotion) and, if both run, wait until it streams from there."""
        node = self.node(standby)
        source = self.current_primary if upstream is None else self.node(upstream)
        if node.role != "standby" or node is source:
            raise ClusterError(f"{node.name} cannot follow {source.name}")
        node.upstream = source
        if not node.running:
            self._write_primary_conninfo(node, source)
            return
        from psycopg import sql

        with self._admin(node) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                    sql.Literal(self._conninfo(source, node.name))
                )
            )
            conn.execute("SELECT pg_reload_conf()")
        if source.running:
            self._wait_streaming(node, from_port=source.port)

    # -- synchronous replication ---------------------------------------------------------

    def make_synchronous(
        self,
        *standbys: Node | int | str,
        synchronous_commit: Literal["on", "remote_write", "remote_apply"] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Make commits on the current primary wait for ``standbys`` (default: all).

        Sets ``synchronous_standby_names = 'FIRST n (names)'`` (every one listed must
        confirm) and optionally ``synchronous_commit`` (``remote_apply``: committed rows
        are visible on the standbys when COMMIT returns), then waits until the primary
        reports them ``sync`` and applies it; the value set. Commits then hang while a
        listed standby is down or (with ``remote_apply``) its replay paused.
        """
        chosen = [self.node(s) for s in standbys] if standbys else list(self.standbys)
        if not chosen:
            raise ClusterError("there is no standby to make synchronous")
        primary = self.current_primary
        names = [node.name for node in chosen]
        value = f"FIRST {len(names)} ({', '.join(names)})"
        self._alter_primary(primary, value, synchronous_commit)

        def all_sync() -> bool:
            with self._admin(primary) as conn:
                setting = self._scalar(conn, "SELECT current_setting('synchronous_standby_names')")
                rows = conn.execute(
                    "SELECT application_name, sync_state FROM pg_stat_replication"
                ).fetchall()
            states = dict(rows)
            return setting == value and all(states.get(name) == "sync" for name in names)

        self._poll(all_sync, timeout, f"{', '.join(names)} to be synchronous standbys")
        self._checkpoint(primary)
        return value

    def make_asynchronous(self, timeout: float | None = None) -> None:
        """Undo :meth:`make_synchronous` (and release commits waiting for a standby)."""
        primary = self.current_primary
        self._alter_primary(primary, None, None)

        def reset() -> bool:
            with self._admin(primary) as conn:
                return (
                    self._scalar(conn, "SELECT current_setting('synchronous_standby_names')") == ""
                )

        self._poll(reset, timeout, "synchronous_standby_names to be reset")
        self._checkpoint(primary)

    # -- the primary, failover -----------------------------------------------------------

    def stop_primary(self, mode: StopMode = "fast") -> None:
        """Stop the node made as primary (``immediate``: like a crash, no shutdown checkpoint)."""
        self.stop_node(self._require_primary(), mode)

    def start_primary(self) -> None:
        """Start the node made as primary again (beware of split brain after a promotion)."""
        self.start_node(self._require_primary())

    def promote(self, standby: Node | int | str = 0, timeout: float | None = None) -> float:
        """Promote a standby (``pg_ctl promote``) and wait until it accepts writes; it
        becomes :attr:`current_primary`. Returns the seconds it took."""
        node = self.node(standby)
        if node.role != "standby" or not node.running:
            raise ClusterError(f"cannot promote {node!r}")
        limit = self.timeout if timeout is None else timeout
        began = time.monotonic()
        self._pg("pg_ctl", "promote", "-w", "-t", str(max(1, int(limit))), "-D", str(node.datadir))

        def writable() -> bool:
            with self._admin(node) as conn:
                return not self._scalar(conn, "SELECT pg_is_in_recovery()")

        self._poll(writable, timeout, f"{node.name} to leave recovery", node.log_tail)
        node.role = "primary"
        node.upstream = None
        node.history.append("promoted")
        self._current_primary = node
        took = time.monotonic() - began
        self.timings["promote"] = took
        return took

    # -- any node ------------------------------------------------------------------------

    def stop_node(self, node: Node | int | str, mode: StopMode = "fast") -> None:
        """Stop a node with ``pg_ctl stop -m mode`` and wait until it is gone."""
        target = self.node(node)
        if not target.running:
            raise ClusterError(f"{target.name} is not running")
        limit = str(max(1, int(self.timeout)))
        self._pg("pg_ctl", "stop", "-m", mode, "-w", "-t", limit, "-D", str(target.datadir))
        target.running = False
        target.history.append(f"stopped ({mode})")

    def start_node(self, node: Node | int | str) -> None:
        """Start a stopped node and wait until it accepts connections."""
        target = self.node(node)
        if target.running:
            raise ClusterError(f"{target.name} is running already")
        self._start(target)

    def log(self, node: Node | int | str, lines: int = 40) -> str:
        """The tail of a node's server log, for failure messages."""
        return self.node(node).log_tail(lines)

    # -- internals -----------------------------------------------------------------------

    def _all_nodes(self) -> list[Node]:
        return [*([self.primary] if self.primary else []), *self.standbys]

    def _require_primary(self) -> Node:
        if self.primary is None:
            raise ClusterError("the cluster is not started")
        return self.primary

    def _require_base(self) -> Path:
        if self.base_dir is None:
            raise ClusterError("the cluster is not started")
        return self.base_dir

    def _new_port(self) -> int:
        return _free_port({node.port for node in self._all_nodes()})

    def _setup_directory(self) -> None:
        bindir = self._bindir or find_bindir()
        if bindir is None or not _has_tools(bindir):
            raise ClusterError(missing_requirements() or f"no PostgreSQL binaries in {bindir}")
        self._bindir = bindir
        parent = self._parent_dir or ("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir())
        base = Path(tempfile.mkdtemp(prefix="userplane-repl-", dir=parent))
        self.base_dir = base
        # The sockets live here: sun_path holds 107 bytes.
        if len(str(base / ".s.PGSQL.65535.lock")) > 100:
            raise ClusterError(f"{base} is too long a path for PostgreSQL's unix sockets")
        (base / "logs").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=str(base), LC_ALL="C", LANG="C", TZ="UTC")
        self._env = env
        if self._user is not None:
            import pwd

            entry = pwd.getpwnam(self._user)
            for path in (base, base / "logs"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            probe = self._run(["test", "-w", str(base), "-a", "-x", str(base)], check=False)
            if probe.returncode != 0:
                raise ClusterError(
                    f"the {self._user} OS user cannot use {base}: every directory above it must"
                    f" be searchable by that user; set {DIR_ENV} to a directory elsewhere"
                )

    def _make_primary(self) -> None:
        base = self._require_base()
        node = Node(
            name="primary",
            datadir=base / "primary",
            logfile=base / "logs" / "primary.log",
            port=self._new_port(),
            role="primary",
        )
        began = time.monotonic()
        template = _TEMPLATES.get(self._template_key()) if self._reuse_initdb else None
        if template is not None and template.is_dir():
            self._run(["cp", "-a", str(template), str(node.datadir)])
            self.timings["initdb_copy"] = time.monotonic() - began
        else:
            self._initdb(node.datadir)
            self.timings["initdb"] = time.monotonic() - began
            if self._reuse_initdb:
                self._save_template(node.datadir)
        self._write_harness_conf(node)
        self.primary = node
        self._current_primary = node
        self._start(node)
        with self._admin(node) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}" STRATEGY FILE_COPY')

    def _initdb(self, datadir: Path) -> None:
        self._pg(
            "initdb",
            "-D",
            str(datadir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        (datadir / "pg_hba.conf").write_text(
            "# TYPE  DATABASE     USER  ADDRESS       METHOD\n"
            "local   all          all                 trust\n"
            "local   replication  all                 trust\n"
            f"host    all          all   {HOST}/32  trust\n"
            f"host    replication  all   {HOST}/32  trust\n"
        )
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Everything the test harness sets (per node):\ninclude 'harness.conf'\n")

    def _template_key(self) -> tuple[str, str]:
        return (str(self._bindir), str(self._require_base().parent))

    def _save_template(self, datadir: Path) -> None:
        """Keep a copy of a fresh ``initdb`` (never started) for the next clusters of
        this process: copying it is several times faster than ``initdb``."""
        holder = Path(
            tempfile.mkdtemp(prefix="userplane-repl-initdb-", dir=self._template_key()[1])
        )
        _TEMPLATE_DIRS.append(holder)
        if len(_TEMPLATE_DIRS) == 1:
            atexit.register(_remove_templates)
        self._chown(holder)
        self._run(["cp", "-a", str(datadir), str(holder / "data")])
        _TEMPLATES[self._template_key()] = holder / "data"

    def _write_harness_conf(self, node: Node) -> None:
        settings: dict[str, object] = {
            "listen_addresses": HOST,
            "port": node.port,
            "unix_socket_directories": str(self._require_base()),
            "wal_level": "replica",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            # Enough WAL kept for a standby stopped for a while to catch up (no slots).
            "wal_keep_size": "256MB",
            "hot_standby": True,
            "fsync": False,
            "shared_buffers": "32MB",
            "max_connections": 100,
            "wal_receiver_status_interval": "1s",
            "wal_retrieve_retry_interval": "100ms",
            "cluster_name": node.name,
            "log_line_prefix": "%m [%p] %q%a ",
            "logging_collector": False,
        }
        settings.update(self._settings)
        lines = [f"{key} = {_quote_conf(value)}" for key, value in settings.items()]
        (node.datadir / "harness.conf").write_text("\n".join(lines) + "\n")
        self._chown(node.datadir / "harness.conf")

    def _conninfo(self, source: Node, application_name: str) -> str:
        return (
            f"host={HOST} port={source.port} user={SUPERUSER} application_name={application_name}"
        )

    def _write_primary_conninfo(self, node: Node, source: Node) -> None:
        """Replace what ``pg_basebackup -R`` wrote (passfile=, sslmode=, ...) with the
        plain conninfo (the node must be stopped)."""
        auto = node.datadir / "postgresql.auto.conf"
        kept = [
            line
            for line in auto.read_text().splitlines()
            if not line.strip().startswith("primary_conninfo")
        ]
        kept.append(f"primary_conninfo = {_quote_conf(self._conninfo(source, node.name))}")
        auto.write_text("\n".join(kept) + "\n")
        self._chown(auto)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            import pwd

            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _start(self, node: Node) -> None:
        """``pg_ctl start -w``, on a new port when another process took this one."""
        for attempt in range(5):
            limit = str(max(1, int(self.timeout)))
            result = self._pg(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                limit,
                "-D",
                str(node.datadir),
                "-l",
                str(node.logfile),
                check=False,
            )
            if result.returncode == 0:
                node.running = True
                node.history.append("started")
                return
            log = node.log_tail(20)
            if node.pid is not None and _alive(node.pid):
                self._kill(node)  # e.g. pg_ctl timed out: do not leave it behind
            port_taken = "could not bind" in log or "Address already in use" in log
            if port_taken and attempt < 4:
                node.port = self._new_port()
                self._write_harness_conf(node)
                continue
            raise ClusterError(
                f"{node.name} did not start (pg_ctl exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- {node.logfile} ---\n{log}"
            )

    def _kill(self, node: Node) -> None:
        """Stop a node for good, by ``pg_ctl stop -m immediate`` or else SIGKILL."""
        pid = node.pid
        node.running = False
        if pid is None or not _alive(pid):
            return
        with contextlib.suppress(ClusterError, subprocess.SubprocessError):
            self._pg(
                "pg_ctl",
                "stop",
                "-m",
                "immediate",
                "-w",
                "-t",
                "10",
                "-D",
                str(node.datadir),
                check=False,
                timeout=20,
            )
        if _alive(pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                cmdline = b""
            if str(node.datadir).encode() in cmdline:  # our postmaster, not a recycled pid
                children = _children(pid)
                for victim in [pid, *children]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                self._wait_gone([pid, *children], 10)
                return
        self._wait_gone([pid], 10)

    def _wait_gone(self, pids: list[int], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise ClusterError(f"processes {pids} are still alive")
            time.sleep(0.02)

    def _wait_streaming(
        self, node: Node, timeout: float | None = None, *, from_port: int | None = None
    ) -> None:
        def streaming() -> bool:
            with self._admin(node) as conn:
                row = conn.execute(
                    "SELECT status, sender_port FROM pg_stat_wal_receiver"
                ).fetchone()
            return (
                row is not None
                and row[0] == "streaming"
                and (from_port is None or row[1] == from_port)
            )

        self._poll(streaming, timeout, f"{node.name} to stream", node.log_tail)

    def _alter_primary(
        self, primary: Node, standby_names: str | None, synchronous_commit: str | None
    ) -> None:
        from psycopg import sql

        with self._admin(primary) as conn:
            if standby_names is None:
                conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
                conn.execute("ALTER SYSTEM RESET synchronous_commit")
            else:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                        sql.Literal(standby_names)
                    )
                )
                if synchronous_commit is not None:
                    conn.execute(
                        sql.SQL("ALTER SYSTEM SET synchronous_commit = {}").format(
                            sql.Literal(synchronous_commit)
                        )
                    )
            conn.execute("SELECT pg_reload_conf()")

    def _checkpoint(self, primary: Node) -> None:
        # The checkpointer publishes whether synchronous standbys are defined (the flag
        # committing backends read) when it handles the reload, which it does before a
        # checkpoint requested after it: once CHECKPOINT returns, commits wait (or not).
        with self._admin(primary) as conn:
            conn.execute("CHECKPOINT")

    @contextlib.contextmanager
    def _admin(self, node: Node) -> Iterator[psycopg.Connection[Any]]:
        import psycopg

        with psycopg.connect(node.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            yield conn

    @staticmethod
    def _scalar(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> object:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None

    def _poll(
        self,
        check: Callable[[], bool],
        timeout: float | None,
        what: str,
        describe: Callable[[], str] | None = None,
    ) -> None:
        import psycopg

        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.005
        last_error: Exception | None = None
        while True:
            try:
                if check():
                    return
                last_error = None
            except psycopg.Error as exc:
                last_error = exc
            if time.monotonic() > deadline:
                detail = ""
                if describe is not None:
                    with contextlib.suppress(Exception):
                        detail = f"; {describe()}"
                if last_error is not None:
                    detail += f"; last error: {last_error}"
                raise ClusterTimeoutError(f"timed out after {limit}s waiting for {what}{detail}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _pg(
        self, tool: str, *args: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        return self._run(
            [str(self._bindir / tool), *args],
            check=check,
            timeout=timeout or self.timeout * 2 + 10,
        )

    def _run(
        self, argv: list[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self._user is not None:
            import pwd

            entry = pwd.getpwnam(self._user)
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        result = subprocess.run(
            argv,
            cwd=self.base_dir,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            **extra,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result


def poll(check: Callable[[], T | None], timeout: float = 10.0, what: str = "a condition") -> T:
    """Call ``check`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterTimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
