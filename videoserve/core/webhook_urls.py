"""Which webhook URLs the service may send to (SSRF): by default only ``https`` URLs whose host
resolves to public addresses only. Hosts on the operator's allow list (``--webhook_allow_hosts``,
e.g. ``127.0.0.1`` for a receiver on the same machine) may use any address, over ``http`` too.

``check_url`` resolves the host and returns the address to connect to: a delivery connects to
that address (never resolving the name again), so a name that is re-pointed at a private
address between the check and the connection (DNS rebinding) reaches nothing it should not.
URLs are checked when an endpoint is created or updated, and again at each delivery.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
# host, port -> the addresses it resolves to (strings, as getaddrinfo gives them)
Resolve = Callable[[str, int], list[str]]


class UrlRefused(ValueError):
    """A webhook URL the policy refuses; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where a checked URL's deliveries go: the URL's parts and the address checked."""

    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    path: str  # path and query, at least "/"
    address: str  # the checked address to connect to

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (blocking: call it off the event loop)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"the host {host!r} does not resolve ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def normalize_allow_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """The hosts as URLs' hosts compare: lower case, IPv6 without brackets, each once."""
    return tuple(dict.fromkeys(h.strip().lower().strip("[]") for h in hosts if h.strip()))


def split_url(url: str, allow_hosts: Iterable[str] = ()) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a URL the policy may accept, before any DNS lookup."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c <= " " or c == "\x7f" for c in url):
        raise UrlRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UrlRefused(f"the URL's scheme must be https, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL must not carry credentials (user:password@)")
    host = (parts.hostname or "").lower()
    if not host:
        raise UrlRefused("the URL has no host")
    allowed = host in normalize_allow_hosts(allow_hosts)
    if scheme == "http" and not allowed:
        raise UrlRefused("the URL's scheme must be https (http only for hosts on "
                         "--webhook_allow_hosts)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def public_address(address: str) -> bool:
    """True for an address on the public internet: not private, loopback, link-local,
    multicast, reserved, unspecified, shared (100.64/10), nor an IPv4 one mapped or
    translated into IPv6 that is one of those."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return public_address(str(inner))
        if ip.teredo is not None:
            return False
    return ip.is_global and not ip.is_multicast


def check_url(url: str, allow_hosts: Iterable[str] = (),
              resolver: Resolve = resolve) -> Target:
    """The Target of ``url`` if the policy accepts it; UrlRefused (with the reason) if not.
    Resolves the host (blocking)."""
    allow = normalize_allow_hosts(allow_hosts)
    scheme, host, port, path = split_url(url, allow)
    try:
        literal = ipaddress.ip_address(host)
        addresses = [str(literal)]
    except ValueError:
        addresses = resolver(host, port)
    if not addresses:
        raise UrlRefused(f"the host {host!r} does not resolve")
    if host not in allow:
        for address in addresses:
            if not public_address(address):
                raise UrlRefused(f"the host {host!r} resolves to {address}, which is not a "
                                 "public address (add the host to --webhook_allow_hosts to "
                                 "allow it)")
    return Target(scheme, host, port, path, addresses[0])
