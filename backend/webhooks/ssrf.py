"""Where a webhook may be sent: the SSRF guard (docs/webhooks.md, "Where deliveries may go").

A URL must be ``http`` or ``https`` with a host; every address the host stands for (a
literal, or each one its name resolves to) must be a public unicast address. Refused:
loopback, private (RFC 1918, ULA ``fc00::/7``), link-local (``169.254/16``, ``fe80::/10``),
CGNAT (``100.64/10``), multicast, unspecified, reserved, and the cloud metadata addresses
(``169.254.169.254``, ``fd00:ec2::254``, Alibaba Cloud's ``100.100.100.200``), IETF
protocol assignments (``192.0.0.0/24``) and site-local ``fec0::/10``; IPv6 addresses that
carry an IPv4 address (IPv4-mapped ``::ffff:0:0/96``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``) are judged as the IPv4 address they carry. A name one of whose addresses is
refused is refused as a whole (a resolver may answer either).

The check runs at registration and again at each delivery, where the sender connects to
the very address it checked (:func:`resolve_target`), so a name that resolves elsewhere
between the check and the connection (DNS rebinding) cannot move the request. With
``allow_private`` (``SHUIWU_WEBHOOK_ALLOW_PRIVATE=true``) only the scheme and the form
are checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from backend.webhooks import errors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2000

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Not global though the standard library's tables let them pass: IETF protocol
# assignments (RFC 6890; Python knows only parts of it), deprecated site-local IPv6.
_NOT_PUBLIC = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("fec0::/10"))


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, NAT64's well-known
    prefix): a host routing it reaches that IPv4 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_of(address: IPAddress) -> str | None:
    """Why a delivery may not go to ``address`` (a short English class name), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        address = _carried_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return "metadata"
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "cgnat"
    if (address.is_private or address.is_reserved or not address.is_global
            or any(address in network for network in _NOT_PUBLIC)):
        return "private"
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """Where one delivery connects: ``address`` (checked), with ``host`` kept for the Host
    header and TLS (SNI and the certificate's name)."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, at least "/"
    address: IPAddress

    @property
    def connect_url(self) -> str:
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a webhook URL, the host in ASCII (IDNA); WebhookUrlInvalid
    unless it is an absolute http(s) URL with a host, no credentials and no fragment."""
    if not url or len(url) > MAX_URL_LENGTH or any(c.isspace() for c in url):
        raise errors.WebhookUrlInvalid()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise errors.WebhookUrlInvalid() from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise errors.WebhookUrlInvalid()
    if not parts.hostname or parts.username is not None or parts.password is not None or parts.fragment:
        raise errors.WebhookUrlInvalid()
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, ascii_host(parts.hostname.lower()), port or (443 if scheme == "https" else 80), path


def ascii_host(host: str) -> str:
    """An internationalised host name (münchen.de) as the ASCII form DNS, the Host header
    and TLS use (xn--mnchen-3ya.de); WebhookUrlInvalid when it has none."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise errors.WebhookUrlInvalid() from None


async def addresses_of(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` stands for: itself when a literal, else what it resolves to
    (WebhookHostUnresolved when it does not)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise errors.WebhookHostUnresolved() from None
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise errors.WebhookHostUnresolved()
    return found


async def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Parse ``url``, resolve its host once and check every address; the target to
    connect to (the first address). WebhookUrlInvalid, WebhookHostUnresolved or
    WebhookAddressRefused (naming the class: loopback, private, …) otherwise."""
    scheme, host, port, path = parse_url(url)
    addresses = await addresses_of(host, port)
    if not allow_private:
        for address in addresses:
            reason = refusal_of(address)
            if reason is not None:
                raise errors.WebhookAddressRefused.of(reason)
    return Target(scheme, host, port, path, addresses[0])
