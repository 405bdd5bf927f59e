"""Slow and malformed clients against a real ``userplane serve``.

A client that connects and sends nothing, or only part of its request head,
must not hold a worker thread: with many such sockets open, everyone else is
still answered at once, and the server closes them at
``USERPLANE_HEADER_TIMEOUT_MS``. Idle keep-alive ends at
``USERPLANE_KEEPALIVE_TIMEOUT_MS``; a stalled body still gets its 408 at
``USERPLANE_BODY_TIMEOUT_MS``. Whatever gunicorn refuses before the app (400,
414, 431) is an RFC 9457 problem with our security headers, never HTML.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.http.errors import ParseException
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import ThreadWorker
from hypothesis import example, given
from hypothesis import strategies as st
from serving import (
    GRACEFUL_TIMEOUT,
    PROBLEM_JSON,
    REQUEST_TIMEOUT,
    Response,
    Server,
    parse_response,
    raw_exchange,
    running_server,
)

from userplane import Settings
from userplane.errors import ConfigurationError
from userplane.frontends.http.connections import STOP_HEAD_S, HeadScanner, Verdict, head_limits
from userplane.frontends.http.server import Server as Gunicorn

#: ``running_server`` starts two workers; each gets this many threads.
WORKERS = 2
THREADS = 2
#: Four times every thread there is: far more slow sockets than threads.
SLOW_SOCKETS = 4 * WORKERS * THREADS
HEADER_TIMEOUT = 1.0
#: Longer than the head deadline, so that the two cannot be confused.
KEEPALIVE_TIMEOUT = 3.0
BODY_TIMEOUT = 1.0
#: A functional requirement: with slow sockets open, a request is answered within this.
ANSWERED_WITHIN = 1.0
#: How late past its deadline the server may close a socket on a busy 2-core machine.
LATE = 1.5
#: How early: deadlines start when the server accepts, after the client connected.
EARLY = 0.1
ENV = {
    "USERPLANE_THREADS": str(THREADS),
    "USERPLANE_HEADER_TIMEOUT_MS": str(int(HEADER_TIMEOUT * 1000)),
    "USERPLANE_KEEPALIVE_TIMEOUT_MS": str(int(KEEPALIVE_TIMEOUT * 1000)),
    "USERPLANE_BODY_TIMEOUT_MS": str(int(BODY_TIMEOUT * 1000)),
    # Stalled bodies queue for a thread behind each other: they are to get their
    # 408, not a 503 for the wait.
    "USERPLANE_QUEUE_TIMEOUT_MS": "10000",
}
PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: "
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory: Path = tmp_path_factory.mktemp("slow")
    with running_server(directory, f"sqlite:///{directory}/slow.db", "sqlite", ENV) as srv:
        yield srv


@pytest.fixture
def live(server: Server) -> Iterator[Server]:
    assert server.proc.poll() is None, f"the server has stopped:\n{server.log()}"
    yield server
    assert "Traceback" not in server.log()


def timed_get(server: Server, path: str = "/health/live") -> tuple[int, float]:
    """A GET on a fresh connection: its status and how long the answer took."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    return resp.status, time.monotonic() - started


@contextlib.contextmanager
def open_sockets(port: int, count: int, send: bytes) -> Iterator[list[tuple[socket.socket, float]]]:
    """``count`` connections, each having sent ``send``; with when each connected."""
    opened: list[tuple[socket.socket, float]] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
            opened.append((sock, time.monotonic()))
            if send:
                sock.sendall(send)
        yield opened
    finally:
        for sock, _ in opened:
            sock.close()


def until_closed(
    opened: list[tuple[socket.socket, float]], limit: float
) -> list[tuple[float, bytes]]:
    """Read every socket until the server closes it: how long after connecting, and what came.

    A socket still open ``limit`` seconds after it connected fails the test.
    """
    results: dict[socket.socket, tuple[float, bytes]] = {}
    received: dict[socket.socket, bytes] = {sock: b"" for sock, _ in opened}
    connected = dict(opened)
    with selectors.DefaultSelector() as selector:
        for sock, _ in opened:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while len(results) < len(opened):
            now = time.monotonic()
            waiting = [s for s, _ in opened if s not in results]
            overdue = [s for s in waiting if now - connected[s] > limit]
            assert not overdue, f"{len(overdue)} sockets still open after {limit}s"
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[sock] += chunk
                else:
                    results[sock] = (time.monotonic() - connected[sock], received[sock])
                    selector.unregister(sock)
    return [results[sock] for sock, _ in opened]


