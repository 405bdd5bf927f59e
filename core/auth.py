"""Who is calling and what they may do: principals, credentials, actions, roles, decisions.

Authentication and authorization are plugin contracts (``userplane_authenticate``
and ``userplane_authorize``); this module holds the frontend-agnostic pieces and
``AuthService``, which asks the plugins and applies the rules:

- the first plugin that recognises the credentials names the ``Principal``, or
  raises ``Unauthenticated`` when they are its kind and wrong;
- for authorization, any deny wins, and without an allow the answer is no.
  The built-in ``roles`` plugin allows what the principal's roles grant.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import json
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from userplane.errors import Forbidden, RateLimited, Unauthenticated
from userplane.limits import AUTH_FAILURE
from userplane.proxies import ClientCertificate

if TYPE_CHECKING:
    from userplane.limits import Quota
    from userplane.registry import Registry
    from userplane.settings import Settings

# The actions userplane's own operations need. Plugins may define more.
USERS_READ = "users:read"
USERS_READ_DELETED = "users:read-deleted"
USERS_WRITE = "users:write"
USERS_DELETE = "users:delete"
USERS_RESTORE = "users:restore"
USERS_PURGE = "users:purge"
#: Reading every user at once (``GET /api/v1/users/export``): bulk personal data.
USERS_EXPORT = "users:export"
KEYS_MANAGE = "keys:manage"
#: Reading groups and their members.
GROUPS_READ = "groups:read"
#: Creating, renaming and deleting groups, and changing their members and roles.
GROUPS_WRITE = "groups:write"

ACTIONS = frozenset(
    {
        USERS_READ,
        USERS_READ_DELETED,
        USERS_WRITE,
        USERS_DELETE,
        USERS_RESTORE,
        USERS_PURGE,
        USERS_EXPORT,
        KEYS_MANAGE,
        GROUPS_READ,
        GROUPS_WRITE,
    }
)

#: What a role grants when it grants every action (the built-in ``admin``).
EVERY_ACTION = "*"


def beyond(held: Iterable[str], role: str, roles: Mapping[str, Collection[str]]) -> frozenset[str]:
    """The actions ``role`` grants that the roles ``held`` do not; empty when they grant all.

    A role granting every action (``*``) is covered only by a held role that
    grants every action too. A role ``roles`` does not define grants nothing,
    so any holder covers it.
    """
    granted: set[str] = set()
    for name in held:
        granted.update(roles.get(name, ()))
    if EVERY_ACTION in granted:
        return frozenset()
    return frozenset(roles.get(role, ())) - granted


def check_may_grant(
    by: Principal | None,
    granted: Iterable[str],
    roles: Mapping[str, Collection[str]],
    doing: str,
) -> None:
    """``Forbidden`` unless ``by``'s roles grant every action of each role in ``granted``.

    The rule against privilege escalation: a principal may hand out (a key
    with a role, a group granting roles, a member added to such a group) or
    take away only what its own roles grant. ``by=None`` (code embedding the
    core) is not checked. ``doing`` names the act, for the message:
    ``"create a key with role"`` reads "may not create a key with role 'admin'".
    """
    if by is None:
        return
    for role in sorted(granted):
        missing = beyond(by.roles, role, roles)
        if missing:
            what = "every action" if EVERY_ACTION in missing else ", ".join(sorted(missing))
            raise Forbidden(
                f"this principal may not {doing} {role!r}: that role grants "
                f"{what}, beyond what this principal's own roles grant"
            )


def plugin_role(settings: Settings, name: str, actions: Iterable[str]) -> dict[str, frozenset[str]]:
    """A plugin's role ``name`` granting ``actions``, for ``userplane_roles``.

    None (``{}``) when the operator defines a role of that name in
    ``USERPLANE_ROLES`` (one made before the plugin existed, say): theirs
    stands, rather than the service refusing to start over two definitions.
    A ``USERPLANE_ROLES`` that is no JSON object is the roles plugin's to name.
    """
    custom = settings.extra.get("USERPLANE_ROLES")
    try:
        defined = json.loads(custom) if isinstance(custom, str) else None
    except ValueError:
        defined = None
    if isinstance(defined, dict) and name in defined:
        return {}
    return {name: frozenset(actions)}


#: The namespaces of userplane's own actions: a plugin's actions live in namespaces of
#: its own ("reports:read"), so a role naming an unknown action in these is a typo.
NAMESPACES = frozenset(a.partition(":")[0] for a in ACTIONS)


@attrs.frozen
class Principal:
    """Who is acting: an API key, a token's subject, the local administrator."""

    #: Stable and unique across kinds: ``"key:<uuid>"``, ``"jwt:<sub>"``, ``"local:<user>"``.
    id: str
    #: What authenticated it: ``"api-key"``, ``"jwt"``, ``"local"``, or a plugin's own.
    kind: str
    roles: frozenset[str] = frozenset()
    #: A display name for logs (a key's name), when there is one.
    name: str | None = None
    #: The user this principal acts as, when its plugin links one (a token's subject):
    #: authentication then adds the roles of that user's groups to ``roles``.
    user_id: uuid.UUID | None = None


