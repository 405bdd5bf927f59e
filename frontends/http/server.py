"""Running the app under gunicorn from inside the process (``userplane serve``)."""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import math
import random
import selectors
import socket
import ssl
import time
from functools import partial
from typing import Any

import falcon
import gunicorn
from gunicorn import http, util
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.http import errors
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import ThreadWorker

from userplane.errors import ConfigurationError
from userplane.frontends.http.connections import (
    ACCEPT_PAUSE_S,
    DRAIN_S,
    LINGER_MAX_BYTES,
    LINGER_S,
    RECV_SIZE,
    STOP_HEAD_S,
    STOP_LINGER_S,
    Conn,
    DeadlineSocket,
    HeadScanner,
    Verdict,
    head_limits,
)
from userplane.frontends.http.problems import raw_problem
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


#: gunicorn's refusals of a request (``gunicorn.http.errors``), as status and detail.
#: Fixed texts: a detail never echoes what the client sent. The first match wins,
#: so a subclass comes before its base.
_REJECTIONS: tuple[tuple[type[BaseException], int, str], ...] = (
    # A header the application tried to send: our fault, not the client's.
    (errors.InvalidResponseHeader, 500, ""),
    (errors.InvalidResponseHeaderName, 500, ""),
    (errors.LimitRequestLine, 414, "the request line (path and query) is longer than accepted"),
    (errors.LimitRequestHeaders, 431, "the header fields are too many or too large"),
    (errors.InvalidRequestLine, 400, "the request line is malformed"),
    (errors.InvalidRequestMethod, 400, "the request method is malformed"),
    (errors.InvalidHTTPVersion, 400, "the HTTP version is malformed or not supported"),
    (errors.ObsoleteFolding, 400, "header fields must not be folded over lines"),
    (errors.InvalidHeaderName, 400, "a header field name is malformed"),
    (
        errors.InvalidHeader,
        400,
        "a header field is malformed or repeated, or the message framing is ambiguous",
    ),
    (errors.UnsupportedTransferCoding, 501, "the transfer coding is not supported"),
    (errors.InvalidChunkSize, 400, "the chunked body is malformed"),
    (errors.ChunkMissingTerminator, 400, "the chunked body is malformed"),
    (errors.InvalidChunkExtension, 400, "the chunked body is malformed"),
    (errors.ExpectationFailed, 417, "only the 100-continue expectation is supported"),
    (errors.InvalidSchemeHeaders, 400, "the scheme headers contradict each other"),
    (errors.InvalidProxyLine, 400, "the PROXY protocol header is malformed"),
    (errors.InvalidProxyHeader, 400, "the PROXY protocol header is malformed"),
    (errors.ForbiddenProxyRequest, 403, "the PROXY protocol is not accepted from this address"),
    (errors.InvalidH2CPreface, 400, "the HTTP/2 connection preface is malformed"),
    (errors.ConfigurationProblem, 500, ""),
    (ssl.SSLError, 403, "the TLS connection failed"),
)
_INTERNAL = "the server failed to handle this request; it has been logged"


