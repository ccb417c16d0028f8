"""Exports of the audit trail (CSV, NDJSON), streamed: a run's history and the feed."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import uuid
from datetime import datetime, timedelta
from urllib.parse import quote

import pytest

from tests.helpers import make_token
from service.app import audit
from service.store import events as event_store
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def history_path(run: dict) -> str:
    return f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/events/"


async def download(api, path: str, status: int = 200):
    resp = await api.client.get(api.url(path), headers={"Authorization": f"Bearer {api.token}"})
    text = await resp.text()
    assert resp.status == status, text
    return resp, text


def csv_as_events(text: str) -> list[dict]:
    """CSV rows with the API's JSON field values (the CSV's text is the JSON's)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{"position": int(r["position"]), "id": r["id"], "pipeline_id": r["pipeline_id"],
             "run_id": r["run_id"], "version": int(r["version"]), "type": r["type"],
             "from_status": r["from_status"] or None, "to_status": r["to_status"] or None,
             "actor": r["actor"], "occurred_at": r["occurred_at"],
             "request_id": r["request_id"] or None, "data": json.loads(r["data"]),
             "reason": r["reason"]} for r in rows]


def with_reason(events: list[dict]) -> list[dict]:
    return [{**e, "reason": e["data"].get("reason") or ""} for e in events]


async def busy_run(api) -> dict:
    pipeline = await api.pipeline(name='quote " comma, <b>', stages=("build",))
    run = await api.run(pipeline["id"])
    await api.move(run, "running", "waiting", "running", "cancelled")
    return run


async def test_run_history_exports_equal_the_api_history(api, monkeypatch):
    monkeypatch.setattr(event_store, "EXPORT_BATCH", 2)  # several cursor batches
    run = await busy_run(api)
    history = (await api.get(history_path(run) + "?limit=1000"))["results"]
    assert len(history) == 6  # created, 4 moves, the stage run cancelled with the run
    resp, text = await download(api, history_path(run) + "?format=ndjson")
    assert resp.content_type == "application/x-ndjson"
    assert "Content-Length" not in resp.headers  # streamed
    assert 'filename="run-' in resp.headers["Content-Disposition"]
    assert [json.loads(line) for line in text.splitlines()] == history
    resp, text = await download(api, history_path(run) + "?format=csv")
    assert resp.content_type == "text/csv"
    assert text.splitlines()[0].startswith("position,id,pipeline_id,run_id,version,type")
    assert csv_as_events(text) == with_reason(history)


async def test_feed_export_covers_a_time_range(api, monkeypatch):
    monkeypatch.setattr(event_store, "EXPORT_BATCH", 3)
    first = await busy_run(api)
    feed = (await api.get("/events/?limit=1000"))["results"]
    middle = feed[2]["occurred_at"]
    await busy_run(api)
    everything = (await api.get("/events/?limit=1000"))["results"]
    _, text = await download(api, "/events/export/?format=ndjson")
    assert [json.loads(line) for line in text.splitlines()] == everything
    until = (datetime.fromisoformat(feed[-1]["occurred_at"]) + timedelta(microseconds=1))
    query = f"?since={quote(middle)}&until={quote(until.isoformat())}"
    expected = [e for e in everything if middle <= e["occurred_at"] and e["run_id"] == first["id"]
                and e["position"] >= feed[2]["position"]]
    _, text = await download(api, "/events/export/" + query + "&format=csv")
    assert csv_as_events(text) == with_reason(expected)
    _, text = await download(api, "/events/export" + query)  # ndjson by default, no slash
    assert [json.loads(line) for line in text.splitlines()] == expected
    _, text = await download(api, "/events/export/?since=&until=&format=")  # empty: absent
    assert [json.loads(line) for line in text.splitlines()] == everything
    _, text = await download(api, "/events/export/?since=2000-01-01T00:00:00Z"
                                  "&until=2000-01-02T00:00:00Z&format=csv")
    assert text.splitlines() == [",".join(
        ("position,id,pipeline_id,run_id,version,type,from_status,to_status,actor,"
         "occurred_at,request_id,reason,data").split(","))]


