"""Which address a request came from, believing forwarding headers only from trusted proxies.

The one place that reads ``Forwarded`` (RFC 7239) or ``X-Forwarded-For`` (the
one ``USERPLANE_FORWARDED_HEADER`` names), and the client-certificate header a
TLS-terminating proxy adds (``X-Forwarded-Client-Cert``, in Envoy's format). A
header is believed only when the direct peer is in ``USERPLANE_TRUSTED_PROXIES``;
the chain is then
walked from the right, past every trusted hop, and the first untrusted
address is the client. Anything else would let a caller name its own address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: The forwarding header the trusted proxies set: the only one believed.
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]
XFF: ForwardedHeader = "x-forwarded-for"
FORWARDED: ForwardedHeader = "forwarded"

# One element of a comma-separated header, commas inside quoted strings kept.
_ELEMENT = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')
_FOR = re.compile(r'(?i)(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


@attrs.frozen
class ClientCertificate:
    """The TLS client certificate a trusted proxy verified and forwarded.

    Parsed from the first element of ``X-Forwarded-Client-Cert``: ``subject``
    (the distinguished name), ``hash`` (SHA-256 of the DER, hex), ``uris`` and
    ``dns`` (subject alternative names).
    """

    subject: str | None = None
    hash: str | None = None
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def _address(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [2001:db8::1]:4711
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # 192.0.2.1:4711
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", an obfuscated identifier, garbage


def forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` header, in order (left is furthest)."""
    out = []
    for element in _ELEMENT.findall(header):
        match = _FOR.search(element)
        if match:
            value = match.group(1).strip('"').replace('\\"', '"')
            out.append(value)
    return out


def parse_client_certificate(header: str) -> ClientCertificate | None:
    """The first certificate of an ``X-Forwarded-Client-Cert`` header, or ``None``."""
    elements = _ELEMENT.findall(header)
    first = elements[0].strip() if elements else ""
    if not first:
        return None
    fields: dict[str, list[str]] = {}
    for pair in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^;]*)', first):
        key, value = pair[0].lower(), pair[1]
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        fields.setdefault(key, []).append(value)
    if not fields:
        return None
    subjects, hashes = fields.get("subject", []), fields.get("hash", [])
    return ClientCertificate(
        subject=subjects[0] if subjects else None,
        hash=hashes[0] if hashes else None,
        uris=tuple(fields.get("uri", ())),
        dns=tuple(fields.get("dns", ())),
    )


class TrustedProxies:
    """``USERPLANE_TRUSTED_PROXIES`` as networks, and the client address they imply."""

    def __init__(self, networks: Iterable[str] = (), header: ForwardedHeader = XFF) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in networks
        )
        #: The one forwarding header believed (``USERPLANE_FORWARDED_HEADER``).
        self.header = header

    def trusts(self, address: str | None) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        if not self.networks or address is None:
            return False
        ip = _address(address)
        return ip is not None and self._trusted(ip)

    def _trusted(self, ip: IPAddress) -> bool:
        return any(ip in n for n in self.networks)

    def client_address(
        self, peer: str | None, forwarded: str | None = None, x_forwarded_for: str | None = None
    ) -> str | None:
        """The client's address: the peer's, or from the header when the peer is trusted.

        Only the header the proxies set (``header``) is read: a proxy appends
        to its own header and passes the other one on as the client sent it,
        so believing whichever came would let a client name any address. A
        chain whose hops are all trusted yields its leftmost address. An
        unparseable hop (``unknown``, an obfuscated ``_name``) before any
        untrusted one hides the client: ``None``, never a proxy's address.
        """
        if not self.trusts(peer):
            return peer
        hops: Sequence[str] = ()
        if self.header == FORWARDED:
            hops = forwarded_for(forwarded) if forwarded else ()
        elif x_forwarded_for:
            hops = [h.strip() for h in x_forwarded_for.split(",") if h.strip()]
        client = peer
        for hop in reversed(hops):
            ip = _address(hop)
            if ip is None:
                return None
            client = str(ip)
            if not self._trusted(ip):
                return client
        return client


@functools.lru_cache(maxsize=8)
def trusted_proxies(networks: tuple[str, ...], header: ForwardedHeader = XFF) -> TrustedProxies:
    """The (cached) ``TrustedProxies`` of the settings' values."""
    return TrustedProxies(networks, header)
