"""What the API answers of each resource, in order: one serializer per resource.

Every response of a resource (create, get, list, change, delete, as_of, the general and the
one-statement write path) is shaped here, so its fields come in one order everywhere; the
marshmallow schemas in web/schemas.py declare them in the same order (a test checks both).
"""
from __future__ import annotations

from typing import Any, Mapping

RUN = ("id", "enterprise_id", "run_number", "pipeline_id", "pipeline_name", "status",
       "status_meta", "created_by", "updated_by", "created_at", "updated_at", "started_at",
       "ended_at", "version")
STAGE_RUN = ("id", "enterprise_id", "pipeline_id", "pipeline_run_id", "stage_id", "stage_meta",
             "status", "created_by", "updated_by", "created_at", "updated_at", "started_at",
             "ended_at")
EVENT = ("id", "position", "run_id", "pipeline_id", "version", "type", "from_status",
         "to_status", "actor", "occurred_at", "request_id", "data")


def shape(fields: tuple[str, ...], source: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    """The resource's fields from `source` (a row or a dict), `values` taking precedence."""
    return {k: values[k] if k in values else source[k] for k in fields}
