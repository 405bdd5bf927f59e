"""Where a webhook may be sent: URL rules and the addresses a host may resolve to.

A webhook URL is chosen by whoever holds ``webhooks:manage``, but requested
by the server, from inside its network: unchecked, it reaches what the
server can reach and the caller cannot (a metadata service at
169.254.169.254, an admin port on localhost). So unless
``USERPLANE_WEBHOOKS_ALLOW_PRIVATE`` says otherwise, a host must resolve to
globally routable addresses only, checked when the subscription is made and
again at every connection a batch of sends makes (``sender.Channel``), which
goes to the very address that was checked, so a DNS answer that changes in
between (rebinding) cannot move it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from typing import Final
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The longest URL a subscription may have.
MAX_URL: Final = 2048
SCHEMES: Final = ("http", "https")
#: IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64).
_NAT64: Final = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))

#: The characters of a URL (RFC 3986: unreserved, reserved, and % of an escape).
_URL_CHARS: Final = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")

#: ``(host, port) -> addresses``: ``socket.getaddrinfo`` by default; tests replace it.
Resolver = Callable[[str, int], list[IPAddress]]


class Refused(Exception):
    """The URL, or where it leads, may not be requested; ``str()`` says why (no secret)."""


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64, Teredo), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is globally routable unicast: no loopback, private, link-local,
    shared (CGNAT), multicast, reserved or unspecified address, nor IPv6 standing for one."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    return bool(
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_link_local
        and not address.is_loopback
        and not address.is_unspecified
        and not address.is_private
    )


def parse_url(url: str) -> tuple[SplitResult, str, int]:
    """``url`` split, with its host and port; ``Refused`` saying what is wrong with it."""
    if not url or len(url) > MAX_URL:
        raise Refused(f"must be 1 to {MAX_URL} characters")
    if not url.isascii():
        raise Refused(
            "must be ASCII: percent-encode other characters, and write an international "
            "host name in its xn-- form"
        )
    if not url.isprintable() or any(c.isspace() for c in url):
        raise Refused("must not contain spaces or control characters")
    if not _URL_CHARS.fullmatch(url):
        raise Refused("has a character no URL may hold (RFC 3986): percent-encode it")
    if _BAD_PERCENT.search(url):
        raise Refused("has a % that is not followed by two hexadecimal digits")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"is not a valid URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise Refused("must be an http or https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise Refused("must not contain credentials (user:password@): send no secret in a URL")
    if parts.fragment or url.endswith("#"):
        raise Refused("must not have a fragment (#…)")
    host = parts.hostname
    if not host:
        raise Refused("must name a host")
    if port == 0:
        raise Refused("must not name port 0")
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (TCP), by the system's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in out:
            out.append(address)
    return out


def resolve(host: str, port: int, resolver: Resolver, timeout: float) -> list[IPAddress]:
    """``resolver(host, port)`` within ``timeout`` seconds; ``Refused`` if it fails or is late.

    The system resolver cannot be interrupted: it runs in a daemon thread,
    abandoned (it ends on its own) when it is late.
    """
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal]
    result: list[list[IPAddress]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(resolver(host, port))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run, name="userplane-webhooks-resolve", daemon=True)
    worker.start()
    worker.join(max(timeout, 0.0))
    if worker.is_alive():
        raise Refused(f"the host {host} did not resolve within {timeout:g}s")
    if failure or not result or not result[0]:
        raise Refused(f"the host {host} does not resolve")
    return result[0]


def check(
    url: str, *, allow_private: bool, resolver: Resolver, timeout: float
) -> tuple[SplitResult, str, int, list[IPAddress]]:
    """Parse ``url`` and resolve its host to addresses it may be sent to.

    ``Refused`` when the URL is malformed, the host does not resolve, or
    (unless ``allow_private``) any address it resolves to is not public:
    one private answer among public ones is refused too, so an attacker's
    DNS cannot have the server pick it.
    """
    parts, host, port = parse_url(url)
    addresses = resolve(host, port, resolver, timeout)
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise Refused(
                    f"resolves to {address}, which is not a public address (loopback, "
                    "private, link-local, shared or reserved addresses are refused unless "
                    "USERPLANE_WEBHOOKS_ALLOW_PRIVATE=true)"
                )
    return parts, host, port, addresses
