"""Signing keys from a JWKS URL: fetched, cached, refreshed on an unknown ``kid``, rate-limited.

Why not PyJWT's ``jwt.PyJWKClient``: it has a timeout, a cache and a refresh
on an unknown ``kid`` with a cooldown, but (PyJWT 2.15)

- it holds one lock across the network call, so while the provider is slow
  every thread verifying a token waits, those whose key is in the set too;
- once its cache expires and the provider is down it raises: there is no
  last good key set to keep serving;
- only a *successful* fetch starts its cooldown, so while the provider is
  down each token with an unknown ``kid`` (or each request after expiry) makes
  a new request, one after another, each waiting for the timeout;
- its clock is ``time.monotonic`` itself, so tests would have to sleep.

So this module fetches with ``urllib.request`` (no HTTP library dependency:
one GET of a small JSON document) and parses with ``jwt.PyJWK``, keeping the
rules here: one fetch at a time, at most one attempt per refresh interval
whatever its outcome, the last good set served while the provider fails, a
warning once per failure streak, and an injectable clock.

PyJWT (and cryptography) are imported where keys are parsed, as in the
plugin's ``__init__``: a process that never sees a JWT does not pay for them.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from userplane.plugin import ConfigurationError, mask_url

_log = logging.getLogger("userplane.jwt")

#: The most a JWKS or discovery document may weigh: real ones are a few kilobytes.
MAX_BYTES = 1024 * 1024
#: How long a thread waits, beyond the fetch timeout, for another thread's fetch.
WAIT_MARGIN_SECONDS = 0.5
#: How long the last good key set outlives failed fetches: a day.
MAX_STALE_SECONDS = 86400.0
#: The OpenID Connect discovery document's path under the issuer.
DISCOVERY_PATH = "/.well-known/openid-configuration"

_CURVES = {"ES256": ("P-256",), "ES384": ("P-384",), "ES512": ("P-521",), "EdDSA": ("Ed25519",)}


# --------------------------------------------------------------------------- URLs


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address literal (never resolved)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, name: str) -> str:
    """``url`` if keys may be fetched from it: https, or http to a loopback host only."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ConfigurationError(f"{name}: not a URL: {mask_url(url)!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise ConfigurationError(f"{name}: must be an https:// URL, not {mask_url(url)!r}")
    if scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"{name}: must be https (plain http is allowed only to a loopback host such "
            f"as 127.0.0.1 or localhost), not {mask_url(url)!r}: keys fetched over http "
            "can be replaced on the way, and with them who may call this service"
        )
    return url.strip()


# --------------------------------------------------------------------------- keys


def _fits(jwk: Mapping[str, Any], algorithm: str) -> bool:
    """Whether ``jwk`` is a signature key for ``algorithm``: ``use``, ``alg``, ``kty``, ``crv``."""
    if jwk.get("use", "sig") != "sig":
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    if jwk.get("alg", algorithm) != algorithm:
        return False
    kty, crv = jwk.get("kty"), jwk.get("crv")
    family = algorithm[:2]
    if family in ("RS", "PS"):
        return kty == "RSA"
    if family == "HS":
        return kty == "oct"
    return kty == ("OKP" if algorithm == "EdDSA" else "EC") and crv in _CURVES[algorithm]


def usable_keys(data: Any, algorithm: str) -> dict[str, Any]:
    """``kid`` -> ``jwt.PyJWK`` for the keys of a JWKS that fit ``algorithm``; others ignored.

    A key without ``alg`` is taken for the pinned algorithm when its ``kty``
    (and ``crv``) fit it; one with another ``alg``, or a ``use`` other than
    ``sig``, is ignored, as is one PyJWT cannot load. A key without ``kid``
    is kept under ``""``. ``ValueError`` when ``data`` is not a JWKS at all.
    """
    import jwt

    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('not a JWKS: no "keys" list')
    found: dict[str, Any] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or not _fits(jwk, algorithm):
            continue
        kid = jwk.get("kid", "")
        if not isinstance(kid, str) or kid in found:
            continue
        try:
            found[kid] = jwt.PyJWK(jwk, algorithm)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
    return found


def pick(keys: Mapping[str, Any], kid: str | None) -> Any:
    """The key a token names, or the only key for a token naming none; else ``None``."""
    if kid:
        return keys.get(kid)
    if len(keys) == 1:
        return next(iter(keys.values()))
    return None


# --------------------------------------------------------------------------- fetching


