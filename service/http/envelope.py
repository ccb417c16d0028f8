"""The `{code, message, content}` envelope every response is wrapped in."""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()  # RFC 3339 with offset: asyncpg returns aware datetimes
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))


def envelope(content: Any = None, status: int = 200, message: str = "OK",
             headers: dict[str, str] | None = None) -> web.Response:
    body = dumps({"code": status, "message": message, "content": content})
    return web.Response(text=body, status=status, content_type="application/json", headers=headers)
