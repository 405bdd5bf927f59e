"""The jwt plugin with keys from a JWKS URL: fetched, cached, refreshed, rate-limited.

The identity provider is a real HTTP server on 127.0.0.1 (``Provider``) whose
key set can change between requests, which counts the requests it gets and can
be made to fail (500, garbage, a key set with no usable key, an answer held
back past the timeout, one dripped a byte at a time, the port closed). Keys are
generated with ``cryptography`` and tokens signed with PyJWT. Time is the key
set's injected clock (``FakeClock``), moved by the tests: nothing sleeps for a
cache lifetime or a refresh interval, and only the dripping provider's test
asserts how long something took (with a wide margin: it is the point).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from falcon import testing

from userplane import Registry, Settings
from userplane.auth import Credentials, Principal
from userplane.errors import ConfigurationError, Unauthenticated
from userplane.frontends.http import create_app
from userplane.plugins import bearer_jwt
from userplane.plugins.bearer_jwt.keysets import MAX_STALE_SECONDS

USERS = "/api/v1/users"
PROBLEM_JSON = "application/problem+json"
REJECTED = "the credentials were not accepted"
UNAUTHENTICATED = "urn:userplane:problem:unauthenticated"
#: The defaults of ``USERPLANE_JWT_JWKS_CACHE_SECONDS`` and ``…_REFRESH_INTERVAL_SECONDS``.
CACHE = 300
INTERVAL = 30
#: How long a test waits for something another thread does: a safety limit, never expected.
PATIENCE = 30
#: A dripping provider sends one byte every ``DRIP_EVERY`` s for ``DRIP_FOR`` s, then the rest.
DRIP_EVERY = 0.3
DRIP_FOR = 10.0


# --------------------------------------------------------------------------- the provider


class Provider:
    """A JWKS endpoint (and an OpenID discovery document) on 127.0.0.1.

    ``mode`` is how it answers: ``ok``, ``500``, ``garbage`` (not JSON),
    ``not-a-jwks``, ``redirect`` (302 to the same JWKS), ``huge`` (2 MiB),
    ``hold`` (nothing until ``released``, or the test ends), ``drip`` (the
    status and headers, then the JWKS, led by blanks, one byte every
    ``DRIP_EVERY`` s for ``DRIP_FOR`` s, then the rest at once: valid JSON,
    only slow; it stops when ``released``, or when the client has gone).
    """

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.mode = "ok"
        self.cache_control: str | None = None
        self.delay = 0.0
        self.discovery: dict[str, Any] | None = None
        self.requests: list[str] = []
        self.lock = threading.Lock()
        #: One event per ``drip`` answer, set when its handler has returned.
        self.drips: list[threading.Event] = []
        self.released = threading.Event()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/jwks"
        self.stopped = False

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def publish(self, *keys: Any) -> None:
        self.jwks = {"keys": list(keys)}

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append(handler.path)
            mode, jwks, delay = self.mode, self.jwks, self.delay
        if delay:
            time.sleep(delay)
        if mode == "hold":
            self.released.wait(PATIENCE)
        if mode == "drip":
            self.drip(handler, json.dumps(jwks).encode())
            return
        if handler.path.endswith("/.well-known/openid-configuration") and self.discovery:
            body, status = json.dumps(self.discovery).encode(), 200
        elif mode == "500":
            body, status = b'{"error": "oops"}', 500
        elif mode == "garbage":
            body, status = b"<html>this is not JSON", 200
        elif mode == "not-a-jwks":
            body, status = b'{"keys": "none today"}', 200
        elif mode == "huge":
            body, status = b'{"keys": [], "padding": "' + b"x" * 2**21 + b'"}', 200
        elif mode == "redirect":
            body, status = b"", 302
        else:
            body, status = json.dumps(jwks).encode(), 200
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            if status == 302:
                handler.send_header("Location", self.url)
            handler.send_header("Content-Length", str(len(body)))
            if self.cache_control:
                handler.send_header("Cache-Control", self.cache_control)
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client gave up (a timeout under test)

    def drip(self, handler: BaseHTTPRequestHandler, jwks: bytes) -> None:
        done = threading.Event()
        with self.lock:
            self.drips.append(done)
        slow = int(DRIP_FOR / DRIP_EVERY)
        body = b" " * slow + jwks
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()  # sent now: wfile is not buffered
            for i in range(slow):
                if self.released.wait(DRIP_EVERY):
                    return
                handler.wfile.write(body[i : i + 1])
            handler.wfile.write(body[slow:])
        except OSError:
            pass  # the client gave up, as it should
        finally:
            done.set()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.released.set()
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.stop()


# --------------------------------------------------------------------------- keys and tokens


@pytest.fixture(scope="module")
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    """P-256 keys by name; ``stranger`` is never published."""
    return {name: ec.generate_private_key(ec.SECP256R1()) for name in ("k1", "k2", "stranger")}


def jwk(key: ec.EllipticCurvePrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``key``: ES256, use sig, unless ``extra`` says otherwise."""
    data = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    out = {**data, "alg": "ES256", "use": "sig", **extra}
    if kid is not None:
        out["kid"] = kid
    return {k: v for k, v in out.items() if v is not None}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 300, "roles": ["editor"], **overrides}


