"""The jwt plugin as a caller sees it: bearer JWTs through the HTTP API, and its settings.

Keys are generated here with ``cryptography`` and tokens signed with PyJWT, or
forged by hand where PyJWT would refuse to (``alg: none``, HS/RS key confusion).
Every registry is real and migrated; nothing below the HTTP surface is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import jwt
import pytest
from clients import new_key
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from falcon import testing

from userplane import Registry, Settings, hookimpl
from userplane.auth import Principal
from userplane.errors import ConfigurationError
from userplane.frontends.http import create_app
from userplane.settings import MASK

USERS = "/api/v1/users"
PROBLEM_JSON = "application/problem+json"
#: The one detail of every 401, whatever was wrong with the token.
REJECTED = "the credentials were not accepted"
UNAUTHENTICATED = "urn:userplane:problem:unauthenticated"

HS_SECRET = secrets.token_urlsafe(40)  # 54 bytes
OTHER_SECRET = secrets.token_urlsafe(40)
ISSUER = "https://idp.example.test/realms/main"
AUDIENCE = "userplane-api"

#: Marks a claim to leave out of ``claims()``.
DROP: Any = object()


# --------------------------------------------------------------------------- keys and tokens


@attrs.frozen
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey
    ec_first: ec.EllipticCurvePrivateKey
    ec_second: ec.EllipticCurvePrivateKey

    @property
    def rsa_public_pem(self) -> str:
        return public_pem(self.rsa)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Generated once per module: RSA generation is the slow part."""
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_first=ec.generate_private_key(ec.SECP256R1()),
        ec_second=ec.generate_private_key(ec.SECP256R1()),
    )


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claim set (sub, iat, exp, roles editor); ``DROP`` removes a claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 300, "roles": ["editor"]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def hs256(payload: Mapping[str, Any], secret: str = HS_SECRET, **headers: Any) -> str:
    return jwt.encode(dict(payload), secret, algorithm="HS256", headers=headers or None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: Mapping[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def forge_hs256(payload: Mapping[str, Any], secret: bytes) -> str:
    """An HS256 token signed by hand with any bytes as the HMAC secret (PyJWT refuses PEM)."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- servers


@attrs.frozen
class Server:
    registry: Registry
    client: testing.TestClient

    def list_users(self, token: str) -> testing.Result:
        return self.client.simulate_get(USERS, headers=bearer(token))

    def create_user(self, token: str, email: str = "new.user@example.com") -> testing.Result:
        return self.client.simulate_post(
            USERS, headers=bearer(token), json={"email": email, "full_name": "New User"}
        )


Serve = Callable[..., Server]


def hs_env(**extra: str) -> dict[str, str]:
    return {"USERPLANE_JWT_ALGORITHM": "HS256", "USERPLANE_JWT_KEY": HS_SECRET, **extra}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Build migrated registries (SQLite by default) with JWT settings; closes them after."""
    registries: list[Registry] = []

    def make(
        env: Mapping[str, str],
        *,
        database_url: str | None = None,
        plugins: Iterable[object] = (),
    ) -> Server:
        url = database_url or f"sqlite:///{tmp_path / f'jwt-{len(registries)}.db'}"
        settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": url, **env})
        registry = Registry(settings, plugins=plugins)
        registries.append(registry)
        registry.migrate()
        return Server(registry, testing.TestClient(create_app(registry)))

    yield make
    for registry in registries:
        registry.close()


def assert_problem(resp: testing.Result, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = json.loads(resp.text)
    assert body["status"] == status
    return body


def assert_rejected(resp: testing.Result) -> None:
    """A 401 problem, the Bearer invalid_token challenge, and the one shared body."""
    body = assert_problem(resp, 401)
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer "), challenge
    assert 'error="invalid_token"' in challenge, challenge
    assert {k: v for k, v in body.items() if k not in {"instance", "request_id"}} == {
        "type": UNAUTHENTICATED,
        "title": "Unauthenticated",
        "status": 401,
        "detail": REJECTED,
    }


def assert_accepted(resp: testing.Result, status: int = 200) -> None:
    assert resp.status_code == status, resp.text


class Recorder:
    """Records the principal of every user creation."""

    def __init__(self) -> None:
        self.created: list[tuple[Any, Principal | None]] = []

    @hookimpl
    def userplane_user_created(self, user: Any, principal: Principal | None) -> None:
        self.created.append((user, principal))


class AcceptAnything:
    """Answers every bearer token last, if no other plugin had an opinion."""

    @hookimpl(trylast=True)
    def userplane_authenticate(self, credentials: Any, registry: Any) -> Principal | None:
        if credentials.bearer is None:
            return None
        return Principal(id="fallback:any", kind="fallback", roles=frozenset({"viewer"}))


# --------------------------------------------------------------------------- accepted tokens


def test_hs256_token_creates_a_user_as_jwt_subject(serve: Serve, database_url: str) -> None:
    server = serve(hs_env(), database_url=database_url)
    recorder = Recorder()
    server.registry.pm.register(recorder)
    token = hs256(claims(sub="auth0|alice", roles=["editor"]))

    resp = server.create_user(token, "ada@example.com")

    assert_accepted(resp, 201)
    assert resp.json["email"] == "ada@example.com"
    assert len(recorder.created) == 1
    user, principal = recorder.created[0]
    assert str(user.id) == resp.json["id"]
    assert principal == Principal(
        id="jwt:auth0|alice", kind="jwt", roles=frozenset({"editor"}), name="auth0|alice"
    )
    assert_accepted(server.list_users(token))


def test_rs256_with_a_pem_public_key(serve: Serve, keys: Keys) -> None:
    server = serve({"USERPLANE_JWT_ALGORITHM": "RS256", "USERPLANE_JWT_KEY": keys.rsa_public_pem})
    assert_accepted(server.create_user(jwt.encode(claims(), keys.rsa, algorithm="RS256")), 201)
    assert_rejected(server.list_users(jwt.encode(claims(), keys.rsa_other, algorithm="RS256")))


def test_rs256_with_a_key_file(serve: Serve, keys: Keys, tmp_path: Path) -> None:
    key_file = tmp_path / "idp.pem"
    key_file.write_text(keys.rsa_public_pem, encoding="utf-8")
    server = serve({"USERPLANE_JWT_ALGORITHM": "RS256", "USERPLANE_JWT_KEY_FILE": str(key_file)})
    assert_accepted(server.create_user(jwt.encode(claims(), keys.rsa, algorithm="RS256")), 201)
    assert_rejected(server.list_users(jwt.encode(claims(), keys.rsa_other, algorithm="RS256")))


@pytest.fixture
def jwks_server(serve: Serve, keys: Keys, tmp_path: Path) -> Server:
    """ES256 from a local JWKS of two P-256 keys, ``first`` and ``second``."""
    jwks = {"keys": []}
    for kid, key in (("first", keys.ec_first), ("second", keys.ec_second)):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwks["keys"].append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks), encoding="utf-8")
    return serve({"USERPLANE_JWT_ALGORITHM": "ES256", "USERPLANE_JWT_JWKS_FILE": str(path)})


def test_es256_jwks_picks_the_key_by_kid(jwks_server: Server, keys: Keys) -> None:
    token = jwt.encode(claims(), keys.ec_second, algorithm="ES256", headers={"kid": "second"})
    assert_accepted(jwks_server.create_user(token), 201)
    # The kid names the key: the same signature under the other key's kid fails.
    mislabelled = jwt.encode(claims(), keys.ec_second, algorithm="ES256", headers={"kid": "first"})
    assert_rejected(jwks_server.list_users(mislabelled))


@pytest.mark.parametrize("signer", ["first", "second"])
def test_es256_jwks_unknown_kid_is_rejected(jwks_server: Server, keys: Keys, signer: str) -> None:
    # Signed with a key of the set, but named by a kid the set lacks: no fallback to any key.
    key = keys.ec_first if signer == "first" else keys.ec_second
    token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "third"})
    assert_rejected(jwks_server.list_users(token))
    assert_rejected(jwks_server.create_user(token))


