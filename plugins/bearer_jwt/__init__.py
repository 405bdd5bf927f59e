"""The jwt plugin: bearer JWTs from an external identity provider, verified with PyJWT.

Off until a key is configured. The algorithm is pinned by settings and never
taken from a token, which rules out ``alg: none`` and HS/RS key confusion.

Settings (``USERPLANE_JWT_*``):

- ``ALGORITHM``: ``HS256``/``384``/``512``, ``RS…``, ``PS…``, ``ES…`` or ``EdDSA``;
- ``KEY`` (an HMAC secret or a PEM public key), or ``KEY_FILE`` (a PEM file),
  or ``JWKS_FILE`` (a local JSON Web Key Set, keys picked by ``kid``), or
  ``JWKS_URL`` (the provider's JWKS, https; fetched, cached and refreshed as
  ``keysets`` says), or ``DISCOVERY=true`` (the JWKS URL from
  ``<ISSUER>/.well-known/openid-configuration``): exactly one;
- ``JWKS_TIMEOUT_SECONDS`` (5), ``JWKS_CACHE_SECONDS`` (300) and
  ``JWKS_REFRESH_INTERVAL_SECONDS`` (30): for ``JWKS_URL`` and ``DISCOVERY``,
  how long a fetch may take, how long a fetched set is used, and how far apart
  fetches are at least (a token naming an unknown ``kid`` refreshes the set,
  no more often than that);
- ``ISSUER`` and ``AUDIENCE``: checked when set. In prod both are required
  (start-up fails naming them), unless ``ALLOW_ANY_AUDIENCE=true`` says, with a
  warning at every start, that any token the key signed may be used here, one
  issued for another service too;
- ``LEEWAY_SECONDS`` (default 30): clock skew allowed on ``exp``, ``nbf``, ``iat``;
- ``MAX_LIFETIME_SECONDS`` (default 86400): a token whose ``exp - iat`` is
  longer is refused, however far its ``exp``;
- ``ROLES_CLAIM`` (default ``roles``): a claim, dotted for nested ones
  (``realm_access.roles``), holding a list of role names;
- ``ROLES_CLAIM_SEPARATOR`` (unset): how to split a claim given as one string,
  ``space`` or one punctuation character (``,``). Unset, a string claim makes
  the token invalid: split on spaces, a role named "Helpdesk admin" would grant
  ``admin``;
- ``USER_CLAIM`` (unset): a claim (``email``, ``sub``, dotted for nested ones)
  naming the user a token acts as, and ``USER_MATCH`` (``email``, or ``id``)
  what it holds. The token then carries the roles of that user's groups
  too, and is refused (401) unless the user is live and active (and, by
  email, when the token says ``email_verified`` is false): a person deactivated or
  deleted (by SCIM, say) loses access at once.

``exp``, ``iat`` and ``sub`` are required. The principal is ``jwt:<sub>`` with
the roles from the claim that userplane knows; others are ignored.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from userplane.plugin import (
    ConfigurationError,
    Credentials,
    InvalidInput,
    NotFound,
    Principal,
    Settings,
    SettingsSection,
    Unauthenticated,
    hookimpl,
    mask_url,
    section,
    setting,
)

if TYPE_CHECKING:
    from userplane.plugin import Registry
    from userplane.plugins.bearer_jwt.keysets import RemoteKeySet

# PyJWT (and the cryptography it loads) is imported where a key or token is
# handled, not here: every userplane process loads this plugin, and one that
# never sees a JWT (the CLI, --help) must not pay for it. So is ``keysets``
# (urllib.request, http.client, ssl): it is loaded where a key set is built.

_log = logging.getLogger("userplane.jwt")

REJECTED = "the credentials were not accepted"
ALGORITHMS = frozenset(
    {
        *(f"{family}{bits}" for family in ("HS", "RS", "PS", "ES") for bits in (256, 384, 512)),
        "EdDSA",
    }
)


def _leeway(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 300:
        raise ValueError("USERPLANE_JWT_LEEWAY_SECONDS: must be between 0 and 300")


def _max_lifetime(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError("USERPLANE_JWT_MAX_LIFETIME_SECONDS: must be at least 1")


def _timeout(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 60):
        raise ValueError("USERPLANE_JWT_JWKS_TIMEOUT_SECONDS: must be more than 0 and at most 60")


def _cache(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 86400:
        raise ValueError("USERPLANE_JWT_JWKS_CACHE_SECONDS: must be between 1 and 86400")


def _refresh(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 3600:
        raise ValueError("USERPLANE_JWT_JWKS_REFRESH_INTERVAL_SECONDS: must be between 1 and 3600")


#: ``USERPLANE_JWT_ROLES_CLAIM_SEPARATOR``'s word for any run of whitespace.
SPACE = "space"


def _separator(_: Any, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None or value == SPACE:
        return
    if len(value) != 1 or value.isalnum() or not value.isprintable() or value.isspace():
        raise ValueError(
            f"USERPLANE_JWT_ROLES_CLAIM_SEPARATOR: {SPACE!r} or one punctuation character "
            f"such as ',', not {value!r}"
        )


def _user_match(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("email", "id"):
        raise ValueError("USERPLANE_JWT_USER_MATCH: must be email or id")


@attrs.frozen
class JwtSettings:
    """This plugin's settings, from ``USERPLANE_JWT_*``."""

    algorithm: str | None = None
    key: str | None = setting(default=None, secret=True, repr=False)
    key_file: str | None = None
    jwks_file: str | None = None
    #: The provider's JWKS, fetched over https (http only to a loopback host).
    jwks_url: str | None = None
    #: Find the JWKS URL in ``<ISSUER>/.well-known/openid-configuration``.
    discovery: bool = False
    #: How long one fetch of the JWKS (or discovery document) may take.
    jwks_timeout_seconds: float = attrs.field(default=5.0, validator=_timeout)
    #: How long a fetched JWKS is used before it is fetched again.
    jwks_cache_seconds: int = attrs.field(default=300, validator=_cache)
    #: The least time between two fetches, whatever made them (an unknown ``kid``, a failure).
    jwks_refresh_interval_seconds: int = attrs.field(default=30, validator=_refresh)
    issuer: str | None = None
    audience: str | None = None
    #: In prod, accept tokens without checking whom they were issued for or by.
    allow_any_audience: bool = False
    leeway_seconds: int = attrs.field(default=30, validator=_leeway)
    #: The longest ``exp - iat`` accepted, in seconds.
    max_lifetime_seconds: int = attrs.field(default=86400, validator=_max_lifetime)
    roles_claim: str = "roles"
    #: How a roles claim given as one string is split; unset, such a token is refused.
    roles_claim_separator: str | None = attrs.field(default=None, validator=_separator)
    #: A claim naming the user a token acts as (its id or email): the token then also
    #: carries the roles of that user's groups, and is refused unless the user is live
    #: and active.
    user_claim: str | None = None
    #: What the user claim holds: ``email`` (looked up by address) or ``id`` (a user id).
    user_match: str = attrs.field(default="email", validator=_user_match)

    @property
    def configured(self) -> bool:
        """Whether any key material is set: the plugin is on."""
        return any((self.key, self.key_file, self.jwks_file, self.jwks_url, self.discovery))

    @property
    def remote(self) -> bool:
        """Whether keys are fetched from the provider: ``JWKS_URL`` or ``DISCOVERY``."""
        return bool(self.jwks_url or self.discovery)


