"""Marshmallow schemas: request validation and the OpenAPI document's shapes."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from service.domain import lifecycle

INT32_MAX = 2**31 - 1
NAME = validate.Length(min=1, max=255)
TEXT = validate.Length(max=10_000)


def _no_nul(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): not encodable as UTF-8
        raise ValidationError("must be valid Unicode text") from None


class Text(fields.String):
    """A string PostgreSQL text can hold: valid Unicode, no NUL characters."""

    def __init__(self, *args, **kwargs):
        # Documented, so generated clients and fuzzers know NUL is refused.
        kwargs["metadata"] = {"pattern": "^[^\u0000]*$", **kwargs.get("metadata", {})}
        kwargs.setdefault("validate", [])
        if not isinstance(kwargs["validate"], list):
            kwargs["validate"] = [kwargs["validate"]]
        kwargs["validate"] = [*kwargs["validate"], _no_nul]
        super().__init__(*args, **kwargs)


def any_letter_case(words) -> str:
    """A portable (ECMA 262) pattern matching exactly `words` in any letter case."""
    def letters(word: str) -> str:
        return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)
    return "^(" + "|".join(letters(w) for w in words) + ")$"


class Status(fields.String):
    """A status in any letter case, answered in lower case."""

    def __init__(self, allowed=lifecycle.RUN_STATUSES, **kwargs):
        self.allowed = tuple(allowed)
        # Documented as accepted: the statuses as answered (the enum clients generate from),
        # or in any letter case (the seed spells them PENDING, ...).
        metadata = {"anyOf": [{"enum": list(self.allowed)},
                              {"pattern": any_letter_case(self.allowed)}],
                    **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        status = lifecycle.normalize_status(text, self.allowed)
        if status is None:
            raise ValidationError(f"unknown status {text[:40]!r}; one of: {', '.join(self.allowed)}")
        return status


class StrictBool(fields.Boolean):
    """JSON true/false only: no "yes", 1 or "true" strings in bodies."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