# --------------------------------------------------------------------------- rejected tokens


ISSUER_AUDIENCE = {"iss": ISSUER, "aud": AUDIENCE}


def good_claims(**overrides: Any) -> dict[str, Any]:
    """Claims that pass ``strict_server``'s issuer and audience checks."""
    return claims(**{**ISSUER_AUDIENCE, **overrides})


def _tampered() -> str:
    header, _, signature = hs256(good_claims(roles=["viewer"])).split(".")
    return f"{header}.{segment(good_claims(roles=['admin']))}.{signature}"


def _alg_none() -> str:
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(good_claims())}."


#: Each is ``good_claims`` broken in one way.
REJECTIONS: dict[str, Callable[[], str]] = {
    "expired beyond leeway": lambda: hs256(good_claims(exp=int(time.time()) - 120)),
    "nbf in the future beyond leeway": lambda: hs256(good_claims(nbf=int(time.time()) + 120)),
    "iat missing": lambda: hs256(good_claims(iat=DROP)),
    "exp missing": lambda: hs256(good_claims(exp=DROP)),
    "sub missing": lambda: hs256(good_claims(sub=DROP)),
    "sub empty": lambda: hs256(good_claims(sub="")),
    "wrong issuer": lambda: hs256(good_claims(iss="https://evil.example.test")),
    "issuer missing": lambda: hs256(good_claims(iss=DROP)),
    "wrong audience": lambda: hs256(good_claims(aud="someone-else")),
    "audience missing": lambda: hs256(good_claims(aud=DROP)),
    "alg none": _alg_none,
    "payload tampered after signing": _tampered,
    "signed with a different secret": lambda: hs256(good_claims(), OTHER_SECRET),
    "not a JWT at all": lambda: "abc.def.ghi",
}


