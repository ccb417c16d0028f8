"""Webhook subscriptions, their queued deliveries and the audit of attempts (SQL only)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from service.store.events import EVENT_COLUMNS, PIPELINE_NAME, RUN_EVENTS, public_event
from service.store.locks import WEBHOOKS_LOCK_CLASS

COLUMNS = """enterprise_id, id, url, event_types, pipeline_id, description, is_active,
             disabled_reason, disabled_at, created_by, created_at, updated_at"""

# Held to commit by a create: the count below sees every earlier create of the enterprise.
LOCK_CREATES = f"SELECT pg_advisory_xact_lock({WEBHOOKS_LOCK_CLASS}, hashtext($1))"
# A new subscription starts at the feed's present: it delivers what happens from now on.
# Nothing is inserted when the enterprise already has $10 (the cap; NULL: no cap).
INSERT = f"""
INSERT INTO webhooks (enterprise_id, id, url, event_types, pipeline_id, description, is_active,
                      secret, created_by, cursor)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9,
       (SELECT coalesce(max(position), 0) FROM run_events WHERE enterprise_id = $1)
WHERE $10::bigint IS NULL OR (SELECT count(*) FROM webhooks WHERE enterprise_id = $1) < $10
RETURNING {COLUMNS}
"""
GET = f"SELECT {COLUMNS} FROM webhooks WHERE enterprise_id = $1 AND id = $2"
GET_SECRET = "SELECT secret, url FROM webhooks WHERE enterprise_id = $1 AND id = $2"
LIST = f"""
SELECT {COLUMNS}, count(*) OVER () AS total_count FROM webhooks WHERE enterprise_id = $1
ORDER BY created_at, id LIMIT $2 OFFSET $3
"""
# Enabling clears the service's reason and gives failed deliveries a fresh schedule: they
# are delivered again (nothing is skipped); the cursor never moved while it was off.
UPDATE = f"""
WITH updated AS (
    UPDATE webhooks SET url = $3, event_types = $4, pipeline_id = $5, description = $6,
           is_active = $7, updated_at = now(),
           disabled_reason = CASE WHEN $7 THEN NULL ELSE disabled_reason END,
           disabled_at = CASE WHEN $7 THEN NULL ELSE disabled_at END
    WHERE enterprise_id = $1 AND id = $2
    RETURNING {COLUMNS}
), retried AS (
    UPDATE webhook_deliveries SET state = 'pending', failures = 0, next_attempt_at = now()
    WHERE enterprise_id = $1 AND webhook_id = $2 AND state = 'failed' AND $7
)
SELECT * FROM updated
"""
DELETE = f"DELETE FROM webhooks WHERE enterprise_id = $1 AND id = $2 RETURNING {COLUMNS}"
ROTATE = f"""
UPDATE webhooks SET secret = $3, updated_at = now() WHERE enterprise_id = $1 AND id = $2
RETURNING {COLUMNS}
"""

# --- the dispatcher ----------------------------------------------------------------------

# Whether any subscription is active (of any enterprise): while none is, a commit gives
# the dispatcher nothing to do (app/dispatcher.py).
ANY_ACTIVE = "SELECT EXISTS (SELECT FROM webhooks WHERE is_active)"
# Active subscriptions behind the feed, each claimed by one worker at a time.
CLAIM_BEHIND = """
SELECT w.enterprise_id, w.id, w.cursor, w.event_types, w.pipeline_id FROM webhooks w
WHERE w.is_active AND EXISTS (
    SELECT 1 FROM run_events e WHERE e.enterprise_id = w.enterprise_id AND e.position > w.cursor)