class Instant(fields.AwareDateTime):
    """An RFC 3339 instant with offset (date-time), as a UTC-comparable datetime.

    Every RFC 3339 date-time (the document's format) is accepted, as schemathesis holds
    it to: "t" and "z" in lower case (RFC 3339 5.6), and the instants Python cannot hold
    in UTC, e.g. 0001-01-01T00:00:00+14:00 (before year 1 UTC) or
    9999-12-31T23:59:59-23:59 (after 9999). Those are clamped to the first or last instant
    Python holds: no stored timestamp lies beyond them, so every filter (>=, <) and as_of
    answers exactly as with the instant given. (Year 0000 and leap seconds, which Python
    cannot parse, remain a 400.)
    """

    EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
    LATEST = datetime.max.replace(tzinfo=timezone.utc)
    # A URL written by hand (?as_of=2026-12-06T14:44:01+00:00) sends the offset's `+`
    # unencoded, and form decoding turns it into a space: a space before an offset's
    # hh:mm can mean nothing else, so it is read as the `+` it was.
    SPACED_OFFSET = re.compile(
        r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$")
    PLUS_NOTE = ("A `+` of the offset sent unencoded (so it arrives as a space, "
                 "`14:44:01 00:00`) is read as the `+` it was.")

    def __init__(self, **kwargs):
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata["description"] = " ".join(
            part for part in (metadata.get("description"), self.PLUS_NOTE) if part)
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = self.SPACED_OFFSET.sub(r"\1+\2", value)
            value = value.upper()  # a date-time's only letters are T and Z
        instant = super()._deserialize(value, attr, data, **kwargs)
        try:
            instant.astimezone(timezone.utc)
        except OverflowError:
            return self.EARLIEST if instant.year == 1 else self.LATEST
        return instant


def Ordering(choices) -> fields.String:
    return fields.String(
        validate=validate.OneOf(list(choices)),
        metadata={"description": "Sort field; prefix with - for descending", "enum": list(choices)},
    )


# --- path parameters -------------------------------------------------------------------

class PipelinePath(Schema):
    pipeline_id = fields.UUID(required=True, metadata={"description": "ID of the Pipeline"})


class StagePath(PipelinePath):
    stage_id = fields.UUID(required=True, metadata={"description": "ID of the Stage"})


class RunPath(PipelinePath):
    pipeline_run_id = fields.UUID(required=True, metadata={"description": "ID of the Pipeline run"})


# --- query parameters ------------------------------------------------------------------

# Deeper offsets make the database read and drop that many rows per request.
MAX_OFFSET = 10_000


class PageQuery(Schema):
    class Meta:
        unknown = EXCLUDE  # unknown query parameters are ignored, as most APIs do

    limit = fields.Integer(load_default=20, validate=validate.Range(1, 1000),
                           metadata={"description": "Page size (1-1000)"})
    offset = fields.Integer(load_default=0, validate=validate.Range(
        0, MAX_OFFSET, error=f"must be between 0 and {MAX_OFFSET}: page deeper by `cursor` "
                             "(the next_cursor of the previous page) or narrow the filters"),
        metadata={"description": f"Number of items to skip (at most {MAX_OFFSET}; page "
                                 "deeper by `cursor`)"})


class PipelineListQuery(PageQuery):
    name = Text(validate=NAME, metadata={"description": "Filter by name"})
    default = fields.Boolean(metadata={"description": "Filter by is_default"})
    ordering = Ordering(["name", "-name"])


PIPELINE_RUN_ORDERINGS = ["run_number", "-run_number", "status", "-status",
                          "started_at", "-started_at", "ended_at", "-ended_at"]
ENTERPRISE_RUN_ORDERINGS = [*PIPELINE_RUN_ORDERINGS[:4], "pipeline__name", "-pipeline__name",
                            *PIPELINE_RUN_ORDERINGS[4:]]


class PipelineRunListQuery(PageQuery):
    status = Status(metadata={"description": "Filter by pipeline run status (any letter case)"})
    ordering = Ordering(PIPELINE_RUN_ORDERINGS)
    # Keyset paging and date ranges (store/run_lists.py).
    cursor = fields.String(validate=validate.Length(max=4096), metadata={
        "description": "Keyset paging: the `next_cursor` of the previous page (same "
                       "ordering). Answers the runs after that page's last run, however "
                       "deep, in constant time; offset then counts from there. A page's "
                       "`previous_cursor` answers the runs just before its first run. Opaque; "
                       "empty means the first page, anything else not made by the service "
                       "is a 400."})
    created_after = Instant(metadata={"description": "created_at >= this instant (RFC 3339)"})
    created_before = Instant(metadata={"description": "created_at < this instant (RFC 3339)"})
    updated_after = Instant(metadata={"description": "updated_at >= this instant (RFC 3339)"})
    updated_before = Instant(metadata={"description": "updated_at < this instant (RFC 3339)"})


class RunListQuery(PipelineRunListQuery):
    pipeline_name = Text(validate=NAME, metadata={"description": "Filter by pipeline name"})
    ordering = Ordering(ENTERPRISE_RUN_ORDERINGS)


def document_empty_values(document: dict) -> dict:
    """Say on every query parameter that an empty value is the same as none (parser.py)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else ():
                if param.get("in") != "query":
                    continue
                param["allowEmptyValue"] = True
                said = param.get("description", "").rstrip(".")
                param["description"] = (f"{said}. " if said else "") + (
                    f"Empty (`{param['name']}=`) is the same as leaving it out, as on "
                    "Esper's Django REST framework server (a filter: none; else the default).")
    return document


# --- request bodies --------------------------------------------------------------------

class Body(Schema):
    """Request bodies ignore fields they do not know (so clients that send more, e.g. a
    whole Esper object back, keep working); the known ones are validated strictly."""

    class Meta:
        unknown = EXCLUDE


# Examples: what the document shows, and what schemathesis' examples phase sends.
STAGE_NAME = {"example": "build"}
PIPELINE_NAME = {"example": "deploy"}
TIMEOUT = {"example": 3600}


class StagePost(Body):
    name = Text(required=True, validate=NAME, metadata=STAGE_NAME)
    description = Text(validate=TEXT)
    timeout_seconds = fields.Integer(strict=True, validate=validate.Range(1, INT32_MAX),
                                     allow_none=True)


class StageItem(fields.Field):
    """A stage of PipelinePost: a stage object, or (our extension) its name alone."""

    _SHAPE = 'A stage is an object {"name": ...} or a name (a string).'

    def __init__(self, **kwargs):
        # Documented as either shape, so generated clients and fuzzers know both.
        name = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\u0000]*$",
                "example": "build"}
        super().__init__(metadata={
            "oneOf": [name, {"$ref": "#/components/schemas/StagePost"}],
            "description": 'A stage, or its name alone (extension: "build" is {"name": "build"})',
        }, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = {"name": value}
        elif not isinstance(value, dict):
            raise ValidationError(self._SHAPE)
        return StagePost().load(value)  # its ValidationError keeps the fields' messages


class StagePut(Body):
    name = Text(validate=NAME, metadata=STAGE_NAME)
    description = Text(validate=TEXT)
    timeout_seconds = fields.Integer(strict=True, validate=validate.Range(1, INT32_MAX),
                                     allow_none=True)


class PipelinePost(Body):
    name = Text(required=True, validate=NAME, metadata=PIPELINE_NAME)
    description = Text(validate=TEXT)
    timeout_seconds = fields.Integer(strict=True, validate=validate.Range(1, INT32_MAX),
                                     allow_none=True, metadata={
                                         **TIMEOUT, "description": "Run timeout; unset means 21 days"})
    is_active = StrictBool()
    is_default = StrictBool()
    stages = fields.List(StageItem(), validate=validate.Length(max=100),
                         metadata={"description": "Extension: stages created with the pipeline"})


class PipelinePut(Body):
    name = Text(validate=NAME, metadata=PIPELINE_NAME)
    description = Text(validate=TEXT)
    timeout_seconds = fields.Integer(strict=True, validate=validate.Range(1, INT32_MAX),
                                     allow_none=True, metadata=TIMEOUT)
    is_active = StrictBool()
    is_default = StrictBool()


class PipelineRunPost(Schema):
    """Esper's PipelineRun_POST is an empty object; any fields are ignored."""

    class Meta:
        unknown = EXCLUDE


class PipelineRunPut(Body):
    status = Status(required=True, metadata={"example": "running"})


# --- responses (documentation) ---------------------------------------------------------

class Stage(Schema):
    id = fields.UUID()
    enterprise_id = fields.String()
    pipeline_id = fields.UUID()
    name = fields.String()
    description = fields.String()
    timeout_seconds = fields.Integer(allow_none=True)
    ordinal = fields.Integer(metadata={"description": "Position of the stage in its pipeline"})
    created_by = fields.Integer(allow_none=True)
    updated_by = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class Pipeline(Schema):  # fields in the order responses carry them (tests/test_list_shape.py)
    id = fields.UUID()
    enterprise_id = fields.String()
    name = fields.String()
    description = fields.String()
    timeout_seconds = fields.Integer(allow_none=True)
    is_active = fields.Boolean()
    is_default = fields.Boolean()
    created_by = fields.Integer(allow_none=True)
    updated_by = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    is_valid = fields.Boolean(metadata={"description": "True when the pipeline has stages"})
    stages = fields.List(fields.Nested(Stage), metadata={"description": "On single pipelines"})


class PipelineRun(Schema):
    id = fields.UUID()
    enterprise_id = fields.String()
    run_number = fields.Integer()
    pipeline_id = fields.UUID()
    pipeline_name = fields.String()
    status = fields.String(metadata={"enum": list(lifecycle.RUN_STATUSES)})
    status_meta = fields.Dict()
    created_by = fields.Integer(allow_none=True)
    updated_by = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    version = fields.Integer(metadata={"description": "Number of events of the run"})


class Envelope(Schema):
    code = fields.Integer(required=True)
    message = fields.String(required=True)


class ErrorEnvelope(Envelope):
    # An object, never null, as Esper's Error_4xx schemas type it: {} when nothing to add.
    content = fields.Dict(required=True, metadata={
        "description": "Details ({} when there are none); validation errors carry field "
                       "messages in `errors`"})


def _envelope_of(name: str, content: fields.Field) -> type[Schema]:
    return type(name, (Envelope,), {"content": content})


def _page_fields(item: type[Schema], **described: str) -> dict[str, fields.Field]:
    """Every list's page, in this order (one list shape everywhere; common.page)."""
    doc = {
        "count": "Items matching the filters (all pages)",
        "count_exact": "Whether count is exact (always, except run lists with date ranges)",
        "next": "The next page (absolute URL); null on the last",
        "previous": "The previous page (absolute URL); null on the first",
        "next_cursor": "Pass as `cursor` for the page after this one; null at the end and "
                       "on lists that page by offset only",
        "previous_cursor": "Pass as `cursor` for the page before this one; null on the "
                           "first page and on lists that page by offset only",
        **described,
    }
    return {
        "count": fields.Integer(metadata={"description": doc["count"]}),
        "count_exact": fields.Boolean(metadata={"description": doc["count_exact"]}),
        "next": fields.Url(allow_none=True, metadata={"description": doc["next"]}),
        "previous": fields.Url(allow_none=True, metadata={"description": doc["previous"]}),
        "next_cursor": fields.String(allow_none=True, metadata={"description": doc["next_cursor"]}),
        "previous_cursor": fields.String(allow_none=True,
                                         metadata={"description": doc["previous_cursor"]}),
        "results": fields.List(fields.Nested(item)),
    }


def _page_of(name: str, item: type[Schema], **described: str) -> type[Schema]:
    page = type(name + "Page", (Schema,), _page_fields(item, **described))
    return _envelope_of(name + "ListEnvelope", fields.Nested(page))


PipelineEnvelope = _envelope_of("PipelineEnvelope", fields.Nested(Pipeline))
PipelineListEnvelope = _page_of("Pipeline", Pipeline)
StageEnvelope = _envelope_of("StageEnvelope", fields.Nested(Stage))
StageListEnvelope = _page_of("Stage", Stage)
PipelineRunEnvelope = _envelope_of("PipelineRunEnvelope", fields.Nested(PipelineRun))
PipelineRunListEnvelope = _page_of(
    "PipelineRun", PipelineRun,
    count="Runs matching the filters (all pages). With a created_/updated_ range it is "
          "counted up to 10000: see count_exact",
    count_exact="False when count stopped at 10000 (date-range filters only)",
    next="The next page: by offset, or by cursor when this page was",
    previous="The previous page: by offset, or by cursor when this page was; null on the "
             "first",
    next_cursor="Pass as `cursor` for the page after this one; null at the end",
    previous_cursor="Pass as `cursor` for the page before this one (the runs just before "
                    "its first run, in the same ordering); null on the first page, and on a "
                    "page read from a previous cursor that reached the first run")


# --- audit: history, as_of, feed -------------------------------------------------------

class RunGetQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    as_of = Instant(metadata={
        "description": "RFC 3339 instant: the run exactly as it was then (scope audit:read)"})


class FeedQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    after = fields.Integer(load_default=0, validate=validate.Range(0, 2**63 - 1),
                           metadata={"description": "Position to read after (exclusive)"})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    pipeline_id = fields.UUID()
    run_id = fields.UUID()
    type = Text(validate=validate.Length(max=100))
    actor = Text(validate=validate.Length(max=255))
    since = Instant(metadata={"description": "occurred_at >= since (RFC 3339)"})
    until = Instant(metadata={"description": "occurred_at < until (RFC 3339)"})
    wait = fields.Float(load_default=0, validate=validate.Range(0, 30),
                        metadata={"description": "Long-poll: seconds to wait for new events"})


class Event(Schema):
    id = fields.UUID()
    position = fields.Integer()
    run_id = fields.UUID()
    pipeline_id = fields.UUID()
    version = fields.Integer()
    type = fields.String()
    from_status = fields.String(allow_none=True)
    to_status = fields.String(allow_none=True)
    actor = fields.String()
    occurred_at = fields.DateTime()
    request_id = fields.String(allow_none=True)
    data = fields.Dict()


class FeedPage(Schema):
    results = fields.List(fields.Nested(Event))
    next_after = fields.Integer(metadata={"description": "The cursor to resume from"})
    next = fields.Url(metadata={"description": "URL of the next read (after=next_after)"})
    caught_up = fields.Boolean(metadata={
        "description": "Every event up to now was examined: nothing more to read until new "
                       "events. False: read `next` at once (a full page, or a filtered read "
                       "that reached its scan cap)."})


EXPORT_FORMATS = ("csv", "ndjson")


class RunEventsQuery(PageQuery):
    format = fields.String(validate=validate.OneOf(EXPORT_FORMATS), metadata={
        "description": "Export the whole history instead of a page, streamed: `csv` "
                       "(text/csv, a header row) or `ndjson` (one event per line, as in "
                       "`results`); limit/offset are then ignored"})


class EventExportQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    since = Instant(metadata={"description": "occurred_at >= since (RFC 3339)"})
    until = Instant(metadata={"description": "occurred_at < until (RFC 3339)"})
    format = fields.String(load_default="ndjson", validate=validate.OneOf(EXPORT_FORMATS),
                           metadata={"description": "`csv` or `ndjson` (default)"})


EventListEnvelope = _page_of("Event", Event)
FeedEnvelope = _envelope_of("FeedEnvelope", fields.Nested(FeedPage))


# --- stage runs ----------------------------------------------------------------------

class StageRunListPath(Schema):
    pipeline_run_id = fields.UUID(required=True, metadata={"description": "ID of the Pipeline run"})


class StageRunPath(StageRunListPath):
    stage_run_id = fields.UUID(required=True, metadata={"description": "ID of the Stage run"})


class StageRunListQuery(PageQuery):
    status = Status(allowed=lifecycle.STAGE_RUN_STATUSES,
                    metadata={"description": "Filter by stage run status (any letter case)"})


class StageRunPut(Body):
    status = Status(allowed=lifecycle.STAGE_RUN_STATUSES, required=True,
                    metadata={"example": "running"})


class StageMeta(Schema):
    name = fields.String()
    description = fields.String()
    created_by = fields.Integer(allow_none=True)


class StageRun(Schema):
    id = fields.UUID()
    enterprise_id = fields.String()
    pipeline_id = fields.UUID()
    pipeline_run_id = fields.UUID()
    stage_id = fields.UUID()
    stage_meta = fields.Nested(StageMeta)
    status = fields.String(metadata={"enum": list(lifecycle.STAGE_RUN_STATUSES)})
    created_by = fields.Integer(allow_none=True)
    updated_by = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)


