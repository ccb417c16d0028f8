"""Pipelines and stages: plain rows, no events; each use case is one store statement.

They are named here so handlers depend on use cases only (the store can change under
them); a rule that ever needs deciding (a check across resources, an event) goes here.
"""
from __future__ import annotations

from service.store.pipelines import (
    add_stage,
    create_pipeline,
    delete_pipeline,
    delete_stage,
    get_pipeline,
    get_stage,
    list_pipelines,
    list_stages,
    update_pipeline,
    update_stage,
)

__all__ = ["add_stage", "create_pipeline", "delete_pipeline", "delete_stage", "get_pipeline",
           "get_stage", "list_pipelines", "list_stages", "update_pipeline", "update_stage"]