async def test_exports_refuse_bad_input_other_tenants_and_missing_scope(api, db, enterprise):
    run = await busy_run(api)
    body = await api.get(history_path(run) + "?format=xml", status=400)
    assert "format" in json.dumps(body)
    await api.get("/events/export/?format=pdf", status=400)
    await api.get("/events/export/?since=yesterday", status=400)
    stranger = api.with_token(await make_token(db, enterprise + "-x"))
    await stranger.get(history_path(run) + "?format=csv", status=404)
    reader = api.with_token(await make_token(db, enterprise, scopes=("runs:read",)))
    await reader.get("/events/export/?format=csv", status=403)
    await reader.get(history_path(run) + "?format=csv", status=403)


async def test_exports_are_in_the_openapi_document(api):
    doc = await (await api.client.get("/api/docs/swagger.json")).json()
    export = doc["paths"]["/pipelines/v0/events/export/"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"text/csv", "application/x-ndjson"}
    assert {"401", "403", "429"} <= set(export["responses"])
    assert "MAX_WAITS_PER_TOKEN" in export["responses"]["429"]["description"]
    assert "Retry-After" in export["responses"]["429"]["headers"]
    assert {"SCAPIAuthToken": []} in export["security"]
    assert {p["name"] for p in export["parameters"]} == {"since", "until", "format",
                                                         "Consistency-Token"}
    history = doc["paths"]["/pipelines/v0/pipelines/{pipeline_id}/runs/{pipeline_run_id}/events/"]
    assert {"application/json", "text/csv", "application/x-ndjson"} == set(
        history["get"]["responses"]["200"]["content"])
    assert "format" in {p["name"] for p in history["get"]["parameters"]}


async def test_csv_cells_that_spreadsheets_would_run_are_neutralised(api, db, enterprise):
    hostile = api.with_token(await make_token(db, enterprise, "=HYPERLINK(\"http://x\")"))
    pipeline = await hostile.pipeline(stages=("build",))
    run = await hostile.call("POST", f"/pipelines/{pipeline['id']}/runs/", json={},
                             headers={"X-Request-ID": "-cmd:calc"})
    for path in (history_path(run) + "?format=csv", "/events/export/?format=csv"):
        _, text = await download(api, path)
        (created,) = [r for r in csv.DictReader(io.StringIO(text)) if r["type"] == "run.created"]
        assert created["request_id"] == "'-cmd:calc"
        assert created["actor"] == "'=HYPERLINK(\"http://x\")"
        for row in csv.reader(io.StringIO(text)):
            assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row)
    # NDJSON is data, not a sheet: as the API answers it.
    _, text = await download(api, history_path(run) + "?format=ndjson")
    assert json.loads(text.splitlines()[0])["request_id"] == "-cmd:calc"


async def test_an_export_is_the_feed_as_it_stood_when_it_started(api, db, enterprise,
                                                                 monkeypatch):
    """Chunks read on connections taken one by one still give one snapshot: the cut."""
    monkeypatch.setattr(event_store, "EXPORT_BATCH", 2)
    run = await busy_run(api)
    pipeline_id, run_id = uuid.UUID(run["pipeline_id"]), uuid.UUID(run["id"])

    @contextlib.asynccontextmanager
    async def connect():
        yield db

    exports = {
        "/events/?limit=1000": lambda: audit.export_feed(connect, enterprise, since=None,
                                                         until=None),
        history_path(run) + "?limit=1000": lambda: audit.export_run(connect, enterprise,
                                                                    pipeline_id, run_id),
    }
    for version, (path, start) in enumerate(exports.items(), 7):
        expected = [e["id"] for e in (await api.get(path))["results"]]
        export = start()
        got = await anext(export)
        await api.move(await api.run(run["pipeline_id"]), "running")  # appended meanwhile
        await db.execute("""INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version,
                                type, to_status, actor, occurred_at)
                            VALUES ($1, $2, $3, $4, 'run.status_changed', 'pending', 'late',
                                    now())""", enterprise, pipeline_id, run_id, version)
        got += [e async for batch in export for e in batch]
        assert [str(e["id"]) for e in got] == expected
        assert len(expected) > 2  # more than one chunk