def _read(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read {path}: {exc.strerror}") from None


class Verifier:
    """Checks tokens against one configuration."""

    def __init__(self, cfg: JwtSettings) -> None:
        if cfg.algorithm not in ALGORITHMS:
            raise ConfigurationError(
                "USERPLANE_JWT_ALGORITHM: must be one of "
                f"{', '.join(sorted(ALGORITHMS))} when a JWT key is set"
            )
        sources = (cfg.key, cfg.key_file, cfg.jwks_file, cfg.jwks_url, cfg.discovery)
        if sum(bool(v) for v in sources) != 1:
            raise ConfigurationError(
                "USERPLANE_JWT_KEY, USERPLANE_JWT_KEY_FILE, USERPLANE_JWT_JWKS_FILE, "
                "USERPLANE_JWT_JWKS_URL, USERPLANE_JWT_DISCOVERY: set exactly one"
            )
        self.cfg = cfg
        self.algorithm: str = cfg.algorithm
        self._key: Any = None
        self._jwks: dict[str, Any] = {}
        #: The provider's keys, with ``JWKS_URL`` or ``DISCOVERY``; fetched on first use.
        self.remote: RemoteKeySet | None = None
        if cfg.remote:
            self.remote = _remote(cfg, self.algorithm)
            return
        import jwt

        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        if cfg.jwks_file:
            self._jwks = self._load_jwks(cfg.jwks_file)
            return
        name = "USERPLANE_JWT_KEY" if cfg.key else "USERPLANE_JWT_KEY_FILE"
        text = cfg.key or _read(cfg.key_file or "", name)
        symmetric = self.algorithm.startswith("HS")
        looks_pem = "-----BEGIN" in text
        if symmetric and looks_pem:
            # PyJWT refuses this too; say it at start-up, naming the setting.
            raise ConfigurationError(
                f"{name}: {self.algorithm} needs a shared secret, not a PEM key"
            )
        if symmetric and len(text.encode()) < 32:
            raise ConfigurationError(
                f"{name}: an {self.algorithm} secret must be at least 32 bytes"
            )
        try:
            self._key = algorithm.prepare_key(text)
        except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
            raise ConfigurationError(f"{name}: not a key for {self.algorithm} ({exc})") from None
        if hasattr(self._key, "private_bytes"):
            # Verifying needs only the public half; a signing key has no business here.
            raise ConfigurationError(
                f"{name}: this is a private key; give the identity provider's public key"
            )

    def _load_jwks(self, path: str) -> dict[str, Any]:
        import jwt

        from userplane.plugins.bearer_jwt.keysets import usable_keys

        name = "USERPLANE_JWT_JWKS_FILE"
        try:
            usable = usable_keys(json.loads(_read(path, name)), self.algorithm)
        except (jwt.PyJWTError, ValueError) as exc:
            raise ConfigurationError(f"{name}: not a usable JWKS ({exc})") from None
        if not usable:
            raise ConfigurationError(f"{name}: no key for {self.algorithm}")
        return usable

    def _key_for(self, token: str) -> Any:
        if not self._jwks and self.remote is None:
            return self._key
        import jwt

        kid = jwt.get_unverified_header(token).get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated(REJECTED)
        if self.remote is not None:
            # Without a kid, only a set of one key answers: no guessing among several.
            found = self.remote.get(kid or None)
        else:
            found = self._jwks.get(kid) if kid else next(iter(self._jwks.values()))
        if found is None:
            raise Unauthenticated(REJECTED)
        return found

    def verify(
        self,
        token: str,
        known_roles: Any,
        find_user: Callable[[str], uuid.UUID | None] | None = None,
    ) -> Principal:
        """The token's principal, or ``Unauthenticated`` with one message for every failure.

        With ``USER_CLAIM`` set, ``find_user`` turns the claim's value into the
        id of the live, active user the token acts as (``None``: no such user,
        and the token is refused); authentication then adds the roles of that
        user's groups.
        """
        import jwt

        cfg = self.cfg
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=[self.algorithm],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_seconds,
                options={
                    "require": ["exp", "iat", "sub"],
                    # Without a configured audience, a token's ``aud`` is not ours to judge.
                    "verify_aud": cfg.audience is not None,
                },
            )
        except (jwt.PyJWTError, UnicodeError):
            # UnicodeError: text no token can hold (a lone surrogate from an embedder).
            raise Unauthenticated(REJECTED) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated(REJECTED)
        if not _lifetime_within(claims, cfg.max_lifetime_seconds):
            raise Unauthenticated(REJECTED)
        found = _roles(claims, cfg.roles_claim, cfg.roles_claim_separator)
        if found is None:
            raise Unauthenticated(REJECTED)
        roles = frozenset(r for r in found if r in known_roles)
        user_id = None
        if cfg.user_claim and find_user is not None:
            value = _claim(claims, cfg.user_claim)
            # An address the provider says it has not verified names nobody: anyone may
            # have typed it into their profile there.
            unverified = cfg.user_match == "email" and claims.get("email_verified") in (
                False,
                "false",
            )
            user_id = None
            if isinstance(value, str) and value and not unverified:
                user_id = find_user(value)
            if user_id is None:
                raise Unauthenticated(REJECTED)
        return Principal(
            id=f"jwt:{subject}", kind="jwt", roles=roles, name=subject, user_id=user_id
        )


