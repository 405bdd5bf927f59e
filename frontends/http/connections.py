"""Client connections of ``userplane serve`` before a worker thread takes them.

gunicorn's gthread worker hands a connection to a thread as soon as it is
readable, and the thread then reads the request line and headers blocking: a
client that sends part of its headers, slowly or never, holds the thread. With
as few threads as the service runs, a handful of such sockets stop it.

Here the worker's event loop reads the request head instead, a non-blocking
``recv`` at a time into a buffer per connection (``HeadScanner``), and a thread
gets only a connection whose head is complete; gunicorn's parser then reads
that head from the buffer, never from the socket. A connection that has not
sent its head by the deadline is closed by the event loop (``Conn``).
"""

from __future__ import annotations

import enum
import socket
import time
from collections.abc import Callable
from typing import Any

from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE
from gunicorn.workers.gthread import TConn

#: The most one ``recv`` takes from a socket whose head is still arriving.
RECV_SIZE = 16384
#: How long at most a connection is kept to drain what the client still sends
#: after its answer (RFC 9112 section 9.6), and how much is drained: gunicorn's
#: own values for the same close, done there with a blocking read.
LINGER_S = 2.0
LINGER_MAX_BYTES = 65536
#: How long a stopping worker still waits for a request head: gthread's own
#: allowance (STOP_KEEPALIVE_LINGER) for a request on a kept-alive connection.
STOP_HEAD_S = 2.0
#: How long a stopping worker lingers on a socket it has answered and closed.
STOP_LINGER_S = 0.5
#: With no limit on the request line (``limit_request_line = 0``), still a bound.
_UNLIMITED_LINE = 1024 * 1024
#: The most a request head may take, line and headers: gunicorn's own limits
#: allow some 800 KB, which a thousand slow connections a worker would hold in
#: memory. No client of this API needs more than a few KB.
MAX_HEAD_BYTES = 65536
#: How long a thread waits for what is left of a body the app did not read,
#: before it closes the connection rather than keep it alive.
DRAIN_S = 0.05
#: How long a worker out of file descriptors stops accepting connections.
ACCEPT_PAUSE_S = 0.5


class Verdict(enum.Enum):
    """What the bytes received so far allow the event loop to do."""

    #: Wait for more: the parser would block on the socket.
    WAIT = "wait"
    #: Hand over to a thread: the parser gets a request, or refuses the head,
    #: from these bytes alone (the head is complete, has a bare LF, or its
    #: request line is already over the limit).
    READY = "ready"
    #: Refuse (431): the header section outgrew what the parser accepts, and the
    #: parser itself would only notice after one more (blocking) read.
    TOO_LARGE = "too large"


class HeadScanner:
    """The bytes of one request head as they arrive, and whether it is complete.

    Each byte is looked at once, whatever the size of the pieces it comes in:
    a client trickling a byte at a time costs linear time, not quadratic.
    The rules mirror gunicorn's Python parser (``gunicorn.http.message``), so
    that a head judged ``READY`` is parsed, or refused, without another read.
    """

    __slots__ = ("_headers_limit", "_line_end", "_line_limit", "_scanned", "buf")

    def __init__(self, line_limit: int, headers_limit: int, data: bytes = b"") -> None:
        self._line_limit = line_limit
        self._headers_limit = headers_limit
        self.buf = bytearray(data)
        self._scanned = 0  # bytes before this offset are judged already
        self._line_end = -1  # offset of the CRLF that ends the request line, once seen

    def feed(self, data: bytes) -> Verdict:
        """Add ``data`` and judge the head."""
        self.buf += data
        return self.verdict()

    def verdict(self) -> Verdict:
        """Judge the bytes held so far."""
        buf = self.buf
        size = len(buf)
        end = buf.find(b"\r\n\r\n", max(self._scanned - 3, 0))
        if end >= 0:
            if end + 4 > self._headers_limit:
                # Complete, but larger than this service takes (MAX_HEAD_BYTES), though
                # every field may be within gunicorn's own limits: refused here.
                line_end = buf.find(b"\r\n", 2 if buf[:2] == b"\r\n" else 0)
                self._line_end = line_end
                if end - line_end > self._headers_limit:
                    return Verdict.TOO_LARGE
            return Verdict.READY
        # RFC 9112 section 2.2: lines end with CRLF. The parser refuses a bare LF
        # before reading on, so there is no point waiting for more.
        lf = buf.find(b"\n", self._scanned)
        while lf >= 0:
            if lf == 0 or buf[lf - 1] != 0x0D:
                return Verdict.READY
            lf = buf.find(b"\n", lf + 1)
        # The parser skips one empty line before the request line (RFC 9112 section 2.2).
        lead = 2 if buf[:2] == b"\r\n" else 0
        if self._line_end < 0:
            end = buf.find(b"\r\n", max(lead, self._scanned - 1))
            if end >= 0:
                self._line_end = end
            elif self._line_limit and size - lead - 2 > self._line_limit:
                return Verdict.READY  # the parser answers 414 without reading on
            elif not self._line_limit and size > _UNLIMITED_LINE:
                return Verdict.TOO_LARGE
        if self._line_end >= 0:
            if self._line_limit and self._line_end - lead > self._line_limit:
                return Verdict.READY  # 414, as above
            if size - self._line_end - 2 > self._headers_limit:
                return Verdict.TOO_LARGE
        self._scanned = size
        return Verdict.WAIT

    def line_too_long(self) -> bool:
        """Whether what is held has no end of request line within the limit (a 414)."""
        return self._line_end < 0


