"""Tracing: a caller's traceparent continues its trace through request, SQL, logs and events."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.helpers import Api
from service.client import PipelineRunsClient
from service.infra.logs import setup_logging
from service.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


@pytest.fixture
def log_lines(config):
    """JSON logs into a buffer (as `serve` writes them); returns a reader of the lines."""
    root = logging.getLogger()
    saved_level = root.level
    flags = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved_flags = {flag: getattr(logging, flag) for flag in flags}
    stream = io.StringIO()
    handlers = []

    def start(log_format: str = "json"):
        handlers.append(setup_logging(config.with_(log_format=log_format), stream))
        return lambda: stream.getvalue().splitlines()

    yield start
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(saved_level)
    for flag, value in saved_flags.items():
        setattr(logging, flag, value)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(aiohttp_client, config, token, spans) -> Api:
    """The app with tracing on, its spans kept in memory."""
    return Api(await aiohttp_client(create_app(config, span_exporter=spans)), token)


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


async def _events_of(db, enterprise: str, run_id: str) -> list[dict]:
    rows = await db.fetch("SELECT type, data FROM run_events WHERE enterprise_id = $1 "
                          "AND run_id = $2 ORDER BY version", enterprise, uuid.UUID(run_id))
    return [{"type": r["type"], **r["data"]} for r in rows]


async def test_a_traceparent_continues_the_callers_trace(traced, spans, log_lines, db,
                                                          enterprise):
    pipeline = await traced.pipeline()
    read = log_lines()
    spans.clear()
    run = await traced.post(f"/pipelines/{pipeline['id']}/runs/", {},
                            headers={"traceparent": TRACEPARENT, "X-Request-ID": "tr-1"})

    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind == SpanKind.SERVER]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert _hex(server.parent.span_id) == PARENT_SPAN and server.parent.is_remote
    assert server.name == "POST /pipelines/v0/pipelines/{pipeline_id}/runs/"
    assert server.attributes["http.route"] == "/pipelines/v0/pipelines/{pipeline_id}/runs/"
    # A span per statement, children of the request's (background work, such as the feed's
    # wake-up after the commit, starts traces of its own).
    sql = [s for s in finished if s.kind == SpanKind.CLIENT
           and format(s.context.trace_id, "032x") == TRACE_ID]
    assert sql, [s.name for s in finished]
    assert all(s.parent.span_id == server.context.span_id for s in sql)
    assert any(s.attributes.get("db.system") == "postgresql" and
               "INSERT INTO run_events" in s.attributes.get("db.statement", "") for s in sql)

    lines = [json.loads(line) for line in read()]
    (access,) = [line for line in lines if line["logger"] == "service.access"]
    assert (access["request_id"], access["trace_id"], access["status"]) == ("tr-1", TRACE_ID, 200)
    events = await _events_of(db, enterprise, run["id"])
    assert events and all((e["request_id"], e["trace_id"]) == ("tr-1", TRACE_ID) for e in events)

    # A status change (the one-statement path, through the group commit) carries it too;
    # so does the feed that shows the events.
    other = f"00-{'ab' * 16}-{'cd' * 8}-01"
    await traced.put(f"/pipelines/{pipeline['id']}/runs/{run['id']}/", {"status": "running"},
                     headers={"traceparent": other})
    last = (await _events_of(db, enterprise, run["id"]))[-1]
    assert (last["type"], last["trace_id"]) == ("run.status_changed", "ab" * 16)
    feed = await traced.get("/events/?after=0&limit=100")
    assert [e["data"]["trace_id"] for e in feed["results"]][-1] == "ab" * 16


async def test_without_a_traceparent_each_request_starts_a_trace(traced, spans, log_lines):
    read = log_lines("text")
    await traced.get("/runs/", headers={"X-Request-ID": "fresh-1"})
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.parent is None
    trace_id = format(server.context.trace_id, "032x")
    (access,) = [line for line in read() if " service.access " in line]
    assert f" INFO service.access [fresh-1 {trace_id}] request " in access


async def test_the_client_sends_the_callers_current_span(traced, spans, enterprise, db):
    caller = TracerProvider().get_tracer("caller")
    url = str(traced.client.make_url(""))
    async with PipelineRunsClient(url, traced.token, mount="/pipelines/v0") as client:
        pipeline = await client.create_pipeline("p", ["s"])
        spans.clear()
        with caller.start_as_current_span("deploy") as span:
            run = await client.create_run(pipeline["id"])
        untraced = await client.create_run(pipeline["id"])  # no current span: none sent
    caller_trace = span.get_span_context().trace_id
    servers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == 2
    assert servers[0].context.trace_id == caller_trace
    assert servers[0].parent.span_id == span.get_span_context().span_id
    assert servers[1].context.trace_id != caller_trace and servers[1].parent is None
    (created, *_) = await _events_of(db, enterprise, run["id"])
    assert created["trace_id"] == format(caller_trace, "032x")
    (created, *_) = await _events_of(db, enterprise, untraced["id"])
    assert created["trace_id"] == format(servers[1].context.trace_id, "032x")


async def test_tracing_off_no_trace_id_and_no_opentelemetry(api, db, enterprise, log_lines):
    read = log_lines()
    pipeline = await api.pipeline()
    run = await api.post(f"/pipelines/{pipeline['id']}/runs/", {},
                         headers={"traceparent": TRACEPARENT, "X-Request-ID": "off-1"})
    (access,) = [json.loads(line) for line in read() if '"off-1"' in line]
    assert access["trace_id"] is None
    events = await _events_of(db, enterprise, run["id"])
    assert events and all("trace_id" not in e and e["request_id"] == "off-1" for e in events)
    # Unset, OpenTelemetry is not even imported by the app (a fresh interpreter to see it).
    code = ("import sys; from service.config import Config; from service.web.app import "
            "create_app; create_app(Config(database_url='postgresql://x/y')); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_spans_reach_an_otlp_collector(aiohttp_client, config, token):
    """The OTLP/HTTP exporter sends to OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces (protobuf)."""
    received: asyncio.Queue[ExportTraceServiceRequest] = asyncio.Queue()

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.put_nowait(message)
        return web.Response(content_type="application/x-protobuf", body=b"")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    async with TestServer(collector) as server:
        endpoint = str(server.make_url("/")).rstrip("/")
        app = create_app(config.with_(otel_endpoint=endpoint, otel_service_name="pr-test"))
        client = await aiohttp_client(app)
        api = Api(client, token)
        await api.get("/runs/", headers={"traceparent": TRACEPARENT})
        await client.close()  # the app's cleanup flushes the batch of spans
        trace_ids, names, services = set(), set(), set()
        while not received.empty():
            for resource_spans in (await received.get()).resource_spans:
                services |= {a.value.string_value for a in resource_spans.resource.attributes
                             if a.key == "service.name"}
                for scope in resource_spans.scope_spans:
                    trace_ids |= {s.trace_id.hex() for s in scope.spans}
                    names |= {s.name for s in scope.spans}
    assert services == {"pr-test"}
    assert TRACE_ID in trace_ids and "GET /pipelines/v0/runs/" in names