def es256(key: ec.EllipticCurvePrivateKey, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), key, algorithm="ES256", headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FakeClock:
    """The key set's clock: moves only when a test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------- servers


@attrs.frozen
class Server:
    registry: Registry
    client: testing.TestClient
    clock: FakeClock

    def list_users(self, token: str) -> testing.Result:
        return self.client.simulate_get(USERS, headers=bearer(token))

    def create_user(self, token: str, email: str = "new.user@example.com") -> testing.Result:
        return self.client.simulate_post(
            USERS, headers=bearer(token), json={"email": email, "full_name": "New User"}
        )

    def authenticate(self, token: str) -> Principal | None:
        """The principal, or ``None`` when the token was rejected (no HTTP: for floods)."""
        try:
            return self.registry.auth.authenticate(Credentials.from_headers(bearer(token)))
        except Unauthenticated as exc:
            detail = exc.detail
        assert detail == REJECTED
        return None

    @property
    def keyset(self) -> Any:
        verifier = self.registry.services.get(bearer_jwt.JwtVerifier).verifier
        assert verifier is not None
        assert verifier.remote is not None
        return verifier.remote


Serve = Callable[..., Server]


def url_env(provider: Provider, **extra: str) -> dict[str, str]:
    return {"USERPLANE_JWT_ALGORITHM": "ES256", "USERPLANE_JWT_JWKS_URL": provider.url, **extra}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Migrated SQLite registries with the given settings, their key set on a ``FakeClock``."""
    registries: list[Registry] = []

    def make(env: Mapping[str, str]) -> Server:
        url = f"sqlite:///{tmp_path / f'jwks-{len(registries)}.db'}"
        registry = Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url, **env}))
        registries.append(registry)
        registry.migrate()
        server = Server(registry, testing.TestClient(create_app(registry)), FakeClock())
        server.keyset.clock = server.clock
        return server

    yield make
    for registry in registries:
        registry.close()


def assert_rejected(resp: testing.Result) -> None:
    """A 401 problem with the one shared body every rejected token gets."""
    assert resp.status_code == 401, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    assert 'error="invalid_token"' in resp.headers.get("WWW-Authenticate", "")
    body = json.loads(resp.text)
    assert {k: v for k, v in body.items() if k not in {"instance", "request_id"}} == {
        "type": UNAUTHENTICATED,
        "title": "Unauthenticated",
        "status": 401,
        "detail": REJECTED,
    }
    assert "Traceback" not in resp.text


def assert_accepted(resp: testing.Result, status: int = 200) -> None:
    assert resp.status_code == status, resp.text


def jwt_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "userplane.jwt" and r.levelno >= logging.WARNING]


def names_variable(message: str, name: str) -> bool:
    return re.search(rf"(?<![A-Z_]){re.escape(name)}(?![A-Z_])", message) is not None


# --------------------------------------------------------------------------- verifying