@pytest.fixture
def strict_server(serve: Serve) -> Server:
    """HS256 with issuer and audience checks."""
    return serve(hs_env(USERPLANE_JWT_ISSUER=ISSUER, USERPLANE_JWT_AUDIENCE=AUDIENCE))


def test_right_issuer_and_audience_are_accepted(strict_server: Server) -> None:
    assert_accepted(strict_server.create_user(hs256(good_claims())), 201)
    # An audience list that includes ours is fine too.
    assert_accepted(strict_server.list_users(hs256(good_claims(aud=["other", AUDIENCE]))))
    # The hand-rolled signer used for key confusion is right: its token is accepted.
    assert_accepted(strict_server.list_users(forge_hs256(good_claims(), HS_SECRET.encode())))


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_bad_tokens_get_one_and_the_same_401(strict_server: Server, case: str) -> None:
    token = REJECTIONS[case]()
    assert_rejected(strict_server.list_users(token))
    assert_rejected(strict_server.create_user(token))


def test_hs256_key_confusion_with_the_rsa_public_key_is_rejected(serve: Serve, keys: Keys) -> None:
    server = serve({"USERPLANE_JWT_ALGORITHM": "RS256", "USERPLANE_JWT_KEY": keys.rsa_public_pem})
    assert_accepted(server.list_users(jwt.encode(claims(), keys.rsa, algorithm="RS256")))
    forged = forge_hs256(claims(roles=["admin"]), keys.rsa_public_pem.encode())
    assert_rejected(server.list_users(forged))
    assert_rejected(server.create_user(forged))


def test_alg_none_is_rejected_even_without_issuer_checks(serve: Serve) -> None:
    server = serve(hs_env())
    assert_rejected(server.create_user(_alg_none()))


