"""A run's columns, defined once: the projection row, the stage-run row, and what the API answers.

tests/test_columns.py checks RUN_FIELDS against the API's PipelineRun schema, so a column
added to the answer in one place and not the other fails a test instead of a client.
"""
from __future__ import annotations

from typing import Any, Mapping

# The run as the API answers it, in answer order.
RUN_FIELDS: tuple[str, ...] = (
    "id", "enterprise_id", "run_number", "pipeline_id", "pipeline_name", "status",
    "status_meta", "created_by", "updated_by", "created_at", "updated_at", "started_at",
    "ended_at", "version",
)
# A stage run and an event as the API answers them, in answer order (one serializer per
# resource: every response of a stage run or an event is shaped by `answered`).
STAGE_RUN_FIELDS: tuple[str, ...] = (
    "id", "enterprise_id", "pipeline_id", "pipeline_run_id", "stage_id", "stage_meta",
    "status", "created_by", "updated_by", "created_at", "updated_at", "started_at", "ended_at",
)
EVENT_FIELDS: tuple[str, ...] = (
    "id", "position", "run_id", "pipeline_id", "version", "type", "from_status", "to_status",
    "actor", "occurred_at", "request_id", "data",
)
# The pipeline_runs row (the state the lifecycle folds, less its stage runs).
RUN_STATE_COLUMNS: tuple[str, ...] = (
    "enterprise_id", "id", "pipeline_id", "run_number", "status", "status_meta", "created_by",
    "updated_by", "created_at", "updated_at", "started_at", "ended_at", "version", "deadline",
)
# The stage_runs row.
STAGE_RUN_COLUMNS: tuple[str, ...] = (
    "enterprise_id", "id", "run_id", "pipeline_id", "stage_id", "ordinal", "stage_meta",
    "timeout_seconds", "status", "created_by", "updated_by", "created_at", "updated_at",
    "started_at", "ended_at",
)


def run_select(run: str = "r", pipeline_name: str = "p.name") -> str:
    """The answered columns as a SELECT list: the run's from alias `run`, its pipeline's name
    from the expression `pipeline_name`."""
    return ", ".join(f"{pipeline_name} AS pipeline_name" if field == "pipeline_name"
                     else f"{run}.{field}" for field in RUN_FIELDS)


def answered_run(row: Mapping[str, Any], pipeline_name: str | None = None) -> dict[str, Any]:
    """A run (a row with RUN_FIELDS, or a folded state plus its pipeline's name) as answered."""
    if pipeline_name is None:
        return {field: row[field] for field in RUN_FIELDS}
    return {field: pipeline_name if field == "pipeline_name" else row[field]
            for field in RUN_FIELDS}


def run_of_row(row) -> dict[str, Any]:
    """answered_run of a row whose first columns are run_select()'s, in its order (more may
    follow): its values taken in order, not each looked up by name (a third of the cost)."""
    return dict(zip(RUN_FIELDS, row))


def answered(fields: tuple[str, ...], row: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    """`fields` of `row` in that order (STAGE_RUN_FIELDS, EVENT_FIELDS), `values` first."""
    return {field: values[field] if field in values else row[field] for field in fields}
