"""Validate each request against the schemas its handler declared (via aiohttp-apispec).

Hot path: the common, valid shapes of the hottest requests (ids in the path, no query
string, a `{"status": ...}` body) are loaded by a fast loader compiled once per schema.
A fast loader accepts only input the schema would accept, and gives the very result the
schema would; anything else (every error included) goes through webargs, so the error
envelopes are webargs' own. tests/test_validation_fastpath.py holds them to that.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, Callable

from aiohttp import web
from asyncpg.pgproto.pgproto import UUID as PgUUID
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import Schema, ValidationError
from marshmallow import fields as ma_fields
from webargs.aiohttpparser import is_json_request

from service.domain.lifecycle import normalize_status
from service.web.schemas import Status
from service.web.parser import Parser

_PARSER = Parser()  # stateless; shared by every app
_SLOW = object()  # a fast loader's "not mine: let webargs decide"

FastLoader = Callable[[web.Request], Any]
_LOADERS: dict[int, tuple[Schema, FastLoader | None]] = {}


# One declared schema of a handler: (where the result goes, schema, location, fast loader).
Loader = tuple[str, Schema, str, "FastLoader | None"]


def loaders_of(handler) -> tuple[Loader, ...]:
    """The schemas a handler declared (aiohttp-apispec's decorators record them on it),
    each with its fast loader: resolved once per route (web/observe.py), not per request."""
    return tuple((schema["put_into"], schema["schema"], schema["location"],
                  _fast_loader(schema["schema"], schema["location"]))
                 for schema in getattr(handler, "__schemas__", ()))


async def parse(request: web.Request, loaders: tuple[Loader, ...]) -> dict:
    """The request's input by location, as its handler declared it (else a 400 envelope)."""
    parsed: dict = {}
    for put_into, schema, location, fast in loaders:
        result = _SLOW if fast is None else fast(request)
        if location == "json" and fast is not None:
            result = await result
        parsed[put_into] = (result if result is not _SLOW else
                            await _PARSER.parse(schema, request, location=location, unknown=None))
    return parsed


async def _load(request: web.Request, schema: Schema, location: str) -> Any:
    """One schema's input (tests compare it with webargs' own)."""
    loader = ("", schema, location, _fast_loader(schema, location))
    return (await parse(request, (loader,)))[""]


def _fast_loader(schema: Schema, location: str) -> FastLoader | None:
    entry = _LOADERS.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = _LOADERS[id(schema)] = (schema, _compile(schema, location))
    return entry[1]


def _plain(field: ma_fields.Field) -> bool:
    """No validators, renames or hooks: the field's value is its type's conversion."""
    return (not field.validators and field.data_key is None and field.attribute is None
            and not field.load_only and not field.dump_only)


def _compile(schema: Schema, location: str) -> FastLoader | None:
    if any(schema._hooks.values()) or schema.many or schema.partial or schema.only:
        return None
    fields = dict(schema.fields)
    if location == "match_info":
        return _uuid_path(fields)
    if location == "querystring":
        return _empty_query(schema)
    if location == "json":
        return _status_body(fields)
    return None


def _uuid_path(fields: dict[str, ma_fields.Field]) -> FastLoader | None:
    """Path ids: exactly the declared UUID parameters, each one `uuid.UUID` parses."""
    if not fields or not all(type(f) is ma_fields.UUID and f.required and _plain(f)
                             for f in fields.values()):
        return None
    names = tuple(fields)

    def load(request: web.Request):
        info = request.match_info
        if len(info) != len(names):
            return _SLOW
        try:
            return {name: _uuid(info[name]) for name in names}
        except (KeyError, ValueError, TypeError):
            return _SLOW

    return load


# The canonical text of a UUID, which is what callers send: uuid.UUID reads it as asyncpg's
# UUID (C, a uuid.UUID subclass: equal, same hash and text) does, ~9x faster, and asyncpg
# sends its own type to the database without converting it again.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             r"[0-9a-fA-F]{12}").fullmatch


def _uuid(text: str) -> uuid.UUID:
    # Any other form (braces, urn:, no hyphens ...): marshmallow's UUID field's very call.
    return PgUUID(text) if _CANONICAL_UUID(text) else uuid.UUID(text)


def _empty_query(schema: Schema) -> FastLoader | None:
    """No query string at all: the schema's defaults, computed once (when they are constants)."""
    if any(callable(f.load_default) for f in schema.fields.values()):
        return None
    try:
        defaults = schema.load({})
    except ValidationError:  # a required parameter: an empty query is an error, webargs' own
        return None

    def load(request: web.Request):
        return _SLOW if request.query_string else dict(defaults)

    return load


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _status_body(fields: dict[str, ma_fields.Field]) -> FastLoader | None:
    """A JSON object with exactly the declared, required Status fields, each a known status."""
    if not fields or not all(type(f) is Status and f.required and not f.allow_none and _plain(f)
                             for f in fields.values()):
        return None
    items = tuple((name, field.allowed) for name, field in fields.items())

    async def load(request: web.Request):
        if not (request.body_exists and is_json_request(request)):
            return _SLOW
        try:
            # As strict as the parser (web/parser.py): no NaN / Infinity constants.
            body = json.loads(await request.text(), parse_constant=_no_constant)
        except (ValueError, RecursionError, LookupError, RequestPayloadError):
            # malformed JSON, text, charset or encoding: webargs words that error
            return _SLOW
        if type(body) is not dict or len(body) != len(items):
            return _SLOW
        result = {}
        for name, allowed in items:
            value = body.get(name)
            # What field.deserialize gives a plain Status for a string (schemas.Status),
            # without marshmallow's machinery around it (~8 µs a PUT); unknown: its error.
            status = normalize_status(value, allowed) if type(value) is str else None
            if status is None:
                return _SLOW
            result[name] = status
        return result

    return load