def assert_rejection(resp: Response, status: int) -> dict[str, object]:
    """``resp`` is the server's own refusal: a problem document, never HTML or a traceback."""
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.content_type == PROBLEM_JSON
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get(name) == value, name
    assert resp.headers.get("Connection") == "close"
    assert b"<html" not in resp.body.lower()
    assert b"Traceback" not in resp.body
    problem: dict[str, object] = json.loads(resp.body)
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    assert problem["detail"]
    assert problem["request_id"] == resp.headers["X-Request-ID"]
    return problem


# -- the event loop's judgement of a head, against gunicorn's parser --------------------------


class _WouldBlock(Exception):
    pass


class _Drained:
    """A socket with nothing more to read: a parser reading it would block."""

    def recv(self, size: int) -> bytes:
        raise _WouldBlock


_NEAR_LIMIT_LINE = b"GET /" + b"a" * 4000 + b" HTTP/1.1"  # the limit is 4094
_LONG_FIELD = b"X-A: " + b"b" * 9000  # over the field size limit (8190)
_HUGE_FIELD = b"X-B: " + b"c" * 830_000  # over the header section limit (819,204)
PIECES = [
    b"GET / HTTP/1.1",
    _NEAR_LIMIT_LINE,
    b"GET /" + b"a" * 4100 + b" HTTP/1.1",  # over the limit
    b"GARBAGE",
    b"HTTP/9.9",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b": ",
    b"Host: x",
    b"Content-Length: 1",
    b"Transfer-Encoding: chunked",
    _LONG_FIELD,
    _HUGE_FIELD,
]
#: A request line near the limit whose CRLF arrives in two reads, then a long field.
_NEAR_LIMIT = _NEAR_LIMIT_LINE + b"\r\n" + _LONG_FIELD + b"\r\n"


def _judge(head: bytes, pieces: list[bytes]) -> tuple[Verdict, bytes]:
    """Feed ``pieces`` of ``head`` to a scanner until it stops waiting: its verdict and bytes."""
    assert b"".join(pieces) == head
    scanner = HeadScanner(*head_limits(Config()))
    verdict = Verdict.WAIT
    for piece in pieces:
        verdict = scanner.feed(piece)
        if verdict is not Verdict.WAIT:
            break
    return verdict, bytes(scanner.buf)


def _split(head: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(head), *cuts})
    return [head[a:b] for a, b in itertools.pairwise(bounds)] or [b""]


