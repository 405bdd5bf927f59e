"""Who is calling and what they may do: principals, credentials, actions, roles, decisions.

Authentication and authorization are plugin contracts (``userplane_authenticate``
and ``userplane_authorize``); this module holds the frontend-agnostic pieces and
``AuthService``, which asks the plugins and applies the rules:

- the first plugin that recognises the credentials names the ``Principal``, or
  raises ``Unauthenticated`` when they are its kind and wrong;
- for authorization, any deny wins, and without an allow the answer is no.
  The built-in role policy allows what the principal's roles grant.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from userplane.errors import ConfigurationError, Forbidden, Unauthenticated

if TYPE_CHECKING:
    from userplane.registry import Registry
    from userplane.settings import Settings

# The actions userplane's own operations need. Plugins may define more.
USERS_READ = "users:read"
USERS_READ_DELETED = "users:read-deleted"
USERS_WRITE = "users:write"
USERS_DELETE = "users:delete"
USERS_RESTORE = "users:restore"
USERS_PURGE = "users:purge"
KEYS_MANAGE = "keys:manage"

ACTIONS = frozenset(
    {
        USERS_READ,
        USERS_READ_DELETED,
        USERS_WRITE,
        USERS_DELETE,
        USERS_RESTORE,
        USERS_PURGE,
        KEYS_MANAGE,
    }
)

_NAMESPACES = frozenset(a.partition(":")[0] for a in ACTIONS)

#: Built-in roles. ``admin`` may do everything, plugin-defined actions included.
BUILTIN_ROLES: Mapping[str, frozenset[str]] = {
    "admin": frozenset({"*"}),
    "editor": frozenset({USERS_READ, USERS_READ_DELETED, USERS_WRITE, USERS_DELETE, USERS_RESTORE}),
    "viewer": frozenset({USERS_READ}),
}


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


@attrs.frozen
class Credentials:
    """What a caller presented, independent of the frontend.

    ``scheme`` and ``token`` come from an ``Authorization: <scheme> <token>``
    header (the scheme lowercased); ``headers`` holds every request header by
    lowercased name, for plugins that authenticate otherwise (mTLS proxies,
    gateways).
    """

    scheme: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Credentials:
        """Credentials from request headers (any case)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        return cls.from_authorization(lowered.get("authorization"), lowered)

    @classmethod
    def from_authorization(
        cls, authorization: str | None, headers: Mapping[str, str]
    ) -> Credentials:
        """Credentials from the ``Authorization`` header and every header by lowercased name.

        For frontends that can read one header cheaply: ``headers`` may be a
        lazy view, so a request pays for the rest only if a plugin reads them.
        """
        scheme, token = None, None
        authorization = (authorization or "").strip()
        if authorization:
            scheme, _, token = authorization.partition(" ")
            scheme, token = scheme.lower(), token.strip() or None
        return cls(scheme=scheme, token=token, headers=headers)

    @property
    def bearer(self) -> str | None:
        """The bearer token, if that is what was presented."""
        return self.token if self.scheme == "bearer" else None

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


def parse_roles(text: str | None) -> dict[str, frozenset[str]]:
    """The built-in roles plus custom ones from ``USERPLANE_ROLES``.

    ``USERPLANE_ROLES`` is a JSON object mapping a role name to its actions:
    ``{"support": ["users:read", "users:restore"]}``. A built-in role cannot be
    redefined.
    """
    roles = dict(BUILTIN_ROLES)
    if not text:
        return roles
    name = "USERPLANE_ROLES"
    try:
        custom = json.loads(text)
    except ValueError:
        raise ConfigurationError(f"{name}: must be a JSON object of role: [actions]") from None
    if not isinstance(custom, dict):
        raise ConfigurationError(f"{name}: must be a JSON object of role: [actions]")
    for role, actions in custom.items():
        if role in BUILTIN_ROLES:
            raise ConfigurationError(f"{name}: {role!r} is built in and cannot be redefined")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ConfigurationError(f"{name}: {role!r} must map to a list of action names")
        # A plugin's actions live in its own namespace ("reports:read"); in userplane's
        # namespaces only userplane's actions exist, so a typo there is caught.
        unknown = sorted(
            a
            for a in actions
            if a not in ACTIONS and (":" not in a or a.partition(":")[0] in _NAMESPACES)
        )
        if unknown:
            raise ConfigurationError(f"{name}: {role!r} names unknown actions {unknown}")
        roles[role] = frozenset(actions)
    return roles


def grants(roles: Mapping[str, frozenset[str]], principal: Principal, action: str) -> bool:
    """Whether one of ``principal``'s roles grants ``action``."""
    for role in principal.roles:
        allowed = roles.get(role, frozenset())
        if action in allowed or "*" in allowed:
            return True
    return False


class AuthService:
    """Authenticates credentials and authorizes actions through the plugins."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self._registry = registry
        self._hook = registry.hook
        self.mode = settings.auth
        self.roles = parse_roles(settings.roles)

    @property
    def enabled(self) -> bool:
        """False only with ``USERPLANE_AUTH=disabled`` (local development)."""
        return self.mode == "enabled"

    def authenticate(self, credentials: Credentials) -> Principal:
        """The principal ``credentials`` prove, else ``Unauthenticated``.

        The same message whether credentials are missing, unknown or wrong in
        detail, so a caller learns nothing about which keys exist.
        """
        if not self.enabled:
            return DEVELOPMENT_PRINCIPAL
        principal: Principal | None = self._hook.userplane_authenticate(
            credentials=credentials, registry=self._registry
        )
        if principal is None:
            if credentials.present:
                raise Unauthenticated("the credentials were not accepted")
            raise Unauthenticated("credentials are required: Authorization: Bearer <key or token>")
        return principal

    def allows(self, principal: Principal, action: str, resource: Any = None) -> bool:
        """Whether ``principal`` may do ``action`` (on ``resource``): no deny and an allow."""
        votes = self._hook.userplane_authorize(
            principal=principal, action=action, resource=resource
        )
        if any(v is False for v in votes):
            return False
        return grants(self.roles, principal, action) or any(v is True for v in votes)

    def authorize(self, principal: Principal, action: str, resource: Any = None) -> None:
        """Raise ``Forbidden`` unless ``principal`` may do ``action``."""
        if not self.allows(principal, action, resource):
            raise Forbidden(f"this principal may not {action}")
