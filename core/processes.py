"""``forks``: how many times this process was forked from the one it began as.

A process that keeps a thread or a connection of its own (a reporter, a
refresher, a pool) must start it again in a forked child: gunicorn forks its
workers after the app may have been loaded. Comparing ``forks()`` with the
value seen when the thread was started tells it, on every request, for the
price of a list read; ``os.getpid()`` is a system call each time.
"""

from __future__ import annotations

import os

_COUNT = [0]


def _forked() -> None:
    _COUNT[0] += 1


os.register_at_fork(after_in_child=_forked)


def forks() -> int:
    """Forks between the process that first imported userplane and this one (0 there)."""
    return _COUNT[0]
