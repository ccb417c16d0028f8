"""Async Python client for the pipelines-v0 Pipeline Runs API (needs only aiohttp)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import random
import uuid
from datetime import datetime
from types import TracebackType
from typing import Any, AsyncIterator, Iterable, Mapping

import aiohttp
from multidict import MultiDict

try:  # optional: with OpenTelemetry installed, a call continues the caller's current trace
    from opentelemetry.propagate import inject as _inject_trace_context
except ImportError:  # pragma: no cover - the client needs only aiohttp
    def _inject_trace_context(carrier: dict[str, str]) -> None:
        return None

__all__ = [
    "PipelineRunsClient", "ApiError", "BadRequest", "Unauthorized", "Forbidden", "NotFound",
    "Conflict", "PreconditionFailed", "PayloadTooLarge", "UnsupportedMediaType",
    "UnprocessableEntity", "ServiceUnavailable", "ServerError", "error_for",
    "verify_webhook", "WebhookVerificationError", "verify_checkpoint", "ChainVerificationError",
]

log = logging.getLogger(__name__)

DEFAULT_MOUNT = "/api/pipelines/v0"
TOKEN_HEADER = "Consistency-Token"
MAX_DELAY = 30.0  # seconds: the longest pause between two attempts


# --- errors ----------------------------------------------------------------------------

class ApiError(Exception):
    """An error envelope `{code, message, content}` (or a non-envelope error response)."""

    def __init__(self, code: int, message: str, content: Any = None, *,
                 request_id: str | None = None):
        # "400 invalid input: status: unknown status 'runing'; one of: …": the field errors
        # of the envelope say what to fix, so the text a caller logs carries them.
        details = "; ".join(field_errors(content))
        super().__init__(f"{code} {message}" + (f": {details}" if details else ""))
        self.code = code
        self.message = message
        self.content = content
        self.request_id = request_id


def field_errors(content: Any) -> list[str]:
    """`field: message` lines of an error's `content["errors"]` (nested fields dotted)."""
    errors = content.get("errors") if isinstance(content, dict) else None
    lines: list[str] = []

    def walk(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{path}.{key}" if path else str(key), inner)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            lines.extend(f"{path}: {v}" if path else v for v in value)
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(f"{path}.{index}" if path else str(index), inner)
        else:
            lines.append(f"{path}: {value}" if path else str(value))

    if isinstance(errors, (dict, list)):
        walk("", errors)
    return lines


class BadRequest(ApiError):
    """400: invalid input; `content["errors"]` names the fields."""


class Unauthorized(ApiError):
    """401: missing or unknown token."""


class Forbidden(ApiError):
    """403: the token lacks the scope the operation needs."""


class NotFound(ApiError):
    """404: not found in the caller's enterprise."""


class Conflict(ApiError):
    """409: illegal status change; content names current_status and requested_status."""


class PreconditionFailed(ApiError):
    """412: If-Match is stale; content names current_version."""


class PayloadTooLarge(ApiError):
    """413: request body too large."""


class UnsupportedMediaType(ApiError):
    """415: request body is not JSON."""


class UnprocessableEntity(ApiError):
    """422: well-formed but unprocessable request."""


class ServiceUnavailable(ApiError):
    """503: the service (or its database) is unavailable; retried before being raised."""


class ServerError(ApiError):
    """Any other 5xx."""


_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    412: PreconditionFailed, 413: PayloadTooLarge, 415: UnsupportedMediaType,
    422: UnprocessableEntity, 503: ServiceUnavailable,
}


def error_for(code: int, message: str, content: Any = None,
              request_id: str | None = None) -> ApiError:
    """The typed exception for an HTTP status."""
    kind = _ERRORS.get(code) or (ServerError if code >= 500 else ApiError)
    return kind(code, message, content, request_id=request_id)


_RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError,
              ServiceUnavailable)


# --- helpers ---------------------------------------------------------------------------

