"""Running the app under gunicorn from inside the process (``userplane serve``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import falcon
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

from userplane.frontends.http.queueing import mark_queued
from userplane.registry import Registry
from userplane.settings import Settings


class _Logger(Logger):  # type: ignore[misc]
    """gunicorn's logger, handing its records to the root logger when one is configured.

    The logging plugin renders the root logger; routing gunicorn through it
    means an operator sees one format. Without it, gunicorn keeps its own.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if logging.getLogger().handlers:
            for log in (self.error_log, self.access_log):
                log.handlers.clear()
                log.propagate = True


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, noting when each request joins the queue for a thread.

    The note is what ``ShedLoad`` reads to refuse requests that waited too long.
    A connection is queued again for each request on it (keep-alive), so the
    time is per request.
    """

    def enqueue_req(self, conn: Any) -> None:
        conn.userplane_queued_at = time.monotonic()
        super().enqueue_req(conn)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # Draining for shutdown: gthread would keep its copies of the listening
            # sockets open until the drain ends, so the kernel would go on queueing
            # new connections that no one accepts (clients hang, then get a reset).
            # Closed now, new connections are refused at once and go elsewhere.
            for listener in self.sockets:
                listener.close()

    def handle(self, conn: Any) -> Any:
        mark_queued(getattr(conn, "userplane_queued_at", None))
        try:
            return super().handle(conn)
        finally:
            mark_queued(None)


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "app", None)
    if isinstance(app, Server):
        app.close()


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from ``Settings``; each worker builds its own Registry."""

    def __init__(self, settings: Settings, reload: bool = False) -> None:
        self.settings = settings
        self.options: dict[str, Any] = {
            "bind": [f"{settings.host}:{settings.port}"],
            "workers": settings.workers,
            "threads": settings.threads,
            "worker_class": Worker,
            "graceful_timeout": settings.graceful_timeout,
            "reload": reload,
            "accesslog": None,  # the logging plugin writes one access line per request
            "errorlog": "-",
            "loglevel": settings.log_level,
            "logger_class": _Logger,
            "worker_exit": _worker_exit,
            "proc_name": "userplane",
            # gunicorn >= 25.1 opens a control socket at one fixed path per user:
            # two instances would fight over it, and we do not use it.
            "control_socket_disable": True,
        }
        self._registry: Registry | None = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn are skipped
                self.cfg.set(key, value)

    def load(self) -> falcon.App[Any, Any]:
        # Runs in each worker after the fork: connections are never shared.
        from userplane.frontends.http.app import create_app

        self._registry = Registry(self.settings)
        return create_app(self._registry)

    def close(self) -> None:
        """Release the worker's registry (connections, plugin shutdown)."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None