class FetchError(Exception):
    """Keys could not be fetched; ``str()`` is the reason, safe to log."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: one could lead from https to http, or anywhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_json(url: str, timeout: float) -> tuple[Any, float | None]:
    """The JSON document at ``url`` and its ``Cache-Control`` max-age, or ``FetchError``."""
    handlers: list[Any] = [_NoRedirect()]
    if is_loopback(urlsplit(url).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy cannot reach our loopback
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked: https or http)
        url, headers={"Accept": "application/json", "User-Agent": "userplane-jwt"}
    )
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            chunks: list[bytes] = []
            size = 0
            # read1: what one receive brings. A plain read waits for 64 KiB, each receive
            # within the socket timeout: one byte at a time would stretch it without end.
            while chunk := response.read1(65536):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise FetchError(f"the answer is larger than {MAX_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunks.append(chunk)
            max_age = _max_age(response.headers.get("Cache-Control"))
    except HTTPError as exc:
        exc.close()
        moved = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
        raise FetchError(f"HTTP {exc.code}{moved}") from None
    except URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise FetchError(f"no answer within {timeout:g} s") from None
        raise FetchError(f"cannot connect: {exc.reason}") from None
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g} s") from None
    except (http.client.HTTPException, OSError) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}") from None
    try:
        return json.loads(b"".join(chunks)), max_age
    except (ValueError, UnicodeDecodeError):
        raise FetchError("the answer is not JSON") from None


def _max_age(header: str | None) -> float | None:
    """Seconds from ``Cache-Control`` (``no-store``/``no-cache`` are 0); ``None`` without one."""
    if not header:
        return None
    for directive in header.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            try:
                return max(0.0, float(int(value.strip().strip('"'))))
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------------- the key set


class RemoteKeySet:
    """The provider's keys for one pinned algorithm, fetched from ``url`` or by discovery.

    Nothing is fetched when built: the first ``get`` fetches. After that:

    - a set is fresh for ``cache_seconds``, or the provider's shorter
      ``Cache-Control`` max-age (not shorter than ``refresh_interval``);
    - a stale set, or a ``kid`` it lacks, makes a fetch; but fetches, failed
      or not, are at least ``refresh_interval`` seconds apart, so a flood of
      tokens with made-up ``kid``\\ s cannot make us hammer the provider;
    - one fetch at a time: meanwhile other threads use the current set, or,
      when it lacks their key, wait for that fetch (at most its timeout);
    - a failed fetch keeps the last good set, and logs one warning per streak
      of failures (with the reason; never a token), and one line on recovery;
      but a set last fetched ``MAX_STALE_SECONDS`` ago verifies nothing.

    ``clock`` (``time.monotonic``) may be replaced, by tests.
    """

    def __init__(
        self,
        algorithm: str,
        *,
        url: str | None = None,
        issuer: str | None = None,
        timeout: float = 5.0,
        cache_seconds: float = 300,
        refresh_interval: float = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (url is None) == (issuer is None):
            raise ValueError("give a JWKS url or an issuer to discover it from")
        self.algorithm = algorithm
        self.url = url
        self.issuer = issuer
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.refresh_interval = refresh_interval
        self.clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._keys: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._expires_at = 0.0
        self._last_attempt: float | None = None
        self._fetching = False
        self._stale_logged = False
        self._failure: str | None = None
        self._discovered: str | None = None
        #: Fetch attempts so far (successful or not).
        self.attempts = 0

    @property
    def source(self) -> str:
        """Where keys come from, masked, for logs and ``describe``."""
        if self.url is not None:
            return mask_url(self.url)
        return f"{mask_url((self.issuer or '').rstrip('/'))}{DISCOVERY_PATH}"

    def get(self, kid: str | None) -> Any:
        """The ``jwt.PyJWK`` for ``kid`` (``None``: the only key), fetching as the rules allow.

        ``None`` when there is no such key, now or after the fetch allowed.
        """
        with self._cond:
            now = self.clock()
            found = pick(self._usable(now), kid)
            if found is not None and now < self._expires_at:
                return found
            if self._fetching:
                if found is not None:
                    return found  # stale but good: the fetch under way refreshes it
                self._wait_for_fetch()
                return pick(self._usable(self.clock()), kid)
            if self._last_attempt is not None and now - self._last_attempt < self.refresh_interval:
                return found
            self._fetching = True
            self._last_attempt = now
            self.attempts += 1
        keys: dict[str, Any] | None = None
        max_age: float | None = None
        failure: str | None = "interrupted"
        try:
            keys, max_age = self._fetch()
            failure = None
        except FetchError as exc:
            failure = str(exc) or type(exc).__name__
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            # Whatever ends the fetch (a bug, an interrupt), the next may start.
            with self._cond:
                self._fetching = False
                self._cond.notify_all()
                if keys is not None:
                    self._store(keys, max_age)
                else:
                    self._failed(failure or "unknown")
        with self._cond:
            return pick(self._usable(self.clock()), kid)

    def _usable(self, now: float) -> dict[str, Any]:
        """The keys tokens may be verified with: none once the set is too old.

        The last good set outlives failed fetches (a provider briefly down),
        but not for ever: a key the provider withdrew must stop working even
        while whoever blocks the way to the provider keeps fetches failing.
        """
        if self._keys is None:
            return {}
        if now - self._fetched_at > MAX_STALE_SECONDS:
            if not self._stale_logged:
                # Said once, when it happens: a streak of failures warned at its start only.
                self._stale_logged = True
                _log.warning(
                    "JWT signing keys from %s were last fetched %.0f s ago, too long to trust "
                    "them: every JWT is rejected until a fetch succeeds",
                    self.source,
                    now - self._fetched_at,
                )
            return {}
        return self._keys

    def _wait_for_fetch(self) -> None:
        """Wait (holding ``_cond``) for the fetch under way, at most its timeout."""
        deadline = time.monotonic() + self.timeout * (2 if self.issuer else 1) + WAIT_MARGIN_SECONDS
        while self._fetching:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _store(self, keys: dict[str, Any], max_age: float | None) -> None:
        now = self.clock()
        lifetime = self.cache_seconds
        if max_age is not None:
            lifetime = min(self.cache_seconds, max(self.refresh_interval, max_age))
        self._keys, self._fetched_at, self._expires_at = keys, now, now + lifetime
        self._stale_logged = False
        if self._failure is not None:
            self._failure = None
            _log.info("JWT signing keys fetched again from %s (%d usable)", self.source, len(keys))

    def _failed(self, reason: str) -> None:
        first = self._failure is None
        self._failure = reason
        self._discovered = None  # discover again next time: the JWKS URL may have moved
        if not first:
            return
        age = self.clock() - self._fetched_at
        if self._keys is None:
            outcome = "no keys were ever fetched: every JWT is rejected until a fetch succeeds"
        elif age > MAX_STALE_SECONDS:
            outcome = (
                f"the keys fetched {age:.0f} s ago are too old to trust: every JWT is "
                "rejected until a fetch succeeds"
            )
        else:
            outcome = f"still using the {_count(self._keys)} fetched {age:.0f} s ago"
        _log.warning(
            "JWT signing keys could not be fetched from %s: %s; %s (next attempt in %g s at "
            "the earliest)",
            self.source,
            reason,
            outcome,
            self.refresh_interval,
        )

    def _fetch(self) -> tuple[dict[str, Any], float | None]:
        """Usable keys and the max-age, from the JWKS URL (discovered first if need be)."""
        data, max_age = fetch_json(self._jwks_url(), self.timeout)
        try:
            keys = usable_keys(data, self.algorithm)
        except ValueError as exc:
            raise FetchError(str(exc)) from None
        if not keys:
            raise FetchError(f"the JWKS has no usable {self.algorithm} signing key")
        return keys, max_age

    def _jwks_url(self) -> str:
        if self.url is not None:
            return self.url
        if self._discovered is None:
            issuer = self.issuer or ""
            document, _ = fetch_json(issuer.rstrip("/") + DISCOVERY_PATH, self.timeout)
            if not isinstance(document, dict):
                raise FetchError("the discovery document is not a JSON object")
            if document.get("issuer") != issuer:
                # OpenID Connect Discovery 1.0, 4.3: the issuer must be exactly the one asked.
                raise FetchError("the discovery document names another issuer")
            uri = document.get("jwks_uri")
            if not isinstance(uri, str):
                raise FetchError("the discovery document has no jwks_uri")
            try:
                self._discovered = check_url(uri, "jwks_uri")
            except ConfigurationError as exc:
                raise FetchError(str(exc)) from None
        return self._discovered

    def describe(self) -> str:
        """The set's state for an operator: keys held, their age, the last failure."""
        with self._cond:
            now = self.clock()
            failure = f"; the last fetch failed: {self._failure}" if self._failure else ""
            if self._keys is None:
                if self._last_attempt is None:
                    return "not fetched yet"
                return f"no keys yet, JWTs are rejected{failure}"
            age = now - self._fetched_at
            return f"{_count(self._keys)}, fetched {age:.0f} s ago{failure}"


def _count(keys: Mapping[str, Any]) -> str:
    return f"{len(keys)} key{'' if len(keys) == 1 else 's'}"