StageRunEnvelope = _envelope_of("StageRunEnvelope", fields.Nested(StageRun))
StageRunListEnvelope = _page_of("StageRun", StageRun)


# --- streaming feed and webhooks ---------------------------------------------------------

class StreamQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    after = fields.Integer(validate=validate.Range(0, 2**63 - 1), metadata={
        "description": "Position to stream after (exclusive); the Last-Event-ID header, "
                       "when sent, takes precedence. Default 0: the whole feed, then live"})
    pipeline_id = fields.UUID()
    run_id = fields.UUID()
    type = Text(validate=validate.Length(max=100))
    actor = Text(validate=validate.Length(max=255))
    since = Instant(metadata={"description": "occurred_at >= since (RFC 3339)"})
    until = Instant(metadata={"description": "occurred_at < until (RFC 3339)"})


class WebhookPath(Schema):
    webhook_id = fields.UUID(required=True, metadata={"description": "ID of the webhook"})


class WebhookEventPath(WebhookPath):
    event_id = fields.UUID(required=True, metadata={"description": "ID of the event (its "
                                                    "webhook-id header)"})


EVENT_TYPES = (*lifecycle.RUN_EVENT_TYPES, lifecycle.STAGE_RUN_STATUS_CHANGED)
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# http(s), a host (a name, an IPv4 address or a bracketed IPv6 one: which addresses may be
# reached is app/webhook_targets.py's to say, with its reason) and an optional port.
WEBHOOK_URL = ("^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9._~-]+|\\[[0-9A-Fa-f:.]+\\])"
               f"(:{_PORT})?([/?#][^\u0000]*)?$")


