"""The envelope's encoder writes asyncpg's UUIDs (what every row holds) as the standard
library's encoder does, the first time and every time after (envelope._default remembers
their type), and still refuses what it cannot encode."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID

from service.web import envelope


def test_row_values_encode_as_the_standard_encoder_does():
    row = {"id": PgUUID("6f1c1b9e-52d4-4a43-9d8b-0c6a2b1e4f00"), "plain": uuid.uuid4(),
           "at": datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=timezone.utc), "n": [1, "x"]}
    expected = envelope.dumps(row).encode()
    for _ in range(2):  # the second time, asyncpg's UUID type is a known one
        assert json.loads(envelope.dumps_bytes(row)) == json.loads(expected)
    assert PgUUID in envelope._UUID_TYPES


def test_what_neither_encoder_takes_is_still_refused():
    with pytest.raises(TypeError):
        envelope.dumps_bytes({"x": object()})
