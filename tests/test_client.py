"""service.client against the real service over TCP, and its retry protocol against a fake."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.web.app import create_app
from service.client import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PipelineRunsClient,
    PreconditionFailed,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from service.config import Config
from tests.helpers import make_token

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    """The real app on 127.0.0.1 over TCP; stops and starts again on the same port.

    Every request it receives is recorded in `requests` (method, path, query, headers).
    """

    def __init__(self, config: Config):
        self.config = config
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.requests: asyncio.Queue[tuple[str, str, dict, dict]] = asyncio.Queue()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = create_app(self.config)
        app.middlewares.append(self._record)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def next_request(self, path_suffix: str) -> tuple[str, str, dict, dict]:
        """The next recorded request whose path ends with `path_suffix`."""
        while True:
            seen = await self.requests.get()
            if seen[1].endswith(path_suffix):
                return seen

    def drain(self) -> list[tuple[str, str, dict, dict]]:
        seen = []
        while not self.requests.empty():
            seen.append(self.requests.get_nowait())
        return seen

    @web.middleware
    async def _record(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests.put_nowait(
            (request.method, request.path, dict(request.query), dict(request.headers)))
        return await handler(request)


@pytest.fixture
async def server(config) -> AsyncIterator[LiveServer]:
    live = LiveServer(config)
    await live.start()
    yield live
    await live.stop()


@pytest.fixture
async def pr(server, token) -> AsyncIterator[PipelineRunsClient]:
    async with PipelineRunsClient(server.url, token, backoff=0.05) as client:
        yield client


async def _next(iterator: AsyncIterator[Any]) -> Any:
    return await anext(iterator)


# --- importability ---------------------------------------------------------------------

def test_the_client_imports_without_the_server_dependencies():
    code = (
        "import sys\n"
        "for name in ('asyncpg', 'marshmallow', 'aiohttp_apispec', 'webargs', 'apispec'):\n"
        "    sys.modules[name] = None\n"
        "import service.client\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'service')\n"
        "assert loaded == ['service', 'service.client'], loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- the real service ------------------------------------------------------------------

async def test_run_lifecycle_through_the_client(pr, server):
    pipeline = await pr.create_pipeline(
        "deploy", ["build", {"name": "test", "description": "unit"}], description="ci")
    assert pipeline["name"] == "deploy" and pipeline["description"] == "ci"
    assert [(s["name"], s["description"]) for s in pipeline["stages"]] == [
        ("build", ""), ("test", "unit")]
    stage = await pr.create_stage(pipeline["id"], "ship", timeout_seconds=60)
    assert stage["name"] == "ship" and stage["timeout_seconds"] == 60
    fetched = await pr.get_pipeline(pipeline["id"])
    assert [s["name"] for s in fetched["stages"]] == ["build", "test", "ship"]

    run = await pr.create_run(pipeline["id"])
    assert (run["status"], run["version"], run["run_number"]) == ("pending", 1, 1)
    assert pr.last_etag == '"1"'
    created_by_request = pr.last_request_id
    posts = [r for r in server.drain() if r[0] == "POST" and r[1].endswith("/runs/")]
    assert posts[0][1] == f"/api/pipelines/v0/pipelines/{pipeline['id']}/runs/"
    assert uuid.UUID(posts[0][3]["Idempotency-Key"]).version == 4
    assert posts[0][3]["X-Request-ID"] == created_by_request

    states = [run]
    for status in ("running", "waiting", "running", "complete", "success"):
        states.append(await pr.update_status(pipeline["id"], run["id"], status))
        assert states[-1]["status"] == status
        assert pr.last_etag == f'"{states[-1]["version"]}"'

    now = await pr.get_run(pipeline["id"], run["id"])
    assert now == states[-1] and pr.last_etag == f'"{now["version"]}"'
    assert now["started_at"] is not None and now["ended_at"] is not None
    etag = pr.last_etag

    # as_of: an aware datetime with a "+02:00" offset (the "+" must be URL-encoded), and a str.
    waiting_at = datetime.fromisoformat(states[2]["updated_at"])
    in_paris = waiting_at.astimezone(timezone(timedelta(hours=2)))
    then = await pr.get_run(pipeline["id"], run["id"], as_of=in_paris)
    assert {k: then[k] for k in states[2]} == states[2] and then["status"] == "waiting"
    at_creation = await pr.get_run(pipeline["id"], run["id"], as_of=run["created_at"])
    assert {k: at_creation[k] for k in run} == run
    with pytest.raises(ValueError, match="timezone-aware"):
        await pr.get_run(pipeline["id"], run["id"], as_of=waiting_at.replace(tzinfo=None))

    # Every page, in version order; stage-run events (e.g. a cascade) may sit between moves.
    history = await pr.run_events(pipeline["id"], run["id"], page_size=2)
    assert [e["version"] for e in history] == list(range(1, now["version"] + 1))
    assert [(e["type"], e["from_status"], e["to_status"])
            for e in history if e["type"].startswith("run.")] == [
        ("run.created", None, "pending"),
        ("run.status_changed", "pending", "running"),
        ("run.status_changed", "running", "waiting"),
        ("run.status_changed", "waiting", "running"),
        ("run.status_changed", "running", "complete"),
        ("run.status_changed", "complete", "success"),
    ]
    assert history[0]["request_id"] == created_by_request
    assert len({e["position"] for e in history}) == len(history)

    deleted = await pr.delete_run(pipeline["id"], run["id"], if_match=etag)
    assert deleted["id"] == run["id"] and deleted["status"] == "success"
    with pytest.raises(NotFound) as gone:
        await pr.get_run(pipeline["id"], run["id"])
    assert gone.value.code == 404 and gone.value.message == "pipeline run not found"
    after_delete = await pr.run_events(pipeline["id"], run["id"])
    assert [e["type"] for e in after_delete] == [e["type"] for e in history] + ["run.deleted"]


async def test_list_runs_follows_every_page_and_filters(pr, server):
    pipeline = await pr.create_pipeline("deploy", ["build"])
    nightly = await pr.create_pipeline("nightly", ["build"])
    runs = [await pr.create_run(pipeline["id"]) for _ in range(5)]
    for run in (runs[1], runs[3]):
        await pr.update_status(pipeline["id"], run["id"], "running")
    other = await pr.create_run(nightly["id"])
    server.drain()

    listed = [r async for r in pr.list_runs(pipeline["id"], page_size=2, ordering="run_number")]
    assert [r["id"] for r in listed] == [r["id"] for r in runs]
    assert [r["run_number"] for r in listed] == [1, 2, 3, 4, 5]
    pages = [(path, query) for _, path, query, _ in server.drain()]
    assert [(q["limit"], q.get("offset", "0")) for _, q in pages] == [
        ("2", "0"), ("2", "2"), ("2", "4")]
    assert all(q["ordering"] == "run_number" for _, q in pages)

    running = [r async for r in pr.list_runs(pipeline["id"], page_size=2, status="RUNNING")]
    assert sorted(r["id"] for r in running) == sorted([runs[1]["id"], runs[3]["id"]])
    assert {r["status"] for r in running} == {"running"}

    everything = [r async for r in pr.list_runs(page_size=2)]
    assert sorted(r["id"] for r in everything) == sorted(r["id"] for r in [*runs, other])
    named = [r async for r in pr.list_runs(page_size=2, pipeline_name="nightly")]
    assert [(r["id"], r["pipeline_name"]) for r in named] == [(other["id"], "nightly")]
    assert [r async for r in pr.list_runs(pipeline["id"], status="success")] == []


async def test_not_found_carries_code_message_and_content(pr):
    pipeline = await pr.create_pipeline("deploy", ["build"])
    with pytest.raises(NotFound) as caught:
        await pr.get_run(pipeline["id"], str(uuid.uuid4()))
    error = caught.value
    assert isinstance(error, ApiError)
    assert (error.code, error.message, error.content) == (404, "pipeline run not found", {})
    assert error.request_id == pr.last_request_id and str(error) == "404 pipeline run not found"
    with pytest.raises(NotFound):
        [r async for r in pr.list_runs(str(uuid.uuid4()))]


async def test_an_illegal_move_is_a_conflict_naming_both_statuses(pr):
    pipeline = await pr.create_pipeline("deploy", ["build"])
    run = await pr.create_run(pipeline["id"])
    with pytest.raises(Conflict) as caught:
        await pr.update_status(pipeline["id"], run["id"], "success")
    assert caught.value.code == 409
    assert caught.value.message == "cannot change status from pending to success"
    assert caught.value.content == {"current_status": "pending", "requested_status": "success"}
    assert (await pr.get_run(pipeline["id"], run["id"]))["status"] == "pending"


async def test_a_stale_if_match_is_precondition_failed(pr):
    pipeline = await pr.create_pipeline("deploy", ["build"])
    run = await pr.create_run(pipeline["id"])
    running = await pr.update_status(pipeline["id"], run["id"], "running", if_match=1)
    assert running["version"] == 2
    with pytest.raises(PreconditionFailed) as caught:
        await pr.update_status(pipeline["id"], run["id"], "waiting", if_match=1)
    assert (caught.value.code, caught.value.content) == (412, {"current_version": 2})
    with pytest.raises(PreconditionFailed):
        await pr.delete_run(pipeline["id"], run["id"], if_match='"1"')
    await pr.get_run(pipeline["id"], run["id"])
    waiting = await pr.update_status(pipeline["id"], run["id"], "waiting", if_match=pr.last_etag)
    assert (waiting["status"], waiting["version"]) == ("waiting", 3)


async def test_an_unknown_status_is_a_bad_request(pr):
    pipeline = await pr.create_pipeline("deploy", ["build"])
    run = await pr.create_run(pipeline["id"])
    with pytest.raises(BadRequest) as caught:
        await pr.update_status(pipeline["id"], run["id"], "bogus")
    assert caught.value.code == 400
    assert caught.value.content["errors"]["status"][0].startswith("unknown status 'bogus'")
    # What a caller logs says which field and why, not only "400 invalid input".
    assert str(caught.value).startswith("400 invalid input: status: unknown status 'bogus'; "
                                        "one of: pending, queued")


async def test_a_bad_nested_field_is_named_by_its_path(pr):
    with pytest.raises(BadRequest) as caught:
        await pr.create_pipeline("deploy", ["build", {"name": ""}])
    assert str(caught.value) == "400 invalid input: stages.1.name: Length must be between 1 and 255."


async def test_a_bad_token_is_unauthorized_and_a_narrow_one_forbidden(server, db, enterprise):
    async with PipelineRunsClient(server.url, "not-a-token") as stranger:
        with pytest.raises(Unauthorized) as caught:
            await stranger.create_pipeline("deploy")
        assert caught.value.code == 401 and caught.value.content == {}
        with pytest.raises(Unauthorized):
            [r async for r in stranger.list_runs()]
    reader = await make_token(db, enterprise, "reader", ["runs:read"])
    async with PipelineRunsClient(server.url, reader, mount="/v0") as narrow:
        with pytest.raises(Forbidden) as caught:
            await narrow.create_pipeline("deploy")
        assert caught.value.message == "this operation needs the scope runs:write"
        assert [r async for r in narrow.list_runs()] == []


async def test_feed_tails_the_change_feed_with_long_poll(pr, server, token):
    pipeline = await pr.create_pipeline("deploy", ["build"])
    server.drain()
    async with contextlib.aclosing(pr.feed(after=0, wait=20)) as feed:
        first = asyncio.ensure_future(_next(feed))
        _, path, query, _ = await asyncio.wait_for(server.next_request("/events/"), 10)
        assert (path, query["after"], query["wait"]) == ("/api/pipelines/v0/events/", "0", "20")
        async with PipelineRunsClient(server.url, token) as writer:
            run = await writer.create_run(pipeline["id"])
            created = await asyncio.wait_for(first, 10)
            assert (created["type"], created["run_id"]) == ("run.created", run["id"])
            second = asyncio.ensure_future(_next(feed))
            _, _, query, _ = await asyncio.wait_for(server.next_request("/events/"), 10)
            assert query["after"] == str(created["position"])
            await writer.update_status(pipeline["id"], run["id"], "running")
            moved = await asyncio.wait_for(second, 10)
    assert (moved["type"], moved["to_status"], moved["version"]) == (
        "run.status_changed", "running", 2)
    assert moved["position"] > created["position"]


async def test_stage_runs_through_the_client(pr):
    pipeline = await pr.create_pipeline("deploy", ["build", "test"])
    run = await pr.create_run(pipeline["id"])
    await pr.update_status(pipeline["id"], run["id"], "running")
    stage_runs = await pr.stage_runs(run["id"], page_size=1)  # a 404 fails the test
    assert len(stage_runs) == 2 and all({"id", "status"} <= s.keys() for s in stage_runs)
    moved = await pr.update_stage_run(run["id"], stage_runs[0]["id"], "running")
    assert (moved["id"], moved["status"]) == (stage_runs[0]["id"], "running")
    again = {s["id"]: s["status"] for s in await pr.stage_runs(run["id"])}
    assert again[stage_runs[0]["id"]] == "running"


class _Retries(logging.Handler):
    """Sets `seen` when the client logs that it will retry."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.set()


