"""An in-process HTTP client for plugin authors' tests: ``client(registry, …)``.

The client drives ``create_app(registry)`` through Falcon's WSGI test client,
authenticating like any caller: with real credentials (``headers=``), or as a
given principal through ``PrincipalTokens``, an authentication plugin that
accepts only the tokens it issued. It is no back door: it exists only in a
registry a test builds with it (``plugins=[PrincipalTokens()]``), never
through an entry point, and its tokens still pass through the same
authentication and authorization as a real key::

    from userplane.frontends.http.testing import PrincipalTokens, client
    from userplane.plugin import Principal, Registry, Settings

    def test_an_editor_creates_users(tmp_path):
        settings = Settings.from_mapping(
            {"USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'users.db'}"}
        )
        with Registry(settings, plugins=[PrincipalTokens(), my_plugin]) as registry:
            registry.migrate()
            editor = Principal(id="test:ed", kind="test", roles=frozenset({"editor"}))
            http = client(registry, principal=editor)
            created = http.simulate_post("/api/v1/users", json={"email": "ann@example.org"})
            assert created.status_code == 201
            assert http.simulate_delete(created.headers["Location"]).status_code == 403

    # With real credentials, from a given peer (a trusted proxy, say):
    http = client(registry, headers={"X-Remote-User": "ann"}, remote_addr="10.0.0.1")
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from typing import Any

import falcon
from falcon import testing

from userplane.frontends.http import create_app
from userplane.plugin import Credentials, Principal, Registry, Unauthenticated, hookimpl

__all__ = ["Client", "PrincipalTokens", "client", "principal_tokens"]

__all__ = ["Client", "PrincipalTokens", "client", "principal_tokens"]

#: The prefix of the tokens ``PrincipalTokens`` issues (no other plugin's shape).
PREFIX = "uptest_"


class PrincipalTokens:
    """An auth plugin for tests: ``Bearer uptest_…`` tokens it issued, each for one principal.

    Register it through ``Registry(settings, plugins=[PrincipalTokens()])``;
    ``client(registry, principal=…)`` finds it there and issues a token.
    """

    def __init__(self) -> None:
        self._principals: dict[str, Principal] = {}
        self._lock = threading.Lock()

    def issue(self, principal: Principal) -> str:
        """A new token for ``principal``."""
        token = PREFIX + secrets.token_hex(16)
        with self._lock:
            self._principals[token] = principal
        return token

    def revoke(self, token: str) -> None:
        """``token`` is refused from now on."""
        with self._lock:
            self._principals.pop(token, None)

    @hookimpl
    def userplane_authenticate(self, credentials: Credentials) -> Principal | None:
        """Our tokens name their principal; an unknown one of our shape is refused."""
        token = credentials.bearer
        if token is None or not token.startswith(PREFIX):
            return None
        principal = self._principals.get(token)
        if principal is None:
            raise Unauthenticated("the credentials were not accepted")
        return principal


class Client(testing.TestClient):
    """Falcon's ``TestClient`` with a default peer address (``remote_addr``) for every request."""

    def __init__(
        self,
        app: Any,
        headers: Mapping[str, str] | None = None,
        remote_addr: str | None = None,
    ) -> None:
        super().__init__(app, headers=dict(headers or {}))
        self.remote_addr = remote_addr

    def simulate_request(self, *args: Any, **kwargs: Any) -> testing.Result:
        """As ``TestClient.simulate_request``, from ``remote_addr`` unless the call names one."""
        if self.remote_addr is not None:
            kwargs.setdefault("remote_addr", self.remote_addr)
        return super().simulate_request(*args, **kwargs)


def principal_tokens(registry: Registry) -> PrincipalTokens:
    """The ``PrincipalTokens`` plugin registered in ``registry``."""
    for plugin in registry.pm.get_plugins():
        if isinstance(plugin, PrincipalTokens):
            return plugin
    raise LookupError(
        "no PrincipalTokens in this registry: build it with "
        "Registry(settings, plugins=[PrincipalTokens()]) to act as a principal"
    )


def client(
    registry: Registry,
    *,
    principal: Principal | None = None,
    headers: Mapping[str, str] | None = None,
    remote_addr: str | None = None,
    app: falcon.App[Any, Any] | None = None,
) -> Client:
    """A test client of ``app`` (default: a new ``create_app(registry)``).

    ``principal`` authenticates every request as that principal (the registry
    needs a ``PrincipalTokens``; its roles must be ones the registry knows).
    ``headers`` are sent with every request: real credentials, or anything
    else. ``remote_addr`` is the peer address requests come from (Falcon's
    default is ``127.0.0.1``).
    """
    sent = dict(headers or {})
    if principal is not None:
        unknown = sorted(set(principal.roles) - set(registry.auth.roles))
        if unknown:
            raise ValueError(f"roles {unknown} are not defined in this registry")
        sent.setdefault("Authorization", f"Bearer {principal_tokens(registry).issue(principal)}")
    return Client(app if app is not None else create_app(registry), sent, remote_addr)
