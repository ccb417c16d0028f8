"""Sending one webhook: the target check (webhook_targets.py), signing, the POST.

Redirects are not followed. A failure is told in our words (the status code and its
standard phrase, "could not connect", "no answer within"), never with the receiver's body:
a receiver's answer must not carry what it found back to the subscriber.
"""
from __future__ import annotations

import base64
import contextlib
import json
import secrets
import uuid
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Iterator
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks.webhooks import Webhook

from service.app.webhook_targets import GuardedResolver, Targets, UnsafeTarget, literal
from service.domain.errors import BadRequest, TooManyRequests

__all__ = ["Outcome", "Sender", "Targets", "UnsafeTarget", "check_url", "new_secret",
           "to_json"]

PINGS_PER_ENTERPRISE = 2  # pings out at once per enterprise per process; more: 429
RESPONSE_CAP = 4096  # bytes of a receiver's answer read (then dropped: the connection is reused)
COULD_NOT_CONNECT = "could not connect"  # refused, reset, closed, not HTTP: all the same to us


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def check_url(url: str, targets: Targets) -> None:
    """A subscription's URL: http(s), a host, and a host webhooks may reach (else 400)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed [host] or a port out of range
        parts, port = urlsplit("invalid:"), -1
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1:
        raise BadRequest("invalid input", {"errors": {"url": ["must be an http or https URL"]}})
    try:
        await targets.resolve(parts.hostname, port or 0)
    except UnsafeTarget as exc:
        raise BadRequest("invalid input", {"errors": {"url": [str(exc)]}}) from None
    except (OSError, UnicodeError):  # not resolvable now (e.g. a label over 63 characters):
        pass  # accepted; every delivery resolves and checks again


def failure(status: int) -> str:
    """A non-2xx answer in our words: the code and its standard phrase."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "unknown status"
    if 300 <= status < 400:
        phrase += " (redirects are not followed)"
    return f"HTTP {status}: {phrase}"


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
        self.pinging: Counter[str] = Counter()  # enterprise -> pings out

    async def start(self) -> None:
        # No connector-wide limit: one shared pool of connections would let one tenant's
        # slow receivers queue everyone's sends. The dispatcher bounds deliveries (per
        # enterprise too), ping_slot bounds pings.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=GuardedResolver(self.targets), limit=0),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @contextlib.contextmanager
    def ping_slot(self, enterprise_id: str) -> Iterator[None]:
        """One of the enterprise's few pings out at once (else 429): a ping waits on the
        receiver for up to the timeout, and one tenant's many must not cost the others."""
        if self.pinging[enterprise_id] >= PINGS_PER_ENTERPRISE:
            raise TooManyRequests(f"this enterprise already has {PINGS_PER_ENTERPRISE} pings "
                                  "out: retry when they are answered",
                                  retry_after=max(1, round(self.timeout)))
        self.pinging[enterprise_id] += 1
        try:
            yield
        finally:
            self.pinging[enterprise_id] -= 1
            if self.pinging[enterprise_id] <= 0:
                del self.pinging[enterprise_id]

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
            host = urlsplit(url).hostname or ""
            if literal(host) is not None:  # the connector skips its resolver for an address
                await self.targets.resolve(host)
            async with self._session.post(url, data=body.encode(), headers=headers,
                                          allow_redirects=False) as resp:
                await resp.content.read(RESPONSE_CAP)
                status = resp.status
        except TimeoutError:
            return Outcome(None, _ms(started), f"no answer within {self.timeout:g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Outcome(None, _ms(started), _refused(exc) or COULD_NOT_CONNECT)
        return Outcome(status, _ms(started), None if 200 <= status < 300 else failure(status))


def _refused(exc: BaseException) -> str | None:
    """The target check's reason when that is what failed (maybe wrapped by aiohttp)."""
    while exc is not None:
        if isinstance(exc, UnsafeTarget):
            return str(exc)
        exc = exc.__cause__ or getattr(exc, "os_error", None)
    return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