def rejection(exc: BaseException) -> tuple[int, str]:
    """The status and problem detail answering ``exc``, raised by gunicorn on a request."""
    for kind, status, detail in _REJECTIONS:
        if isinstance(exc, kind):
            return status, detail or _INTERNAL
    return 500, _INTERNAL


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, made safe from slow clients, refusing in problem+json.

    - The event loop reads each request head (``connections.HeadScanner``) and
      queues the connection for a thread only once the head is complete, or
      refusable from what arrived; a connection that has not sent its head
      within ``USERPLANE_HEADER_TIMEOUT_MS`` is closed (with a 408 if it sent
      part of one). A kept-alive connection goes through the same for each
      request, and stays idle at most ``USERPLANE_KEEPALIVE_TIMEOUT_MS``.
    - A connection to close after its answer lingers in the event loop, never
      in a blocking read there (see ``connections.Conn``).
    - gunicorn's own refusals (400, 414, 431 …) are problem documents.
    - Each request is stamped when it joins the queue for a thread: what
      ``ShedLoad`` reads to refuse requests that waited too long.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = getattr(self.app, "settings", None)
        if not isinstance(settings, Settings):
            settings = Settings()
        self.header_timeout_s = settings.header_timeout_ms / 1000
        self.keepalive_s = settings.keepalive_timeout_ms / 1000
        #: The longest a request may hold its thread waiting on the client (a body
        #: to read, an answer the client does not take).
        self.io_timeout_s = settings.body_timeout_ms / 1000
        self.line_limit, self.headers_limit = head_limits(self.cfg)
        # TLS, the PROXY protocol, HTTP/2 and uWSGI put other bytes before (or
        # instead of) an HTTP/1 head: gthread's own path serves those. userplane
        # serve configures none of them.
        self.reads_heads = (
            not self.cfg.is_ssl
            and self.cfg.proxy_protocol == "off"
            and "h2" not in getattr(self.cfg, "http_protocols", ())
            and getattr(self.cfg, "protocol", "http") == "http"
        )
        # Insertion order is deadline order: every connection gets the same time.
        self.heads: dict[Conn, None] = {}
        self.lingering: dict[Conn, float] = {}
        #: When accepting resumes after running out of descriptors (0: not paused).
        self.accepts_paused_until = 0.0

    # -- connections in, heads read in the event loop ------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and start reading its head (gthread's, with our ``Conn``)."""
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors or memory: the worker must not die of it (every
                # connection it holds would go with it). Stop accepting for a moment;
                # the kernel keeps new connections queued meanwhile.
                self.log.warning("cannot accept a connection now (%s); pausing accepts", e)
                self.pause_accepts()
                return
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = Conn(self.cfg, sock, addr, listener.getsockname(), self.keepalive_s, self.linger)
        self.enqueue_req(conn)

    def enqueue_req(self, conn: Any) -> None:
        """Queue ``conn`` for a thread once its request head has arrived.

        gthread calls this for a new connection, a kept-alive one that became
        readable, and one whose last request left the next one's bytes behind.
        """
        if self.reads_heads and isinstance(conn, Conn) and not conn.is_http2:
            self.start_head(conn)
        else:
            self.submit(conn)

    def submit(self, conn: Any) -> None:
        """Hand ``conn`` to the thread pool, noting when its request started waiting."""
        conn.userplane_queued_at = time.monotonic()
        super().enqueue_req(conn)

    def start_head(self, conn: Conn) -> None:
        """Begin reading the next request head on ``conn`` in the event loop."""
        # Bytes a previous request's parser read ahead are the start of this head.
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.scanner = HeadScanner(self.line_limit, self.headers_limit, ahead)
        now = time.monotonic()
        # Stopping, a worker waits for a head no longer than for an idle connection.
        conn.head_deadline = now + (
            self.header_timeout_s if self.alive else min(self.header_timeout_s, STOP_HEAD_S)
        )
        if conn.sock.gettimeout() != 0.0:  # already non-blocking on accept and keep-alive
            conn.sock.setblocking(False)
        self.heads[conn] = None
        if ahead and self.judge(conn, conn.scanner.verdict()):
            return
        # Most clients send the head with the connection: try before waiting.
        if not self.read_head(conn):
            conn.registered = True
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_head, conn))

    def pause_accepts(self) -> None:
        """Stop accepting for ``ACCEPT_PAUSE_S``; gthread's loop resumes after it."""
        self.accepts_paused_until = time.monotonic() + ACCEPT_PAUSE_S
        self.set_accept_enabled(False)

    def resume_accepts(self) -> None:
        """End a pause whose time is up (the loop then enables accepting again)."""
        if self.accepts_paused_until and time.monotonic() >= self.accepts_paused_until:
            self.accepts_paused_until = 0.0

    def on_head(self, conn: Conn, _sock: Any) -> None:
        """The event loop's callback: more of ``conn``'s head may have arrived."""
        self.read_head(conn)

    def read_head(self, conn: Conn) -> bool:
        """Read what arrived without blocking; whether ``conn`` left the head phase."""
        assert conn.scanner is not None
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # the client left (or reset) before its request was complete
            self.end_head(conn)
            self.nr_conns -= 1
            conn.close()
            return True
        return self.judge(conn, conn.scanner.feed(data))

    def judge(self, conn: Conn, verdict: Verdict) -> bool:
        """Act on ``verdict``; whether ``conn`` left the head phase."""
        if verdict is Verdict.WAIT:
            return False
        scanner = self.end_head(conn)
        if verdict is Verdict.READY:
            if conn.parser is None:
                conn.parser = http.get_parser(self.cfg, DeadlineSocket(conn.sock), conn.client)
            # The parser reads this head from its buffer, never from the socket.
            conn.parser.unreader.unread(bytes(scanner.buf))
            conn.data_ready = True  # gthread's own wait for a first byte is not needed
            self.submit(conn)
        else:
            status = 414 if scanner.line_too_long() else 431
            self.log.warning(
                "Invalid request from ip=%s: request head over %d bytes",
                self.peer(conn),
                len(scanner.buf),
            )
            self.nr_conns -= 1
            self.answer(conn, raw_problem(status, rejection_detail(status), request_id=new_id()))
        return True

    def end_head(self, conn: Conn) -> HeadScanner:
        """Take ``conn`` out of the head phase; its scanner."""
        del self.heads[conn]
        if conn.registered:
            conn.registered = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
        scanner = conn.scanner
        assert scanner is not None
        conn.scanner = None
        return scanner

    def expire_heads(self, force: bool = False) -> None:
        """Close the connections whose head is late (all of them with ``force``)."""
        now = time.monotonic()
        while self.heads:
            conn = next(iter(self.heads))
            if conn.head_deadline > now and not force:
                break
            scanner = self.end_head(conn)
            self.nr_conns -= 1
            if scanner.buf and not force:
                # Part of a request came: tell the client why it gets no answer.
                # Nothing came: maybe a client's spare connection, closed quietly.
                self.log.info(
                    "Closing connection from ip=%s: its request head did not arrive in time",
                    self.peer(conn),
                )
                detail = "the request head did not arrive in time"
                self.answer(conn, raw_problem(408, detail, request_id=new_id()))
            else:
                conn.close()

    # -- closing without blocking --------------------------------------------

    def answer(self, conn: Conn, response: bytes) -> None:
        """Send ``response`` if the socket takes it at once, then close after it."""
        # Best effort: a client that does not read gets no answer, and never
        # makes the event loop wait.
        with contextlib.suppress(OSError):
            conn.sock.setblocking(False)
            conn.sock.send(response)
        self.linger(conn)

    def linger(self, conn: Conn) -> None:
        """Close ``conn`` once the client has read its answer (RFC 9112 section 9.6).

        Closing a socket with unread bytes from the client sends a reset, which
        can destroy the answer before the client reads it. So, as gthread's
        graceful close does: end the sending side, read what the client still
        sends for a while, then close; but in the event loop, without blocking.
        """
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            if len(self.lingering) >= self.worker_connections:
                raise OSError("too many connections lingering")
            self.poller.register(sock, selectors.EVENT_READ, partial(self.on_linger, conn))
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        # Still an open descriptor: it counts against worker_connections, so that
        # lingering sockets cannot push the worker past its descriptor limit.
        self.nr_conns += 1
        # A stopping worker waits for lingering sockets (they count): briefly.
        self.lingering[conn] = time.monotonic() + (LINGER_S if self.alive else STOP_LINGER_S)

    def on_linger(self, conn: Conn, _sock: Any) -> None:
        """The event loop's callback: the client sent more, or closed."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_MAX_BYTES:
            self.end_linger(conn)

    def end_linger(self, conn: Conn) -> None:
        """Close a lingering connection for good."""
        del self.lingering[conn]
        self.nr_conns -= 1
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        util.close(conn.sock)

    def expire_lingering(self, force: bool = False) -> None:
        """Close the lingering connections whose time is up (all of them with ``force``)."""
        now = time.monotonic()
        while self.lingering:
            conn, deadline = next(iter(self.lingering.items()))
            if deadline > now and not force:
                break
            self.end_linger(conn)

    # -- gthread's event loop, with our deadlines ----------------------------

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's wait, cut short to wake up for the next deadline."""
        deadlines = []
        if self.heads:
            deadlines.append(next(iter(self.heads)).head_deadline)
        if self.keepalived_conns:
            deadlines.append(self.keepalived_conns[0].timeout)
        if self.lingering:
            deadlines.append(next(iter(self.lingering.values())))
        if self.accepts_paused_until:
            deadlines.append(self.accepts_paused_until)
        if deadlines:
            timeout = min(timeout, max(min(deadlines) - time.monotonic(), 0.0))
        super().wait_for_and_dispatch_events(timeout)

    def murder_pending(self) -> None:
        """gthread's sweep after each wait, running and draining: late heads too."""
        super().murder_pending()
        self.expire_heads()
        self.expire_lingering()
        self.resume_accepts()

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's close of idle connections; when the worker stops, of every one."""
        super().murder_keepalived(force)
        if force:
            self.expire_heads(force=True)
            self.expire_lingering(force=True)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and self.accepts_paused_until:
            return  # out of descriptors a moment ago: gthread's loop asks again later
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            # Draining for shutdown: gthread would keep its copies of the listening
            # sockets open until the drain ends, so the kernel would go on queueing
            # new connections that no one accepts (clients hang, then get a reset).
            # Closed now, new connections are refused at once and go elsewhere.
            for listener in self.sockets:
                listener.close()
            # And heads still arriving get what kept-alive connections get (gthread
            # caps those at its STOP_KEEPALIVE_LINGER): a slow client must not
            # stretch the drain. One cap for all keeps the deadline order.
            cap = time.monotonic() + STOP_HEAD_S
            for conn in self.heads:
                conn.head_deadline = min(conn.head_deadline, cap)
            linger_cap = time.monotonic() + STOP_LINGER_S
            for lingering, deadline in self.lingering.items():
                self.lingering[lingering] = min(deadline, linger_cap)

    # -- in a thread ---------------------------------------------------------

    def handle_request(self, req: Any, conn: Any) -> Any:
        """gthread's, with a deadline on the socket for the whole request.

        gthread makes the socket blocking with no timeout: a client that sends
        a body slowly, or never reads its answers (pipelining requests until the
        send buffer is full), would hold this thread for ever. ``sendall`` under
        a timeout is bounded as a whole; the body policy shortens the read side.
        """
        conn.sock.settimeout(self.io_timeout_s)
        reads = getattr(conn.parser.unreader, "sock", None)
        if isinstance(reads, DeadlineSocket):
            # One deadline for the whole body, however it trickles in.
            reads.deadline = time.monotonic() + self.io_timeout_s
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            # The client took longer than the deadline to take its answer (or to
            # send a body the app was still reading): not our error, no traceback.
            self.log.info(
                "Closing connection from ip=%s: it did not keep up within %.1f s",
                self.peer(conn),
                self.io_timeout_s,
            )
            return False
        finally:
            if isinstance(reads, DeadlineSocket):
                reads.deadline = None

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """Keep the connection only if what is left of the body arrives at once.

        gthread drains a body the app did not read for up to 5 s, in this
        thread: a client announcing a body it never sends held a thread that
        long on any route. Whatever has not arrived within ``DRAIN_S`` closes
        the connection instead (its close lingers in the event loop).
        """
        if not keepalive:
            return False
        return bool(conn.parser.finish_body(deadline=time.monotonic() + DRAIN_S))

    def handle(self, conn: Any) -> Any:
        mark_queued(getattr(conn, "userplane_queued_at", None))
        try:
            return super().handle(conn)
        finally:
            mark_queued(None)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn refused (or failed on) with a problem document.

        Replaces gunicorn's HTML page: the status is gunicorn's, the answer
        is like any other of ours, and no traceback reaches the client.
        """
        status, detail = rejection(exc)
        request_id = new_id()
        ip = (addr or ("", -1))[0]
        if status >= 500:
            self.log.exception("Error handling request (request_id=%s)", request_id)
        else:
            # What gunicorn quotes of the request (a line, a header name) is the
            # client's to choose: a few hundred characters of it are enough.
            quoted = str(exc)
            if len(quoted) > 200:
                quoted = f"{quoted[:200]}… ({len(quoted)} characters)"
            self.log.warning(
                "Invalid request from ip=%s (request_id=%s): %s", ip, request_id, quoted
            )
        if req is None:
            req = getattr(exc, "req", None)  # a header refused once the line was read
        instance = getattr(req, "path", None)
        response = raw_problem(
            status,
            detail,
            instance=instance if isinstance(instance, str) else None,
            request_id=request_id,
        )
        try:
            util.write_nonblock(client, response)
        except Exception:
            self.log.debug("Failed to send error message.")

    @staticmethod
    def peer(conn: Conn) -> str:
        """The client's address, for a log line."""
        return str(conn.client[0]) if isinstance(conn.client, tuple) else str(conn.client)