def test_tampered_token_was_valid_before_tampering(serve: Serve) -> None:
    server = serve(hs_env())
    token = hs256(claims(roles=["viewer"]))
    assert_accepted(server.list_users(token))
    header, _, signature = token.split(".")
    tampered = f"{header}.{segment(claims(roles=['admin']))}.{signature}"
    assert_rejected(server.create_user(tampered))


# --------------------------------------------------------------------------- leeway and audience


def test_leeway_lets_a_recently_expired_token_through(serve: Serve) -> None:
    now = int(time.time())
    token = hs256(claims(iat=now - 300, exp=now - 10))
    assert_accepted(serve(hs_env()).list_users(token))
    assert_rejected(serve(hs_env(USERPLANE_JWT_LEEWAY_SECONDS="0")).list_users(token))


def test_nbf_within_leeway_is_accepted(serve: Serve) -> None:
    token = hs256(claims(nbf=int(time.time()) + 10))
    assert_accepted(serve(hs_env()).list_users(token))


def test_without_a_configured_audience_a_token_aud_is_not_judged(serve: Serve) -> None:
    server = serve(hs_env())
    assert_accepted(server.create_user(hs256(claims(aud="some-other-api"))), 201)
    assert_accepted(server.list_users(hs256(claims(aud=["a", "b"]))))


# --------------------------------------------------------------------------- lifetime


def test_a_token_living_longer_than_the_maximum_is_refused(serve: Serve) -> None:
    now = int(time.time())
    server = serve(hs_env())  # the default: one day
    assert_accepted(server.list_users(hs256(claims(iat=now, exp=now + 86400))))
    # Valid now, signed by the right key, but good for a year: a standing credential.
    assert_rejected(server.list_users(hs256(claims(iat=now, exp=now + 365 * 86400))))
    assert_rejected(server.create_user(hs256(claims(iat=now - 60, exp=now + 86400))))


def test_the_maximum_lifetime_is_a_setting(serve: Serve) -> None:
    now = int(time.time())
    server = serve(hs_env(USERPLANE_JWT_MAX_LIFETIME_SECONDS="300"))
    assert_accepted(server.list_users(hs256(claims(iat=now, exp=now + 300))))
    assert_rejected(server.list_users(hs256(claims(iat=now, exp=now + 301))))
    assert_rejected(server.list_users(hs256(claims(iat=now - 200, exp=now + 200))))


@pytest.mark.parametrize(
    ("iat", "exp"),
    [(True, 10**10), (0.5, 10**10)],
    ids=["iat a bool", "a fractional iat, long ago"],
)
def test_odd_iat_and_exp_are_refused_not_crashed_on(serve: Serve, iat: Any, exp: Any) -> None:
    assert_rejected(serve(hs_env()).list_users(hs256(claims(iat=iat, exp=exp))))


# --------------------------------------------------------------------------- prod: aud and iss


def _prod_settings(tmp_path: Path, **extra: str) -> Settings:
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    return Settings.from_mapping(
        {"USERPLANE_DATABASE_URL": url, "USERPLANE_ENV": "prod", **hs_env(**extra)}
    )


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, ("USERPLANE_JWT_ISSUER", "USERPLANE_JWT_AUDIENCE")),
        ({"USERPLANE_JWT_ISSUER": ISSUER}, ("USERPLANE_JWT_AUDIENCE",)),
        ({"USERPLANE_JWT_AUDIENCE": AUDIENCE}, ("USERPLANE_JWT_ISSUER",)),
    ],
)
def test_prod_refuses_to_start_without_issuer_and_audience(
    tmp_path: Path, given: dict[str, str], missing: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigurationError) as refused, Registry(_prod_settings(tmp_path, **given)):
        pass
    message = str(refused.value)
    for name in missing:
        assert names_variable(message, name), message
    assert names_variable(message, "USERPLANE_JWT_ALLOW_ANY_AUDIENCE"), message
    assert HS_SECRET not in message


