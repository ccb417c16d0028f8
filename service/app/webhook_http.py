"""Sending one webhook: target safety (no link-local or metadata hosts), signing, the POST.

Safety is checked twice: when a subscription is saved (a clear 400) and when sending, by
the connector's resolver (DNS may answer differently later). Redirects are not followed
and only the first RESPONSE_CAP bytes of an answer are read.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import uuid
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.resolver import ThreadedResolver
from standardwebhooks.webhooks import Webhook

from service.domain.errors import BadRequest

RESPONSE_CAP = 4096  # bytes of a receiver's answer read (and 200 characters kept)
# Link-local (the cloud metadata endpoints live there) and the metadata addresses outside it.
BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"))

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(OSError):
    """The target resolves to an address webhooks may not reach."""


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Targets:
    """Which hosts webhooks may reach: never BLOCKED; only WEBHOOK_ALLOWED_HOSTS when set."""

    def __init__(self, allowed: Iterable[str] = ()):
        self.names: set[str] = set()
        self.networks: list = []
        for entry in allowed:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry.lower().rstrip("."))
        self.restricted = bool(self.names or self.networks)

    def refusal(self, host: str, addresses: Iterable[IP]) -> str | None:
        """Why `host` (resolving to `addresses`) is refused, or None."""
        addresses = [a.ipv4_mapped or a if isinstance(a, ipaddress.IPv6Address) else a
                     for a in addresses]
        for address in addresses:
            if any(address in net for net in BLOCKED):
                return f"{host} resolves to {address}: link-local and metadata addresses are refused"
        if not self.restricted or host.lower().rstrip(".") in self.names:
            return None
        if addresses and all(any(a in net for net in self.networks) for a in addresses):
            return None
        return f"{host} is not in WEBHOOK_ALLOWED_HOSTS"


def _literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def check_url(url: str, targets: Targets) -> None:
    """A subscription's URL: http(s), a host, and a host webhooks may reach (else 400)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed [host] or a port out of range
        parts, port = urlsplit("invalid:"), -1
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1:
        raise BadRequest("invalid input", {"errors": {"url": ["must be an http or https URL"]}})
    host = parts.hostname
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await ThreadedResolver().resolve(host, port or 0, socket.AF_UNSPEC)
        except (OSError, UnicodeError):  # e.g. a label over 63 characters (idna)
            infos = []  # not resolvable now: delivery retries (and checks again)
        addresses = [ipaddress.ip_address(i["host"]) for i in infos]
    reason = targets.refusal(host, addresses)
    if reason is not None:
        raise BadRequest("invalid input", {"errors": {"url": [reason]}})


class _SafeResolver(ThreadedResolver):
    """Resolves as usual, then refuses what Targets refuses (checked at every connect)."""

    def __init__(self, targets: Targets):
        super().__init__()
        self.targets = targets

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        infos = await super().resolve(host, port, family)
        reason = self.targets.refusal(host, [ipaddress.ip_address(i["host"]) for i in infos])
        if reason is not None:
            raise UnsafeTarget(reason)
        return infos


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(value) -> str:
    """A payload as the API writes JSON (RFC 3339 instants, UUIDs as strings)."""
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Sender:
    """One HTTP session for every delivery of a process; signs with standardwebhooks."""

    def __init__(self, targets: Targets, timeout: float):
        self.targets = targets
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=_SafeResolver(self.targets), limit=100),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, url: str, secret: str, message_id: str, body: str) -> Outcome:
        now = datetime.now(timezone.utc)
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(message_id, now, body),
        }
        started = time.perf_counter()
        try:
            literal = _literal(urlsplit(url).hostname or "")
            if literal is not None:  # no resolver runs for an address: check it here
                reason = self.targets.refusal(str(literal), [literal])
                if reason is not None:
                    raise UnsafeTarget(reason)
            async with self._session.post(url, data=body.encode(), headers=headers,
                                          allow_redirects=False) as resp:
                excerpt = (await resp.content.read(RESPONSE_CAP)).decode(errors="replace")
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                error = f"no answer within {self.timeout:g}s"
            return Outcome(None, _ms(started), error[:200])
        error = None if 200 <= status < 300 else f"HTTP {status}: {excerpt[:200]}".rstrip(": ")
        return Outcome(status, _ms(started), error)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
