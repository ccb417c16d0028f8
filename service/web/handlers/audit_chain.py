"""Tamper evidence over HTTP: the signed checkpoint, the public key, proofs between them."""
from __future__ import annotations

from aiohttp import web

from service.app import chain
from service.web import audit_schemas as s
from service.web.envelope import envelope
from service.web.handlers.common import connection, operation, principal, query
from service.web.keys import SIGNER

AUDIT = "audit:read"
TAG = "Audit"


@operation(scope=AUDIT, tag=TAG, summary="The enterprise's hash-chain head, signed",
           description="Keep it: a later proof (GET /audit/proof/) shows that the history "
                       "up to it did not change. docs/audit-chain.md says how to check it.",
           response=s.CheckpointEnvelope)
async def checkpoint(request: web.Request) -> web.Response:
    async with connection(request) as conn:
        found = await chain.checkpoint(conn, principal(request).enterprise_id,
                                       request.app[SIGNER])
    return envelope(found)


@operation(scope=AUDIT, tag=TAG, summary="The key that signs checkpoints (Ed25519)",
           response=s.PublicKeyEnvelope)
async def public_key(request: web.Request) -> web.Response:
    return envelope(chain.public_key(request.app[SIGNER]))


@operation(scope=AUDIT, tag=TAG, summary="The chain between two checkpoints",
           description="The enterprise's events with from < position <= to in chain order, "
                       "each as its canonical bytes and stored chain hash: starting from the "
                       "older checkpoint's chain_hash, sha256(previous || bytes) of each must "
                       "end in the newer one's. Paged: at most `limit` events, then next_from.",
           query=s.ProofQuery, response=s.ProofEnvelope)
async def proof(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        found = await chain.proof(conn, principal(request).enterprise_id, q["from_"],
                                  q.get("to"), q["limit"])
    found["next"] = (None if found["next_from"] is None else
                     str(request.url.update_query({"from": found["next_from"],
                                                   "to": found["to"]})))
    return envelope(found)


routes = [
    ("GET", "/audit/checkpoint/", checkpoint),
    ("GET", "/audit/public-key/", public_key),
    ("GET", "/audit/proof/", proof),
]
