"""Sending deliveries: signed, to the address that was checked, within bounds.

The request is a ``POST`` of the stored payload, signed by the Standard
Webhooks specification with the ``standardwebhooks`` library. A ``Channel``
sends one subscription's deliveries, one after the other, over one HTTP/1.1
keep-alive connection. Before it connects (the first send, and every
reconnection) it resolves the URL's host and checks the answer again
(``addresses``), and the connection is made to the checked address itself,
while the ``Host`` header, TLS's server name and the certificate check keep
the host name: a DNS answer that changed since the check (rebinding) cannot
redirect it. A channel lives for one batch of deliveries (``dispatcher``), so
no check is older than a batch. Redirects are never followed (a 3xx is a
failure); every send has one deadline (``TIMEOUT_SECONDS``) for all of it
(connecting, when it connects, sending and reading the answer), enforced by a
shared ``Watchdog`` that shuts the socket; at most ``MAX_RESPONSE_BYTES`` of
the answer are read, and a connection whose answer was not read to its end is
closed, never reused.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs

from userplane.plugins.webhooks.addresses import Refused, Resolver, check

#: The longest ``last_error`` kept: a reason, not a transcript.
MAX_ERROR = 200
#: How long an idle watchdog thread waits for work before it ends.
WATCHDOG_IDLE_S = 5.0


@attrs.frozen
class Outcome:
    """What one attempt came to: ``ok`` (a 2xx), else why not, in a few words."""

    ok: bool
    #: The receiver's HTTP status, when it answered.
    status: int | None = None
    error: str = ""


@attrs.frozen
class SendLimits:
    """The bounds every send keeps."""

    timeout_s: float
    max_response_bytes: int
    allow_private: bool
    user_agent: str


def signed_headers(secret: str, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``, signed with ``secret`` at ``now``."""
    return Signer(secret).headers(msg_id, body, now)


class Signer:
    """Signs deliveries with one secret (decoded once, for a whole batch)."""

    def __init__(self, secret: str) -> None:
        from standardwebhooks import Webhook

        self._webhook = Webhook(secret)

    def headers(self, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
        """The Standard Webhooks headers for ``body`` at ``now``."""
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(msg_id, now, body),
        }


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _pinned(scheme: str, host: str, port: int, address: str, timeout: float) -> Any:
    """An ``http.client`` connection to ``host`` whose socket connects to ``address``."""
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def create_connection(
        _where: tuple[str, int], timeout: float, source: Any = None
    ) -> socket.socket:
        # The checked address, never a fresh lookup of the host; Host and SNI stay the name.
        return socket.create_connection((address, port), timeout, source)

    conn._create_connection = create_connection  # type: ignore[attr-defined]
    return conn