def _etag(version: int | str) -> str:
    """An If-Match value: a run version becomes "<v>"; a ready ETag passes unchanged."""
    text = str(version).strip()
    if text == "*" or text.startswith(('"', "W/")):
        return text
    return f'"{text}"'


def _instant(value: datetime | str) -> str:
    """An RFC 3339 instant for a query string (the URL layer encodes `+`)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("as_of must be timezone-aware (RFC 3339 needs an offset)")
    return value.isoformat()


def _query_value(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _instant(value)
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def _params(values: Mapping[str, Any]) -> dict[str, str | int | float]:
    """Query parameters without the ones left as None."""
    return {k: _query_value(v) for k, v in values.items() if v is not None}


def _token_position(token: str | None) -> int:
    """Orders tokens: "1.<hex WAL position>" (the service's format); else unordered (-1)."""
    version, _, position = (token or "").partition(".")
    try:
        return int(position, 16) if version == "1" else -1
    except ValueError:
        return -1


def _stage(stage: str | Mapping[str, Any]) -> dict[str, Any]:
    return {"name": stage} if isinstance(stage, str) else dict(stage)


async def _envelope(resp: aiohttp.ClientResponse) -> tuple[int, str, Any]:
    """(code, message, content) of a response, whether or not it is an envelope."""
    text = await resp.text()
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    if isinstance(body, dict) and {"code", "message", "content"} <= body.keys():
        return resp.status, str(body["message"]), body["content"]
    if resp.status < 400:
        raise ApiError(resp.status, "response is not a {code, message, content} envelope",
                       text[:1000])
    return resp.status, resp.reason or "error", text[:1000]


# --- the client ------------------------------------------------------------------------

class PipelineRunsClient:
    """One aiohttp session to the service; use it as `async with PipelineRunsClient(...)`.

    `last_etag` and `last_request_id` describe the last completed call; share one client
    between concurrent tasks only if you do not rely on them.

    Read-your-writes: the client keeps the newest Consistency-Token of any response and
    sends it on its reads, so a read never misses a write this client saw answered, even
    when a lagging replica serves reads. `consistency_token` is that token: hand it to
    another client (or service) to give it the same guarantee.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.2, mount: str = DEFAULT_MOUNT):
        self.base_url = base_url.rstrip("/")
        self.mount = "/" + mount.strip("/") if mount.strip("/") else ""
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self._token = token
        self._session: aiohttp.ClientSession | None = None
        self.last_etag: str | None = None
        self.last_request_id: str | None = None
        self.consistency_token: str | None = None

    def observe_token(self, token: str | None) -> None:
        """Keep `token` if it is newer than the one kept (e.g. from another client)."""
        if token is not None and _token_position(token) >= _token_position(
                self.consistency_token):
            self.consistency_token = token

    async def __aenter__(self) -> "PipelineRunsClient":
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
        )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (done by `async with`)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- pipelines and stages --------------------------------------------------------

    async def create_pipeline(self, name: str,
                              stages: Iterable[str | Mapping[str, Any]] | None = None,
                              **fields: Any) -> dict[str, Any]:
        """Create a pipeline; `stages` are names or stage dicts, created in order."""
        body: dict[str, Any] = {"name": name, **fields}
        if stages is not None:
            body["stages"] = [_stage(s) for s in stages]
        return await self._call("POST", "/pipelines/", json=body)

    async def get_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        """A pipeline with its stages."""
        return await self._call("GET", f"/pipelines/{pipeline_id}/")

    async def create_stage(self, pipeline_id: str, name: str, **fields: Any) -> dict[str, Any]:
        """Add a stage at the end of a pipeline."""
        return await self._call("POST", f"/pipelines/{pipeline_id}/stages/",
                                json={"name": name, **fields})

    # --- runs ------------------------------------------------------------------------

    async def create_run(self, pipeline_id: str) -> dict[str, Any]:
        """Create a run (status pending); retries reuse one Idempotency-Key."""
        return await self._call("POST", f"/pipelines/{pipeline_id}/runs/", json={})

    async def get_run(self, pipeline_id: str, run_id: str,
                      as_of: datetime | str | None = None) -> dict[str, Any]:
        """A run now, or as it was at `as_of` (aware datetime or RFC 3339 string)."""
        params = {} if as_of is None else {"as_of": _instant(as_of)}
        return await self._call("GET", self._run_path(pipeline_id, run_id), params=params)

    async def update_status(self, pipeline_id: str, run_id: str, status: str,
                            if_match: int | str | None = None) -> dict[str, Any]:
        """Move a run to `status`; with `if_match` only if the run is at that version."""
        return await self._call("PUT", self._run_path(pipeline_id, run_id),
                                json={"status": status}, if_match=if_match)

    async def delete_run(self, pipeline_id: str, run_id: str,
                         if_match: int | str | None = None) -> dict[str, Any]:
        """Delete a run (its events are kept); answers the run as it was."""
        return await self._call("DELETE", self._run_path(pipeline_id, run_id),
                                if_match=if_match)

    async def list_runs(self, pipeline_id: str | None = None, *, page_size: int = 100,
                        **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Every run of a pipeline (or of the enterprise), following `next` page by page.

        Filters are the API's query parameters, e.g. status="running", ordering="-run_number".
        """
        path = "/runs/" if pipeline_id is None else f"/pipelines/{pipeline_id}/runs/"
        async for run in self._pages(path, page_size, filters):
            yield run

    # --- stage runs ------------------------------------------------------------------

    async def stage_runs(self, run_id: str, *, page_size: int = 100) -> list[dict[str, Any]]:
        """All stage runs of a run (every page)."""
        return [s async for s in self._pages(f"/runs/{run_id}/stageruns/", page_size, {})]

    async def update_stage_run(self, run_id: str, stage_run_id: str,
                               status: str) -> dict[str, Any]:
        """Move a stage run to `status`."""
        return await self._call("PUT", f"/runs/{run_id}/stageruns/{stage_run_id}/",
                                json={"status": status})

    # --- audit -----------------------------------------------------------------------

    async def run_events(self, pipeline_id: str, run_id: str, *,
                         page_size: int = 100) -> list[dict[str, Any]]:
        """A run's whole history (every page), in version order; kept after delete."""
        path = self._run_path(pipeline_id, run_id) + "events/"
        return [e async for e in self._pages(path, page_size, {})]

    async def insights(self, pipeline_id: str | None = None, *,
                       start: datetime | str | None = None, end: datetime | str | None = None,
                       granularity: str | None = None, group_by: str | None = None,
                       pipeline_ids: list[str] | None = None, pipeline_name: str | None = None,
                       as_of: datetime | str | None = None) -> dict[str, Any]:
        """Run insights (docs/insights.md): one pipeline's, or the enterprise's filtered by
        pipeline_ids / pipeline_name; window [start, end), default the last 30 days."""
        params = MultiDict(_params({"from": start, "to": end, "granularity": granularity,
                                    "group_by": group_by, "pipeline_name": pipeline_name,
                                    "as_of": as_of}))
        for one in pipeline_ids or ():
            params.add("pipeline_id", str(one))
        path = f"/pipelines/{pipeline_id}/insights/" if pipeline_id else "/insights/runs/"
        return await self._call("GET", path, params=params)

    async def feed(self, after: int = 0, wait: float = 20,
                   **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Tail the enterprise change feed forever (long-poll); break out when done.

        Filters: pipeline_id, run_id, type, actor, since, until, limit.
        """
        params = _params(filters)
        while True:
            content = await self._call("GET", "/events/", timeout=wait + self.timeout,
                                       params={**params, "after": after, "wait": wait})
            for event in content["results"]:
                yield event
            after = content["next_after"]

    async def stream(self, after: int = 0, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """Follow GET /events/stream/ forever (Server-Sent Events); break out when done.

        Reconnects by itself (with backoff) and resumes with Last-Event-ID, so every event
        is yielded once, in position order. Filters as for feed() (no limit, no wait).
        """
        last, attempt = after, 0
        params = _params(filters)
        while True:
            try:
                async for event in self._stream_once(last, params):
                    attempt = 0
                    last = event["position"]
                    yield event
            except _RETRYABLE as exc:
                log.warning("event stream interrupted (%s); resuming after %d",
                            type(exc).__name__, last)
            delay = self._delay(min(attempt, 8))
            attempt += 1
            await asyncio.sleep(delay)

    async def _stream_once(self, after: int,
                           params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        if self._session is None:
            raise RuntimeError("use the client as `async with PipelineRunsClient(...)`")
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        # No total timeout: the stream is meant to stay open; heartbeats keep it alive.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
        async with self._session.get(self._url("/events/stream/"), params=params or None,
                                     headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                code, message, content = await _envelope(resp)
                raise error_for(code, message, content, resp.headers.get("X-Request-ID"))
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:  # a blank line ends a message
                    yield json.loads("\n".join(data))
                    data = []

    # --- transport -------------------------------------------------------------------

    async def checkpoint(self) -> dict[str, Any]:
        """The enterprise's hash-chain head, signed by the service (keep it somewhere else)."""
        return await self._call("GET", "/audit/checkpoint/")

    async def verify_chain(self, checkpoint_old: dict[str, Any] | None,
                           checkpoint_new: dict[str, Any], *,
                           public_key: str | None = None, page_size: int = 1000) -> int:
        """Prove that `checkpoint_new` extends `checkpoint_old` (None: the genesis), trusting
        neither the server nor the checkpoints' own key: answers the events checked.

        Both signatures are checked against `public_key` (hex; default: the old checkpoint's,
        the key you kept), then the chain is recomputed from the proof's canonical bytes.
        To show that nothing up to a checkpoint changed, prove it from an older one (or
        from None). Raises ChainVerificationError naming the first position that fails.
        """
        old = checkpoint_old or {"position": 0, "events": 0, "chain_hash": _GENESIS,
                                 "enterprise_id": checkpoint_new.get("enterprise_id")}
        key = public_key or (checkpoint_old or checkpoint_new)["public_key"]
        for signed in filter(None, (checkpoint_old, checkpoint_new)):
            verify_checkpoint(signed, key)
        if old["enterprise_id"] != checkpoint_new["enterprise_id"]:
            raise ChainVerificationError("the checkpoints are of different enterprises")
        if checkpoint_new["position"] < old["position"]:
            raise ChainVerificationError("the new checkpoint is older than the old one")
        head, events = bytes.fromhex(old["chain_hash"]), 0
        params = {"from": old["position"], "to": checkpoint_new["position"], "limit": page_size}
        content = await self._call("GET", "/audit/proof/", params=params)
        while True:
            for event in content["events"]:
                canonical = base64.b64decode(event["canonical"])
                if canonical.split(b"\n")[1].partition(b":")[2] != str(event["position"]).encode():
                    raise ChainVerificationError("the proof's bytes are of another position",
                                                 event["position"])
                head = hashlib.sha256(head + canonical).digest()
                events += 1
            if content["next_from"] is None:
                break
            content = await self._call("GET", content["next"])
        if head.hex() != checkpoint_new["chain_hash"] or \
                old["events"] + events != checkpoint_new["events"]:
            raise ChainVerificationError(
                "the history between the checkpoints does not recompute to the new one",
                checkpoint_new["position"])
        return events

    def _run_path(self, pipeline_id: str, run_id: str) -> str:
        return f"/pipelines/{pipeline_id}/runs/{run_id}/"

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path  # a `next` link, absolute and already encoded by the server
        return self.base_url + self.mount + path

    async def _pages(self, path: str, page_size: int,
                     filters: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        content = await self._call("GET", path, params={**_params(filters), "limit": page_size})
        while True:
            if isinstance(content, list):  # an unpaged list answer
                for item in content:
                    yield item
                return
            for item in content["results"]:
                yield item
            if not content.get("next"):
                return
            content = await self._call("GET", content["next"])

    async def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                    json: Any = None, if_match: int | str | None = None,
                    timeout: float | None = None) -> Any:
        """One API call with retries; answers the envelope's content or raises ApiError."""
        headers = {"X-Request-ID": uuid.uuid4().hex}
        # W3C `traceparent` (and `tracestate`) when the caller has a current span: the
        # service's spans of this call join the caller's trace.
        _inject_trace_context(headers)
        if method == "POST":
            headers["Idempotency-Key"] = str(uuid.uuid4())  # the same on every retry
        if if_match is not None:
            headers["If-Match"] = _etag(if_match)
        if method == "GET" and self.consistency_token is not None:
            headers[TOKEN_HEADER] = self.consistency_token
        attempt = 0
        while True:
            try:
                return await self._once(method, self._url(path), params, json, headers, timeout)
            except _RETRYABLE as exc:
                if attempt >= self.retries:
                    raise
                delay = self._delay(attempt)
                attempt += 1
                log.warning("%s %s failed (%s); retry %d/%d in %.2fs", method, path,
                            type(exc).__name__, attempt, self.retries, delay)
                await asyncio.sleep(delay)

    async def _once(self, method: str, url: str, params: Mapping[str, Any] | None, json: Any,
                    headers: dict[str, str], timeout: float | None) -> Any:
        if self._session is None:
            raise RuntimeError("use the client as `async with PipelineRunsClient(...)`")
        extra = {} if timeout is None else {"timeout": aiohttp.ClientTimeout(total=timeout)}
        async with self._session.request(method, url, params=params or None, json=json,
                                         headers=headers, **extra) as resp:
            code, message, content = await _envelope(resp)
            self.last_etag = resp.headers.get("ETag")
            self.last_request_id = resp.headers.get("X-Request-ID", headers["X-Request-ID"])
            self.observe_token(resp.headers.get(TOKEN_HEADER))
        if code >= 400:
            raise error_for(code, message, content, self.last_request_id)
        return content

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of backoff * 2**attempt."""
        base = min(self.backoff * 2 ** attempt, MAX_DELAY)
        return base / 2 + random.uniform(0, base / 2)


# --- webhooks --------------------------------------------------------------------------

class WebhookVerificationError(Exception):
    """A webhook whose signature, headers or timestamp do not check out."""


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str, *,
                   tolerance: float = 300) -> dict[str, Any]:
    """Check a delivery's Standard Webhooks signature; answers the parsed payload.

    headers: the request's headers (any letter case); body: the raw body, unparsed;
    secret: the subscription's `whsec_...`. Raises WebhookVerificationError when the
    signature does not match or the timestamp is more than `tolerance` seconds off.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                 lower.get("webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, -timestamp or -signature header")
    try:
        sent = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs(time.time() - sent) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    text = body.decode() if isinstance(body, bytes) else body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{msg_id}.{stamp}.{text}".encode(), hashlib.sha256).digest()
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if version == "v1" and hmac.compare_digest(expected, given):
            return json.loads(text)
    raise WebhookVerificationError("no signature matches")


# --- tamper evidence -------------------------------------------------------------------

_GENESIS = "00" * 32  # the chain hash before an enterprise's first event


class ChainVerificationError(Exception):
    """A checkpoint or a proof that does not check out; `position`: where, when known."""

    def __init__(self, message: str, position: int | None = None):
        super().__init__(message if position is None else f"{message} (position {position})")
        self.position = position


def verify_checkpoint(checkpoint: Mapping[str, Any], public_key: str) -> None:
    """Check a checkpoint's Ed25519 signature against `public_key` (hex, raw 32 bytes).

    Needs the `cryptography` package (the rest of the client needs only aiohttp).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    message = "".join(f"{checkpoint[k]}\n" for k in (
        "format", "enterprise_id", "position", "events", "chain_hash", "at")).encode()
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(
            bytes.fromhex(checkpoint["signature"]), message)
    except (InvalidSignature, ValueError):
        raise ChainVerificationError("the checkpoint's signature does not verify with the key",
                                     checkpoint.get("position")) from None