FOR UPDATE SKIP LOCKED
LIMIT $1
"""
# Queue the next events after the cursor that match, and move the cursor past all scanned.
FAN_OUT = """
WITH scanned AS (
    SELECT e.id, e.position, e.run_id, e.version, e.type, e.pipeline_id, e.occurred_at
    FROM run_events e
    WHERE e.enterprise_id = $1 AND e.position > $3
    ORDER BY e.position LIMIT $6
), queued AS (
    INSERT INTO webhook_deliveries (enterprise_id, webhook_id, position, event_id, run_id,
                                    version, occurred_at)
    SELECT $1, $2, s.position, s.id, s.run_id, s.version, s.occurred_at FROM scanned s
    WHERE ($4::text[] IS NULL OR s.type = ANY($4)) AND ($5::uuid IS NULL OR s.pipeline_id = $5)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
UPDATE webhooks SET cursor = (SELECT max(position) FROM scanned)
WHERE enterprise_id = $1 AND id = $2 AND EXISTS (SELECT 1 FROM scanned)
RETURNING (SELECT count(*) FROM queued) AS queued
"""
# Due deliveries that head their run (no earlier undelivered event of the same run for the
# same subscription), leased for $2 seconds, taken round-robin across enterprises: every
# enterprise's first due delivery, then every one's second ..., each enterprise up to its
# share ($5) less what this process already sends for it ($3 enterprises, $4 counts). So a
# tenant with many slow receivers fills its share, never the others' slots.
# SKIP LOCKED: concurrent workers take others (FOR UPDATE cannot sit beside the window,
# hence the last step; its WHERE is checked again on the row as locked).
CLAIM_DUE = """
WITH ready AS (
    SELECT d.enterprise_id, d.webhook_id, d.position, d.next_attempt_at,
           row_number() OVER (PARTITION BY d.enterprise_id
                              ORDER BY d.next_attempt_at, d.position) AS turn
    FROM webhook_deliveries d
    JOIN webhooks w ON w.enterprise_id = d.enterprise_id AND w.id = d.webhook_id AND w.is_active
    WHERE d.state = 'pending' AND d.next_attempt_at <= now()
      AND (d.claimed_until IS NULL OR d.claimed_until < now())
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.enterprise_id = d.enterprise_id AND p.webhook_id = d.webhook_id
            AND p.run_id = d.run_id AND p.position < d.position AND p.state <> 'delivered')
), fair AS (
    SELECT r.enterprise_id, r.webhook_id, r.position FROM ready r
    LEFT JOIN unnest($3::text[], $4::int[]) AS b(enterprise_id, busy) USING (enterprise_id)
    WHERE r.turn <= $5 - coalesce(b.busy, 0)
    ORDER BY r.turn, r.next_attempt_at, r.position
    LIMIT $1
), due AS (
    SELECT d.enterprise_id, d.webhook_id, d.position FROM webhook_deliveries d
    JOIN fair f USING (enterprise_id, webhook_id, position)
    WHERE d.state = 'pending' AND (d.claimed_until IS NULL OR d.claimed_until < now())
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d SET claimed_until = now() + make_interval(secs => $2),
       attempts = d.attempts + 1
FROM due, webhooks w
WHERE d.enterprise_id = due.enterprise_id AND d.webhook_id = due.webhook_id
  AND d.position = due.position
  AND w.enterprise_id = d.enterprise_id AND w.id = d.webhook_id
RETURNING d.enterprise_id, d.webhook_id, d.position, d.event_id, d.run_id, d.version,
          d.occurred_at, d.attempts, d.failures, w.url, w.secret
"""
EVENT_AT = f"""
SELECT {EVENT_COLUMNS} FROM run_events e WHERE e.enterprise_id = $1 AND e.position = $2
"""
# An attempt's outcome lands only on the claim that made it ($4: the attempt number its
# claim gave, and the claim still held): a redelivery asked for while it was out
# (REDELIVER clears the claim) or another worker's claim after its lease ran out (a new
# attempt number) is left as it is, instead of being marked done by an older attempt.
_OWN_CLAIM = "attempts = $4 AND claimed_until IS NOT NULL"
DELIVERED = f"""
UPDATE webhook_deliveries SET state = 'delivered', delivered_at = now(), failures = 0,
       claimed_until = NULL
WHERE enterprise_id = $1 AND webhook_id = $2 AND position = $3 AND {_OWN_CLAIM}
"""
# A failed attempt: the next one at $5, or (NULL) none left: the delivery failed for good.
FAILED = f"""
UPDATE webhook_deliveries SET failures = failures + 1, claimed_until = NULL,
       state = CASE WHEN $5::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
       next_attempt_at = coalesce($5, next_attempt_at)
WHERE enterprise_id = $1 AND webhook_id = $2 AND position = $3 AND {_OWN_CLAIM}
"""
DISABLE = """
UPDATE webhooks SET is_active = false, disabled_reason = $3, disabled_at = now(),
       updated_at = now()
WHERE enterprise_id = $1 AND id = $2 AND is_active
RETURNING id
"""
RECORD_ATTEMPT = """
INSERT INTO webhook_attempts (enterprise_id, webhook_id, event_id, event_type, attempt,
                              attempted_at, status_code, latency_ms, error, next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""
ATTEMPTS = """
SELECT event_id, event_type, attempt, attempted_at, status_code, latency_ms, error,
       next_attempt_at, count(*) OVER () AS total_count
FROM webhook_attempts WHERE enterprise_id = $1 AND webhook_id = $2
ORDER BY id DESC LIMIT $3 OFFSET $4
"""
REDELIVER = """
UPDATE webhook_deliveries SET state = 'pending', failures = 0, next_attempt_at = now(),
       claimed_until = NULL
WHERE enterprise_id = $1 AND webhook_id = $2 AND event_id = $3
RETURNING position
"""


def public(row: asyncpg.Record) -> dict[str, Any]:
    hook = dict(row)
    hook.pop("total_count", None)
    return hook


async def create(conn: asyncpg.Connection, enterprise_id: str, fields: dict[str, Any],
                 secret: str, created_by: int | None, cap: int | None) -> dict[str, Any] | None:
    """The new subscription, or None: the enterprise has `cap` already (None: no cap)."""
    async with conn.transaction():
        await conn.execute(LOCK_CREATES, enterprise_id)
        row = await conn.fetchrow(INSERT, enterprise_id, uuid.uuid4(), fields["url"],
                                  fields.get("event_types"), fields.get("pipeline_id"),
                                  fields.get("description", ""), fields.get("is_active", True),
                                  secret, created_by, cap)
    return None if row is None else public(row)


async def get(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID):
    row = await conn.fetchrow(GET, enterprise_id, webhook_id)
    return None if row is None else public(row)


async def secret_of(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID):
    return await conn.fetchrow(GET_SECRET, enterprise_id, webhook_id)


async def page(conn: asyncpg.Connection, enterprise_id: str, limit: int,
               offset: int) -> tuple[int, list[dict]]:
    rows = await conn.fetch(LIST, enterprise_id, limit, offset)
    total = rows[0]["total_count"] if rows else 0
    return total, [public(r) for r in rows]


async def update(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                 f: dict[str, Any]):
    row = await conn.fetchrow(UPDATE, enterprise_id, webhook_id, f["url"], f.get("event_types"),
                              f.get("pipeline_id"), f.get("description", ""),
                              f.get("is_active", True))
    return None if row is None else public(row)


async def delete(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID):
    row = await conn.fetchrow(DELETE, enterprise_id, webhook_id)
    return None if row is None else public(row)


async def rotate(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                 secret: str):
    row = await conn.fetchrow(ROTATE, enterprise_id, webhook_id, secret)
    return None if row is None else public(row)


async def any_active(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval(ANY_ACTIVE)


async def fan_out(conn: asyncpg.Connection, batch: int) -> int:
    """Queue deliveries for the subscriptions behind the feed; how many were queued."""
    queued = 0
    async with conn.transaction():
        for hook in await conn.fetch(CLAIM_BEHIND, 100):
            queued += await conn.fetchval(FAN_OUT, hook["enterprise_id"], hook["id"],
                                          hook["cursor"], hook["event_types"],
                                          hook["pipeline_id"], batch) or 0
    return queued


async def claim_due(conn: asyncpg.Connection, limit: int, lease_seconds: float, share: int,
                    busy: dict[str, int]) -> list:
    """Up to `limit` due deliveries, round-robin, none past an enterprise's `share` less
    its `busy` ones."""
    return await conn.fetch(CLAIM_DUE, limit, lease_seconds, list(busy), list(busy.values()),
                            share)


async def event_and_run(conn: asyncpg.Connection, enterprise_id: str, position: int):
    """The event at `position` and its run's events up to it (to fold the run after it)."""
    event = await conn.fetchrow(EVENT_AT, enterprise_id, position)
    history = await conn.fetch(RUN_EVENTS, enterprise_id, event["pipeline_id"], event["run_id"])
    name = await conn.fetchval(PIPELINE_NAME, enterprise_id, event["pipeline_id"])
    return public_event(event), [e for e in history if e["version"] <= event["version"]], name


async def delivered(conn: asyncpg.Connection, d: asyncpg.Record) -> bool:
    """The claimed delivery `d` (CLAIM_DUE's row) done; False: no longer its claim."""
    return await conn.execute(DELIVERED, d["enterprise_id"], d["webhook_id"], d["position"],
                              d["attempts"]) == "UPDATE 1"


async def failed(conn: asyncpg.Connection, d: asyncpg.Record, next_at: datetime | None) -> bool:
    """The claimed delivery `d` failed (next attempt at `next_at`, None: never); False: no
    longer its claim."""
    return await conn.execute(FAILED, d["enterprise_id"], d["webhook_id"], d["position"],
                              d["attempts"], next_at) == "UPDATE 1"


async def disable(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                  reason: str) -> bool:
    return await conn.fetchval(DISABLE, enterprise_id, webhook_id, reason) is not None


async def record_attempt(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                         a: dict[str, Any]) -> None:
    await conn.execute(RECORD_ATTEMPT, enterprise_id, webhook_id, a["event_id"],
                       a["event_type"], a["attempt"], a["attempted_at"], a["status_code"],
                       a["latency_ms"], a["error"], a["next_attempt_at"])


async def attempts(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                   limit: int, offset: int) -> tuple[int, list[dict]]:
    rows = await conn.fetch(ATTEMPTS, enterprise_id, webhook_id, limit, offset)
    total = rows[0]["total_count"] if rows else 0
    return total, [public(r) for r in rows]


async def redeliver(conn: asyncpg.Connection, enterprise_id: str, webhook_id: uuid.UUID,
                    event_id: uuid.UUID) -> bool:
    return await conn.fetchval(REDELIVER, enterprise_id, webhook_id, event_id) is not None