class WebhookBody(Body):
    url = Text(required=True, validate=[validate.Length(min=1, max=2048),
                                        validate.Regexp(WEBHOOK_URL, error="must be an http "
                                                        "or https URL with a host")],
               metadata={"pattern": WEBHOOK_URL, "example": "https://hooks.example.com/runs",
                         "description": "http(s) URL to POST events to; only global unicast "
                                        "addresses (and WEBHOOK_ALLOWED_NETWORKS) are reached"})
    event_types = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)),
                              allow_none=True, validate=validate.Length(min=1), metadata={
                                  "description": "Event types to deliver; null/absent: all"})
    pipeline_id = fields.UUID(allow_none=True, metadata={
        "description": "Only this pipeline's events; null/absent: every pipeline"})
    description = Text(load_default="", validate=TEXT)
    is_active = StrictBool(load_default=True, metadata={
        "description": "false pauses deliveries; true (re-)enables, resuming where it stopped"})


class Webhook(Schema):
    id = fields.UUID()
    enterprise_id = fields.String()
    url = fields.String()
    event_types = fields.List(fields.String(), allow_none=True)
    pipeline_id = fields.UUID(allow_none=True)
    description = fields.String()
    is_active = fields.Boolean()
    disabled_reason = fields.String(allow_none=True, metadata={
        "description": "Why the service disabled it (410 Gone, or every attempt of an event "
                       "failed); null when active or paused by a caller"})
    disabled_at = fields.DateTime(allow_none=True)
    created_by = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class WebhookWithSecret(Webhook):
    secret = fields.String(metadata={
        "description": "Signing secret (Standard Webhooks, whsec_...): shown only in this "
                       "answer"})