@attrs.frozen
class Credentials:
    """What a caller presented, and where from, independent of the frontend.

    ``scheme`` and ``value`` come from an ``Authorization: <scheme> <value>``
    header (the scheme lowercased, the value as sent); ``headers`` holds every
    request header by lowercased name (it may be a lazy view). ``peer_address``
    is the direct peer; ``client_address`` the client as resolved through
    ``USERPLANE_TRUSTED_PROXIES`` (``userplane.proxies``), the peer itself when
    it is no trusted proxy. ``client_certificate`` is the TLS client
    certificate a trusted proxy forwarded, if any.
    """

    scheme: str | None = None
    value: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    client_address: str | None = None
    peer_address: str | None = None
    client_certificate: ClientCertificate | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], **context: Any) -> Credentials:
        """Credentials from request headers (any case); ``context`` sets the address fields."""
        lowered = {k.lower(): v for k, v in headers.items()}
        return cls.from_authorization(lowered.get("authorization"), lowered, **context)

    @classmethod
    def from_authorization(
        cls, authorization: str | None, headers: Mapping[str, str], **context: Any
    ) -> Credentials:
        """Credentials from the ``Authorization`` header and every header by lowercased name.

        For frontends that can read one header cheaply: ``headers`` may be a
        lazy view, so a request pays for the rest only if a plugin reads them.
        """
        scheme, value = None, None
        authorization = (authorization or "").strip()
        if authorization:
            scheme, _, value = authorization.partition(" ")
            scheme, value = scheme.lower(), value.strip() or None
        return cls(scheme=scheme, value=value, headers=headers, **context)

    def header(self, name: str) -> str | None:
        """The request header ``name`` in any letter case, or ``None``."""
        value = self.headers.get(name.lower())
        if value is None and name.lower() != name:
            value = self.headers.get(name)
        return value

    @property
    def token(self) -> str | None:
        """The ``Authorization`` value (an alias of ``value``)."""
        return self.value

    @property
    def bearer(self) -> str | None:
        """The bearer token, if that is what was presented."""
        return self.value if self.scheme == "bearer" else None

    @property
    def present(self) -> bool:
        """Whether any ``Authorization`` credentials were presented."""
        return self.scheme is not None


def local_principal(user: str) -> Principal:
    """The principal of a local administrator (the CLI).

    Whoever can run the CLI on the host can read its database settings, so
    they administer the service already; the CLI acts as ``admin``.
    """
    return Principal(id=f"local:{user}", kind="local", roles=frozenset({"admin"}), name=user)


#: Every caller when ``USERPLANE_AUTH=disabled`` (local development only).
DEVELOPMENT_PRINCIPAL = Principal(
    id="dev:anonymous", kind="development", roles=frozenset({"admin"}), name="auth disabled"
)

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "userplane_principal", default=None
)


def current_principal() -> Principal | None:
    """The principal the current request or command acts as, if a frontend set one."""
    return _current.get()


