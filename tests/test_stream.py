"""GET /events/stream/: Server-Sent Events, resume with Last-Event-ID, heartbeats, shutdown."""
from __future__ import annotations

import asyncio
import json
import random

import pytest

from service.client import PipelineRunsClient
from service.infra.replicas import parse_token
from service.web.app import create_app
from service.web.keys import POOL
from tests.helpers import random_writer, slow_writer

MOUNT = "/pipelines/v0"


@pytest.fixture
def db_dsn(own_db):
    return own_db


class Sse:
    """An open stream, read message by message (comments kept apart)."""

    def __init__(self, resp):
        self.resp = resp
        self.comments: list[str] = []

    async def next(self, seconds: float = 30) -> dict | None:
        """The next message as {id, event, data} within `seconds` (heartbeat comments do not
        extend it: TimeoutError); None when the stream ended."""
        fields: dict = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(),
                                         max(0.0, deadline - loop.time()))
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                self.comments.append(line)
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                return {**fields, "data": json.loads(fields["data"])}


async def _open(client, token, query: str = "", **headers) -> Sse:
    resp = await client.get(f"{MOUNT}/events/stream/{query}",
                            headers={"Authorization": f"Bearer {token}", **headers})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    return Sse(resp)


async def test_stream_frames_events_as_the_feed_answers_them(api, client, token):
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    feed = (await api.get("/events/"))["results"]
    written = parse_token(api.last.headers["Consistency-Token"])
    sse = await _open(client, token)
    # As every read's answer: a token of what it reflects (its first read), sent with the
    # stream's headers, at least what the caller's last answer reflected.
    assert parse_token(sse.resp.headers["Consistency-Token"]) >= written
    got = [await sse.next() for _ in feed]
    assert [(m["id"], m["event"]) for m in got] == [(str(e["position"]), e["type"]) for e in feed]
    assert [m["data"] for m in got] == feed  # data: exactly what /events/ answers
    # Then live: a new event arrives on the open stream.
    await api.move(run, "complete")
    live = await sse.next()
    assert live["event"] == "run.status_changed" and live["data"]["to_status"] == "complete"
    sse.resp.close()


async def test_resume_with_last_event_id_or_after_and_filters(api, client, token):
    pipeline = await api.pipeline()
    other = await api.pipeline("other")
    run = await api.run(pipeline["id"])
    await api.run(other["id"])
    await api.move(run, "running")
    feed = (await api.get("/events/"))["results"]
    second = feed[1]["position"]
    for query, headers in (("", {"Last-Event-ID": str(second)}),
                           (f"?after={second}", {}),
                           ("?after=0", {"Last-Event-ID": str(second)})):  # the header wins
        sse = await _open(client, token, query, **headers)
        first = await sse.next()
        assert first["data"] == feed[2], (query, headers)
        sse.resp.close()
    sse = await _open(client, token, "?after=&type=&actor=")  # empty: as if absent
    assert (await sse.next())["data"] == feed[0]
    sse.resp.close()
    sse = await _open(client, token, f"?pipeline_id={pipeline['id']}&type=run.status_changed")
    assert (await sse.next())["data"] == feed[-1]
    sse.resp.close()


async def test_bad_resume_point_is_a_400_envelope(api):
    await api.get("/events/stream/", 400, headers={"Last-Event-ID": "abc"})
    await api.get("/events/stream/", 400, headers={"Last-Event-ID": ""})
    content = await api.get("/events/stream/?after=-1", 400)
    assert "after" in content["errors"]
    await api.with_token(None).get("/events/stream/", 401)


async def test_stream_needs_audit_read(api, db, enterprise):
    from tests.helpers import make_token

    reader = await make_token(db, enterprise, "no-audit", ["runs:read", "webhooks:manage"])
    assert await api.with_token(reader).get("/events/stream/", 403) == {}


async def test_heartbeat_comment_on_an_idle_stream(aiohttp_client, config, token):
    client = await aiohttp_client(create_app(config.with_(stream_heartbeat_seconds=0.2)))
    sse = await _open(client, token)
    # Nothing happens in this enterprise: the first line is the heartbeat, within seconds.
    line = await asyncio.wait_for(sse.resp.content.readline(), 5)  # default: 15 s
    assert line == b": ping\r\n"
    sse.resp.close()


async def test_shutdown_ends_open_streams_cleanly(aiohttp_client, config, token):
    client = await aiohttp_client(create_app(config))
    sse = await _open(client, token)
    reading = asyncio.create_task(sse.next(60))
    await asyncio.sleep(0)  # the stream is open and idle
    await client.app.shutdown()  # what SIGTERM runs first (on_shutdown)
    assert await asyncio.wait_for(reading, 10) is None  # ended, not cut: no error raised
    assert sse.resp.content.at_eof()


async def test_racing_writers_reconnecting_reader_sees_every_event_once(
        api, client, token, db, enterprise):
    """The feed's racing-writers test, read through the stream with frequent reconnects."""
    pipelines = [await api.pipeline(f"p{i}") for i in range(4)]
    seen: list[int] = []
    done = asyncio.Event()

    async def consumer():
        last = 0
        while True:
            finished = done.is_set()  # read before (re)connecting: all commits are before it
            sse = await _open(client, token, **{"Last-Event-ID": str(last)})
            target = random.randint(3, 40)  # hang up after this many: reconnect resumes
            try:
                for _ in range(target):
                    # Not finished: a pause only means the writers paused; reconnect.
                    message = await sse.next(1.5 if finished else 5)
                    seen.append(int(message["id"]))
                    last = int(message["id"])
            except asyncio.TimeoutError:
                if finished:
                    return  # caught up after every commit, and nothing more came
            finally:
                sse.resp.close()

    tail = asyncio.create_task(consumer())
    pool = client.app[POOL]
    await asyncio.gather(
        *(random_writer(api, pipelines[i % 4]["id"], 12) for i in range(8)),
        *(slow_writer(pool, enterprise, pipelines[i]["id"], 8) for i in range(3)),
    )
    done.set()
    await asyncio.wait_for(tail, 120)
    stored = [r["position"] for r in await db.fetch(
        "SELECT position FROM run_events WHERE enterprise_id = $1 ORDER BY position", enterprise)]
    assert len(stored) > 200
    assert len(seen) == len(set(seen)), "an event was streamed twice"
    assert seen == stored, f"missed {sorted(set(stored) - set(seen))[:10]}"


class CuttableProxy:
    """A loopback TCP proxy to the test server whose connections can be cut at will."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task] = set()
        self.server = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        self.tasks.add(asyncio.current_task())
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        self.server.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def test_client_stream_iterator_resumes_after_a_dropped_connection(api, client, token):
    pipeline = await api.pipeline()
    await api.run(pipeline["id"])
    proxy = CuttableProxy(client.host, client.port)
    port = await proxy.start()
    try:
        async with PipelineRunsClient(f"http://127.0.0.1:{port}", token, mount=MOUNT,
                                      backoff=0.01) as caller:
            events = caller.stream()
            first = await asyncio.wait_for(anext(events), 30)
            proxy.cut()  # the connection drops mid-stream
            await api.run(pipeline["id"])
            second = await asyncio.wait_for(anext(events), 30)
            await events.aclose()
    finally:
        await proxy.close()
    feed = (await api.get("/events/"))["results"]
    assert [first, second] == feed[:2]