class DeadlineSocket:
    """A socket as gunicorn's parser reads it, every read bounded by one deadline.

    A socket timeout bounds each ``recv``: a client sending a body a byte at
    a time, each just within it, would hold a thread for as long as it liked.
    With ``deadline`` set (by the worker, for each request), every read waits
    at most until then, and one past it raises ``TimeoutError`` (a 408).
    """

    __slots__ = ("deadline", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        #: ``time.monotonic()`` by which the request must have arrived, or ``None``.
        self.deadline: float | None = None

    def recv(self, size: int) -> bytes:
        """``sock.recv``, waiting no later than the deadline (nor longer than the timeout)."""
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            current = self.sock.gettimeout()
            self.sock.settimeout(left if current is None else min(left, current))
        return self.sock.recv(size)

    def gettimeout(self) -> float | None:
        """The socket's timeout (gunicorn's body drain reads and restores it)."""
        return self.sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        """Set the socket's timeout."""
        self.sock.settimeout(timeout)


def head_limits(cfg: Any) -> tuple[int, int]:
    """The request line and header section limits gunicorn's parser applies, from ``cfg``.

    Computed as ``gunicorn.http.message.Message`` and ``Request`` do: the line
    limit (0 for none), and the most bytes the header section may take.
    """
    line = int(cfg.limit_request_line)
    if line < 0 or line >= MAX_REQUEST_LINE:
        line = MAX_REQUEST_LINE
    fields = int(cfg.limit_request_fields)
    if fields <= 0 or fields > MAX_HEADERS:
        fields = MAX_HEADERS
    field_size = int(cfg.limit_request_field_size)
    if field_size <= 0:
        field_size = DEFAULT_MAX_HEADERFIELD_SIZE
    return line, min(fields * (field_size + 2) + 4, MAX_HEAD_BYTES)


class Conn(TConn):  # type: ignore[misc]
    """A gthread connection with a head deadline and a close that never blocks.

    ``keepalive_s`` is how long it may stay idle between requests (gunicorn's
    own setting is in whole seconds). ``on_close`` takes over gthread's
    graceful close, which lingers on the socket with blocking reads: called in
    the event loop, a client that neither reads nor closes would stop the loop
    for seconds. The worker lingers without blocking instead.
    """

    def __init__(
        self,
        cfg: Any,
        sock: socket.socket,
        client: Any,
        server: Any,
        keepalive_s: float,
        on_close: Callable[[Conn], None],
    ) -> None:
        super().__init__(cfg, sock, client, server)
        self.keepalive_s = keepalive_s
        self.on_close = on_close
        self.scanner: HeadScanner | None = None
        self.head_deadline = 0.0
        self.registered = False
        self.drained = 0
        self.userplane_queued_at: float | None = None

    def set_timeout(self) -> None:
        """Start the idle keep-alive period (gthread calls this between requests)."""
        self.timeout = time.monotonic() + self.keepalive_s

    def close(self, graceful: bool = False) -> None:
        """Close now, or (``graceful``) once the client has had its answer."""
        if graceful:
            self.on_close(self)
        else:
            super().close()