def test_prod_starts_with_issuer_and_audience(tmp_path: Path) -> None:
    settings = _prod_settings(
        tmp_path, USERPLANE_JWT_ISSUER=ISSUER, USERPLANE_JWT_AUDIENCE=AUDIENCE
    )
    with Registry(settings) as registry:
        registry.migrate()
        client = testing.TestClient(create_app(registry))
        assert_accepted(client.simulate_get(USERS, headers=bearer(hs256(good_claims()))))
        other = hs256(good_claims(aud="another-service"))
        assert_rejected(client.simulate_get(USERS, headers=bearer(other)))


def test_prod_without_a_jwt_key_needs_neither(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nokey.db'}"
    with Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url, "USERPLANE_ENV": "prod"})):
        pass


def test_the_waiver_starts_prod_and_warns_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _prod_settings(tmp_path, USERPLANE_JWT_ALLOW_ANY_AUDIENCE="true")
    with caplog.at_level(logging.WARNING, logger="userplane.jwt"), Registry(settings) as registry:
        registry.migrate()
        client = testing.TestClient(create_app(registry))
        # What was waived: a token issued for another service is accepted.
        elsewhere = hs256(claims(aud="another-service", iss="https://other.example.test"))
        assert_accepted(client.simulate_get(USERS, headers=bearer(elsewhere)))
        facts = registry.hooks.describe(settings, registry)
    [warning] = [r for r in caplog.records if r.name == "userplane.jwt"]
    assert warning.levelno == logging.WARNING
    assert "WAIVED" in warning.getMessage()
    assert "USERPLANE_JWT_ALLOW_ANY_AUDIENCE" in warning.detail  # type: ignore[attr-defined]
    assert "NOT checked" in facts["jwt"]


def test_dev_keeps_issuer_and_audience_optional(serve: Serve) -> None:
    # Development against a local identity provider: no refusal, no warning needed.
    assert_accepted(serve(hs_env()).list_users(hs256(claims())))


# --------------------------------------------------------------------------- roles


def test_roles_from_the_default_claim(serve: Serve) -> None:
    server = serve(hs_env())
    assert_accepted(server.create_user(hs256(claims(roles=["editor"]))), 201)
    # No roles: authenticated, allowed nothing.
    assert_problem(server.create_user(hs256(claims(roles=DROP)), "x@example.com"), 403)


def test_roles_from_a_dotted_claim(serve: Serve) -> None:
    token = hs256(claims(roles=["viewer"], realm_access={"roles": ["editor"]}))
    dotted = serve(hs_env(USERPLANE_JWT_ROLES_CLAIM="realm_access.roles"))
    assert_accepted(dotted.create_user(token), 201)
    # The same token under the default claim is only a viewer.
    default = serve(hs_env())
    assert_problem(default.create_user(token), 403)
    assert_accepted(default.list_users(token))


def test_a_roles_claim_given_as_a_string_is_refused_by_default(serve: Serve) -> None:
    # Split on spaces, a role named "Helpdesk admin" would grant admin: such a
    # token is invalid unless USERPLANE_JWT_ROLES_CLAIM_SEPARATOR says how to split.
    server = serve(hs_env())
    for roles in ("Helpdesk admin", "viewer editor", "admin", ""):
        assert_rejected(server.list_users(hs256(claims(roles=roles))))
        assert_rejected(server.create_user(hs256(claims(roles=roles))))
    # A list is what a roles claim is: its "Helpdesk admin" is one role, unknown here.
    listed = hs256(claims(roles=["Helpdesk admin", "viewer"]))
    assert_accepted(server.list_users(listed))
    assert_problem(server.create_user(listed), 403)


