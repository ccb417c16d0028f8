"""Marshmallow schemas of the insights endpoints (query and answer, for OpenAPI too)."""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from service.domain.insights import GRANULARITIES
from service.web.schemas import NAME, Envelope, Instant, Text


class InsightsQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    from_ = Instant(data_key="from", metadata={
        "description": "Window start (RFC 3339), inclusive, rounded down to the UTC hour. "
                       "Default: 30 days before `to`."})
    to = Instant(metadata={
        "description": "Window end (RFC 3339), exclusive, rounded up to the UTC hour. "
                       "Default: now (or `as_of`). At most 366 days after `from`."})
    granularity = fields.String(validate=validate.OneOf(GRANULARITIES), metadata={
        "description": "One row per UTC hour, day, week (from Monday) or month; absent: "
                       "one row for the window", "enum": list(GRANULARITIES)})
    group_by = fields.String(validate=validate.OneOf(["pipeline"]), metadata={
        "description": "`pipeline`: a row per pipeline (and bucket). An answer holds at "
                       "most 10,000 rows: buckets × pipelines beyond that is a 400",
        "enum": ["pipeline"]})
    pipeline_id = fields.List(fields.UUID(), validate=validate.Length(max=100), metadata={
        "description": "Only these pipelines (repeat the parameter, at most 100)"})
    pipeline_name = Text(validate=NAME, metadata={"description": "Only pipelines of this name"})
    as_of = Instant(metadata={
        "description": "RFC 3339 instant: the insights as they stood then (folded from the "
                       "events; slower than the live answer)"})


class PipelineInsightsQuery(InsightsQuery):
    class Meta:
        unknown = EXCLUDE
        exclude = ("pipeline_id", "pipeline_name")


def _seconds(text: str) -> fields.Float:
    return fields.Float(allow_none=True, metadata={"description": text})


class Finished(Schema):
    success = fields.Integer()
    failure = fields.Integer()
    timeout = fields.Integer()
    invalid = fields.Integer()
    cancelled = fields.Integer()
    total = fields.Integer(metadata={"description": "Runs that ended in the bucket, any outcome"})


class Rate(Schema):
    value = fields.Float(allow_none=True, metadata={
        "description": "success / (success + failure + timeout): cancelled and invalid runs "
                       "are left out, as CircleCI does; null when the count is 0"})
    count = fields.Integer(metadata={"description": "success + failure + timeout"})


class Duration(Schema):
    count = fields.Integer(metadata={
        "description": "Finished runs that had started (never-started runs have no duration)"})
    min = _seconds("Seconds, started_at to ended_at (within relative_error)")
    mean = _seconds("Seconds (within relative_error)")
    p50 = _seconds("Seconds (within relative_error)")
    p90 = _seconds("Seconds (within relative_error)")
    p95 = _seconds("Seconds (within relative_error)")
    p99 = _seconds("Seconds (within relative_error)")
    max = _seconds("Seconds (within relative_error)")


class QueueTime(Schema):
    count = fields.Integer(metadata={
        "description": "Runs that started in the bucket (never-started runs have no queue time)"})
    p50 = _seconds("Seconds, created_at to started_at (within relative_error)")
    p95 = _seconds("Seconds (within relative_error)")


class Throughput(Schema):
    finished = fields.Integer(metadata={"description": "Runs that ended in the bucket"})
    per_day = fields.Float(allow_none=True, metadata={
        "description": "finished / the bucket's length (within the window) in days"})


class Mttr(Schema):
    count = fields.Integer(metadata={"description": "Recoveries that ended in the bucket"})
    mean = _seconds(
        "Mean time to recovery, seconds: from the end of the first failed or timed-out run "
        "after a success to the end of the pipeline's next successful run (exact)")


class InsightRow(Schema):
    bucket_start = fields.DateTime(metadata={"description": "Inclusive (never before `from`)"})
    bucket_end = fields.DateTime(metadata={"description": "Exclusive (never after `to`)"})
    pipeline_id = fields.UUID(metadata={"description": "With group_by=pipeline"})
    pipeline_name = fields.String(metadata={"description": "With group_by=pipeline"})
    created = fields.Integer(metadata={"description": "Runs created in the bucket"})
    finished = fields.Nested(Finished, metadata={"description": "Runs ended in the bucket, by outcome"})
    success_rate = fields.Nested(Rate)
    duration = fields.Nested(Duration)
    queue_time = fields.Nested(QueueTime)
    throughput = fields.Nested(Throughput)
    mttr = fields.Nested(Mttr)


class Insights(Schema):
    from_ = fields.DateTime(data_key="from", metadata={"description": "The window's start, as used"})
    to = fields.DateTime(metadata={"description": "The window's end (exclusive), as used"})
    as_of = fields.DateTime(allow_none=True)
    granularity = fields.String(allow_none=True)
    group_by = fields.String(allow_none=True)
    relative_error = fields.Float(metadata={
        "description": "Every time figure (min, mean, percentiles, max) is within this "
                       "relative error of the exact value (log-bin histogram); counts, "
                       "rates and MTTR are exact"})
    rows = fields.List(fields.Nested(InsightRow), metadata={
        "description": "Buckets (and pipelines) with any run; without granularity and "
                       "group_by, always one row"})


InsightsEnvelope = type("InsightsEnvelope", (Envelope,), {"content": fields.Nested(Insights)})
