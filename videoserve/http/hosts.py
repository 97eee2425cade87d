"""Which host names this server answers to (the defence against DNS rebinding).

A web page on ``http://attacker.example:8000`` whose name the attacker then points at
127.0.0.1 (or a LAN address) is, to the browser, on the same site as this server: it may read
every answer. Its requests still name the attacker's host in ``Host`` and ``Origin``; a server
that answers only to its own names refuses them.

Allowed: loopback names and addresses, the address a connection arrived on (so a server bound
to 0.0.0.0 answers to each of the machine's addresses), and the names given (``*``: any host).
Names compare without case, port or trailing dot; IPv6 addresses in brackets (``[::1]:8000``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ANY = "*"
WILDCARD_BINDS = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = ("localhost",)
DEFAULT_PORTS = {"http": 80, "https": 443}
# A Host header: a registered name or IPv4 address, or an IPv6 address in brackets; an
# optional port. Userinfo, paths and spaces make it malformed.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._~!$&'()*+,;=%-]+))"
                   r"(?::(?P<port>\d{0,5}))?")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``'Example.COM.:80'`` -> ``('example.com', 80)``, ``'[::1]'`` -> ``('::1', None)``;
    None when malformed."""
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and port > 65535:
        return None
    if match["v6"] is not None:
        try:
            return str(ipaddress.IPv6Address(match["v6"])), port
        except ValueError:
            return None
    name = match["name"].lower().rstrip(".")
    return (name, port) if name else None


def normalize_host(value: str) -> str | None:
    """A configured host (``name``, ``name:port``, ``[v6]``, a bare IPv6 address) as the name
    Host headers are compared with; None when it is no host."""
    value = value.strip()
    if value.count(":") > 1 and not value.startswith("["):
        value = f"[{value}]"
    parsed = parse_host(value)
    return parsed[0] if parsed else None


def ip_of(text: str) -> IpAddress | None:
    """An IP address, IPv4-mapped IPv6 ones as IPv4; None for a name."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class AllowedHosts:
    """The host names a server answers to (see the module's description)."""

    def __init__(self, names: Iterable[str] = ()):
        names = tuple(names)
        self.any = ANY in names
        self.names = {n for n in (normalize_host(x) for x in names if x != ANY) if n}

    def own(self, host: str, local_address: str | None) -> bool:
        """Whether ``host`` (normalized) is one of the server's own: a loopback name or address,
        ``local_address`` or a listed name; never by ``*`` alone."""
        if host in self.names or host in LOOPBACK_NAMES:
            return True
        ip = ip_of(host)
        if ip is None:
            return False
        return ip.is_loopback or (local_address is not None and ip == ip_of(local_address))

    def allows(self, host_header: str | None, local_address: str | None) -> bool:
        """Whether a request with this ``Host`` header is served."""
        if self.any:
            return True
        if host_header is None:
            # Only HTTP/1.0 may leave Host out, and no browser does: it names no rebound host.
            return True
        parsed = parse_host(host_header)
        return parsed is not None and self.own(parsed[0], local_address)


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """The names a server bound to ``bind_host`` answers to besides loopback and the address a
    connection arrived on: the bind host, and for 0.0.0.0 or :: the machine's own names."""
    if bind_host not in WILDCARD_BINDS:
        return (bind_host,)
    names = {socket.gethostname(), socket.getfqdn()}
    own = sorted(n for n in names if n and normalize_host(n))
    return tuple([bind_host, *own] if bind_host else own)


def own_origin(hosts: AllowedHosts, origin: str, host_header: str | None,
               local_address: str | None) -> bool:
    """Whether ``origin`` (scheme://host[:port]) is this server: a host of its own (never by
    ``*``: the request's Host proves nothing) on the port the request came to."""
    scheme, sep, rest = origin.partition("://")
    parsed = parse_host(rest) if sep and scheme in DEFAULT_PORTS else None
    request = parse_host(host_header) if host_header is not None else None
    if parsed is None or request is None or not hosts.own(parsed[0], local_address):
        return False
    default = DEFAULT_PORTS[scheme]
    return (parsed[1] or default) == (request[1] or default)