def test_a_string_roles_claim_split_as_configured(serve: Serve) -> None:
    spaced = serve(hs_env(USERPLANE_JWT_ROLES_CLAIM_SEPARATOR="space"))
    assert_accepted(spaced.create_user(hs256(claims(roles="viewer  editor"))), 201)
    commas = serve(hs_env(USERPLANE_JWT_ROLES_CLAIM_SEPARATOR=","))
    assert_accepted(commas.create_user(hs256(claims(roles="viewer, editor"))), 201)
    # Split on commas, "Helpdesk admin" stays one role (unknown): never admin.
    helpdesk = hs256(claims(roles="Helpdesk admin,viewer"))
    assert_accepted(commas.list_users(helpdesk))
    assert_problem(commas.create_user(helpdesk), 403)
    # A list is still a list, whatever the separator.
    assert_accepted(commas.create_user(hs256(claims(roles=["editor"])), "l@example.com"), 201)


def test_a_string_roles_claim_principal_has_exactly_the_parts(serve: Serve) -> None:
    server = serve(hs_env(USERPLANE_JWT_ROLES_CLAIM_SEPARATOR=","))
    recorder = Recorder()
    server.registry.pm.register(recorder)
    assert_accepted(server.create_user(hs256(claims(roles="editor,Helpdesk admin,,"))), 201)
    [(_, principal)] = recorder.created
    assert principal is not None
    assert principal.roles == frozenset({"editor"})


def test_unknown_roles_are_ignored(serve: Serve) -> None:
    server = serve(hs_env())
    body = assert_problem(server.list_users(hs256(claims(roles=["superuser"]))), 403)
    assert body["type"] == "urn:userplane:problem:forbidden"
    # Known roles next to unknown ones still count.
    assert_accepted(server.list_users(hs256(claims(roles=["superuser", "viewer"]))))


def test_viewer_can_list_but_not_create(serve: Serve) -> None:
    server = serve(hs_env())
    token = hs256(claims(roles=["viewer"]))
    assert_accepted(server.list_users(token))
    assert_problem(server.create_user(token), 403)


def test_the_principal_carries_only_known_roles(serve: Serve) -> None:
    server = serve(hs_env(USERPLANE_ROLES=json.dumps({"support": ["users:read"]})))
    recorder = Recorder()
    server.registry.pm.register(recorder)
    token = hs256(claims(sub="bob", roles=["editor", "superuser", "support", 7]))
    assert_accepted(server.create_user(token), 201)
    [(_, principal)] = recorder.created
    assert principal is not None
    assert principal.roles == frozenset({"editor", "support"})
    # A custom role from USERPLANE_ROLES is known, and grants what it says.
    support = hs256(claims(roles=["support"]))
    assert_accepted(server.list_users(support))
    assert_problem(server.create_user(support, "s@example.com"), 403)


# --------------------------------------------------------------------------- settings


def _jwks_with_an_rsa_key(keys: Keys, tmp_path: Path) -> str:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(keys.rsa.public_key(), as_dict=True)
    path = tmp_path / "rsa-jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "r1", "alg": "RS256"}]}), "utf-8")
    return str(path)


def _key_file(keys: Keys, tmp_path: Path) -> str:
    path = tmp_path / "key.pem"
    path.write_text(keys.rsa_public_pem, encoding="utf-8")
    return str(path)


