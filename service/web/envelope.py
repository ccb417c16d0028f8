"""The `{code, message, content}` envelope every response is wrapped in.

Encoded with orjson when it is installed (the `fast` extra): the same JSON values as the
standard library's encoder (datetimes as RFC 3339 with their offset, UUIDs as strings),
written as UTF-8 instead of \\u escapes. Anything orjson refuses goes to the standard
encoder, so both accept and refuse the same values.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

try:
    import orjson
except ImportError:  # optional: the standard library does the same, slower
    orjson = None


# UUID subclasses seen (asyncpg's own UUID type, which orjson does not take for one): a
# list's page hands ~40 of them to _default, so they are recognised by type at once.
_UUID_TYPES: set[type] = {uuid.UUID}


def _default(value: Any) -> Any:
    kind = type(value)
    if kind in _UUID_TYPES:
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()  # RFC 3339 with offset: asyncpg returns aware datetimes
    if isinstance(value, uuid.UUID):
        _UUID_TYPES.add(kind)
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))


if orjson is not None:
    _ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS  # int keys become strings, as json.dumps does

    def dumps_bytes(value: Any) -> bytes:
        try:
            return orjson.dumps(value, default=_default, option=_ORJSON_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError is one; e.g. ints beyond 64 bits
            return dumps(value).encode()
else:
    def dumps_bytes(value: Any) -> bytes:
        return dumps(value).encode()


def envelope(content: Any = None, status: int = 200, message: str = "OK",
             headers: dict[str, str] | None = None) -> web.Response:
    body = dumps_bytes({"code": status, "message": message, "content": content})
    return web.Response(body=body, status=status, content_type="application/json",
                        charset="utf-8", headers=headers)