def test_a_token_verifies_with_a_key_from_the_url(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    assert provider.count == 0  # nothing is fetched before a token needs it

    assert_accepted(server.create_user(es256(keys["k1"], "k1")), 201)
    assert_accepted(server.list_users(es256(keys["k1"], "k1")))
    assert provider.count == 1  # then the cached set answers
    # The set's key, under the wrong kid or signed by an unpublished key: rejected.
    assert_rejected(server.list_users(es256(keys["stranger"], "k1")))
    assert provider.count == 1


def test_a_token_without_a_kid_uses_the_only_key(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    assert_accepted(server.list_users(es256(keys["k1"], None)))
    # With two keys, a token naming none is not matched against either by guesswork.
    provider.publish(jwk(keys["k1"], "k1"), jwk(keys["k2"], "k2"))
    server.clock.advance(CACHE + 1)
    assert_rejected(server.list_users(es256(keys["k1"], None)))
    assert provider.count == 2


def test_keys_for_other_algorithms_or_uses_are_ignored(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    provider.publish(
        jwk(keys["k1"], "enc", use="enc"),
        jwk(keys["k1"], "es384", alg="ES384"),
        jwk(keys["k1"], "verify-only", use=None, key_ops=["verify"]),
        jwk(keys["k2"], "no-alg", alg=None, use=None),
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not even an object",
    )
    server = serve(url_env(provider))
    assert_rejected(server.list_users(es256(keys["k1"], "enc")))
    assert_rejected(server.list_users(es256(keys["k1"], "es384")))
    # No alg or use: taken for the pinned ES256 since its kty and crv fit.
    assert_accepted(server.list_users(es256(keys["k1"], "verify-only")))
    assert_accepted(server.list_users(es256(keys["k2"], "no-alg")))


# --------------------------------------------------------------------------- refreshing


def test_a_new_kid_makes_a_refresh_and_is_accepted(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    assert provider.count == 1

    # The provider rotates: k2 is published, tokens signed with it appear.
    provider.publish(jwk(keys["k1"], "k1"), jwk(keys["k2"], "k2"))
    server.clock.advance(INTERVAL + 1)  # the set is still fresh; the rate limit allows one
    assert_accepted(server.create_user(es256(keys["k2"], "k2")), 201)
    assert provider.count == 2
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    assert server.authenticate(es256(keys["k2"], "k2")) is not None
    assert provider.count == 2


def test_unknown_kids_refresh_at_most_once_per_interval(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    assert server.authenticate(es256(keys["k1"], "k1")) is not None

    def flood() -> None:
        for _ in range(40):
            token = es256(keys["stranger"], secrets.token_hex(8))
            assert server.authenticate(token) is None

    flood()  # right after the first fetch: no refresh at all
    assert provider.count == 1
    server.clock.advance(INTERVAL - 1)
    flood()
    assert provider.count == 1
    server.clock.advance(2)
    flood()  # one refresh, for the first of them
    assert provider.count == 2
    server.clock.advance(INTERVAL / 2)
    flood()
    assert provider.count == 2
    # The known key is never held up by any of this.
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    assert_rejected(server.list_users(es256(keys["stranger"], "made-up")))


def test_the_refresh_interval_is_a_setting(serve: Serve, provider: Provider, keys: Any) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider, USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS="5"))
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    server.clock.advance(6)
    assert server.authenticate(es256(keys["stranger"], "made-up")) is None
    assert provider.count == 2


def test_the_cache_lifetime_ends_and_the_set_is_fetched_again(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    provider.publish(jwk(keys["k1"], "k1"), jwk(keys["k2"], "k2"))
    server = serve(url_env(provider))
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    server.clock.advance(CACHE - 1)
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    assert provider.count == 1

    # The provider withdraws k1: once the cache ends, k1's tokens stop working.
    provider.publish(jwk(keys["k2"], "k2"))
    server.clock.advance(2)
    assert_rejected(server.list_users(es256(keys["k1"], "k1")))
    assert provider.count == 2
    assert server.authenticate(es256(keys["k2"], "k2")) is not None
    assert provider.count == 2


def test_the_cache_lifetime_is_a_setting(serve: Serve, provider: Provider, keys: Any) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider, USERPLANE_JWT_JWKS_CACHE_SECONDS="60"))
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    server.clock.advance(61)
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    assert provider.count == 2


@pytest.mark.parametrize(
    ("cache_control", "refetched_after"),
    [
        ("public, max-age=100", 100),  # shorter than the setting: honoured
        ("max-age=5", INTERVAL),  # never shorter than the refresh interval
        ("no-cache", INTERVAL),
        ("max-age=86400", CACHE),  # never longer than the setting
        ("max-age=soon", CACHE),  # unreadable: the setting
    ],
)
def test_cache_control_max_age_is_honoured_within_bounds(
    serve: Serve, provider: Provider, keys: Any, cache_control: str, refetched_after: int
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    provider.cache_control = cache_control
    server = serve(url_env(provider))
    token = es256(keys["k1"], "k1")
    assert server.authenticate(token) is not None
    server.clock.advance(refetched_after - 1)
    assert server.authenticate(token) is not None
    assert provider.count == 1
    server.clock.advance(2)
    assert server.authenticate(token) is not None
    assert provider.count == 2


# --------------------------------------------------------------------------- a provider failing


FAILURES = ["500", "garbage", "not-a-jwks", "no usable key", "timeout", "drip", "refused"]


#: The fetch timeout while a ``timeout`` failure is provoked (the setting's default
#: otherwise, so that a good answer on a busy machine is never taken for a failure).
SHORT = 0.5


def fail(provider: Provider, how: str, keys: Any) -> None:
    if how == "refused":
        provider.stop()
    elif how == "timeout":
        provider.mode = "hold"
    elif how == "no usable key":
        provider.publish(jwk(keys["k1"], "k1", alg="ES384"))
    else:
        provider.mode = how


REASONS = {
    "500": "HTTP 500",
    "garbage": "not JSON",
    "not-a-jwks": "not a JWKS",
    "no usable key": "no usable ES256 signing key",
    "timeout": "no answer within",
    "drip": "no answer within",
    "refused": "cannot connect",
    "redirect": "HTTP 302 (redirects are not followed)",
    "huge": "larger than 1048576 bytes",
}


@pytest.mark.parametrize("how", FAILURES)
def test_while_the_provider_fails_the_last_good_set_still_verifies(
    serve: Serve, provider: Provider, keys: Any, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    known = es256(keys["k1"], "k1")
    assert server.authenticate(known) is not None

    fail(provider, how, keys)
    server.keyset.timeout = SHORT
    with caplog.at_level(logging.INFO, logger="userplane.jwt"):
        server.clock.advance(CACHE + 1)  # the set has expired: this token makes a fetch
        assert_accepted(server.list_users(known))
        server.clock.advance(INTERVAL + 1)  # and again, still failing
        assert_accepted(server.create_user(known), 201)
        # A kid the last good set lacks is simply rejected.
        server.clock.advance(INTERVAL + 1)
        unknown = es256(keys["stranger"], "k9")
        assert_rejected(server.list_users(unknown))

    [warning] = jwt_warnings(caplog)  # one per streak of failures, however many
    message = warning.getMessage()
    assert REASONS[how] in message, message
    assert "still using the 1 key fetched" in message, message
    assert warning.exc_info is None
    for token in (known, unknown):
        assert token not in caplog.text
        assert token.split(".")[2] not in caplog.text
    assert "failed: " in server.keyset.describe()


def test_the_provider_recovering_is_noticed(
    serve: Serve, provider: Provider, keys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    assert server.authenticate(es256(keys["k1"], "k1")) is not None
    with caplog.at_level(logging.INFO, logger="userplane.jwt"):
        provider.mode = "500"
        server.clock.advance(CACHE + 1)
        assert server.authenticate(es256(keys["k1"], "k1")) is not None
        provider.mode = "ok"
        provider.publish(jwk(keys["k1"], "k1"), jwk(keys["k2"], "k2"))
        server.clock.advance(INTERVAL + 1)
        assert server.authenticate(es256(keys["k2"], "k2")) is not None
        # A second streak of failures warns again.
        provider.mode = "garbage"
        server.clock.advance(CACHE + 1)
        assert server.authenticate(es256(keys["k2"], "k2")) is not None
    messages = [r.getMessage() for r in caplog.records if r.name == "userplane.jwt"]
    assert len(jwt_warnings(caplog)) == 2, messages
    assert any("fetched again" in m for m in messages), messages
    assert provider.count == 4


@pytest.mark.parametrize("how", ["500", "garbage", "timeout", "refused", "redirect", "huge"])
def test_a_set_never_fetched_rejects_tokens_with_a_401(
    serve: Serve, provider: Provider, keys: Any, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    fail(provider, how, keys)
    # The service starts: only the settings are checked at start-up.
    server = serve(url_env(provider))
    server.keyset.timeout = SHORT
    token = es256(keys["k1"], "k1")
    with caplog.at_level(logging.INFO, logger="userplane.jwt"):
        assert_rejected(server.list_users(token))
        assert_rejected(server.create_user(token))  # within the interval: no second attempt
    [warning] = jwt_warnings(caplog)
    assert "no keys were ever fetched" in warning.getMessage()
    assert REASONS[how] in warning.getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert token not in caplog.text
    facts = server.registry.hooks.describe(server.registry.settings, server.registry)
    assert "no keys yet, JWTs are rejected" in facts["jwt"], facts
    if how != "refused":
        assert provider.count == 1
        # Once the provider answers, the next attempt (after the interval) succeeds.
        provider.mode = "ok"
        provider.released.set()
        server.keyset.timeout = 5
        assert_rejected(server.list_users(token))
        server.clock.advance(INTERVAL + 1)
        assert_accepted(server.list_users(token))
        assert provider.count == 2


def test_a_provider_dripping_its_answer_is_cut_off_at_the_timeout(
    serve: Serve, provider: Provider, keys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte every 0.3 s: each receive comes within the timeout, the whole answer does not."""
    provider.publish(jwk(keys["k1"], "k1"))
    provider.mode = "drip"
    server = serve(url_env(provider, USERPLANE_JWT_JWKS_TIMEOUT_SECONDS="1"))
    token = es256(keys["k1"], "k1")
    try:
        with caplog.at_level(logging.INFO, logger="userplane.jwt"):
            started = time.monotonic()
            resp = server.list_users(token)
            elapsed = time.monotonic() - started
            assert_rejected(resp)
            assert_rejected(server.create_user(token))  # within the interval: no second attempt
        # About 1 s; the drip would have taken 10 (a wide margin: the machine may be busy).
        assert elapsed < DRIP_FOR / 2, f"a 1 s timeout, and the fetch took {elapsed:.1f} s"
        [warning] = jwt_warnings(caplog)
        assert "no answer within 1 s" in warning.getMessage(), warning.getMessage()
        assert "no keys were ever fetched" in warning.getMessage()
        assert provider.count == 1
    finally:
        provider.stop()  # ends the drip at once, whether or not the client has gone
    assert all(done.wait(PATIENCE) for done in provider.drips)
    provider.thread.join(PATIENCE)
    assert not provider.thread.is_alive()


def test_the_last_good_set_verifies_nothing_a_day_after_it_was_fetched(
    serve: Serve, provider: Provider, keys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    known = es256(keys["k1"], "k1")
    assert_accepted(server.list_users(known))
    fetched_at = server.clock.now

    provider.mode = "500"  # or whoever stands between us and the provider blocks it
    with caplog.at_level(logging.INFO, logger="userplane.jwt"):
        server.clock.advance(CACHE + 1)
        assert_accepted(server.list_users(known))
        assert provider.count == 2
        # Almost a day later, every fetch since failing: the last good set still verifies.
        server.clock.now = fetched_at + MAX_STALE_SECONDS - 10
        assert_accepted(server.list_users(known))
        assert provider.count == 3
        # A day after the last good fetch it verifies nothing, fetch or no fetch:
        server.clock.now = fetched_at + MAX_STALE_SECONDS + 1  # within the interval: none
        assert_rejected(server.list_users(known))
        assert provider.count == 3
        server.clock.advance(INTERVAL + 1)  # one more, failing
        assert_rejected(server.list_users(known))
        assert provider.count == 4
        assert server.authenticate(known) is None

        # The provider recovers: the next fetch the interval allows brings the keys back.
        provider.mode = "ok"
        assert_rejected(server.list_users(known))
        assert provider.count == 4
        server.clock.advance(INTERVAL + 1)
        assert_accepted(server.list_users(known))
        assert provider.count == 5
        # And the day starts again from that fetch.
        refetched_at = server.clock.now
        provider.mode = "500"
        server.clock.now = refetched_at + MAX_STALE_SECONDS - 10
        assert_accepted(server.list_users(known))
        assert provider.count == 6
    messages = [r.getMessage() for r in caplog.records if r.name == "userplane.jwt"]
    assert any("fetched again" in m for m in messages), messages
    assert known not in caplog.text


# --------------------------------------------------------------------------- threads


def test_many_threads_at_once_cause_one_fetch(serve: Serve, provider: Provider, keys: Any) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    provider.delay = 0.2  # the first fetch is under way while the others arrive
    server = serve(url_env(provider))
    tokens = [es256(keys["k1"], "k1", sub=f"user{i}") for i in range(16)]
    results: dict[int, Principal | None] = {}
    start = threading.Barrier(len(tokens))

    def verify(i: int) -> None:
        start.wait(PATIENCE)
        results[i] = server.authenticate(tokens[i])

    threads = [threading.Thread(target=verify, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    assert sorted(results) == list(range(len(tokens)))
    assert all(p is not None and p.id == f"jwt:user{i}" for i, p in results.items()), results
    assert provider.count == 1


def test_a_slow_refresh_does_not_hold_up_tokens_with_known_keys(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider, USERPLANE_JWT_JWKS_TIMEOUT_SECONDS="20"))
    known = es256(keys["k1"], "k1")
    assert server.authenticate(known) is not None

    provider.mode = "hold"  # the next request gets no answer until released
    server.clock.advance(CACHE + 1)
    refreshing = threading.Thread(target=server.authenticate, args=(known,))
    refreshing.start()
    deadline = time.monotonic() + PATIENCE
    while provider.count < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert provider.count == 2  # the refresh is under way, held by the provider

    # Meanwhile other threads verify with the expired set, without waiting or fetching.
    for _ in range(5):
        assert server.authenticate(known) is not None
    assert refreshing.is_alive()
    assert provider.count == 2

    provider.mode = "ok"
    provider.released.set()
    refreshing.join(PATIENCE)
    assert not refreshing.is_alive()
    assert provider.count == 2


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("fetched_before", [False, True], ids=["never fetched", "fetched"])
def test_a_fetch_ended_by_a_base_exception_does_not_block_the_next(
    serve: Serve,
    provider: Provider,
    keys: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    interrupt: type[BaseException],
    fetched_before: bool,
) -> None:
    """Not an ``Exception``: it goes on up, but the key set is not left "fetching" for ever."""
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(url_env(provider))
    keyset = server.keyset
    known = es256(keys["k1"], "k1")
    if fetched_before:
        assert server.authenticate(known) is not None
        server.clock.advance(CACHE + 1)
    requests = provider.count
    # A thread waiting for a fetch under way would wait this long: a set stuck "fetching"
    # makes the test slow and fail, not hang.
    keyset.timeout = PATIENCE / 4
    real_fetch = keyset._fetch
    calls: list[None] = []

    def interrupted_once() -> Any:
        calls.append(None)
        if len(calls) == 1:
            raise interrupt()
        return real_fetch()

    monkeypatch.setattr(keyset, "_fetch", interrupted_once)
    with caplog.at_level(logging.INFO, logger="userplane.jwt"):
        with pytest.raises(interrupt):
            server.authenticate(known)
        assert provider.count == requests
        # Within the interval no fetch is made, and none is waited for.
        started = time.monotonic()
        assert (server.authenticate(known) is not None) is fetched_before
        assert server.authenticate(es256(keys["stranger"], "k9")) is None
        assert time.monotonic() - started < keyset.timeout
        assert len(calls) == 1

        server.clock.advance(INTERVAL + 1)
        assert_accepted(server.list_users(known))
    assert len(calls) == 2
    assert provider.count == requests + 1
    [warning] = jwt_warnings(caplog)
    assert "interrupted" in warning.getMessage(), warning.getMessage()


# --------------------------------------------------------------------------- discovery


def test_discovery_finds_the_jwks_url_from_the_issuer(
    serve: Serve, provider: Provider, keys: Any
) -> None:
    issuer = f"{provider.base}/realms/main"
    provider.discovery = {"issuer": issuer, "jwks_uri": provider.url}
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(
        {
            "USERPLANE_JWT_ALGORITHM": "ES256",
            "USERPLANE_JWT_DISCOVERY": "true",
            "USERPLANE_JWT_ISSUER": issuer,
            "USERPLANE_JWT_AUDIENCE": "userplane-api",
        }
    )
    token = es256(keys["k1"], "k1", iss=issuer, aud="userplane-api")
    assert_accepted(server.create_user(token), 201)
    assert provider.requests == ["/realms/main/.well-known/openid-configuration", "/jwks"]
    assert_rejected(server.list_users(es256(keys["k1"], "k1", iss=issuer, aud="other")))
    facts = server.registry.hooks.describe(server.registry.settings, server.registry)
    assert f"keys from {issuer}/.well-known/openid-configuration" in facts["jwt"], facts


def test_discovery_of_another_issuer_is_refused(
    serve: Serve, provider: Provider, keys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = f"{provider.base}/realms/main"
    provider.discovery = {"issuer": "https://evil.example.test", "jwks_uri": provider.url}
    provider.publish(jwk(keys["k1"], "k1"))
    server = serve(
        {
            "USERPLANE_JWT_ALGORITHM": "ES256",
            "USERPLANE_JWT_DISCOVERY": "true",
            "USERPLANE_JWT_ISSUER": issuer,
        }
    )
    with caplog.at_level(logging.WARNING, logger="userplane.jwt"):
        assert_rejected(server.list_users(es256(keys["k1"], "k1", iss=issuer)))
    [warning] = jwt_warnings(caplog)
    assert "another issuer" in warning.getMessage()
    assert provider.requests == ["/realms/main/.well-known/openid-configuration"]


# --------------------------------------------------------------------------- settings


BAD_SETTINGS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "http to a host that is not loopback": (
        {"USERPLANE_JWT_JWKS_URL": "http://idp.example.test/jwks"},
        ("USERPLANE_JWT_JWKS_URL",),
    ),
    "not a URL": ({"USERPLANE_JWT_JWKS_URL": "idp.example.test/jwks"}, ("USERPLANE_JWT_JWKS_URL",)),
    "ftp": ({"USERPLANE_JWT_JWKS_URL": "ftp://idp.example.test/jwks"}, ("USERPLANE_JWT_JWKS_URL",)),
    "a bad port": (
        {"USERPLANE_JWT_JWKS_URL": "https://idp.example.test:99999/jwks"},
        ("USERPLANE_JWT_JWKS_URL",),
    ),
    "JWKS_URL and JWKS_FILE": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_FILE": "/etc/jwks.json",
        },
        ("USERPLANE_JWT_JWKS_URL", "USERPLANE_JWT_JWKS_FILE"),
    ),
    "JWKS_URL and DISCOVERY": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_DISCOVERY": "true",
            "USERPLANE_JWT_ISSUER": "https://idp.example.test",
        },
        ("USERPLANE_JWT_JWKS_URL", "USERPLANE_JWT_DISCOVERY"),
    ),
    "HS256 from a URL": (
        {
            "USERPLANE_JWT_ALGORITHM": "HS256",
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
        },
        ("USERPLANE_JWT_JWKS_URL",),
    ),
    "timeout 0": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_TIMEOUT_SECONDS": "0",
        },
        ("USERPLANE_JWT_JWKS_TIMEOUT_SECONDS",),
    ),
    "timeout nan": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_TIMEOUT_SECONDS": "nan",
        },
        ("USERPLANE_JWT_JWKS_TIMEOUT_SECONDS",),
    ),
    "timeout not a number": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_TIMEOUT_SECONDS": "soon",
        },
        ("USERPLANE_JWT_JWKS_TIMEOUT_SECONDS",),
    ),
    "timeout 61": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_TIMEOUT_SECONDS": "61",
        },
        ("USERPLANE_JWT_JWKS_TIMEOUT_SECONDS",),
    ),
    "cache 0": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_CACHE_SECONDS": "0",
        },
        ("USERPLANE_JWT_JWKS_CACHE_SECONDS",),
    ),
    "cache 5m": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_CACHE_SECONDS": "5m",
        },
        ("USERPLANE_JWT_JWKS_CACHE_SECONDS",),
    ),
    "refresh interval 0": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS": "0",
        },
        ("USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS",),
    ),
    "refresh interval negative": (
        {
            "USERPLANE_JWT_JWKS_URL": "https://idp.example.test/jwks",
            "USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS": "-1",
        },
        ("USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS",),
    ),
    "discovery without an issuer": (
        {"USERPLANE_JWT_DISCOVERY": "true"},
        ("USERPLANE_JWT_DISCOVERY", "USERPLANE_JWT_ISSUER"),
    ),
    "discovery from an http issuer": (
        {"USERPLANE_JWT_DISCOVERY": "true", "USERPLANE_JWT_ISSUER": "http://idp.example.test"},
        ("USERPLANE_JWT_ISSUER",),
    ),
    "discovery not a bool": (
        {"USERPLANE_JWT_DISCOVERY": "maybe", "USERPLANE_JWT_ISSUER": "https://idp.example.test"},
        ("USERPLANE_JWT_DISCOVERY",),
    ),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_fail_at_startup_naming_the_variable(case: str, tmp_path: Path) -> None:
    env, names = BAD_SETTINGS[case]
    url = f"sqlite:///{tmp_path / 'startup.db'}"
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": url, "USERPLANE_JWT_ALGORITHM": "ES256", **env}
    )
    with pytest.raises(ConfigurationError) as refused, Registry(settings):
        pass
    message = str(refused.value)
    for name in names:
        assert names_variable(message, name), message


def test_the_timeout_setting_reaches_the_key_set(serve: Serve, provider: Provider) -> None:
    server = serve(url_env(provider, USERPLANE_JWT_JWKS_TIMEOUT_SECONDS="0.25"))
    assert server.keyset.timeout == 0.25
    assert serve(url_env(provider)).keyset.timeout == 5.0


def test_startup_fetches_nothing_and_an_unreachable_url_does_not_stop_it(
    provider: Provider, tmp_path: Path
) -> None:
    provider.stop()
    url = f"sqlite:///{tmp_path / 'start.db'}"
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": url, **url_env(provider)})
    with Registry(settings) as registry:
        registry.migrate()
        facts = registry.hooks.describe(settings, registry)
    assert f"keys from {provider.url} (not fetched yet)" in facts["jwt"], facts
    assert provider.count == 0


def test_describe_masks_a_password_in_the_url() -> None:
    settings = Settings.from_mapping(
        {
            "USERPLANE_JWT_ALGORITHM": "RS256",
            "USERPLANE_JWT_JWKS_URL": "https://reader:hunter2hunter2@idp.example.test/jwks",
        }
    )
    facts = bearer_jwt.userplane_describe(settings, None)
    assert "keys from https://reader:" in facts["jwt"], facts
    assert "hunter2" not in json.dumps(facts)


def test_settings_are_listed_with_their_defaults() -> None:
    defaults = bearer_jwt.SETTINGS.defaults()
    assert {k: v for k, v in defaults.items() if "JWKS_" in k or "DISCOVERY" in k} == {
        "USERPLANE_JWT_JWKS_FILE": None,
        "USERPLANE_JWT_JWKS_URL": None,
        "USERPLANE_JWT_DISCOVERY": False,
        "USERPLANE_JWT_JWKS_TIMEOUT_SECONDS": 5.0,
        "USERPLANE_JWT_JWKS_CACHE_SECONDS": CACHE,
        "USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS": INTERVAL,
    }
