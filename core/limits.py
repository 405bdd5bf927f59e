"""Rate limits as a plugin contract: classes of requests, policies, and what one check decided.

The core does not count requests itself. It asks the ``userplane_rate_limit``
hook, as the auth service does (``userplane.auth``): before a presented
credential is looked up (``AUTH_FAILURE``, without counting), after a failed
authentication (``AUTH_FAILURE``, counted) and for each authenticated request
(``READ`` or ``WRITE``). A plugin that implements the hook decides where the
counts live; the built-in ``rate_limits`` plugin keeps them in the storage,
so every instance enforces one limit.
"""

from __future__ import annotations

import math

import attrs

#: Requests that only read (GET, HEAD, and a route's own OPTIONS).
READ = "read"
#: Requests that change something (POST, PUT, PATCH, DELETE).
WRITE = "write"
#: Failed authentications, counted per client address and per claimed credential.
AUTH_FAILURE = "auth-failure"

#: The classes userplane itself checks; a plugin may check classes of its own.
CLASSES = (READ, WRITE, AUTH_FAILURE)


@attrs.frozen
class RateLimit:
    """A policy: at most ``limit`` requests of class ``name`` per ``window_s`` seconds.

    Counted per subject (a principal, a client address, a key id): every
    subject has a quota of its own.
    """

    #: Lowercase letters, digits and dashes: it is sent as a structured-field string.
    name: str = attrs.field(validator=attrs.validators.matches_re(r"[a-z][a-z0-9-]{0,63}"))
    limit: int = attrs.field(validator=attrs.validators.ge(1))
    window_s: float = attrs.field(validator=attrs.validators.gt(0))

    @property
    def interval_s(self) -> float:
        """The time one request's share of the quota takes to come back."""
        return self.window_s / self.limit

    def policy_header(self) -> str:
        """This policy as an item of ``RateLimit-Policy`` (draft-ietf-httpapi-ratelimit-headers)."""
        return f'"{self.name}";q={self.limit};w={math.ceil(self.window_s)}'


@attrs.frozen
class Quota:
    """What one check decided for one subject under one ``RateLimit``."""

    policy: RateLimit
    #: Whether the request may proceed.
    allowed: bool
    #: Requests the subject may still make now.
    remaining: int
    #: Seconds until the subject's quota is whole again.
    reset_s: float
    #: Seconds until one more request would be allowed (0 when ``allowed``).
    retry_after_s: float = 0.0

    def header(self) -> str:
        """This state as an item of the ``RateLimit`` header field."""
        return f'"{self.policy.name}";r={max(0, self.remaining)};t={math.ceil(self.reset_s)}'

    @property
    def retry_after(self) -> int:
        """``retry_after_s`` as whole seconds for ``Retry-After``: never 0 when refused."""
        return max(1, math.ceil(self.retry_after_s)) if not self.allowed else 0


@attrs.define
class RateLimitCounters:
    """What one process's rate limiter did, for metrics: statements, refusals, store failures.

    A limiter plugin registers one as a service (``registry.services``) and
    counts into it; the telemetry plugin exports it as metrics.
    """

    #: Statements sent to the store.
    store_checks: int = 0
    #: Requests refused (429).
    refused: int = 0
    #: Store statements that failed: the request was served unlimited.
    store_failures: int = 0
