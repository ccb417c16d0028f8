"""Webhook subscriptions: create, read, change, delete, rotate the secret, audit, ping."""
from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timezone
from typing import Any

import asyncpg

from service.app.webhook_http import Sender, Targets, check_url, new_secret, to_json
from service.domain.errors import Conflict, NotFound
from service.store import webhooks as store

PING = "webhook.ping"


def _found(hook: dict | None) -> dict:
    if hook is None:
        raise NotFound("webhook not found")
    return hook


async def check_target(targets: Targets, fields: dict[str, Any]) -> None:
    """A subscription's URL may be saved (else 400 naming why): called before create and
    replace, with no database connection held while DNS answers (a slow resolver, perhaps
    the caller's own, must not pin a pool connection)."""
    await check_url(fields["url"], targets)


async def create(conn: asyncpg.Connection, enterprise_id: str, fields: dict[str, Any],
                 created_by: int | None, cap: int) -> dict[str, Any]:
    """A new subscription (its URL checked by check_target), with its signing secret
    (answered this once); at most `cap` per enterprise, 0 for no cap (each one's deliveries
    share the enterprise's part of the dispatcher)."""
    secret = new_secret()
    hook = await store.create(conn, enterprise_id, fields, secret, created_by, cap or None)
    if hook is None:
        raise Conflict(f"the enterprise has {cap} webhooks, the most allowed "
                       "(WEBHOOK_MAX_PER_ENTERPRISE): delete one first",
                       {"limit": cap})
    return {**hook, "secret": secret}


async def get(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID) -> dict:
    return _found(await store.get(conn, enterprise_id, webhook_id))


async def page(conn: asyncpg.Connection, enterprise_id: str, limit: int, offset: int):
    return await store.page(conn, enterprise_id, limit, offset)


async def replace(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                  fields: dict[str, Any]) -> dict[str, Any]:
    """PUT: every field anew (the URL checked by check_target); is_active=true re-enables
    (failed deliveries are retried)."""
    async with conn.transaction():
        return _found(await store.update(conn, enterprise_id, webhook_id, fields))


async def delete(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID) -> dict:
    return _found(await store.delete(conn, enterprise_id, webhook_id))


async def rotate_secret(conn: asyncpg.Connection, enterprise_id: str,
                        webhook_id: uuid.UUID) -> dict[str, Any]:
    """A new secret, answered once; deliveries from now on are signed with it."""
    secret = new_secret()
    return {**_found(await store.rotate(conn, enterprise_id, webhook_id, secret)),
            "secret": secret}


async def attempts(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                   limit: int, offset: int):
    _found(await store.get(conn, enterprise_id, webhook_id))
    return await store.attempts(conn, enterprise_id, webhook_id, limit, offset)


async def redeliver(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                    event_id: uuid.UUID) -> dict[str, Any]:
    """Queue an event's delivery again (now, with a fresh retry schedule)."""
    hook = _found(await store.get(conn, enterprise_id, webhook_id))
    if not await store.redeliver(conn, enterprise_id, webhook_id, event_id):
        raise NotFound("no delivery of that event for this webhook")
    return {"webhook_id": hook["id"], "event_id": event_id, "state": "pending"}


async def ping_target(conn: asyncpg.Connection, enterprise_id: str,
                      webhook_id: uuid.UUID) -> asyncpg.Record:
    row = await store.secret_of(conn, enterprise_id, webhook_id)
    if row is None:
        raise NotFound("webhook not found")
    return row


async def send_ping(sender: Sender, target: asyncpg.Record, enterprise_id: str,
                    webhook_id: uuid.UUID) -> dict[str, Any]:
    """Send a signed webhook.ping now (no database connection held while it is out; a few
    per enterprise at once)."""
    message_id, now = uuid.uuid4(), datetime.now(timezone.utc)
    body = to_json({"type": PING, "timestamp": now, "data": {"webhook_id": webhook_id}})
    with sender.ping_slot(enterprise_id):
        outcome = await sender.send(target["url"], target["secret"], str(message_id), body)
    return {"event_id": message_id, "event_type": PING, "attempt": 1, "attempted_at": now,
            "status_code": outcome.status_code, "latency_ms": outcome.latency_ms,
            "error": outcome.error, "next_attempt_at": None, "delivered": outcome.ok}


async def record_ping(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                      attempt: dict[str, Any]) -> None:
    """Among the deliveries; a subscription deleted meanwhile just has no record."""
    with contextlib.suppress(asyncpg.ForeignKeyViolationError):
        await store.record_attempt(conn, enterprise_id, webhook_id, attempt)
