"""Console sessions: an opaque cookie, and a row that holds the credential sealed by it.

Signing in trades a credential (an API key, a JWT) for a session. The
browser keeps only a random 256-bit token (``HttpOnly``); the database keeps
only the token's SHA-256 and the credential sealed (Fernet: AES and an HMAC)
under a key derived from the token. So neither a stolen copy of the table nor
a server secret gives any credential back, no secret has to be configured or
shared between instances, and signing out (deleting the row) ends the session
on every instance at once. Each request re-authenticates the credential
exactly as the API would: a revoked key or an expired token ends the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from userplane.sql import SQLStorage, load_queries

_QUERIES = load_queries(__package__ or "userplane.plugins.console")
#: The length, in bytes, of a session's token (its cookie is this, base64url).
TOKEN_BYTES = 32
#: How far apart instances' clocks may be for a session to stay valid on all of them.
_SKEW_S = 300
#: The most characters of a credential signing in may store (JWTs can be long).
MAX_CREDENTIAL = 8192


def _decode(token: str) -> bytes | None:
    """The token's bytes, or ``None`` for anything that is not one of ours."""
    if len(token) != 43:  # 32 bytes in unpadded base64url
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=")
    except ValueError:
        return None
    # One spelling per token: no other text (spare bits set, "+" for "-") opens it.
    if len(raw) != TOKEN_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode():
        return None
    return raw


def _sealer(raw: bytes) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"userplane console session"
    ).derive(raw)
    return Fernet(base64.urlsafe_b64encode(key))


def session_id(raw: bytes) -> str:
    """The row id of the session whose token is ``raw``: its SHA-256, in hex."""
    return hashlib.sha256(raw).hexdigest()


def form_token(secret: str) -> str:
    """The CSRF token of forms in the session (or pre-session) whose cookie is ``secret``.

    An HMAC of the cookie, so a page can carry it while the cookie itself stays
    ``HttpOnly``; another site can neither read the page nor compute it.
    """
    return hmac.new(secret.encode(), b"userplane console form", hashlib.sha256).hexdigest()


def new_secret() -> str:
    """A fresh random token, as a cookie carries it."""
    return secrets.token_urlsafe(TOKEN_BYTES)


class Sessions:
    """Console sessions over a ``SQLStorage``. Methods raise what the storage raises."""

    def __init__(
        self, storage: SQLStorage, lifetime_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._storage = storage
        self._sql = {name: storage.dialect.compile(sql) for name, sql in _QUERIES.items()}
        self.lifetime_s = lifetime_s
        self._clock = clock

    def ping(self) -> None:
        """Prove the session table answers; ``Unavailable`` (e.g. not migrated) otherwise."""
        self._storage.fetch_all(self._sql["ping"], {})

    def start(self, credential: str) -> str:
        """A new session for ``credential``; its token, for the cookie.

        Sessions past their end are swept out here: signing in is rare enough
        to carry that, and no process has to run a timer for it.
        """
        token = new_secret()
        raw = _decode(token)
        assert raw is not None
        now = int(self._clock())
        sealed = _sealer(raw).encrypt_at_time(credential.encode(), now).decode()
        with self._storage.transaction():
            self._storage.execute(self._sql["prune_sessions"], {"now": now})
            self._storage.execute(
                self._sql["insert_session"],
                {
                    "id": session_id(raw),
                    "credential": sealed,
                    "created_at": now,
                    "expires_at": now + self.lifetime_s,
                },
            )
        return token

    def credential(self, token: str) -> str | None:
        """The credential of the live session whose token is ``token``; ``None`` if none is."""
        raw = _decode(token)
        if raw is None:
            return None
        now = int(self._clock())
        row = self._storage.fetch_one(self._sql["get_session"], {"id": session_id(raw), "now": now})
        if row is None:
            return None
        sealed, _expires = row
        sealer = _sealer(raw)
        try:
            # No time check by Fernet itself: it refuses a seal from more than 60 s
            # ahead, and instances' clocks may differ by more than that.
            opened = sealer.decrypt(str(sealed).encode())
            sealed_at = sealer.extract_timestamp(str(sealed).encode())
        except InvalidToken:
            return None
        # The lifetime bounds the seal too (with room for clock skew): a row whose
        # end was tampered with still does not outlive it.
        if now - sealed_at > self.lifetime_s + _SKEW_S:
            return None
        return opened.decode()

    def end(self, token: str) -> None:
        """End the session whose token is ``token`` (nothing if there is none)."""
        raw = _decode(token)
        if raw is not None:
            self._storage.execute(self._sql["delete_session"], {"id": session_id(raw)})
