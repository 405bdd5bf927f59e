"""Sending one delivery: signed, to the address that was checked, within bounds.

The request is a ``POST`` of the stored payload, signed by the Standard
Webhooks specification with the ``standardwebhooks`` library. Before each
send the URL's host is resolved and checked again (``addresses``), and the
connection is made to the checked address itself, while the ``Host`` header,
TLS's server name and the certificate check keep the host name: a DNS answer
that changed since the check (rebinding) cannot redirect it. Redirects are
never followed (a 3xx is a failure); the whole exchange has one deadline
(``TIMEOUT_SECONDS``), enforced by a watchdog that shuts the socket; at most
``MAX_RESPONSE_BYTES`` of the answer are read.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from userplane.plugins.webhooks.addresses import Refused, Resolver, check

#: The longest ``last_error`` kept: a reason, not a transcript.
MAX_ERROR = 200


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
    from standardwebhooks import Webhook

    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
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


def _shut(conn: Any, fired: threading.Event) -> None:
    """The deadline passed: wake whatever waits on the socket (and say so)."""
    fired.set()
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def send(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    limits: SendLimits,
    resolver: Resolver,
) -> Outcome:
    """POST ``body`` to ``url`` with ``headers``, within ``limits``: what came of it."""
    deadline = time.monotonic() + limits.timeout_s
    try:
        parts, host, port, addresses = check(
            url, allow_private=limits.allow_private, resolver=resolver, timeout=limits.timeout_s
        )
    except Refused as exc:
        return Outcome(False, None, _short(f"refused: {exc}"))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    all_headers = {
        **headers,
        "Content-Type": "application/json",
        "User-Agent": limits.user_agent,
        "Connection": "close",
    }
    error = "no address to connect to"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Outcome(False, None, f"timed out after {limits.timeout_s:g}s")
        conn = _pinned(parts.scheme, host, port, str(address), remaining)
        fired = threading.Event()
        watchdog = threading.Timer(remaining, _shut, [conn, fired])
        watchdog.daemon = True
        # Armed before connecting: a TLS handshake is part of the exchange it bounds.
        watchdog.start()
        try:
            try:
                conn.connect()
            except OSError as exc:
                if fired.is_set():
                    return Outcome(False, None, f"timed out after {limits.timeout_s:g}s")
                error = f"could not connect to {address}: {_reason(exc)}"
                continue  # the next address the host has, if any
            try:
                conn.request("POST", target, body=body, headers=all_headers)
                response = conn.getresponse()
                # Read a bounded part of the answer: receivers need not be read to the end.
                response.read(limits.max_response_bytes)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if fired.is_set() or time.monotonic() >= deadline:
                    return Outcome(False, None, f"timed out after {limits.timeout_s:g}s")
                return Outcome(False, None, _short(_reason(exc)))
            if fired.is_set():
                # Cut off mid-answer (an end of file looks like the end of the headers):
                # what arrived cannot be trusted to be the receiver's whole answer.
                return Outcome(False, None, f"timed out after {limits.timeout_s:g}s")
            status = response.status
            if 200 <= status < 300:
                return Outcome(True, status)
            if 300 <= status < 400:
                return Outcome(False, status, f"HTTP {status}: a redirect, not followed")
            return Outcome(False, status, f"HTTP {status}")
        finally:
            watchdog.cancel()
            conn.close()
    return Outcome(False, None, _short(error))
