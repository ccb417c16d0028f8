"""Where webhooks may connect: global unicast addresses only, unless an operator opens more.

A target is checked when a subscription is saved and again at every connection, on the
addresses DNS answered then (GuardedResolver): the connector connects only to addresses
that passed, so a name that later resolves elsewhere (DNS rebinding) cannot pass.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Iterable

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _table(*rows: tuple[str, str]) -> tuple:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in rows)


# IANA's special-purpose registries: not global unicast. More specific rows first (the
# first match names the reason).
V4_NOT_GLOBAL = _table(
    ("0.0.0.0/8", "unspecified"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "CGNAT"),
    ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"), ("192.0.0.0/24", "IETF protocol"),
    ("192.0.2.0/24", "documentation"), ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"), ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"))
V6_NOT_GLOBAL = _table(
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("::/96", "IPv4-compatible"),
    ("64:ff9b:1::/48", "local-use NAT64"), ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"), ("2001:2::/48", "benchmarking"),
    ("2001::/23", "IETF protocol"), ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"), ("5f00::/16", "SRv6"), ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"), ("fec0::/10", "site-local"), ("ff00::/8", "multicast"))
V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv4 in the low 32 bits
# Browsers' (WHATWG) IPv4 spellings: 127.1, 2130706433, 0x7f.0.0.1, 0177.0.0.1, 0 ...
_NUMERIC_HOST = re.compile(r"^[0-9A-Fa-fXx.]+$")


class UnsafeTarget(OSError):
    """The target is (or resolves to) an address webhooks may not reach."""


def literal(host: str) -> IP | None:
    """The address a URL's host spells, in any spelling resolvers accept; None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:  # inet_aton takes the same short, decimal, hex and octal forms getaddrinfo does
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            return None
    return None


def not_global(address: IP) -> str | None:
    """What kind of address this is when it is not global unicast, else None."""
    if address.version == 4:
        return _first(address, V4_NOT_GLOBAL)
    if address.ipv4_mapped is not None:
        return _embedded(address.ipv4_mapped, "IPv4-mapped")
    if address in NAT64:
        return _embedded(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64")
    if address.sixtofour is not None:
        return _embedded(address.sixtofour, "6to4")
    kind = _first(address, V6_NOT_GLOBAL)
    if kind is None and address not in V6_GLOBAL_UNICAST:
        kind = "reserved"
    return kind


def _first(address: IP, table) -> str | None:
    return next((kind for net, kind in table if address in net), None)


def _embedded(v4: ipaddress.IPv4Address, form: str) -> str | None:
    kind = _first(v4, V4_NOT_GLOBAL)
    return None if kind is None else f"{kind} ({form})"


def networks(entries: Iterable[str], setting: str) -> list:
    try:
        return [ipaddress.ip_network(e, strict=False) for e in entries]
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None


class Targets:
    """The policy: global unicast, or inside WEBHOOK_ALLOWED_NETWORKS; and, when
    WEBHOOK_ALLOWED_HOSTS is set, one of its names or inside its CIDRs as well."""

    def __init__(self, allowed_hosts: Iterable[str] = (), allowed_networks: Iterable[str] = ()):
        self.opened = networks(allowed_networks, "WEBHOOK_ALLOWED_NETWORKS")
        self.names: set[str] = set()
        self.hosts_networks: list = []
        for entry in allowed_hosts:
            try:
                self.hosts_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry.lower().rstrip("."))
        self.restricted = bool(self.names or self.hosts_networks)
        # None: the system's (getaddrinfo in a thread), made in the loop; tests script one.
        self.dns: AbstractResolver | None = None

    def refusal(self, host: str, addresses: Iterable[IP]) -> str | None:
        """Why `host` (resolving to `addresses`) may not be reached, or None."""
        addresses = [a.ipv4_mapped if a.version == 6 and a.ipv4_mapped else a
                     for a in addresses]
        for address in addresses:
            if any(address in net for net in self.opened):
                continue
            kind = not_global(address)
            if kind is not None:
                verb = "is" if literal(host) is not None else "resolves to"
                return (f"{host} {verb} a {kind} address: webhooks reach only global "
                        "unicast addresses (WEBHOOK_ALLOWED_NETWORKS opens others)")
        if not self.restricted or host.lower().rstrip(".") in self.names:
            return None
        if addresses and all(any(a in n for n in self.hosts_networks) for a in addresses):
            return None
        return f"{host} is not in WEBHOOK_ALLOWED_HOSTS"

    async def resolve(self, host: str, port: int = 0,
                      family: int = socket.AF_UNSPEC) -> list:
        """DNS's answer for `host`, refused (UnsafeTarget) when any address is."""
        address = literal(host)
        if address is not None:
            infos = [{"hostname": host, "host": str(address), "port": port,
                      "family": socket.AF_INET if address.version == 4 else socket.AF_INET6,
                      "proto": 0, "flags": socket.AI_NUMERICHOST}]
        else:
            if self.dns is None:
                self.dns = ThreadedResolver()
            infos = await self.dns.resolve(host, port, family)
        reason = self.refusal(host, [ipaddress.ip_address(i["host"]) for i in infos])
        if reason is not None:
            raise UnsafeTarget(reason)
        return infos


class GuardedResolver(AbstractResolver):
    """The sender's resolver: what it answers is what the connector connects to."""

    def __init__(self, targets: Targets):
        self.targets = targets

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list:
        return await self.targets.resolve(host, port, family)

    async def close(self) -> None:
        if self.targets.dns is not None:
            await self.targets.dns.close()