def _remote(cfg: JwtSettings, algorithm: str) -> RemoteKeySet:
    """The key set for ``JWKS_URL`` or ``DISCOVERY``, settings checked; nothing fetched yet."""
    from userplane.plugins.bearer_jwt.keysets import RemoteKeySet, check_url

    name = "USERPLANE_JWT_JWKS_URL" if cfg.jwks_url else "USERPLANE_JWT_DISCOVERY"
    if algorithm.startswith("HS"):
        raise ConfigurationError(
            f"{name}: {algorithm} keys are shared secrets, which no provider publishes; "
            "use the provider's signature algorithm (RS256, ES256, …)"
        )
    url = issuer = None
    if cfg.jwks_url:
        url = check_url(cfg.jwks_url, name)
    else:
        if not cfg.issuer:
            raise ConfigurationError(
                f"{name}: needs USERPLANE_JWT_ISSUER, whose "
                "/.well-known/openid-configuration names the JWKS URL"
            )
        issuer = cfg.issuer
        check_url(issuer, "USERPLANE_JWT_ISSUER")
    return RemoteKeySet(
        algorithm,
        url=url,
        issuer=issuer,
        timeout=cfg.jwks_timeout_seconds,
        cache_seconds=cfg.jwks_cache_seconds,
        refresh_interval=cfg.jwks_refresh_interval_seconds,
    )