async def test_a_create_survives_a_restart_of_the_service(server, token):
    retries = _Retries()
    logging.getLogger("service.client").addHandler(retries)
    try:
        async with PipelineRunsClient(server.url, token, retries=6, backoff=0.25) as pr:
            pipeline = await pr.create_pipeline("deploy", ["build"])
            port = server.port
            await server.stop()
            call = asyncio.ensure_future(pr.create_run(pipeline["id"]))
            await asyncio.wait_for(retries.seen.wait(), 10)  # the first attempt was refused
            assert not call.done()
            await server.start()
            assert server.port == port
            run = await asyncio.wait_for(call, 30)
            assert (run["status"], run["run_number"], run["pipeline_id"]) == (
                "pending", 1, pipeline["id"])
            listed = [r async for r in pr.list_runs(pipeline["id"])]
            assert [r["id"] for r in listed] == [run["id"]]
    finally:
        logging.getLogger("service.client").removeHandler(retries)


# --- the retry protocol, against a fake upstream ---------------------------------------

class FakeUpstream:
    """Answers each request with the next scripted (status, body); the last one repeats."""

    def __init__(self, *answers: tuple[int, Any]):
        self.answers = list(answers)
        self.seen: list[tuple[str, str, dict, str]] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path_qs, dict(request.headers),
                          await request.text()))
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if status == 0:  # hang until released: the client's timeout must fire
            await self.release.wait()
            status, body = 200, None
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html")
        return web.json_response({"code": status, "message": f"status {status}",
                                  "content": body}, status=status)


