"""Tamper evidence: signed checkpoints of an enterprise's hash chain, proofs, verification."""
from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import asyncpg

from service.domain import chain as rules
from service.infra.signing import Signer
from service.store import chain as store


async def checkpoint(conn: asyncpg.Connection, enterprise_id: str, signer: Signer) -> dict:
    """The enterprise's chain head now, signed (an enterprise without events: the genesis)."""
    row = await store.head(conn, enterprise_id)
    position, events, chain_hash = (row["position"], row["events"], row["chain_hash"].hex()) \
        if row else (0, 0, rules.GENESIS.hex())
    at = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    message = rules.checkpoint_message(enterprise_id, position, events, chain_hash, at)
    return {"format": rules.CHECKPOINT_FORMAT, "enterprise_id": enterprise_id,
            "position": position, "events": events, "chain_hash": chain_hash, "at": at,
            "algorithm": "Ed25519", "public_key": signer.public_key,
            "signature": signer.sign(message)}


def public_key(signer: Signer) -> dict:
    return {"algorithm": "Ed25519", "public_key": signer.public_key,
            "format": rules.CHECKPOINT_FORMAT}


async def proof(conn: asyncpg.Connection, enterprise_id: str, after: int, to: int | None,
                limit: int) -> dict:
    """The events (after, to] in chain order, at most `limit`: each one's canonical bytes
    (base64) and chain hash; `next_from` continues the proof (None: complete)."""
    if to is None:
        row = await store.head(conn, enterprise_id)
        to = row["position"] if row else 0
    rows = await store.proof_page(conn, enterprise_id, after, to, limit)
    more = len(rows) == limit and rows[-1]["position"] < to
    return {"from": after, "to": to,
            "events": [{"position": r["position"],
                        "canonical": base64.b64encode(r["canonical"]).decode(),
                        "chain_hash": r["chain_hash"].hex() if r["chain_hash"] else None}
                       for r in rows],
            "next_from": rows[-1]["position"] if more else None}


async def page_note(conn: asyncpg.Connection, enterprise_id: str, positions: list[int]) -> dict:
    """What the pages show: the head now, and whether each shown event's link holds."""
    row = await store.head(conn, enterprise_id)
    links = await store.links_hold(conn, enterprise_id, positions) if positions else {}
    return {"checkpoint": row["position"] if row else 0, "events": row["events"] if row else 0,
            "links": links, "broken": sorted(p for p, ok in links.items() if not ok)}


@dataclass
class Break:
    enterprise_id: str
    position: int
    event_id: str | None
    reason: str


async def verify_chains(conn: asyncpg.Connection, connect: Callable | None = None,
                        parts: int = 1) -> tuple[int, list[Break]]:
    """Every enterprise's chain recomputed link by link: (chains, the first break of each).

    connect: opens more connections, so that `parts` ranges of positions are checked side
    by side (the hashing is CPU-bound in the database: one backend per core).
    """
    breaks = {}
    for r in await _broken_links(conn, connect, parts):
        reason = ("not chained" if r["unchained"] else
                  "its chain_hash does not follow from the previous event's and its own bytes")
        breaks[r["enterprise_id"]] = Break(r["enterprise_id"], r["position"], str(r["id"]),
                                           reason)
    for r in await store.head_mismatches(conn):
        if r["enterprise_id"] in breaks:
            continue
        reason = (f"the head says position {r['head_position']} ({r['head_events']} events), "
                  f"the last event is at {r['last_position']} ({r['last_events']} events)")
        breaks[r["enterprise_id"]] = Break(r["enterprise_id"], r["head_position"] or 0, None,
                                           reason)
    return await store.chains(conn), sorted(breaks.values(), key=lambda b: b.enterprise_id)


async def _broken_links(conn: asyncpg.Connection, connect: Callable | None,
                        parts: int) -> list[asyncpg.Record]:
    """The first broken link of each enterprise, checked in `parts` position ranges."""
    if connect is None or parts <= 1:
        return await store.broken_links(conn)
    step = max(1, -(-await store.last_position(conn) // parts))
    ranges = [(k * step, (k + 1) * step if k < parts - 1 else 2**63 - 1) for k in range(parts)]

    async def part(after: int, upto: int) -> list[asyncpg.Record]:
        other = await connect()
        try:
            return await store.broken_links(other, after, upto)
        finally:
            await other.close()

    first: dict[str, asyncpg.Record] = {}
    for found in await asyncio.gather(*(part(*r) for r in ranges)):
        for r in found:
            seen = first.get(r["enterprise_id"])
            if seen is None or r["position"] < seen["position"]:
                first[r["enterprise_id"]] = r
    return list(first.values())
