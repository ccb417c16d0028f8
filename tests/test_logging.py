"""Logs: one JSON object per line, the request id on every line of a request, text on demand."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid

import pytest
from aiohttp import web

from service.web.app import create_app
from service.infra.logs import (
    REQUEST_ID,
    JsonFormatter,
    _sole_json_handler,
    log_access,
    log_request,
    setup_logging,
)
from tests.helpers import Api

ROUTE = "/pipelines/v0/pipelines/{pipeline_id}/runs/"


@pytest.fixture
def logs(config):
    """setup_logging writing to a buffer; returns a function giving the lines so far."""
    root, aiohttp_access = logging.getLogger(), logging.getLogger("aiohttp.access")
    saved = root.level, aiohttp_access.level
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
    root.setLevel(saved[0])
    aiohttp_access.setLevel(saved[1])
    for flag, value in saved_flags.items():
        setattr(logging, flag, value)


def of_request(lines: list[dict], request_id: str) -> list[dict]:
    return [line for line in lines if line["request_id"] == request_id]


async def test_every_json_line_of_a_request_carries_its_id(logs, aiohttp_client, config, token,
                                                           db, enterprise):
    read = logs()

    async def chatty(request: web.Request) -> web.Response:
        logging.getLogger("some.library").warning("working on %s", "it")
        return web.json_response({"code": 200, "message": "OK", "content": None})

    app = create_app(config)
    app.router.add_get("/chatty", chatty)
    client = await aiohttp_client(app)
    api = Api(client, token)
    pipeline = await api.pipeline()
    run = await api.post(f"/pipelines/{pipeline['id']}/runs/", {},
                         headers={"X-Request-ID": "deploy-7"})
    assert api.last.headers["X-Request-ID"] == "deploy-7"
    assert (await client.get("/chatty", headers={"X-Request-ID": "chatty-1"})).status == 200

    lines = [json.loads(line) for line in read()]  # every line is one JSON object
    assert all({"timestamp", "level", "message", "logger", "request_id"} <= set(line)
               for line in lines)
    assert lines[0]["timestamp"].endswith("Z") and "T" in lines[0]["timestamp"]
    startup = [line for line in lines if line["message"].startswith("connecting to")]
    assert startup and startup[0]["request_id"] is None  # not a request's line

    (access,) = of_request(lines, "deploy-7")  # exactly one access line per request
    assert access == {
        "timestamp": access["timestamp"], "level": "INFO", "message": "request",
        "logger": "service.access", "request_id": "deploy-7", "trace_id": None, "method": "POST",
        "route": ROUTE, "path": f"/pipelines/v0/pipelines/{pipeline['id']}/runs/",
        "status": 200, "duration_ms": access["duration_ms"], "enterprise": enterprise,
        "actor": "tester",
    }
    assert 0 < access["duration_ms"] < 10_000
    chatty_lines = of_request(lines, "chatty-1")
    assert [(line["logger"], line["message"]) for line in chatty_lines] == [
        ("some.library", "working on it"), ("service.access", "request")]
    assert chatty_lines[1]["enterprise"] is None and chatty_lines[1]["actor"] is None
    assert not [line for line in lines if line["logger"] == "aiohttp.access"]
    # Every request of the test logged one access line, each with an id of its own.
    accesses = [line for line in lines if line["logger"] == "service.access"]
    assert len(accesses) == 3 and len({line["request_id"] for line in accesses}) == 3

    # The id is also in the data of the event the request appended.
    stored = await db.fetchval(
        "SELECT data->>'request_id' FROM run_events WHERE enterprise_id = $1 AND run_id = $2",
        enterprise, uuid.UUID(run["id"]))
    assert stored == "deploy-7"


async def test_a_request_without_a_usable_id_gets_a_fresh_one(logs, api):
    read = logs()
    await api.get("/runs/", headers={"X-Request-ID": "spaces are not allowed"})
    given = api.last.headers["X-Request-ID"]
    assert len(given) == 32 and int(given, 16) >= 0
    (access,) = of_request([json.loads(line) for line in read()], given)
    assert access["route"] == "/pipelines/v0/runs/" and access["status"] == 200


async def test_unknown_failures_log_the_traceback_with_the_request_id(logs, aiohttp_client,
                                                                      config):
    read = logs()

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom: secret detail")

    app = create_app(config)
    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    resp = await client.get("/broken", headers={"X-Request-ID": "boom-1"})
    assert resp.status == 500
    assert resp.headers["X-Request-ID"] == "boom-1"
    body = await resp.text()
    assert json.loads(body) == {"code": 500, "message": "internal server error",
                                "content": {}}
    assert "kaboom" not in body and "Traceback" not in body

    error, access = of_request([json.loads(line) for line in read()], "boom-1")
    assert (error["level"], error["logger"], error["message"]) == (
        "ERROR", "service.web.middleware", "unhandled error")
    assert error["exc_info"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: kaboom: secret detail" in error["exc_info"]
    assert (access["route"], access["status"]) == ("/broken", 500)


async def test_text_format_is_for_humans(logs, api):
    read = logs("text")
    await api.get("/runs/", headers={"X-Request-ID": "human-1"})
    logging.getLogger("service").info("outside any request")
    lines = read()
    assert lines
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)
    (access,) = [line for line in lines if "[human-1]" in line]
    assert " INFO service.access [human-1] request " in access
    assert "method=GET route=/pipelines/v0/runs/ path=/pipelines/v0/runs/ status=200" in access
    assert lines[-1].endswith(" INFO service [-] outside any request")


async def test_text_format_keeps_tracebacks(logs, aiohttp_client, config):
    read = logs("text")

    async def broken(request: web.Request) -> web.Response:
        raise KeyError("lost")

    app = create_app(config)
    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    assert (await client.get("/broken", headers={"X-Request-ID": "t-500"})).status == 500
    text = "\n".join(read())
    assert "ERROR service.web.middleware [t-500] unhandled error" in text
    assert "Traceback (most recent call last):" in text and "KeyError: 'lost'" in text


def test_setup_logging_is_idempotent(logs):
    logs()
    logs("text")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_pipeline_runs", False)]
    assert len(ours) == 1


def test_json_lines_stay_one_valid_json_object_whatever_is_logged():
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 1, 'said "%s"\n\tthen', ("hé",),
                               None)
    record.__dict__.update({"count": 3, "ratio": 0.5, "nan": float("nan"), "flag": True,
                            "nested": {"a": [1, None]}, "thing": object(), "none": None})
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert parsed["message"] == 'said "hé"\n\tthen' and parsed["logger"] == "x.y"
    assert parsed["level"] == "WARNING" and parsed["request_id"] is None
    assert list(parsed)[6:] == ["count", "ratio", "nan", "flag", "nested", "thing", "none"]
    assert [parsed[k] for k in ("count", "ratio", "nan", "flag")] == [3, 0.5, "nan", True]
    assert parsed["nested"] == {"a": [1, None]} and parsed["thing"].startswith("<object")
    assert parsed["none"] is None


def test_the_direct_access_line_is_the_line_logging_would_write(logs):
    read = logs()
    fields = {"method": "GET", "route": "/r/{id}", "path": "/r/\u2603\"x", "status": 200,
              "duration_ms": 1.25, "enterprise": None, "actor": "ci"}
    root = logging.getLogger()
    ours, others = root.handlers[-1], root.handlers[:-1]  # pytest's capture handlers
    token = REQUEST_ID.set("direct-1")
    try:
        for handler in others:  # ours alone, as in `serve`: the direct path
            root.removeHandler(handler)
        assert _sole_json_handler() is ours
        log_access(fields)
    finally:
        for handler in others:
            root.addHandler(handler)
    try:
        assert others and _sole_json_handler() is None  # more handlers: plain logging
        log_access(fields)
    finally:
        REQUEST_ID.reset(token)
    direct, plain = (json.loads(line) for line in read())
    assert direct.pop("timestamp")[:16] == plain.pop("timestamp")[:16]
    assert direct == plain == {"level": "INFO", "message": "request", "logger": "service.access",
                               "request_id": "direct-1", "trace_id": None, **fields}


async def test_access_lines_of_one_loop_iteration_are_written_together_and_in_order(logs):
    read = logs()
    root = logging.getLogger()
    ours, others = root.handlers[-1], root.handlers[:-1]
    writes: list[str] = []
    stream_write = ours.stream.write
    ours.stream.write = lambda text: (writes.append(text), stream_write(text))[1]
    fields = {"method": "GET", "route": "/r", "path": "/r", "status": 200,
              "duration_ms": 1.0, "enterprise": "e", "actor": "a"}
    try:
        for handler in others:  # ours alone, as in `serve`
            root.removeHandler(handler)
        for n in range(3):
            log_access({**fields, "status": 200 + n})
        assert read() == []  # held until the end of this loop iteration
        await asyncio.sleep(0)
        assert len(writes) == 1 and [json.loads(line)["status"] for line in read()] == [
            200, 201, 202]
        log_access({**fields, "status": 203})
        logging.getLogger("other").warning("after the access line")
        assert [json.loads(line).get("status") for line in read()][3:] == [203, None]
        before = len(read())
        for _ in range(ours.MAX_PENDING):  # a burst is written at its bound, not held
            log_access(fields)
        assert len(read()) == before + ours.MAX_PENDING
        log_access({**fields, "status": 204})
    finally:
        for handler in others:
            root.addHandler(handler)
    ours.flush()  # what logging.shutdown does at exit: nothing pending is lost
    assert json.loads(read()[-1])["status"] == 204


async def test_a_request_the_http_parser_refuses_is_one_warning_line(logs, client):
    # A URL past aiohttp's 64 KiB line limit is refused by its parser before our code runs:
    # a 400, and one WARNING line in our format instead of an ERROR with a traceback.
    read = logs()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /pipelines/v0/runs/?status=" + b"a" * 70_000 + b" HTTP/1.1\r\n"
                 b"Host: x\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status_line.split()[1] == b"400", status_line
    lines = [json.loads(line) for line in read()]
    refused = [line for line in lines if line["logger"] == "aiohttp.server"]
    assert [line["level"] for line in refused] == ["WARNING"], lines
    assert refused[0]["message"].startswith("refused a malformed HTTP request (400)")
    assert not any("Traceback" in json.dumps(line) or "exc_info" in line for line in lines)


def test_the_request_line_is_the_access_line_logging_would_write(logs):
    read = logs()
    fields = {"method": "GET", "route": "/r/{id}", "path": "/r/\u2603\"x\\\n", "status": 404,
              "duration_ms": 0.5, "enterprise": "e\u00e9", "actor": None}
    root = logging.getLogger()
    ours, others = root.handlers[-1], root.handlers[:-1]  # pytest's capture handlers
    token = REQUEST_ID.set("direct-2")
    try:
        for handler in others:  # ours alone, as in `serve`: the direct path
            root.removeHandler(handler)
        log_request(*fields.values())
    finally:
        for handler in others:
            root.addHandler(handler)
    try:
        log_access(fields)  # more handlers: plain logging
    finally:
        REQUEST_ID.reset(token)
    direct, plain = read()
    # The very same text (the timestamp aside), key order and spacing included.
    assert direct.split('", "level"', 1)[1] == plain.split('", "level"', 1)[1]
    assert json.loads(direct)["path"] == fields["path"]