@st.composite
def _arrivals(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A head (whole, partial, valid or not) and the pieces it arrives in."""
    head = draw(st.lists(st.sampled_from(PIECES), max_size=10).map(b"".join))
    if len(head) <= 20_000 and draw(st.booleans()):
        return head, [head[i : i + 1] for i in range(len(head))] or [b""]  # a byte at a time
    return head, _split(head, draw(st.lists(st.integers(0, len(head)), max_size=8)))


@given(_arrivals())
@example(
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", _split(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", [24, 26]))
)
@example((b"GET / HTTP/1.1\r\n" + _HUGE_FIELD, [b"GET / HTTP/1.1\r\n" + _HUGE_FIELD]))
@example((_NEAR_LIMIT, [_NEAR_LIMIT[i : i + 1] for i in range(len(_NEAR_LIMIT))]))
def test_a_head_handed_to_a_thread_never_makes_the_parser_read(
    arrival: tuple[bytes, list[bytes]],
) -> None:
    head, pieces = arrival
    verdict, held = _judge(head, pieces)
    # However the bytes came in, the judgement is the same.
    assert _judge(held, [held])[0] is verdict
    parser = RequestParser(Config(), _Drained(), ("127.0.0.1", 1))
    parser.unreader.unread(held)
    try:
        next(parser)
        outcome = "parsed"
    except _WouldBlock:
        outcome = "would read"
    except ParseException:
        outcome = "refused"
    if verdict is Verdict.READY:
        assert outcome != "would read"
    else:
        # Held back: never a request the parser could already serve.
        assert outcome != "parsed"


def test_the_scanner_hands_over_as_soon_as_the_parser_can_decide() -> None:
    line_limit, headers_limit = head_limits(Config())
    whole = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for cut in range(1, len(whole)):
        assert _judge(whole[:cut], [whole[:cut]]) == (Verdict.WAIT, whole[:cut])
    for cut in range(1, len(whole)):  # in two pieces, wherever the cut
        assert _judge(whole, [whole[:cut], whole[cut:]]) == (Verdict.READY, whole)
    # A bare LF is refused by the parser at once: no reason to wait for more.
    for head in (b"GET / HTTP/1.1\n", b"GET / HTTP/1.1\r\nHost: x\nX", b"\n"):
        assert _judge(head, [head])[0] is Verdict.READY, head
    # A request line past the limit: the parser answers 414 without its end.
    line = b"GET /" + b"a" * line_limit
    assert _judge(line[: line_limit + 2], [line[: line_limit + 2]])[0] is Verdict.WAIT
    assert _judge(line, [line])[0] is Verdict.READY
    # A header section past the limit: the event loop answers 431 itself.
    scanner = HeadScanner(line_limit, headers_limit, b"GET / HTTP/1.1\r\n")
    assert scanner.feed(b"X: " + b"a" * (headers_limit - 3)) is Verdict.WAIT
    assert scanner.feed(b"a") is Verdict.TOO_LARGE
    assert not scanner.line_too_long()
    unlimited = HeadScanner(0, headers_limit, b"GET /" + b"a" * (2 * 1024 * 1024))
    assert unlimited.verdict() is Verdict.TOO_LARGE
    assert unlimited.line_too_long()


# -- slow heads ----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    "send", [b"", PARTIAL_HEAD], ids=["sent nothing", "sent part of the headers"]
)
def test_slow_heads_hold_no_thread_and_are_closed_at_their_deadline(
    live: Server, send: bytes
) -> None:
    with open_sockets(live.port, SLOW_SOCKETS, send) as opened:
        time.sleep(0.2)  # the server has them all
        for _ in range(2 * WORKERS):
            status, took = timed_get(live)
            assert status == 200
            assert took < ANSWERED_WITHIN, f"answered after {took:.2f}s"
        closed = until_closed(opened, HEADER_TIMEOUT + LATE)
    for after, data in closed:
        assert after >= HEADER_TIMEOUT - EARLY, f"closed {after:.2f}s after connecting"
        if send:
            # Part of a request came: the server says why it gets no answer.
            assert_rejection(parse_response(data), 408)
        else:
            assert data == b""
    status, took = timed_get(live)
    assert (status, took < ANSWERED_WITHIN) == (200, True)


@pytest.mark.e2e
def test_a_head_trickled_in_before_the_deadline_is_served(live: Server) -> None:
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", live.port), timeout=REQUEST_TIMEOUT) as sock:
        pieces = [request[i : i + 7] for i in range(0, len(request), 7)]
        pause = HEADER_TIMEOUT / 2 / len(pieces)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert parse_response(data).status == 200


# -- keep-alive ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_keep_alive_serves_again_and_an_idle_connection_is_closed_at_its_timeout(
    live: Server,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/health/live")
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b'{"status":"ok"}')
        assert first.getheader("Connection") == "keep-alive"
        sock = conn.sock
        assert sock is not None
        conn.request("GET", "/health/ready")
        second = conn.getresponse()
        second.read()
        assert second.status == 200
        assert conn.sock is sock, "http.client had to open a second connection"
        idle_from = time.monotonic()
        sock.settimeout(KEEPALIVE_TIMEOUT + LATE)
        try:
            assert sock.recv(1) == b""
        except TimeoutError:
            pytest.fail("an idle keep-alive connection was not closed")
        idle = time.monotonic() - idle_from
    finally:
        conn.close()
    assert KEEPALIVE_TIMEOUT - EARLY <= idle <= KEEPALIVE_TIMEOUT + LATE, (
        f"closed after {idle:.2f}s"
    )


@pytest.mark.e2e
def test_pipelined_requests_are_each_answered(live: Server) -> None:
    first = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    # Whole, and with the second head cut where it arrives in two pieces.
    for cut in (len(second), 20):
        with socket.create_connection(("127.0.0.1", live.port), timeout=REQUEST_TIMEOUT) as sock:
            sock.sendall(first + second[:cut])
            time.sleep(0.2)
            sock.sendall(second[cut:])
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        one = parse_response(data)
        assert one.status == 200
        rest = data.split(one.body, 1)[1]
        two = parse_response(rest)
        assert (two.status, two.json()["status"]) == (200, "ok")


@pytest.mark.e2e
def test_a_kept_alive_connection_stalling_in_its_next_head_is_closed_at_the_deadline(
    live: Server,
) -> None:
    with contextlib.ExitStack() as stack:
        opened = []
        for _ in range(SLOW_SOCKETS):
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", live.port), timeout=REQUEST_TIMEOUT)
            )
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while b'{"status":"ok"}' not in response:
                response += sock.recv(65536)
            # The next request: its head never ends.
            sock.sendall(PARTIAL_HEAD)
            opened.append((sock, time.monotonic()))
        time.sleep(0.2)
        status, took = timed_get(live)
        assert (status, took < ANSWERED_WITHIN) == (200, True), f"{status} after {took:.2f}s"
        closed = until_closed(opened, HEADER_TIMEOUT + LATE)
    for after, data in closed:
        assert after >= HEADER_TIMEOUT - EARLY, f"closed {after:.2f}s after the partial head"
        assert_rejection(parse_response(data), 408)


# -- refusals before the app ---------------------------------------------------------------

LONG_QUERY = b"GET /api/v1/users/?q=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
MANY_FIELDS = b"".join(b"X-F%d: 1\r\n" % i for i in range(150))
REFUSALS: list[tuple[str, bytes, int]] = [
    ("request line over the limit", LONG_QUERY, 414),
    ("request line over the limit, still arriving", LONG_QUERY[:4500], 414),
    ("too many header fields", b"GET / HTTP/1.1\r\nHost: x\r\n" + MANY_FIELDS + b"\r\n", 431),
    (
        "a header field too large",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
        431,
    ),
    # The header section outgrows what the parser accepts before it ends.
    ("headers over the limit, still arriving", b"GET / HTTP/1.1\r\nX-A: " + b"a" * 830_000, 431),
    (
        "a complete head over 64 KiB, each field within its limit",
        b"GET /health/live HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(20))
        + b"\r\n",
        431,
    ),
    ("malformed request line", b"GARBAGE\r\nHost: x\r\n\r\n", 400),
    ("bad HTTP version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("malformed header field", b"GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n", 400),
    (
        "Content-Length with Transfer-Encoding",
        b"POST /api/v1/users/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two Content-Lengths",
        b"POST /api/v1/users/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        400,
    ),
]


@pytest.mark.parametrize(
    ("what", "request_bytes", "status"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_what_gunicorn_refuses_is_a_problem_document(
    live: Server, what: str, request_bytes: bytes, status: int
) -> None:
    data = raw_exchange(live.port, request_bytes)
    assert data, f"{what}: the server closed without answering"
    problem = assert_rejection(parse_response(data), status)
    assert b"aaaa" not in data  # nothing the client sent is echoed
    if "Content-Length" in what:
        assert problem["instance"] == "/api/v1/users/"
    assert timed_get(live)[0] == 200


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_stalled_body_gets_its_408_and_gives_its_thread_back(live: Server) -> None:
    body = b'{"email": "stalled@example.org"}'
    head = (
        b"POST /api/v1/users/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + live.key.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body) + 100)
    )
    # One stalled body per thread: every thread is taken until the body deadline.
    with open_sockets(live.port, WORKERS * THREADS, head + body) as opened:
        # However unevenly the connections spread over the workers, each waits
        # at most for the stalled bodies before it on its worker.
        closed = until_closed(opened, WORKERS * THREADS * BODY_TIMEOUT + LATE)
    for after, data in closed:
        assert after >= BODY_TIMEOUT - EARLY
        resp = parse_response(data)
        assert resp.status == 408, resp.body
        assert resp.content_type == PROBLEM_JSON
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # The threads are free again: a burst of twice as many requests as threads is served.
    with ThreadPoolExecutor(max_workers=2 * WORKERS * THREADS) as pool:
        answers = list(pool.map(lambda _: timed_get(live), range(2 * WORKERS * THREADS)))
    assert all(status == 200 for status, _ in answers), answers
    assert max(took for _, took in answers) < ANSWERED_WITHIN, answers
    assert "stalled@example.org" not in live.cli("users", "list", "--format", "json").stdout


@pytest.mark.e2e
def test_a_trickled_body_gets_its_408_at_one_deadline_for_the_whole_body(live: Server) -> None:
    """A byte every half a deadline: each read is in time, the body as a whole is not."""
    body = b'{"email": "trickled@example.org", "full_name": "' + b"x" * 60 + b'"}'
    head = (
        b"POST /api/v1/users/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + live.key.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=REQUEST_TIMEOUT)
    try:
        sock.sendall(head)
        started = time.monotonic()
        answer = b""
        sock.setblocking(False)
        for byte in body:
            with contextlib.suppress(BlockingIOError):
                chunk = sock.recv(65536)
                answer += chunk
                if not chunk:
                    break
            if answer:
                break
            with contextlib.suppress(OSError):
                sock.send(bytes([byte]))
            time.sleep(BODY_TIMEOUT / 2)
            if time.monotonic() - started > BODY_TIMEOUT + LATE + 1:
                break
        took = time.monotonic() - started
    finally:
        sock.close()
    assert answer, f"no answer after {took:.2f} s"
    assert took < BODY_TIMEOUT + LATE, f"answered after {took:.2f} s"
    assert parse_response(answer).status == 408
    assert "trickled@example.org" not in live.cli("users", "list", "--format", "json").stdout


# -- shutdown, and the gunicorn it runs on -------------------------------------------------


@pytest.mark.e2e
def test_a_stopping_server_does_not_wait_a_whole_head_deadline_for_slow_clients(
    tmp_path: Path,
) -> None:
    env = {**ENV, "USERPLANE_HEADER_TIMEOUT_MS": str(GRACEFUL_TIMEOUT * 1000)}
    with (
        running_server(tmp_path, f"sqlite:///{tmp_path}/stop.db", "sqlite", env) as srv,
        open_sockets(srv.port, SLOW_SOCKETS, PARTIAL_HEAD) as opened,
    ):
        time.sleep(0.2)  # the server has them all
        srv.proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        closed = until_closed(opened, STOP_HEAD_S + LATE + 1)
        code = srv.proc.wait(timeout=GRACEFUL_TIMEOUT + 5)
        stopped = time.monotonic() - stopping
    # gunicorn's drain waits for every open connection: without the cap, that
    # is the whole graceful timeout.
    assert code == 0, srv.log()
    assert stopped < STOP_HEAD_S + LATE, f"stopped after {stopped:.2f}s"
    for _, data in closed:
        assert_rejection(parse_response(data), 408)
    assert "Traceback" not in srv.log()


def test_serve_refuses_a_gunicorn_without_the_hooks_it_builds_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Gunicorn(Settings.from_mapping({}))  # the installed one has them
    monkeypatch.delattr(ThreadWorker, "murder_pending")
    with pytest.raises(ConfigurationError, match="gunicorn 27 or later"):
        Gunicorn(Settings.from_mapping({}))


# -- clients that do not keep up ------------------------------------------------------------


@pytest.mark.e2e
def test_a_client_that_never_reads_its_answers_holds_no_thread_for_ever(live: Server) -> None:
    """Pipelined requests whose answers nobody reads fill the send buffer; then a deadline."""
    request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
    with open_sockets(live.port, WORKERS * THREADS, b"") as opened:
        for sock, _ in opened:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(request * 1500)  # some 28 MB of answers, never read
        time.sleep(BODY_TIMEOUT / 2)  # the threads block on full send buffers
        status, took = timed_get(live)
        assert status == 200
        # A blocked thread lets go at the deadline, not when the client does.
        assert took < BODY_TIMEOUT + LATE, f"answered after {took:.2f} s"


@pytest.mark.e2e
def test_a_body_announced_and_never_sent_holds_no_thread(live: Server) -> None:
    """gthread drained such a body for 5 s in the thread, after answering, on any route."""
    announce = b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    with open_sockets(live.port, SLOW_SOCKETS, announce):
        time.sleep(0.2)  # each is answered, and its thread would start draining
        status, took = timed_get(live)
        assert status == 200
        assert took < ANSWERED_WITHIN, f"answered after {took:.2f} s"


def test_a_worker_out_of_descriptors_pauses_accepting_instead_of_dying() -> None:
    """EMFILE on accept must not end the worker and every connection it holds."""
    import errno
    import logging

    from userplane.frontends.http.server import Worker

    class Listener:
        def accept(self) -> tuple[socket.socket, tuple[str, int]]:
            raise OSError(errno.EMFILE, "Too many open files")

    paused: list[bool] = []

    class Stub:
        log = logging.getLogger("test")

        def pause_accepts(self) -> None:
            paused.append(True)

    Worker.accept(Stub(), Listener())  # type: ignore[arg-type]
    assert paused == [True]
