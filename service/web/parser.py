"""webargs parser whose failures are domain errors (and so envelopes), not bare 422s.

A query parameter given with an empty value (`?status=`) is read as absent: Esper's server
is Django REST framework, whose django-filter ignores empty filters, whose OrderingFilter
takes an empty ordering as the default one and whose LimitOffsetPagination an empty
limit/offset as the defaults. So every list answers unfiltered there, as here.
"""
from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiDict, MultiDictProxy
from webargs.aiohttpparser import AIOHTTPParser, is_json_request
from webargs.core import missing

from service.domain.errors import BadRequest, NotFound, UnsupportedMediaType


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def without_empty_values(query: MultiDictProxy) -> MultiDictProxy:
    """The query less its empty values (`a=&a=1` keeps `a=1`)."""
    if all(query.values()):
        return query
    return MultiDictProxy(MultiDict((key, value) for key, value in query.items() if value))


class Parser(AIOHTTPParser):
    def load_querystring(self, req, schema) -> Any:
        return self._makeproxy(without_empty_values(req.query), schema)

    async def load_json(self, req, schema) -> Any:
        """Strict JSON (no NaN/Infinity); every unreadable body is a 4xx, never a 500."""
        if not req.body_exists:
            return missing
        if not is_json_request(req):
            raise UnsupportedMediaType()
        try:
            text = await req.text()
            return json.loads(text, parse_constant=_not_json) if text else missing
        # Bad JSON or UTF-8, an int past Python's digit limit (ValueError); deep nesting.
        except (ValueError, RecursionError):
            raise BadRequest("malformed JSON body") from None
        except LookupError:  # Content-Type: application/json; charset=<unknown>
            raise UnsupportedMediaType("unknown charset in Content-Type") from None
        except (HttpProcessingError, RequestPayloadError):  # e.g. a gzip body that is not
            raise BadRequest("malformed request body") from None

    def _handle_invalid_json_error(self, error, req, *args, **kwargs) -> NoReturn:
        raise BadRequest("malformed JSON body")

    def handle_error(self, error, req, schema, *, error_status_code, error_headers) -> NoReturn:
        messages = error.messages if isinstance(error.messages, dict) else {"json": error.messages}
        if "match_info" in messages:
            # A malformed id names nothing that exists.
            raise NotFound("not found: malformed id in the path")
        errors: dict[str, Any] = {}
        for location_errors in messages.values():
            if isinstance(location_errors, dict):
                errors.update(location_errors)
            else:
                errors["_schema"] = location_errors
        raise BadRequest("invalid input", content={"errors": errors})
