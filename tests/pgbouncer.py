"""A real PgBouncer (Debian's) in transaction pooling mode, in front of the test server.

PgBouncer refuses to run as root, so under root it runs as ``postgres``, from
a directory that user can read. ``ignore_options`` starts one told to drop
the startup parameter ``options`` instead of refusing it (PgBouncer's
``ignore_startup_parameters``), the other way a pooler hides itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

BINARY = "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def available() -> str | None:
    """Why PgBouncer cannot run here, or ``None`` when it can."""
    if not (shutil.which("pgbouncer") or os.path.exists(BINARY)):
        return "pgbouncer is not installed (apt-get install pgbouncer)"
    return None


@contextlib.contextmanager
def running_pgbouncer(
    server_url: str, *, ignore_options: bool = False, pool_size: int = 8
) -> Iterator[int]:
    """Start PgBouncer in front of ``server_url``'s server; yield the port it listens on."""
    server = urlsplit(server_url)
    port = _free_port()
    directory = Path(tempfile.mkdtemp(prefix="userplane-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "users.txt").write_text('"postgres" ""\n')
    ignore = "ignore_startup_parameters = options\n" if ignore_options else ""
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\n"
        "admin_users = postgres\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        # Server connections go once idle for a few seconds: the suites beside this
        # one share the server's max_connections.
        "server_idle_timeout = 5\n"
        "max_client_conn = 1000\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        f"{ignore}"
    )
    command = [shutil.which("pgbouncer") or BINARY, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        for path in directory.iterdir():
            shutil.chown(path, "postgres")
        shutil.chown(directory, "postgres")
        command = ["runuser", "-u", pwd.getpwnam("postgres").pw_name, "--", *command]
    # Its log goes to the file alone: a pipe nobody reads would fill, and PgBouncer,
    # blocked writing its log, would stop answering anyone.
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log = directory / "pgbouncer.log"
                out = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"pgbouncer did not start: {out}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        keep = os.environ.get("USERPLANE_TEST_PGBOUNCER_LOG")
        if keep and (directory / "pgbouncer.log").exists():
            shutil.copy(directory / "pgbouncer.log", keep)
        shutil.rmtree(directory, ignore_errors=True)


def through(url: str, port: int) -> str:
    """``url`` with its address replaced by PgBouncer's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()
