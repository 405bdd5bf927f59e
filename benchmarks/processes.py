"""Child processes in their own process groups, and what /proc says about them."""

# Starting the harness's own tools with fixed arguments is this module's job.
# ruff: noqa: S603

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` the harness uses (times in seconds)."""

    pid: int
    ppid: int
    cpu: float  # utime + stime
    children_cpu: float  # cutime + cstime: children that exited and were reaped


def stat(pid: int) -> Stat | None:
    """``pid``'s stat, or ``None`` if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): field n is fields[n - 3].
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return Stat(
        pid=pid,
        ppid=int(fields[1]),
        cpu=(utime + stime) / CLOCK_TICKS,
        children_cpu=(cutime + cstime) / CLOCK_TICKS,
    )


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = stat(int(entry.name))
            if child is not None and child.ppid == pid:
                found.append(child.pid)
    return sorted(found)


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children, the exited ones included.

    A parent's ``cutime``/``cstime`` hold its reaped children, so a worker that
    exited mid-run (or a PostgreSQL backend that disconnected) still counts.
    """
    root = stat(pid)
    if root is None:
        return 0.0
    total = root.cpu + root.children_cpu
    for child in children(pid):
        s = stat(child)
        if s is not None:
            total += s.cpu
    return total


def peak_rss_kib(pid: int) -> int | None:
    """``VmHWM`` of ``pid`` (its peak resident set size) in KiB, or ``None`` if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop ``proc`` (SIGTERM, then SIGKILL after ``grace`` s) and everything in its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The group too: a worker or helper the leader left behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def start(
    cmd: Sequence[str],
    env: Mapping[str, str],
    log: IO[bytes] | int = subprocess.DEVNULL,
    cwd: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session (its own process group), output to ``log``."""
    return subprocess.Popen(
        list(cmd),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not subprocess.DEVNULL else subprocess.DEVNULL,
        start_new_session=True,
    )


@dataclass(frozen=True)
class Completed:
    """A finished tool run."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_tool(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600
) -> Completed:
    """Run ``cmd`` to the end in its own process group; it never outlives this call."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc, grace=2)
    return Completed(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - started,
    )
