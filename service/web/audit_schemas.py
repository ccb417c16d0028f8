"""Schemas of the tamper-evidence reads: checkpoints, the public key, proofs."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from service.web.schemas import Envelope

_POSITION = validate.Range(0, 2**63 - 1)


class Checkpoint(Schema):
    format = fields.String(metadata={"description": "pipeline-runs checkpoint v1"})
    enterprise_id = fields.String()
    position = fields.Integer(metadata={"description": "Position of the chain's last event "
                                                       "(0: no events yet)"})
    events = fields.Integer(metadata={"description": "Events in the chain up to `position`"})
    chain_hash = fields.String(metadata={"description": "The chain hash at `position`, hex "
                                                        "(64 zeros: the genesis)"})
    at = fields.String(metadata={"description": "When the checkpoint was taken (RFC 3339, UTC)"})
    algorithm = fields.String(metadata={"description": "Ed25519"})
    public_key = fields.String(metadata={"description": "The signing key, raw 32 bytes, hex"})
    signature = fields.String(metadata={
        "description": "Ed25519 signature, hex, of the lines format, enterprise_id, position, "
                       "events, chain_hash, at, each ending in \\n (docs/audit-chain.md)"})


class PublicKey(Schema):
    algorithm = fields.String()
    public_key = fields.String(metadata={"description": "Raw 32 bytes, hex"})
    format = fields.String()


class ProofQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    from_ = fields.Integer(data_key="from", load_default=0, validate=_POSITION, metadata={
        "description": "Position of the older checkpoint (exclusive; 0: the genesis)"})
    to = fields.Integer(validate=_POSITION, metadata={
        "description": "Position of the newer checkpoint (inclusive; default: the head now; "
                       "less than `from`: no events)"})
    limit = fields.Integer(load_default=1000, validate=validate.Range(1, 1000),
                           metadata={"description": "Events per page"})


class ProofEvent(Schema):
    position = fields.Integer()
    canonical = fields.String(metadata={"description": "The event's canonical bytes, base64"})
    chain_hash = fields.String(allow_none=True, metadata={"description": "As stored, hex"})


class Proof(Schema):
    from_ = fields.Integer(data_key="from")
    to = fields.Integer()
    events = fields.List(fields.Nested(ProofEvent))
    next_from = fields.Integer(allow_none=True, metadata={
        "description": "Pass as `from` (same `to`) for the rest; null: the proof is complete"})
    next = fields.Url(allow_none=True, metadata={"description": "The next page; null at the end"})


CheckpointEnvelope = type("CheckpointEnvelope", (Envelope,), {"content": fields.Nested(Checkpoint)})
PublicKeyEnvelope = type("PublicKeyEnvelope", (Envelope,), {"content": fields.Nested(PublicKey)})
ProofEnvelope = type("ProofEnvelope", (Envelope,), {"content": fields.Nested(Proof)})
