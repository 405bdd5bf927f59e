"""userplane-trusted-header: the auth contract, its settings, and the HTTP API behind a proxy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from userplane.frontends.http.testing import client
from userplane.plugin import ConfigurationError, Credentials, Registry, Settings
from userplane.testing import AuthPluginContract

import userplane_trusted_header as plugin

PROXY = "10.1.2.3"
STRANGER = "192.0.2.7"
ENABLED = {
    "USERPLANE_TRUSTED_PROXIES": "10.0.0.0/8",
    "USERPLANE_TRUSTED_HEADER_ENABLED": "true",
}
USERS = "/api/v1/users"


def sent(headers: Mapping[str, str], peer: str | None = PROXY) -> Credentials:
    return Credentials.from_headers(headers, peer_address=peer, client_address=peer)


class TestTrustedHeader(AuthPluginContract):
    plugin = plugin
    revocable = False
    not_revocable_reason = (
        "userplane keeps no state for these principals: the proxy decides on every request, "
        "so access is revoked at the proxy (or its identity provider)"
    )

    @pytest.fixture
    def settings_variables(self) -> Mapping[str, str]:
        return ENABLED

    @pytest.fixture
    def valid_credentials(self) -> tuple[Credentials, set[str]]:
        headers = {"X-Remote-User": "ann@example.org", "X-Remote-Roles": "editor, viewer nope"}
        return sent(headers), {"editor", "viewer"}

    @pytest.fixture
    def wrong_credentials(self) -> Sequence[Credentials]:
        return [
            sent({"X-Remote-User": "ann"}, peer=STRANGER),  # a client naming itself
            sent({"X-Remote-User": "ann", "X-Remote-Roles": "admin"}, peer=None),
            sent({"X-Remote-User": "   "}),
            sent({"X-Remote-User": "ann\x00admin"}),
            sent({"X-Remote-User": "a" * 257}),
        ]

    @pytest.fixture
    def foreign_credentials(self) -> Sequence[Credentials]:
        return [
            sent({"X-Remote-Roles": "admin"}),  # roles without a user: not ours
            sent({"Authorization": "Bearer up_" + "a" * 44}),
            sent({"X-Forwarded-User": "ann"}, peer=STRANGER),
        ]


def registry_for(tmp_path: Path, **variables: str) -> Registry:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    registry = Registry(Settings.from_mapping({"USERPLANE_DATABASE_URL": url, **variables}))
    registry.migrate()
    return registry


def test_installed_but_not_enabled_it_judges_nothing(tmp_path: Path) -> None:
    with registry_for(tmp_path, USERPLANE_TRUSTED_PROXIES="10.0.0.0/8") as registry:
        assert plugin.userplane_authenticate(sent({"X-Remote-User": "ann"}), registry) is None
        http = client(registry, headers={"X-Remote-User": "ann"}, remote_addr=PROXY)
        assert http.simulate_get(USERS).status_code == 401


def test_enabled_without_trusted_proxies_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_TRUSTED_PROXIES"):
        registry_for(tmp_path, USERPLANE_TRUSTED_HEADER_ENABLED="true")


def test_a_bad_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_TRUSTED_HEADER_ENABLED"):
        registry_for(tmp_path, **{**ENABLED, "USERPLANE_TRUSTED_HEADER_ENABLED": "maybe"})


def test_its_settings_are_declared(tmp_path: Path) -> None:
    with registry_for(tmp_path) as registry:
        listed = registry.settings.redacted(registry.hooks.settings_sections())
    assert listed["USERPLANE_TRUSTED_HEADER_ENABLED"] is False
    assert listed["USERPLANE_TRUSTED_HEADER_USER"] == "X-Remote-User"
    assert listed["USERPLANE_TRUSTED_HEADER_ROLES"] == "X-Remote-Roles"


def test_over_http_behind_the_proxy(tmp_path: Path) -> None:
    with registry_for(tmp_path, **ENABLED) as registry:
        editor = {"X-Remote-User": "ed", "X-Remote-Roles": "editor"}
        proxied = client(registry, headers=editor, remote_addr=PROXY)
        created = proxied.simulate_post(USERS, json={"email": "ann@example.org"})
        assert created.status_code == 201
        assert proxied.simulate_delete(created.headers["Location"]).status_code == 204
        viewer = client(registry, headers={"X-Remote-User": "vi"}, remote_addr=PROXY)
        assert viewer.simulate_get(USERS).status_code == 403  # no roles header: no roles
        direct = client(registry, headers=editor, remote_addr=STRANGER)
        refused = direct.simulate_get(USERS)
        assert refused.status_code == 401
        assert refused.json["detail"] == plugin.REJECTED
        assert client(registry, remote_addr=PROXY).simulate_get(USERS).status_code == 401


def test_the_header_names_are_configurable(tmp_path: Path) -> None:
    variables = {
        **ENABLED,
        "USERPLANE_TRUSTED_HEADER_USER": "X-Auth-Request-User",
        "USERPLANE_TRUSTED_HEADER_ROLES": "",
    }
    with registry_for(tmp_path, **variables) as registry:
        headers = {"X-Auth-Request-User": "ann", "X-Remote-Roles": "admin"}
        principal = registry.auth.authenticate(sent(headers))
        assert (principal.id, principal.roles) == ("header:ann", frozenset())
        assert plugin.userplane_authenticate(sent({"X-Remote-User": "ann"}), registry) is None
