"""The hash chain's pure parts: a link, the genesis, and the bytes a checkpoint signs."""
from __future__ import annotations

import hashlib

# The "previous hash" of an enterprise's first event.
GENESIS = bytes(32)
CHECKPOINT_FORMAT = "pipeline-runs checkpoint v1"


def link(previous: bytes, canonical: bytes) -> bytes:
    """The chain hash of an event: sha256(previous chain hash || its canonical bytes)."""
    return hashlib.sha256(previous + canonical).digest()


def checkpoint_message(enterprise_id: str, position: int, events: int, chain_hash: str,
                       at: str) -> bytes:
    """What a checkpoint's Ed25519 signature covers: one field a line, UTF-8."""
    return "".join(f"{v}\n" for v in (CHECKPOINT_FORMAT, enterprise_id, position, events,
                                       chain_hash, at)).encode()