BAD_SETTINGS: dict[str, tuple[Callable[[Keys, Path], dict[str, str]], tuple[str, ...]]] = {
    "key without algorithm": (
        lambda k, p: {"USERPLANE_JWT_KEY": HS_SECRET},
        ("USERPLANE_JWT_ALGORITHM",),
    ),
    "algorithm none": (
        lambda k, p: {"USERPLANE_JWT_ALGORITHM": "none", "USERPLANE_JWT_KEY": HS_SECRET},
        ("USERPLANE_JWT_ALGORITHM",),
    ),
    "algorithm none without a key": (
        lambda k, p: {"USERPLANE_JWT_ALGORITHM": "none"},
        ("USERPLANE_JWT_ALGORITHM",),
    ),
    "HS256 with a PEM key": (
        lambda k, p: {"USERPLANE_JWT_ALGORITHM": "HS256", "USERPLANE_JWT_KEY": k.rsa_public_pem},
        ("USERPLANE_JWT_KEY",),
    ),
    "HS256 secret shorter than 32 bytes": (
        lambda k, p: {"USERPLANE_JWT_ALGORITHM": "HS256", "USERPLANE_JWT_KEY": "x" * 31},
        ("USERPLANE_JWT_KEY",),
    ),
    "RS256 with a non-PEM key": (
        lambda k, p: {"USERPLANE_JWT_ALGORITHM": "RS256", "USERPLANE_JWT_KEY": HS_SECRET},
        ("USERPLANE_JWT_KEY",),
    ),
    "both KEY and KEY_FILE": (
        lambda k, p: {
            "USERPLANE_JWT_ALGORITHM": "RS256",
            "USERPLANE_JWT_KEY": k.rsa_public_pem,
            "USERPLANE_JWT_KEY_FILE": _key_file(k, p),
        },
        ("USERPLANE_JWT_KEY", "USERPLANE_JWT_KEY_FILE"),
    ),
    "unreadable KEY_FILE": (
        lambda k, p: {
            "USERPLANE_JWT_ALGORITHM": "RS256",
            "USERPLANE_JWT_KEY_FILE": str(p / "missing.pem"),
        },
        ("USERPLANE_JWT_KEY_FILE",),
    ),
    "JWKS without a key for the algorithm": (
        lambda k, p: {
            "USERPLANE_JWT_ALGORITHM": "ES256",
            "USERPLANE_JWT_JWKS_FILE": _jwks_with_an_rsa_key(k, p),
        },
        ("USERPLANE_JWT_JWKS_FILE",),
    ),
    "leeway 1000": (
        lambda k, p: {**hs_env(), "USERPLANE_JWT_LEEWAY_SECONDS": "1000"},
        ("USERPLANE_JWT_LEEWAY_SECONDS",),
    ),
    "max lifetime 0": (
        lambda k, p: {**hs_env(), "USERPLANE_JWT_MAX_LIFETIME_SECONDS": "0"},
        ("USERPLANE_JWT_MAX_LIFETIME_SECONDS",),
    ),
    "max lifetime not a number": (
        lambda k, p: {**hs_env(), "USERPLANE_JWT_MAX_LIFETIME_SECONDS": "a day"},
        ("USERPLANE_JWT_MAX_LIFETIME_SECONDS",),
    ),
    "roles separator a letter": (
        lambda k, p: {**hs_env(), "USERPLANE_JWT_ROLES_CLAIM_SEPARATOR": "x"},
        ("USERPLANE_JWT_ROLES_CLAIM_SEPARATOR",),
    ),
    "roles separator two characters": (
        lambda k, p: {**hs_env(), "USERPLANE_JWT_ROLES_CLAIM_SEPARATOR": ",;"},
        ("USERPLANE_JWT_ROLES_CLAIM_SEPARATOR",),
    ),
    "waiver not a bool": (
        lambda k, p: {**hs_env(), "USERPLANE_JWT_ALLOW_ANY_AUDIENCE": "maybe"},
        ("USERPLANE_JWT_ALLOW_ANY_AUDIENCE",),
    ),
}


def names_variable(message: str, name: str) -> bool:
    return re.search(rf"(?<![A-Z_]){re.escape(name)}(?![A-Z_])", message) is not None


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_fail_at_startup_naming_the_variable(
    case: str, keys: Keys, tmp_path: Path
) -> None:
    make_env, names = BAD_SETTINGS[case]
    env = make_env(keys, tmp_path)
    url = f"sqlite:///{tmp_path / 'startup.db'}"
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": url, **env})
    with pytest.raises(ConfigurationError) as excinfo, Registry(settings):
        pass
    message = str(excinfo.value)
    for name in names:
        assert names_variable(message, name), message
    secret = env.get("USERPLANE_JWT_KEY")
    if secret:
        assert secret not in message