def rejection_detail(status: int) -> str:
    """The detail of a refusal the event loop makes itself (414, 431)."""
    kind = errors.LimitRequestLine if status == 414 else errors.LimitRequestHeaders
    return next(detail for cls, _, detail in _REJECTIONS if cls is kind)


def new_id() -> str:
    """A request id for an answer no middleware saw, shaped like ``RequestId``'s."""
    return f"{random.getrandbits(128):032x}"


def require_gthread_hooks() -> None:
    """Refuse a gunicorn whose gthread worker lacks what ``Worker`` builds on.

    ``Worker`` extends gthread's event loop (gunicorn 27): on an older one its
    sweep of late heads would never be called, and slow clients would hold
    connections for ever, silently. Better not to start.
    """
    accept = inspect.signature(ThreadWorker.accept).parameters
    if not (
        hasattr(ThreadWorker, "murder_pending")
        and hasattr(ThreadWorker, "wait_for_and_dispatch_events")
        and hasattr(Unreader, "take_buffered")
        and list(accept) == ["self", "listener"]
    ):
        raise ConfigurationError(
            f"userplane serve needs gunicorn 27 or later (gunicorn {gunicorn.__version__} "
            "is installed): its threaded worker is what the request deadlines build on"
        )


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "app", None)
    if isinstance(app, Server):
        app.close()


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from ``Settings``; each worker builds its own Registry."""

    def __init__(self, settings: Settings, reload: bool = False) -> None:
        require_gthread_hooks()
        self.settings = settings
        self.options: dict[str, Any] = {
            "bind": [f"{settings.host}:{settings.port}"],
            "workers": settings.workers,
            "threads": settings.threads,
            "worker_class": Worker,
            "graceful_timeout": settings.graceful_timeout,
            # Whole seconds, and 0 would turn keep-alive off: the worker keeps
            # the exact USERPLANE_KEEPALIVE_TIMEOUT_MS itself (connections.Conn).
            "keepalive": max(1, math.ceil(settings.keepalive_timeout_ms / 1000)),
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
        app = create_app(self._registry)
        self._registry.hooks.serving(self._registry)
        return app

    def close(self) -> None:
        """Release the worker's registry (connections, plugin shutdown)."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None