@contextlib.contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Run the block as ``principal`` (the user-event hooks receive it)."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    """Set the current principal; pass the token to ``reset_principal`` when done."""
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    """Undo ``set_principal``."""
    _current.reset(token)


def _network(address: str | None) -> str:
    """What an address is counted as: itself, or its /64 for IPv6.

    One IPv6 host commonly has a whole /64 to choose addresses from, so
    counting single addresses would let it escape any per-address limit.
    """
    if address is None:
        return "unknown"
    if ":" not in address:
        return address
    try:
        network = ipaddress.IPv6Network(f"{address}/64", strict=False)
    except ValueError:
        return address
    return str(network)


def address_subject(credentials: Credentials) -> str:
    """The rate-limit subject of the client that presented ``credentials``.

    The client address resolved through the trusted proxies, else the peer
    (``address:<ip>``, IPv6 by its /64); requests whose address is unknown
    share one subject rather than escaping the limit.
    """
    return f"address:{_network(credentials.client_address or credentials.peer_address)}"


class AuthService:
    """Authenticates credentials and authorizes actions through the plugins."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._hooks = registry.hooks
        self.mode = registry.settings.auth
        #: Every role the plugins define (``userplane_roles``), to its actions.
        self.roles: Mapping[str, frozenset[str]] = registry.hooks.roles(registry.settings)
        #: The ``WWW-Authenticate`` challenges a 401 offers.
        self.challenges: tuple[str, ...] = registry.hooks.auth_challenges(registry.settings)
        # Asked once: without a limiter plugin, a request dispatches no rate-limit hook.
        self._limited = registry.hooks.limits_rates

    @property
    def enabled(self) -> bool:
        """False only with ``USERPLANE_AUTH=disabled`` (local development)."""
        return self.mode == "enabled"

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal ``credentials`` prove, else ``Unauthenticated``.

        The same message whether credentials are missing, unknown or wrong in
        detail, so a caller learns nothing about which keys exist. With a
        rate limiter, an address past its ``auth-failure`` limit gets
        ``RateLimited`` before any plugin looks the credentials up, and every
        failure from an address counts against it (``address_subject``).
        """
        if not self.enabled:
            return DEVELOPMENT_PRINCIPAL
        # rate_limit answers None without a limiter: the subject is then never used.
        subject = address_subject(credentials) if self._limited else ""
        quota = self.rate_limit(AUTH_FAILURE, subject, consume=False)
        if quota is not None and not quota.allowed:
            raise RateLimited(
                "too many failed authentications from this address; retry later",
                quota.retry_after,
                quota,
            )
        try:
            principal = self._hooks.authenticate(credentials, self._registry)
        except (Unauthenticated, RateLimited):
            # A plugin judged the credentials its own and wrong (or refused a guess
            # at one key): a failure of this address, whatever header carried them.
            self.rate_limit(AUTH_FAILURE, subject)
            raise
        if principal is None:
            if credentials.present:
                self.rate_limit(AUTH_FAILURE, subject)
                raise Unauthenticated("the credentials were not accepted")
            raise Unauthenticated("credentials are required: Authorization: Bearer <key or token>")
        if principal.user_id is not None:
            principal = self._with_group_roles(principal, principal.user_id)
        return principal

    def _with_group_roles(self, principal: Principal, user_id: uuid.UUID) -> Principal:
        """``principal`` with the roles of its user's groups added (its own plus its groups')."""
        groups = self._registry.groups
        if not groups.available:
            return principal
        extra = groups.roles_of(user_id) - principal.roles
        if not extra:
            return principal
        return attrs.evolve(principal, roles=principal.roles | extra)

    def rate_limit(self, kind: str, subject: str, consume: bool = True) -> Quota | None:
        """Ask the rate limiter about one request of ``kind`` by ``subject``; ``None``: no limit.

        For auth plugins too: the api-keys plugin counts a wrong secret for a
        real key against its id (``key-id:<lookup>``), after checking it.
        """
        if not self._limited:
            return None
        return self._hooks.rate_limit(kind, subject, consume, self._registry)

    def admit(self, principal: Principal, kind: str, client_address: str | None) -> Quota | None:
        """Count one request of class ``kind`` (``read``/``write``) by ``principal``.

        Raises ``RateLimited`` past the limit; returns the ``Quota`` for the
        response's headers (``None`` without a limit). Each principal has a
        quota of its own; with auth disabled everyone is the one development
        principal, so the client address is counted instead.
        """
        if not self._limited:
            return None
        if principal is DEVELOPMENT_PRINCIPAL:
            subject = f"address:{_network(client_address)}"
        else:
            subject = f"principal:{principal.id}"
        quota = self.rate_limit(kind, subject)
        if quota is not None and not quota.allowed:
            raise RateLimited(
                f"too many {kind} requests; retry in {quota.retry_after} s",
                quota.retry_after,
                quota,
            )
        return quota

    def allows(self, principal: Principal, action: str, resource: Any = None) -> bool:
        """Whether ``principal`` may do ``action`` (on ``resource``): no deny and an allow."""
        votes = self._hooks.authorize(principal, action, resource, self._registry)
        return False not in votes and True in votes

    def authorize(self, principal: Principal, action: str, resource: Any = None) -> None:
        """Raise ``Forbidden`` unless ``principal`` may do ``action``."""
        if not self.allows(principal, action, resource):
            raise Forbidden(f"this principal may not {action}")