@contextlib.asynccontextmanager
async def serving(upstream: FakeUpstream) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    async with TestServer(app, host="127.0.0.1") as fake:
        try:
            yield f"http://127.0.0.1:{fake.port}"
        finally:
            upstream.release.set()  # let hanging handlers finish before the server closes


async def test_retries_of_one_create_reuse_its_idempotency_key():
    run = {"id": "r-1", "status": "pending", "version": 1}
    upstream = FakeUpstream((503, None), (503, None), (200, run))
    async with serving(upstream) as url:
        async with PipelineRunsClient(url, "tok", retries=3, backoff=0.01) as pr:
            assert await pr.create_run("p-1") == run
            assert len(upstream.seen) == 3
            assert {(m, p, body) for m, p, _, body in upstream.seen} == {
                ("POST", "/api/pipelines/v0/pipelines/p-1/runs/", "{}")}
            headers = [h for _, _, h, _ in upstream.seen]
            keys = {h["Idempotency-Key"] for h in headers}
            assert len(keys) == 1 and uuid.UUID(keys.pop()).version == 4
            assert len({h["X-Request-ID"] for h in headers}) == 1
            assert {h["Authorization"] for h in headers} == {"Bearer tok"}

            await pr.create_run("p-1")
            assert upstream.seen[3][2]["Idempotency-Key"] != headers[0]["Idempotency-Key"]
            await pr.get_run("p-1", "r-1")
            assert "Idempotency-Key" not in upstream.seen[4][2]