def test_a_private_key_is_refused_at_startup(keys: Keys, tmp_path: Path) -> None:
    # Verifying needs only the public half: a signing key in settings is a mistake.
    env = {"USERPLANE_JWT_ALGORITHM": "RS256", "USERPLANE_JWT_KEY": private_pem(keys.rsa)}
    url = f"sqlite:///{tmp_path / 'private.db'}"
    settings = Settings.from_mapping({"USERPLANE_DATABASE_URL": url, **env})
    with pytest.raises(ConfigurationError) as refused:
        Registry(settings)
    assert names_variable(str(refused.value), "USERPLANE_JWT_KEY"), refused.value
    assert "private key" in str(refused.value)


def test_every_setting_is_declared() -> None:
    # `userplane config` lists what the section declares.
    from userplane.plugins import bearer_jwt

    assert bearer_jwt.SETTINGS.defaults() == {
        "USERPLANE_JWT_ALGORITHM": None,
        "USERPLANE_JWT_KEY": None,
        "USERPLANE_JWT_KEY_FILE": None,
        "USERPLANE_JWT_JWKS_FILE": None,
        "USERPLANE_JWT_JWKS_URL": None,
        "USERPLANE_JWT_DISCOVERY": False,
        "USERPLANE_JWT_JWKS_TIMEOUT_SECONDS": 5.0,
        "USERPLANE_JWT_JWKS_CACHE_SECONDS": 300,
        "USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS": 30,
        "USERPLANE_JWT_ISSUER": None,
        "USERPLANE_JWT_AUDIENCE": None,
        "USERPLANE_JWT_ALLOW_ANY_AUDIENCE": False,
        "USERPLANE_JWT_LEEWAY_SECONDS": 30,
        "USERPLANE_JWT_MAX_LIFETIME_SECONDS": 86400,
        "USERPLANE_JWT_ROLES_CLAIM": "roles",
        "USERPLANE_JWT_ROLES_CLAIM_SEPARATOR": None,
        "USERPLANE_JWT_USER_CLAIM": None,
        "USERPLANE_JWT_USER_MATCH": "email",
    }


def test_the_key_is_masked_in_redacted_settings(keys: Keys) -> None:
    settings = Settings.from_mapping(hs_env(USERPLANE_JWT_ISSUER=ISSUER))
    redacted = settings.redacted()
    assert redacted["USERPLANE_JWT_KEY"] == MASK
    assert redacted["USERPLANE_JWT_ISSUER"] == ISSUER
    assert HS_SECRET not in json.dumps(redacted, default=str)
    assert HS_SECRET not in repr(settings)
    pem = Settings.from_mapping(
        {"USERPLANE_JWT_ALGORITHM": "RS256", "USERPLANE_JWT_KEY": keys.rsa_public_pem}
    )
    assert pem.redacted()["USERPLANE_JWT_KEY"] == MASK


# --------------------------------------------------------------------------- living with others


def test_without_jwt_settings_the_plugin_has_no_opinion(serve: Serve) -> None:
    token = hs256(claims())
    plain = serve({})
    assert_rejected(plain.list_users(token))  # from the core: nobody recognised it
    # Proof that the jwt plugin passed rather than refused: a last-resort plugin answers.
    fallback = serve({}, plugins=[AcceptAnything()])
    assert_accepted(fallback.list_users(token))
    # Configured, the jwt plugin does judge the token: a bad one never reaches the fallback.
    judged = serve(hs_env(), plugins=[AcceptAnything()])
    assert_rejected(judged.list_users(hs256(claims(), OTHER_SECRET)))


def test_api_keys_still_work_next_to_jwts(serve: Serve, database_url: str) -> None:
    server = serve(hs_env(), database_url=database_url)
    key = new_key(server.registry, "editor")
    assert_accepted(server.create_user(key, "by.key@example.com"), 201)
    assert_accepted(server.create_user(hs256(claims()), "by.jwt@example.com"), 201)
    assert_rejected(server.list_users(key[:-1] + ("A" if key[-1] != "A" else "B")))
    assert_rejected(server.list_users(hs256(claims(), OTHER_SECRET)))
