"""The hash chain's reads: an enterprise's head, proof pages, and verify's link checks.

The chain itself is written by schema.sql's trigger on every append (run_event_canonical
defines the bytes); nothing here writes.
"""
from __future__ import annotations

import asyncpg

_FIELDS = ("position", "id", "enterprise_id", "pipeline_id", "run_id", "version", "type",
           "from_status", "to_status", "actor", "actor_id", "occurred_at", "data")
_ZERO = f"'\\x{'00' * 32}'::bytea"  # the genesis: the "previous hash" of a first event


def _canonical(alias: str = "") -> str:
    """schema.sql's run_event_canonical() of a run_events row (`alias.`: of that alias)."""
    return f"run_event_canonical({', '.join(alias + f for f in _FIELDS)})"


_CANONICAL = _canonical()

HEAD = """
SELECT position, events, chain_hash FROM event_chain_heads WHERE enterprise_id = $1"""
# Events (from, to] of one enterprise in chain order: what a proof carries.
PROOF_PAGE = f"""
SELECT position, {_CANONICAL} AS canonical, chain_hash FROM run_events
WHERE enterprise_id = $1 AND position > $2 AND position <= $3
ORDER BY position LIMIT $4"""
# Every link that does not hold, the first of each enterprise: a link holds when an
# event's chain_hash is sha256(the previous event's chain_hash || its canonical bytes).
# Each link is checked on its own (the stored previous hash), so the events can be checked
# in parts, side by side: those with $1 < position <= $2 (the first of each enterprise in
# a part looks its previous event up).
BROKEN_LINKS = f"""
SELECT DISTINCT ON (enterprise_id) enterprise_id, position, id, chain_hash IS NULL AS unchained
FROM (SELECT e.enterprise_id, e.position, e.id, e.chain_hash,
             sha256(coalesce(lag(e.chain_hash) OVER w,
                             (SELECT p.chain_hash FROM run_events p
                              WHERE p.enterprise_id = e.enterprise_id AND p.position < e.position
                              ORDER BY p.position DESC LIMIT 1), {_ZERO})
                    || {_canonical('e.')}) AS expected
      FROM run_events e WHERE e.position > $1 AND e.position <= $2
      WINDOW w AS (PARTITION BY e.enterprise_id ORDER BY e.position)) AS l
WHERE chain_hash IS DISTINCT FROM expected
ORDER BY enterprise_id, position"""
# The last position of any chain: where the parts of the check end.
LAST_POSITION = "SELECT coalesce(max(position), 0) FROM event_chain_heads"
# Heads that are not the last event of their enterprise (an event deleted at the end, a
# partition dropped), and events of enterprises without a head.
HEAD_MISMATCHES = """
WITH last AS (
    SELECT enterprise_id, max(position) AS position, count(*) AS events
    FROM run_events GROUP BY enterprise_id
)
SELECT coalesce(h.enterprise_id, l.enterprise_id) AS enterprise_id,
       h.position AS head_position, h.events AS head_events,
       l.position AS last_position, l.events AS last_events
FROM event_chain_heads h FULL JOIN last l USING (enterprise_id)
WHERE h.position IS DISTINCT FROM l.position OR h.events IS DISTINCT FROM l.events
   OR h.chain_hash IS DISTINCT FROM (SELECT e.chain_hash FROM run_events e
                                     WHERE e.enterprise_id = l.enterprise_id
                                       AND e.position = l.position)
ORDER BY 1"""
COUNT_CHAINED = "SELECT count(*) FROM event_chain_heads"
# Whether each given event's link holds (the pages' marks): one index probe per event for
# its predecessor in the enterprise's chain.
LINKS_HOLD = f"""
SELECT e.position, e.chain_hash IS NOT NULL AND e.chain_hash = sha256(coalesce(
           (SELECT p.chain_hash FROM run_events p
            WHERE p.enterprise_id = e.enterprise_id AND p.position < e.position
            ORDER BY p.position DESC LIMIT 1), {_ZERO})
       || {_canonical('e.')}) AS holds
FROM run_events e WHERE e.enterprise_id = $1 AND e.position = ANY($2::bigint[])"""


async def head(conn: asyncpg.Connection, enterprise_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(HEAD, enterprise_id)


async def proof_page(conn: asyncpg.Connection, enterprise_id: str, after: int, to: int,
                     limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(PROOF_PAGE, enterprise_id, after, to, limit)


async def broken_links(conn: asyncpg.Connection, after: int = 0,
                       upto: int = 2**63 - 1) -> list[asyncpg.Record]:
    return await conn.fetch(BROKEN_LINKS, after, upto)


async def last_position(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(LAST_POSITION)


async def head_mismatches(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(HEAD_MISMATCHES)


async def chains(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(COUNT_CHAINED)


async def links_hold(conn: asyncpg.Connection, enterprise_id: str,
                     positions: list[int]) -> dict[int, bool]:
    rows = await conn.fetch(LINKS_HOLD, enterprise_id, positions)
    return {r["position"]: r["holds"] for r in rows}