def _lifetime_within(claims: dict[str, Any], most: int) -> bool:
    """Whether the token was issued for at most ``most`` seconds (``exp - iat``).

    A long-lived token is a standing credential: leaked once, it works until its
    ``exp``, and this plugin keeps no revocation list. PyJWT has checked both
    claims are there and numeric; a bool or anything else is refused all the same.
    """
    exp, iat = claims.get("exp"), claims.get("iat")
    if isinstance(exp, bool) or isinstance(iat, bool):
        return False
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        return False
    return exp - iat <= most


def _claim(claims: dict[str, Any], path: str) -> Any:
    """The claim at ``path``, dotted for nested claims (``realm_access.roles``); ``None``."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _roles(claims: dict[str, Any], path: str, separator: str | None) -> list[str] | None:
    """The role names in the claim at ``path``; ``None`` when it holds a string it may not split.

    A string is split only as ``separator`` says: split on spaces by default, a
    role named "Helpdesk admin" (a display name, say) would grant ``admin``.
    """
    value = _claim(claims, path)
    if isinstance(value, str):
        if separator is None:
            return None
        parts = value.split() if separator == SPACE else value.split(separator)
        return [p.strip() for p in parts if p.strip()]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


@attrs.frozen
class JwtVerifier:
    """This plugin's state in one registry: the verifier, or ``None`` while no key is set."""

    verifier: Verifier | None


SETTINGS = SettingsSection("JWT_", JwtSettings)


@hookimpl
def userplane_settings_sections() -> SettingsSection:
    """``USERPLANE_JWT_*``."""
    return SETTINGS


