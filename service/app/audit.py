"""Auditors' reads: the runs list with its status counts, a run's view at an instant, the
feed newest first (with a long-poll for what is newer), and the exports."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

import asyncpg

from service.domain import timeline
from service.domain.errors import NotFound
from service.app import feed, runs
from service.store import counts, events, pipelines, run_lists


@dataclass
class RunsPage:
    page: run_lists.Page
    status_counts: dict[str, int]
    pipelines: list[dict]  # {id, name}: the filter's choices


async def runs_page(conn: asyncpg.Connection, enterprise_id: str, q: dict[str, Any]) -> RunsPage:
    """A page of the enterprise's runs (q: a validated RunListQuery) and the status bar."""
    page = await runs.list_runs(
        conn, enterprise_id, pipeline_id=None, status=q.get("status"),
        pipeline_name=q.get("pipeline_name"), ordering=q.get("ordering"), limit=q["limit"],
        offset=0, cursor=q.get("cursor") or None, created_after=q.get("created_after"),
        created_before=q.get("created_before"))
    tally = await counts.status_counts(conn, enterprise_id, q.get("pipeline_name"))
    return RunsPage(page, tally, await pipeline_choices(conn, enterprise_id))


async def pipeline_choices(conn: asyncpg.Connection, enterprise_id: str) -> list[dict]:
    """The first 200 pipelines by name ({id, name}), for the filters' choices."""
    _, items = await pipelines.list_pipelines(conn, enterprise_id, name=None, default=None,
                                              ordering="name", limit=200, offset=0)
    return [{"id": p["id"], "name": p["name"]} for p in items]


@dataclass
class RunPage:
    view: timeline.View
    pipeline_name: str | None
    all_events: list[dict]  # the whole history (the table shows what is past the instant too)
    stage_runs: list[dict]  # as of the instant: from the fold


async def run_page(conn: asyncpg.Connection, enterprise_id: str, pipeline_id: uuid.UUID,
                   run_id: uuid.UUID, as_of: datetime | None) -> RunPage:
    """A run as it is now or was at `as_of`, from its events (deleted runs included)."""
    history = [events.public_event(e)
               for e in await events.run_events(conn, enterprise_id, pipeline_id, run_id)]
    if not history:
        raise NotFound("pipeline run not found")
    name = await events.pipeline_name(conn, enterprise_id, pipeline_id)
    seen = timeline.view(history, as_of, datetime.now(timezone.utc))
    if seen is None:
        raise NotFound("pipeline run did not exist at that time")
    return RunPage(seen, name, history, seen.state["stage_runs"])


async def activity(conn: asyncpg.Connection, enterprise_id: str, *, before: int | None,
                   limit: int, filters: dict[str, Any]) -> list[dict]:
    """The feed newest first; filters: pipeline_id, type_, actor, since, until."""
    return await events.feed_newest(conn, enterprise_id, before=before, limit=limit, **filters)


async def labelled(conn: asyncpg.Connection, enterprise_id: str,
                   items: list[dict]) -> list[dict]:
    """Feed events with what people call their run and stage: run_number, pipeline_name,
    stage_name (a stage run's events)."""
    labels = await events.run_labels(conn, enterprise_id, [e["run_id"] for e in items])
    out = []
    for event in items:
        label = labels.get(event["run_id"], {"run_number": None, "pipeline_name": None,
                                             "stages": {}})
        stage_run_id = (event.get("data") or {}).get("stage_run_id")
        out.append({**event, "run_number": label["run_number"],
                    "pipeline_name": label["pipeline_name"],
                    "stage_name": label["stages"].get(str(stage_run_id)) if stage_run_id
                    else None})
    return out


async def feed_wait(connect: Callable, waiters, enterprise_id: str, *, after: int,
                    wait: float, limit: int, scan_cap: int, **filters) -> list[dict]:
    """The feed after `after` (position order); with none yet, waits up to `wait` seconds."""
    page = await feed.wait(connect, waiters, enterprise_id, after=after, wait=wait,
                           limit=limit, scan_cap=scan_cap, **filters)
    return page.events


def stage_run_rows(page: RunPage) -> list[dict]:
    """The stage runs as the page shows them (stage_runs.py's public shape, as of the view)."""
    return [{**s, "name": s["stage_meta"]["name"]} for s in page.stage_runs]


run_history = events.run_history


def export_run(connect: Callable, enterprise_id: str, pipeline_id: uuid.UUID,
               run_id: uuid.UUID) -> AsyncIterator[list[dict]]:
    """A run's history in chunks, in version order, as it stood when the export started."""
    return _in_chunks(connect, enterprise_id, "version", lambda conn, after, cut: (
        events.export_run_chunk(conn, enterprise_id, pipeline_id, run_id,
                                after_version=after, cut=cut)))


def export_feed(connect: Callable, enterprise_id: str, *, since: datetime | None,
                until: datetime | None) -> AsyncIterator[list[dict]]:
    """The feed of [since, until) in chunks, in position order, as it stood at the start."""
    return _in_chunks(connect, enterprise_id, "position", lambda conn, after, cut: (
        events.export_feed_chunk(conn, enterprise_id, after=after, cut=cut, since=since,
                                 until=until)))


async def _in_chunks(connect: Callable, enterprise_id: str, key: str,
                     read: Callable) -> AsyncIterator[list[dict]]:
    """Chunks after the last one's `key`, up to the cut the first takes (store/events.py).

    Each chunk has a connection of its own (connect()), given back before the chunk is
    yielded: whoever consumes them slowly holds no connection and no transaction.
    """
    cut, after = None, 0
    while True:
        async with connect() as conn:
            if cut is None:
                cut = await events.export_cut(conn, enterprise_id)
            chunk = await read(conn, after, cut)
        if not chunk:
            return
        yield chunk
        if len(chunk) < events.EXPORT_BATCH:
            return
        after = chunk[-1][key]
