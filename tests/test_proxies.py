"""Client addresses through trusted proxies: forwarding headers count only from them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from hypothesis import given
from hypothesis import strategies as st

from userplane import ConfigurationError, Registry, Settings, hookimpl
from userplane.auth import Credentials, Principal
from userplane.frontends.http import create_app
from userplane.proxies import (
    ClientCertificate,
    TrustedProxies,
    forwarded_for,
    parse_client_certificate,
)

PROXY = "10.0.0.5"
proxies = TrustedProxies(["10.0.0.0/24", "2001:db8::/32"])

ipv4 = st.ip_addresses(v=4).map(str)


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    none = TrustedProxies()
    assert none.client_address("192.0.2.7", "for=198.51.100.1", "198.51.100.1") == "192.0.2.7"
    assert not none.trusts("192.0.2.7")


@given(peer=ipv4, claimed=ipv4)
def test_an_untrusted_peer_cannot_name_its_own_address(peer: str, claimed: str) -> None:
    if ipaddress.ip_address(peer) in ipaddress.ip_network("10.0.0.0/24"):
        return
    assert proxies.client_address(peer, f"for={claimed}", claimed) == peer


@given(chain=st.lists(ipv4, min_size=1, max_size=5), client=ipv4)
def test_the_first_untrusted_hop_from_the_right_is_the_client(
    chain: list[str], client: str
) -> None:
    untrusted = [a for a in chain if not proxies.trusts(a)]
    header = ", ".join([client, *chain])
    expected = untrusted[-1] if untrusted else client
    if not untrusted and proxies.trusts(client):
        expected = client  # every hop trusted: the leftmost is all there is
    assert proxies.client_address(PROXY, None, header) == expected


def test_forwarded_is_parsed_with_quotes_ports_and_ipv6_when_it_is_the_header() -> None:
    header = 'for=198.51.100.17;proto=https, for="[2001:db8:cafe::17]:4711", For=10.0.0.9'
    assert forwarded_for(header) == ["198.51.100.17", "[2001:db8:cafe::17]:4711", "10.0.0.9"]
    by_forwarded = TrustedProxies(["10.0.0.0/24", "2001:db8::/32"], header="forwarded")
    # 10.0.0.9 is trusted, 2001:db8:cafe::17 is in the trusted /32 too: the client is the first.
    assert by_forwarded.client_address(PROXY, header, "203.0.113.9") == "198.51.100.17"
    assert by_forwarded.client_address(PROXY, "for=192.0.2.60:8080", None) == "192.0.2.60"


def test_only_the_header_the_proxies_set_is_believed() -> None:
    """A proxy appends to its own header and passes the other on as the client sent it."""
    spoofed = "for=192.0.2.1"  # sent by the client, passed through by an X-Forwarded-For proxy
    assert proxies.client_address(PROXY, spoofed, "198.51.100.7") == "198.51.100.7"
    assert proxies.client_address(PROXY, "for=unknown", "198.51.100.7") == "198.51.100.7"
    by_forwarded = TrustedProxies(["10.0.0.0/24"], header="forwarded")
    assert by_forwarded.client_address(PROXY, "for=198.51.100.7", "192.0.2.1") == "198.51.100.7"
    assert by_forwarded.client_address(PROXY, None, "192.0.2.1") == PROXY


def test_an_unparseable_hop_stops_the_walk() -> None:
    assert proxies.client_address(PROXY, None, "198.51.100.1, unknown") is None
    by_forwarded = TrustedProxies(["10.0.0.0/24"], header="forwarded")
    assert by_forwarded.client_address(PROXY, 'for="_hidden", for=10.0.0.7', None) is None
    assert proxies.client_address(PROXY, None, "garbage, 198.51.100.2") == "198.51.100.2"


def test_a_trusted_peer_without_headers_is_the_client() -> None:
    assert proxies.client_address(PROXY, None, None) == PROXY


def test_client_certificate_from_envoys_header() -> None:
    header = (
        "Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;"
        'Subject="CN=svc,OU=ops,O=Example";URI=spiffe://example.org/svc;DNS=svc.example.org;'
        "DNS=svc2.example.org, Hash=ffff"
    )
    assert parse_client_certificate(header) == ClientCertificate(
        subject="CN=svc,OU=ops,O=Example",
        hash="468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
        uris=("spiffe://example.org/svc",),
        dns=("svc.example.org", "svc2.example.org"),
    )
    assert parse_client_certificate("") is None
    assert parse_client_certificate("nonsense") is None


def test_a_bad_trusted_proxy_setting_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="USERPLANE_TRUSTED_PROXIES"):
        Settings.from_mapping({"USERPLANE_TRUSTED_PROXIES": "10.0.0.0/24, not-an-ip"})
    ok = Settings.from_mapping({"USERPLANE_TRUSTED_PROXIES": "10.0.0.0/24, ::1"})
    assert ok.trusted_proxies == ("10.0.0.0/24", "::1")


# -- what an auth plugin sees, through the HTTP frontend ----------------------------------


class Recorder:
    """An auth plugin that records the credentials it is shown and accepts a fixed token."""

    def __init__(self) -> None:
        self.seen: list[Credentials] = []

    @hookimpl
    def userplane_authenticate(self, credentials: Credentials) -> Principal | None:
        self.seen.append(credentials)
        if credentials.value == "let-me-in":
            return Principal(id="test:recorder", kind="test", roles=frozenset({"admin"}))
        return None


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[testing.TestClient, Recorder]]:
    recorder = Recorder()
    settings = Settings.from_mapping(
        {
            "USERPLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}",
            "USERPLANE_TRUSTED_PROXIES": "10.0.0.0/24",
        }
    )
    with Registry(settings, plugins=[recorder]) as registry:
        registry.migrate()
        yield testing.TestClient(create_app(registry)), recorder


def _get(client: testing.TestClient, remote: str, **headers: str) -> Any:
    headers = {"Authorization": "Bearer let-me-in", **headers}
    resp = client.simulate_get("/api/v1/users/", headers=headers, remote_addr=remote)
    assert resp.status_code == 200, resp.text
    return resp


XFCC = 'Hash=abc;Subject="CN=svc"'


def test_a_trusted_proxy_forwards_the_client_and_its_certificate(
    recorded: tuple[testing.TestClient, Recorder],
) -> None:
    client, recorder = recorded
    _get(client, PROXY, **{"X-Forwarded-For": "198.51.100.4", "X-Forwarded-Client-Cert": XFCC})
    [seen] = recorder.seen
    assert seen.peer_address == PROXY
    assert seen.client_address == "198.51.100.4"
    assert seen.client_certificate == ClientCertificate(subject="CN=svc", hash="abc")
    assert seen.scheme == "bearer"
    assert seen.value == "let-me-in"
    assert seen.headers["x-forwarded-for"] == "198.51.100.4"
    assert seen.header("X-Forwarded-For") == "198.51.100.4"  # any case, over HTTP too
    assert seen.header("X-Absent") is None


def test_credentials_read_a_header_in_any_case() -> None:
    built = Credentials.from_headers({"X-Remote-User": "ann", "Authorization": "Token t"})
    assert built.header("X-Remote-User") == built.header("x-remote-user") == "ann"
    assert (built.scheme, built.value, built.bearer) == ("token", "t", None)
    assert built.header("X-Other") is None


def test_anyone_else_cannot_forward_a_client_or_a_certificate(
    recorded: tuple[testing.TestClient, Recorder],
) -> None:
    client, recorder = recorded
    _get(client, "192.0.2.9", **{"X-Forwarded-For": "10.0.0.1", "X-Forwarded-Client-Cert": XFCC})
    [seen] = recorder.seen
    assert seen.peer_address == "192.0.2.9"
    assert seen.client_address == "192.0.2.9"
    assert seen.client_certificate is None
