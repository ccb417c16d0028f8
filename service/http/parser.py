"""webargs parser whose failures are domain errors (and so envelopes), not bare 422s."""
from __future__ import annotations

from typing import Any, NoReturn

from webargs.aiohttpparser import AIOHTTPParser, is_json_request

from ..errors import BadRequest, NotFound, UnsupportedMediaType


class Parser(AIOHTTPParser):
    async def load_json(self, req, schema) -> Any:
        if req.body_exists and not is_json_request(req):
            raise UnsupportedMediaType()
        return await super().load_json(req, schema)

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
