"""The built-in authentication plugins against ``userplane.testing.AuthPluginContract``.

``api_keys`` and ``jwt`` are entry points (the contract's default registry
finds them there); ``PrincipalTokens``, the HTTP test client's plugin, is
passed as ``plugins=``. Each also answers over HTTP through
``userplane.frontends.http.testing``.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import jwt
import pytest

from userplane.frontends.http.testing import PrincipalTokens, client
from userplane.plugin import (
    Credentials,
    Principal,
    Registry,
    Settings,
    Unauthenticated,
    hookimpl,
)
from userplane.plugins import api_keys, bearer_jwt
from userplane.testing import AuthPluginContract
from userplane.testing.auth import StatementCounter, ValidCredentials

USERS = "/api/v1/users"
BASE62 = string.ascii_letters + string.digits
HS_SECRET = secrets.token_urlsafe(40)
ISSUER = "https://idp.example.test/realms/main"
AUDIENCE = "userplane-api"


def bearer(token: str, **context: Any) -> Credentials:
    return Credentials.from_headers({"Authorization": f"Bearer {token}"}, **context)


class OverHttp:
    """The same credentials through the HTTP API: right ones read (200), wrong ones get 401."""

    def test_over_http(
        self,
        registry: Registry,
        valid_credentials: ValidCredentials,
        wrong_credentials: Sequence[Credentials],
    ) -> None:
        credentials, _ = valid_credentials
        right = client(registry, headers={"Authorization": f"Bearer {credentials.bearer}"})
        assert right.simulate_get(USERS).status_code == 200
        for wrong in wrong_credentials:
            refused = client(registry, headers={"Authorization": f"Bearer {wrong.bearer}"})
            answer = refused.simulate_get(USERS)
            assert answer.status_code == 401
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")


# -- api_keys ---------------------------------------------------------------------------


def random_key() -> str:
    return "up_" + "".join(secrets.choice(BASE62) for _ in range(44))


class TestApiKeys(OverHttp, AuthPluginContract):
    plugin = api_keys
    revocation_window = 0.3

    @pytest.fixture
    def settings_variables(self) -> Mapping[str, str]:
        return {"USERPLANE_API_KEYS_CACHE_SECONDS": str(self.revocation_window)}

    @pytest.fixture
    def valid_credentials(self, registry: Registry) -> ValidCredentials:
        _, key = api_keys.service(registry).create("contract", "editor")
        return ValidCredentials(bearer(key), {"editor"})

    @pytest.fixture
    def wrong_credentials(self, registry: Registry) -> Sequence[Credentials]:
        keys = api_keys.service(registry)
        _, known = keys.create("known", "viewer")
        _, expired = keys.create("expired", "admin", expires_in=timedelta(microseconds=1))
        revoked, revoked_key = keys.create("revoked", "admin")
        keys.revoke(revoked.id)
        return [
            bearer(random_key()),  # unknown
            bearer(known[:-1] + ("A" if known[-1] != "A" else "B")),  # known id, wrong secret
            bearer(expired),
            bearer(revoked_key),
            bearer("up_too_short"),
        ]

    @pytest.fixture
    def foreign_credentials(self) -> Sequence[Credentials]:
        return [
            bearer("not-an-api-key"),
            bearer("eyJhbGciOiJIUzI1NiJ9.e30.c2ln"),  # a JWT's shape: jwt is off here
            Credentials.from_headers({"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}),
        ]

    @pytest.fixture
    def revoke(self, registry: Registry) -> Callable[[Credentials], None]:
        keys = api_keys.service(registry)

        def revoke(credentials: Credentials) -> None:
            token = credentials.bearer or ""
            (record,) = [k for k in keys.list() if token.startswith(f"up_{k.lookup}")]
            keys.revoke(record.id)

        return revoke


# -- jwt --------------------------------------------------------------------------------


def token(secret: str = HS_SECRET, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "roles": ["editor", "not-a-role"],
        **overrides,
    }
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, "HS256")


JWT_SETTINGS = {
    "USERPLANE_JWT_ALGORITHM": "HS256",
    "USERPLANE_JWT_KEY": HS_SECRET,
    "USERPLANE_JWT_ISSUER": ISSUER,
    "USERPLANE_JWT_AUDIENCE": AUDIENCE,
    "USERPLANE_JWT_LEEWAY_SECONDS": "0",
}


class TestJwt(OverHttp, AuthPluginContract):
    plugin = bearer_jwt
    revocable = False
    not_revocable_reason = (
        "a JWT is good until its exp (plus USERPLANE_JWT_LEEWAY_SECONDS): the jwt plugin "
        "keeps no revocation list, so issue short-lived tokens (expiry: test_jwt_expiry_ends_it)"
    )

    @pytest.fixture
    def settings_variables(self) -> Mapping[str, str]:
        return JWT_SETTINGS

    @pytest.fixture
    def valid_credentials(self) -> ValidCredentials:
        # Roles userplane does not know are dropped, not refused.
        return ValidCredentials(bearer(token()), {"editor"})

    @pytest.fixture
    def wrong_credentials(self) -> Sequence[Credentials]:
        past = int(time.time()) - 600
        header, payload, _ = token().split(".")
        return [
            bearer(token(secrets.token_urlsafe(40))),  # signed by someone else
            bearer(token(exp=past, iat=past - 60)),  # expired
            bearer(token(iss="https://evil.example.test")),
            bearer(token(aud="another-api")),
            bearer(token(sub=None)),
            bearer(f"{header}.{payload}."),  # unsigned
            bearer("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."),  # alg: none
            bearer("not.a.jwt"),
        ]

    @pytest.fixture
    def foreign_credentials(self) -> Sequence[Credentials]:
        return [
            bearer("opaque-token-without-dots"),
            bearer(random_key()),  # an API key's shape: api_keys refuses it
            Credentials.from_headers({"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}),
        ]


def test_jwt_expiry_ends_it(tmp_path: Any) -> None:
    """What the jwt plugin has instead of revocation: a short-lived token stops at its exp."""
    settings = Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}", **JWT_SETTINGS}
    )
    with Registry(settings) as registry:
        now = int(time.time())
        short = bearer(token(iat=now, exp=now + 1))
        assert registry.auth.authenticate(short).id == "jwt:alice"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                registry.auth.authenticate(short)
            except Unauthenticated:
                return
            time.sleep(0.05)
        pytest.fail("a token past its exp was still accepted")


# -- PrincipalTokens: the HTTP test client's plugin ------------------------------------------------


class TestPrincipalTokens(AuthPluginContract):
    tokens = PrincipalTokens()
    plugin = tokens
    revocation_window = 0.0
    revocation_margin = 0.5
    principal = Principal(id="test:ann", kind="test", roles=frozenset({"viewer"}), name="Ann")

    @pytest.fixture
    def valid_credentials(self) -> ValidCredentials:
        return ValidCredentials(bearer(self.tokens.issue(self.principal)), {"viewer"})

    @pytest.fixture
    def wrong_credentials(self) -> Sequence[Credentials]:
        return [bearer("uptest_never-issued"), bearer("uptest_")]

    @pytest.fixture
    def foreign_credentials(self) -> Sequence[Credentials]:
        return [bearer(random_key()), bearer("opaque")]

    @pytest.fixture
    def revoke(self) -> Callable[[Credentials], None]:
        return lambda credentials: self.tokens.revoke(credentials.bearer or "")

    def test_client_acts_as_the_principal(self, registry: Registry) -> None:
        http = client(registry, principal=self.principal)
        assert http.simulate_get(USERS).status_code == 200
        assert http.simulate_post(USERS, json={"email": "a@example.org"}).status_code == 403
        editor = client(
            registry, principal=Principal(id="test:ed", kind="test", roles=frozenset({"editor"}))
        )
        assert editor.simulate_post(USERS, json={"email": "a@example.org"}).status_code == 201

    def test_client_refuses_unknown_roles(self, registry: Registry) -> None:
        with pytest.raises(ValueError, match="not defined"):
            client(
                registry, principal=Principal(id="t:x", kind="test", roles=frozenset({"superuser"}))
            )

    def test_without_the_plugin_there_is_no_principal_to_act_as(self, tmp_path: Any) -> None:
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/u.db"})
        with Registry(settings) as registry, pytest.raises(LookupError, match="PrincipalTokens"):
            client(registry, principal=self.principal)


# -- the contract itself catches what it promises to ---------------------------------------------


class Careless:
    """Reads the database on every request and chokes on non-ASCII: the contract must say so."""

    @hookimpl
    def userplane_authenticate(self, credentials: Credentials, registry: Registry) -> Any:
        token = credentials.bearer
        if token is None or not token.startswith("careless_"):
            return None
        token.encode("ascii")
        registry.storage.ping()
        return Principal(id="careless:1", kind="careless")


@pytest.fixture
def careless(tmp_path: Any) -> Iterator[tuple[AuthPluginContract, Registry, StatementCounter]]:
    contract, counter = AuthPluginContract(), StatementCounter()
    contract.plugin = Careless()  # type: ignore[misc]
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/u.db"})
    with Registry(settings, plugins=[contract.plugin, counter]) as registry:
        registry.migrate()
        yield contract, registry, counter


def test_the_contract_counts_round_trips(
    careless: tuple[AuthPluginContract, Registry, StatementCounter],
) -> None:
    contract, registry, counter = careless
    valid = ValidCredentials(bearer("careless_token"), ())
    with pytest.raises(pytest.fail.Exception, match="20 SQL statements in 20 authentications"):
        contract.test_no_database_round_trip_once_cached(registry, valid, counter)


def test_the_contract_finds_a_crash_on_hostile_input(
    careless: tuple[AuthPluginContract, Registry, StatementCounter],
) -> None:
    contract, registry, _ = careless
    valid = ValidCredentials(bearer("careless_token"), ())
    with pytest.raises(pytest.fail.Exception, match="UnicodeEncodeError"):
        contract.test_hostile_input_is_refused_or_passed_on(registry, valid, [], [])