async def test_service_unavailable_when_retries_are_exhausted():
    upstream = FakeUpstream((503, {"detail": "database down"}))
    async with serving(upstream) as url:
        async with PipelineRunsClient(url, "tok", retries=2, backoff=0.01) as pr:
            with pytest.raises(ServiceUnavailable) as caught:
                await pr.update_status("p-1", "r-1", "running", if_match=3)
    assert (caught.value.code, caught.value.content) == (503, {"detail": "database down"})
    assert len(upstream.seen) == 3
    assert {(m, h["If-Match"], body) for m, _, h, body in upstream.seen} == {
        ("PUT", '"3"', '{"status": "running"}')}


async def test_timeouts_are_retried_then_raised():
    upstream = FakeUpstream((0, None))
    async with serving(upstream) as url:
        async with PipelineRunsClient(url, "tok", timeout=0.2, retries=1, backoff=0.01) as pr:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await pr.get_pipeline("p-1")
    assert len(upstream.seen) == 2 and time.monotonic() - started < 15


@pytest.mark.parametrize("status, body, kind", [
    (500, None, ServerError),
    (502, "<html>bad gateway</html>", ServerError),
    (413, None, PayloadTooLarge),
    (415, None, UnsupportedMediaType),
    (422, {"errors": {"name": ["bad"]}}, UnprocessableEntity),
    (405, None, ApiError),
])
async def test_other_errors_are_typed_and_not_retried(status, body, kind):
    upstream = FakeUpstream((status, body))
    async with serving(upstream) as url:
        async with PipelineRunsClient(url, "tok", retries=3, backoff=0.01) as pr:
            with pytest.raises(kind) as caught:
                await pr.create_pipeline("deploy")
    assert type(caught.value) is kind and caught.value.code == status
    assert caught.value.content == body
    assert len(upstream.seen) == 1
