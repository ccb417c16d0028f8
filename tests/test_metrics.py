"""/metrics: Prometheus text, per-app counters, route templates, events appended, the pool."""
from __future__ import annotations

import collections
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.web.app import create_app
from service.config import Config
from service.web.keys import METRICS_RUNNER
from tests.helpers import Api, wait_until

RUN_ROUTE = "/pipelines/v0/pipelines/{pipeline_id}/runs/{pipeline_run_id}/"


@pytest.fixture
def config(config):
    # The old way (METRICS_ON_API_PORT=on): most tests here scrape beside the API; the
    # default (no /metrics on the API port) has its own test below.
    return config.with_(metrics_on_api_port=True)


async def scrape(client, path: str = "/metrics") -> tuple[str, dict]:
    resp = await client.get(path)  # no token: scrapers have none
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.headers["Content-Type"].startswith("text/plain; version="), resp.headers
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict, family: str, sample: str | None = None) -> dict:
    """{label values (in label order): value} of one family's samples named `sample`."""
    found = families[family]
    name = sample or found.name + ("_total" if found.type == "counter" else "")
    return {tuple(s.labels.values()): s.value for s in found.samples if s.name == name}


async def test_request_counters_are_labelled_with_route_templates(api, client):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    run_path = f"/pipelines/{pipeline['id']}/runs/{run['id']}/"
    await api.get(run_path)
    await api.get(run_path)
    await api.at("/api/pipelines/v0").get(run_path.rstrip("/"))
    await api.with_token(None).get(run_path, status=401)
    missing = uuid.uuid4().hex
    await api.get(f"/nowhere/{missing}/", status=404)
    await client.request("PURGE", f"/nowhere/{missing}")  # an invented method: not a label

    text, families = await scrape(client)
    requests = samples(families, "pipeline_runs_http_requests")
    assert requests[("POST", "/pipelines/v0/pipelines/", "200")] == 1
    assert requests[("POST", "/pipelines/v0/pipelines/{pipeline_id}/runs/", "200")] == 1
    assert requests[("GET", RUN_ROUTE, "200")] == 2
    assert requests[("GET", RUN_ROUTE, "401")] == 1
    assert requests[("GET", "/api/pipelines/v0/pipelines/{pipeline_id}/runs/{pipeline_run_id}",
                     "200")] == 1
    assert requests[("GET", "unmatched", "404")] == 1
    assert requests[("OTHER", "unmatched", "404")] == 1
    assert all(method in {"GET", "POST", "OTHER"} for method, _, _ in requests)
    # Templates only: no id a caller sent or the service minted becomes a label value.
    for raw in (pipeline["id"], run["id"], missing, "nowhere", "PURGE"):
        assert raw not in text

    # Histogram by route: cumulative buckets ending in +Inf == _count, and a _sum.
    assert families["pipeline_runs_http_request_duration_seconds"].type == "histogram"
    buckets = {(s.labels["route"], s.labels["le"]): s.value
               for s in families["pipeline_runs_http_request_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    counts = samples(families, "pipeline_runs_http_request_duration_seconds",
                     "pipeline_runs_http_request_duration_seconds_count")
    sums = samples(families, "pipeline_runs_http_request_duration_seconds",
                   "pipeline_runs_http_request_duration_seconds_sum")
    assert counts[(RUN_ROUTE,)] == 3 and buckets[(RUN_ROUTE, "+Inf")] == 3
    assert 0 < sums[(RUN_ROUTE,)] < 10
    run_buckets = [v for (route, _), v in buckets.items() if route == RUN_ROUTE]
    assert run_buckets == sorted(run_buckets) and len(run_buckets) > 5


class TestEventsAppended:
    """A database of our own: the app's sweeper must not touch (and count) other tests' runs."""

    @pytest.fixture
    def db_dsn(self, own_db):
        return own_db

    async def test_events_appended_match_the_events_stored(self, api, client, db, enterprise):
        staged = await api.pipeline("staged", stages=("build", "test"))
        run = await api.run(staged["id"])  # run.created
        await api.move(run, "running")  # one-statement path
        await api.move(run, "running")  # same status: no event
        await api.move(run, "pending", status=409)  # refused: no event
        stage_run = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"][0]
        await api.put(f"/runs/{run['id']}/stageruns/{stage_run['id']}/", {"status": "running"})
        await api.move(run, "cancelled")  # cascades to the stage runs (commit_drafts)
        bare = await api.pipeline("bare", stages=())
        await api.run(bare["id"])  # created, then invalid at once: no stages
        other = await api.run(staged["id"])
        await api.delete(f"/pipelines/{staged['id']}/runs/{other['id']}/",
                         headers={"If-Match": '"7"'}, status=412)  # refused: no event
        await api.delete(f"/pipelines/{staged['id']}/runs/{other['id']}/")

        _, families = await scrape(client)
        appended = {labels[0]: value for labels, value in
                    samples(families, "pipeline_runs_events_appended").items()}
        stored = {r["type"]: r["n"] for r in await db.fetch(
            "SELECT type, count(*) AS n FROM run_events WHERE enterprise_id = $1 GROUP BY type",
            enterprise)}
        assert appended == stored
        assert set(stored) == {"run.created", "run.status_changed", "run.deleted",
                               "stage_run.status_changed"}

    async def test_sweeper_counts_its_sweeps_timeouts_and_events(self, aiohttp_client, config, db,
                                                                 token, enterprise):
        client = await aiohttp_client(create_app(config.with_(timeout_sweep_seconds=0.1)))
        api = Api(client, token)
        pipeline = await api.pipeline(stages=("a", "b"))
        run = await api.run(pipeline["id"])
        await api.move(run, "running")
        await db.execute("UPDATE pipeline_runs SET deadline = now() - interval '1 minute' "
                         "WHERE enterprise_id = $1 AND id = $2", enterprise, uuid.UUID(run["id"]))
        async def swept():
            _, families = await scrape(client)
            return families if samples(families, "pipeline_runs_timed_out")[("run",)] else None

        families = await wait_until(swept, 30, what="the sweeper to time the run out")
        timed_out = samples(families, "pipeline_runs_timed_out")
        assert timed_out == {("run",): 1, ("stage_run",): 0}
        assert samples(families, "pipeline_runs_sweeps")[()] >= 1
        assert samples(families, "pipeline_runs_sweep_failures")[()] == 0
        appended = collections.Counter({labels[0]: value for labels, value in
                                        samples(families, "pipeline_runs_events_appended").items()})
        stored = collections.Counter({r["type"]: r["n"] for r in await db.fetch(
            "SELECT type, count(*) AS n FROM run_events WHERE enterprise_id = $1 GROUP BY type",
            enterprise)})
        # run.created + running (requests), then timeout of the run and its two stage runs.
        assert appended == stored == {"run.created": 1, "run.status_changed": 2,
                                      "stage_run.status_changed": 2}


async def test_pool_gauges_are_read_at_scrape_time(api, client, config):
    await api.pipeline()
    _, families = await scrape(client)
    size = families["pipeline_runs_db_pool_size"].samples[0].value
    in_use = families["pipeline_runs_db_pool_in_use"].samples[0].value
    assert families["pipeline_runs_db_pool_size"].type == "gauge"
    assert 1 <= size <= config.pool_max and 0 <= in_use <= size
    assert families["pipeline_runs_db_pool_max"].samples[0].value == config.pool_max


async def test_by_default_the_api_port_serves_no_metrics(aiohttp_client, config):
    client = await aiohttp_client(create_app(config.with_(metrics_on_api_port=False)))
    resp = await client.get("/metrics")
    assert resp.status == 404 and (await resp.json())["code"] == 404


async def test_metrics_port_serves_metrics_apart_from_the_api_on_loopback(aiohttp_client,
                                                                         config):
    app = create_app(config.with_(metrics_port=0, metrics_on_api_port=False))  # 0: a free port
    client = await aiohttp_client(app)
    resp = await client.get("/health/live")
    assert resp.status == 200
    resp = await client.get("/metrics")
    assert resp.status == 404  # not on the API port
    host, port = app[METRICS_RUNNER].addresses[0][:2]
    assert host == "127.0.0.1"  # METRICS_HOST's default: not on the network
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = samples(families, "pipeline_runs_http_requests")
    assert requests == {("GET", "/health/live", "200"): 1, ("GET", "unmatched", "404"): 1}


def test_metrics_port_and_log_format_come_from_the_environment():
    assert Config.from_env({}).metrics_port is None
    assert Config.from_env({}).metrics_host == "127.0.0.1"
    assert Config.from_env({}).metrics_on_api_port is False
    assert Config.from_env({"METRICS_PORT": "9100"}).metrics_port == 9100
    assert Config.from_env({"METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    assert Config.from_env({"METRICS_ON_API_PORT": "on"}).metrics_on_api_port is True
    assert Config.from_env({}).log_format is None  # the command's default (json for serve)
    assert Config.from_env({"LOG_FORMAT": "TEXT"}).log_format == "text"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        Config.from_env({"LOG_FORMAT": "xml"})


async def test_every_app_has_its_own_registry(aiohttp_client, config, api, client):
    await api.pipeline()
    other = await aiohttp_client(create_app(config))
    _, families = await scrape(other)
    requests = samples(families, "pipeline_runs_http_requests")
    assert ("POST", "/pipelines/v0/pipelines/", "200") not in requests
