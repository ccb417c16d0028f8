"""Validate each request against the schemas its handler declared (via aiohttp-apispec)."""
from __future__ import annotations

from aiohttp import web

from .keys import PARSED
from .parser import Parser

_PARSER = Parser()  # stateless; shared by every app


@web.middleware
async def validation_middleware(request: web.Request, handler) -> web.StreamResponse:
    # aiohttp-apispec's decorators record the schemas on the handler; we parse them here,
    # storing results under a typed request key instead of the library's string keys.
    parsed: dict = {}
    for schema in getattr(request.match_info.handler, "__schemas__", ()):
        parsed[schema["put_into"]] = await _PARSER.parse(
            schema["schema"], request, location=schema["location"], unknown=None)
    request[PARSED] = parsed
    return await handler(request)
