"""Domain errors: raised by the store and the handlers, turned into HTTP in one middleware."""
from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base class; `status` is the HTTP status the middleware answers with."""

    status = 500
    default_message = "internal error"

    def __init__(self, message: str | None = None, content: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.content = content
        self.headers = headers  # answered with the error (e.g. WWW-Authenticate on a 401)


class BadRequest(DomainError):
    status = 400
    default_message = "bad request"


class Unauthorized(DomainError):
    status = 401
    default_message = "authentication credentials were not provided or are invalid"


class Forbidden(DomainError):
    status = 403
    default_message = "the token lacks the scope this operation needs"


class NotFound(DomainError):
    status = 404
    default_message = "not found"


class Conflict(DomainError):
    status = 409
    default_message = "conflict"


class PreconditionFailed(DomainError):
    status = 412
    default_message = "the resource has changed since the version given in If-Match"


class UriTooLong(DomainError):
    status = 414
    default_message = "request URL too long"


class Unprocessable(DomainError):
    status = 422
    default_message = "the request cannot be processed as sent"


class UnsupportedMediaType(DomainError):
    status = 415
    default_message = "request body must be application/json"


class TooManyRequests(DomainError):
    """Over a per-token limit; Retry-After says when to try again (whole seconds)."""

    status = 429
    default_message = "too many requests"

    def __init__(self, message: str | None = None, retry_after: int = 1):
        super().__init__(message, {"retry_after": retry_after},
                         headers={"Retry-After": str(retry_after)})


class Unavailable(DomainError):
    status = 503
    default_message = "the service is temporarily unavailable, retry later"