def _check_audience(cfg: JwtSettings, settings: Settings) -> None:
    """In prod, tokens must be checked for whom they were issued, or the check waived aloud."""
    if settings.env != "prod" or not cfg.configured or cfg.allow_any_audience:
        return
    missing = [
        name
        for name, value in (
            ("USERPLANE_JWT_ISSUER", cfg.issuer),
            ("USERPLANE_JWT_AUDIENCE", cfg.audience),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            f"{' and '.join(missing)}: required when USERPLANE_ENV=prod and a JWT key is set: "
            "without them any token the key signed is accepted, one issued for another "
            "service too (set USERPLANE_JWT_ALLOW_ANY_AUDIENCE=true to accept that)"
        )


@hookimpl
def userplane_register_services(registry: Registry) -> None:
    """The verifier for this registry's settings, built on first use."""
    cfg = section(JwtSettings, registry.settings, "JWT_")
    if cfg.configured and cfg.allow_any_audience and not (cfg.issuer and cfg.audience):
        # Here, not at start-up: the logging plugin has configured logging by now.
        _log.warning(
            "JWT audience and issuer checks are WAIVED: any token the identity provider "
            "signed is accepted, one issued for another service too",
            extra={
                "detail": "USERPLANE_JWT_ALLOW_ANY_AUDIENCE=true; set USERPLANE_JWT_ISSUER "
                "and USERPLANE_JWT_AUDIENCE instead"
            },
        )

    def build() -> JwtVerifier:
        cfg = section(JwtSettings, registry.settings, "JWT_")
        return JwtVerifier(Verifier(cfg) if cfg.configured else None)

    registry.services.register(JwtVerifier, build, name="jwt")


@hookimpl
def userplane_startup(settings: Settings) -> None:
    """Check the settings and keys at start-up, not on the first request."""
    cfg = section(JwtSettings, settings, "JWT_")
    if cfg.configured or cfg.algorithm:
        Verifier(cfg)
    _check_audience(cfg, settings)


@hookimpl
def userplane_authenticate(credentials: Credentials, registry: Registry) -> Principal | None:
    """Bearer tokens shaped like a JWT are ours, once a key is configured."""
    token = credentials.bearer
    if token is None or token.count(".") != 2:
        return None
    verifier = registry.services.get(JwtVerifier).verifier
    if verifier is None:
        return None
    match = verifier.cfg.user_match
    return verifier.verify(
        token, registry.auth.roles, functools.partial(_live_user, registry, match)
    )


def _live_user(registry: Registry, match: str, value: str) -> uuid.UUID | None:
    """The id of the live, active user ``value`` names, by ``match`` only; else ``None``.

    By the kind the settings say, never guessed from the value: with ``email``,
    a claim holding another user's id must not act as that user.
    """
    try:
        if match == "id":
            user = registry.users.get(uuid.UUID(value))
        else:
            if "@" not in value:
                return None
            user = registry.users.get_by_email(value)
    except (NotFound, InvalidInput, ValueError):
        return None
    return user.id if user.is_active else None


@hookimpl
def userplane_auth_challenges(settings: Settings) -> str | None:
    """Tokens are sent as bearer tokens (RFC 6750), once a key is configured."""
    return 'Bearer realm="userplane"' if section(JwtSettings, settings, "JWT_").configured else None


@hookimpl
def userplane_describe(settings: Settings, registry: Registry | None) -> dict[str, str]:
    """Whether JWTs are accepted, from whom, and where their keys come from."""
    cfg = section(JwtSettings, settings, "JWT_")
    if not cfg.configured:
        return {}
    issuer = f" from {mask_url(cfg.issuer)}" if cfg.issuer else ""
    waived = cfg.allow_any_audience and not (cfg.issuer and cfg.audience)
    checks = ", audience and issuer NOT checked" if waived else ""
    keys = ""
    if cfg.jwks_url:
        keys = f", keys from {mask_url(cfg.jwks_url)}"
    elif cfg.discovery and cfg.issuer:
        keys = f", keys from {mask_url(cfg.issuer.rstrip('/'))}/.well-known/openid-configuration"
    if cfg.remote and registry is not None:
        verifier = registry.services.get(JwtVerifier).verifier
        if verifier is not None and verifier.remote is not None:
            keys += f" ({verifier.remote.describe()})"
    return {"jwt": f"{cfg.algorithm} bearer tokens{issuer}{keys}{checks}"}
