"""HTTPS deliveries: pinned to the checked address, yet verified against the host name.

The receiver serves a certificate for ``hooks.internal.test`` only; the test's
DNS sends that name (and another) to 127.0.0.1. A delivery reaches it when the
certificate is trusted, with the host name as TLS's server name; it fails
when the certificate is not trusted, or names another host than the URL's:
the address the connection is pinned to never stands in for the name.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_webhooks import MakeRegistry, Resolver, make_registry, outbox, subscribe, unique_email
from test_webhooks_receiver import Receiver

from userplane import NewUser
from userplane.plugins import webhooks

__all__ = ["make_registry"]  # the fixture, shared with test_webhooks

NAME = "hooks.internal.test"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``NAME``: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_receiver(certificate: tuple[Path, Path]) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with Receiver(tls=context) as receiver:
        yield receiver


@pytest.fixture
def dns() -> Resolver:
    resolver = Resolver()
    resolver.names[NAME] = ["127.0.0.1"]
    resolver.names["other.internal.test"] = ["127.0.0.1"]
    return resolver


def trust(monkeypatch: pytest.MonkeyPatch, cert: Path) -> None:
    """Senders trust ``cert`` (and only it), as a private CA would be trusted."""
    original = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda: original(cafile=str(cert)))


def test_a_trusted_certificate_for_the_host_name_delivers(
    make_registry: MakeRegistry,
    tls_receiver: Receiver,
    dns: Resolver,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust(monkeypatch, certificate[0])
    registry = make_registry(resolver=dns)
    sub = subscribe(registry, tls_receiver.url(host=NAME), "user.created")
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["delivered"]
    [seen] = tls_receiver.requests
    seen.verify(sub.secret)
    assert tls_receiver.server_names == [NAME]  # SNI: the name, not the pinned address
    assert seen.headers["host"] == f"{NAME}:{tls_receiver.port}"


def test_an_untrusted_certificate_fails_the_delivery(
    make_registry: MakeRegistry, tls_receiver: Receiver, dns: Resolver
) -> None:
    registry = make_registry(resolver=dns)
    sub = subscribe(registry, tls_receiver.url(host=NAME), "user.created")
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["failed"]
    assert tls_receiver.requests == []
    [delivery] = outbox(registry, sub)
    assert delivery.last_error is not None
    assert "TLS certificate not accepted (self-signed certificate)" in delivery.last_error


def test_a_certificate_for_another_name_fails_though_the_address_is_the_same(
    make_registry: MakeRegistry,
    tls_receiver: Receiver,
    dns: Resolver,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust(monkeypatch, certificate[0])
    registry = make_registry(resolver=dns)
    sub = subscribe(registry, tls_receiver.url(host="other.internal.test"), "user.created")
    registry.users.create(NewUser(unique_email()))
    assert webhooks.state_of(registry).dispatcher.run_once() == ["failed"]
    assert tls_receiver.requests == []
    [delivery] = outbox(registry, sub)
    assert delivery.last_error is not None
    assert "TLS certificate not accepted" in delivery.last_error
    assert "other.internal.test" in delivery.last_error or "mismatch" in delivery.last_error