class WebhookAttempt(Schema):
    event_id = fields.UUID(metadata={"description": "The event's id (its webhook-id header)"})
    event_type = fields.String()
    attempt = fields.Integer()
    attempted_at = fields.DateTime()
    status_code = fields.Integer(allow_none=True, metadata={"description": "null: no answer"})
    latency_ms = fields.Float()
    error = fields.String(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True, metadata={
        "description": "When it is tried again; null: delivered, or no attempt left"})


class PingResult(WebhookAttempt):
    delivered = fields.Boolean(metadata={"description": "The endpoint answered 2xx"})


class Redelivery(Schema):
    webhook_id = fields.UUID()
    event_id = fields.UUID()
    state = fields.String()


WebhookEnvelope = _envelope_of("WebhookEnvelope", fields.Nested(Webhook))
WebhookSecretEnvelope = _envelope_of("WebhookSecretEnvelope", fields.Nested(WebhookWithSecret))
WebhookListEnvelope = _page_of("Webhook", Webhook)
WebhookAttemptListEnvelope = _page_of("WebhookAttempt", WebhookAttempt)
PingEnvelope = _envelope_of("PingEnvelope", fields.Nested(PingResult))
RedeliveryEnvelope = _envelope_of("RedeliveryEnvelope", fields.Nested(Redelivery))