class Watchdog:
    """Deadlines for sends, kept by one thread (started when needed, ended when idle).

    ``arm(deadline, action)`` runs ``action`` at ``deadline`` (monotonic)
    unless ``disarm`` came first: a timer per send, without a thread per send.
    """

    def __init__(self, name: str = "userplane-webhooks-watchdog") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def arm(self, deadline: float, action: Callable[[], None]) -> int:
        """Run ``action`` at ``deadline`` unless disarmed before; the token to disarm with."""
        with self._cond:
            token = next(self._ids)
            self._armed[token] = action
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        """``action`` will not run (if it has not run already)."""
        with self._cond:
            self._armed.pop(token, None)

    def stop(self, timeout: float = 1.0) -> None:
        """End the thread (armed actions are dropped) and join it."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._armed.clear()
            self._heap.clear()
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            due: list[Callable[[], None]] = []
            with self._cond:
                if self._stopping or self._thread is not threading.current_thread():
                    return
                now = time.monotonic()
                while self._heap and (
                    self._heap[0][1] not in self._armed or self._heap[0][0] <= now
                ):
                    _, token = heapq.heappop(self._heap)
                    action = self._armed.pop(token, None)
                    if action is not None:
                        due.append(action)
                if not due:
                    if not self._heap:
                        if not self._cond.wait(WATCHDOG_IDLE_S) and not self._heap:
                            self._thread = None  # idle: a later arm starts another
                            return
                    else:
                        self._cond.wait(self._heap[0][0] - now)
            for action in due:
                with contextlib.suppress(Exception):
                    action()


#: The watchdog of sends made without one of their own (``send``).
_WATCHDOG = Watchdog()


class Channel:
    """One subscription's URL, over one kept-alive connection to a checked address.

    ``send`` one delivery after another; ``close`` at the end of the batch.
    The host is resolved and checked when a connection is made, not at every
    send of a batch; a connection the receiver closed (or that a failure left
    unusable) is made again, checked again, at the next send.
    """

    def __init__(
        self,
        url: str,
        limits: SendLimits,
        resolver: Resolver,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._url = url
        self._limits = limits
        self._resolver = resolver
        self._watchdog = watchdog or _WATCHDOG
        self._conn: Any = None
        #: Requests the current connection answered: a reused one may have been closed.
        self._served = 0
        self._target = ""
        #: Connections made (for tests and logs).
        self.connections = 0

    def close(self) -> None:
        """Close the connection, if one is open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, deadline: float, fired: threading.Event) -> Outcome | None:
        """Resolve, check, and connect to the first address that answers; why not, if not."""
        timeout = self._limits.timeout_s
        try:
            parts, host, port, addresses = check(
                self._url,
                allow_private=self._limits.allow_private,
                resolver=self._resolver,
                timeout=max(0.0, deadline - time.monotonic()),
            )
        except Refused as exc:
            return Outcome(False, None, _short(f"refused: {exc}"))
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        error = "no address to connect to"
        for address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or fired.is_set():
                return Outcome(False, None, f"timed out after {timeout:g}s")
            conn = _pinned(parts.scheme, host, port, str(address), remaining)
            self._conn = conn
            try:
                conn.connect()
            except OSError as exc:
                self.close()
                if fired.is_set():
                    return Outcome(False, None, f"timed out after {timeout:g}s")
                error = f"could not connect to {address}: {_reason(exc)}"
                continue  # the next address the host has, if any
            conn.auto_open = 0  # never a connection made behind the check's back
            self.connections += 1
            self._served = 0
            return None
        return Outcome(False, None, _short(error))

    def _shut(self, fired: threading.Event) -> None:
        """The deadline passed: wake whatever waits on the socket (and say so)."""
        fired.set()
        conn = self._conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def send(self, body: bytes, headers: Mapping[str, str]) -> Outcome:
        """POST ``body`` with ``headers`` within the limits: what came of it."""
        limits = self._limits
        deadline = time.monotonic() + limits.timeout_s
        fired = threading.Event()
        # Armed before connecting: a TLS handshake is part of the exchange it bounds.
        token = self._watchdog.arm(deadline, lambda: self._shut(fired))
        try:
            return self._exchange(body, headers, deadline, fired)
        finally:
            self._watchdog.disarm(token)
            if fired.is_set():
                self.close()  # a shut socket is never reused

    def _exchange(
        self, body: bytes, headers: Mapping[str, str], deadline: float, fired: threading.Event
    ) -> Outcome:
        limits = self._limits
        timed_out = Outcome(False, None, f"timed out after {limits.timeout_s:g}s")
        all_headers = {
            **headers,
            "Content-Type": "application/json",
            "User-Agent": limits.user_agent,
        }
        for _ in range(2):  # a kept-alive connection the receiver closed: once more, anew
            reused = self._conn is not None
            if not reused:
                refused = self._connect(deadline, fired)
                if refused is not None:
                    return refused
            conn = self._conn
            conn.timeout = max(0.001, deadline - time.monotonic())
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request("POST", self._target, body=body, headers=all_headers)
                response = conn.getresponse()
                # Read a bounded part of the answer: receivers need not be read to the end.
                response.read(limits.max_response_bytes)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.close()
                if fired.is_set() or time.monotonic() >= deadline:
                    return timed_out
                if reused and self._served and _closed_by_peer(exc):
                    continue  # it closed the idle connection: nothing was answered, resend
                return Outcome(False, None, _short(_reason(exc)))
            if fired.is_set():
                # Cut off mid-answer (an end of file looks like the end of the headers):
                # what arrived cannot be trusted to be the receiver's whole answer.
                return timed_out
            self._served += 1
            if not response.isclosed() or response.will_close:
                self.close()  # an answer not read to its end, or the receiver's last
            status = response.status
            if 200 <= status < 300:
                return Outcome(True, status)
            if 300 <= status < 400:
                return Outcome(False, status, f"HTTP {status}: a redirect, not followed")
            return Outcome(False, status, f"HTTP {status}")
        return Outcome(False, None, "connection reset")


def _closed_by_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says a reused connection was closed by the receiver before it
    answered, or held what the last answer left (a body after a 204): worth a new one."""
    return isinstance(
        exc,
        http.client.BadStatusLine
        | ConnectionResetError
        | BrokenPipeError
        | ConnectionAbortedError
        | http.client.CannotSendRequest,
    )


def send(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    limits: SendLimits,
    resolver: Resolver,
) -> Outcome:
    """POST ``body`` to ``url`` with ``headers``, within ``limits``, on a connection of its own."""
    with Channel(url, limits, resolver) as channel:
        return channel.send(body, headers)
