"""Helpers shared by the test modules: the Api caller, tokens, run checks, route tables.

Fixtures live in conftest.py; everything a test module imports lives here (`from
tests.helpers import ...`), so no test module imports another.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import random
import re
import time
import uuid
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from yarl import URL

from service.app import runs
from service.app.context import Actor, OnConnection
from service.domain import lifecycle as lc
from service.infra.db import with_login
from service.store import tokens as token_store
from service.store.roles import RuntimeRole
from service.store.locks import NOTIFY_FEED

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "schema.sql"
SCHEMA = SCHEMA_PATH.read_text()
MOUNTS = ("/pipelines/v0", "/api/pipelines/v0", "/v0")
INTERNALS = ("traceback", "asyncpg", "psycopg", "postgres", "sqlstate", 'file "', "exception",
             "relation \"", "syntax error")


def dsn_for(admin_dsn: str, dbname: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


# The role the service under test connects as (docs/security.md): the template database
# grants it, so every clone does. The password works under trust and password auth alike.
RUNTIME_ROLE = RuntimeRole("pr_test_runtime", "pr_test_runtime")


def as_runtime(dsn: str) -> str:
    """The DSN logged in as the runtime role: what the app and the real processes use."""
    return with_login(dsn, RUNTIME_ROLE.name, RUNTIME_ROLE.password)


async def admin(admin_dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def wait_until(check: Callable[[], Any], timeout: float = 20.0,
                     what: str = "the condition") -> Any:
    """Poll `check` (sync, or returning an awaitable) until it gives something truthy, which
    is returned; fail after `timeout` s. A condition with a generous ceiling, never a
    guessed sleep: a loaded machine only makes the test slower, not flaky."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


async def lock_waiters(db, application_name: str | None = None) -> int:
    """Backends waiting on a lock (optionally of one application): to wait for a blocked writer."""
    sql = ("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
           "WHERE NOT l.granted AND a.datname = current_database()")
    if application_name is None:
        return await db.fetchval(sql)
    return await db.fetchval(sql + " AND a.application_name = $1", application_name)


async def make_token(db, enterprise: str, name: str = "tester",
                     scopes=token_store.DEFAULT_SCOPES) -> str:
    _, token = await token_store.create_token(db, enterprise, name, list(scopes))
    return token


class Api:
    """Calls the service and checks the envelope; returns `content`."""

    def __init__(self, client, token: str | None, mount: str = "/pipelines/v0"):
        self.client = client
        self.token = token
        self.mount = mount
        self.last = None  # the last aiohttp response, for headers

    def with_client(self, client) -> "Api":
        """The same caller against another app (another server on the same database)."""
        return Api(client, self.token, self.mount)

    def with_token(self, token: str | None) -> "Api":
        return Api(self.client, token, self.mount)

    def at(self, mount: str) -> "Api":
        return Api(self.client, self.token, mount)

    def url(self, path: str) -> str:
        if path.startswith("http"):
            # Absolute links from the service (next/previous) must point at this server.
            url = URL(path)
            assert (url.host, url.port) == (self.client.host, self.client.port), path
            return url.path_qs
        return path if path.startswith(("/health", "/api/docs")) else self.mount + path

    async def call(self, method: str, path: str, status: int = 200, *, json: Any = None,
                   headers: dict[str, str] | None = None, data: Any = None, **kwargs) -> Any:
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        resp = await self.client.request(method, self.url(path), json=json, data=data,
                                         headers=all_headers, **kwargs)
        self.last = resp
        text = await resp.text()
        allowed = status if isinstance(status, tuple) else (status,)  # a tuple: any of these
        assert resp.status in allowed, f"{method} {path}: {resp.status} != {status}: {text}"
        assert resp.content_type == "application/json", text
        body = await resp.json()
        assert set(body) == {"code", "message", "content"}, body
        assert body["code"] == resp.status, body
        assert isinstance(body["message"], str) and body["message"], body
        if resp.status >= 400:
            assert "Traceback" not in text and "asyncpg" not in text, text
        return body["content"]

    async def get(self, path, status=200, **kw):
        return await self.call("GET", path, status, **kw)

    async def post(self, path, json=None, status=200, **kw):
        return await self.call("POST", path, status, json=json, **kw)

    async def put(self, path, json=None, status=200, **kw):
        return await self.call("PUT", path, status, json=json, **kw)

    async def delete(self, path, status=200, **kw):
        return await self.call("DELETE", path, status, **kw)

    # Shortcuts for the common setup steps.
    async def pipeline(self, name: str = "deploy", stages=("build", "test"), **fields) -> dict:
        body = {"name": name, "stages": [{"name": s} for s in stages], **fields}
        return await self.post("/pipelines/", body)

    async def run(self, pipeline_id) -> dict:
        return await self.post(f"/pipelines/{pipeline_id}/runs/", {})

    async def move(self, run: dict, *statuses: str, status: int = 200) -> dict:
        for target in statuses:
            run = await self.put(f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/",
                                 {"status": target}, status=status)
        return run


# --- runs ------------------------------------------------------------------------------

RUN_FIELDS = {"id", "enterprise_id", "run_number", "pipeline_id", "pipeline_name", "status",
              "status_meta", "created_by", "updated_by", "created_at", "updated_at",
              "started_at", "ended_at", "version"}
TIMESTAMPS = ("created_at", "updated_at", "started_at", "ended_at")


def run_path(run: dict) -> str:
    return f"/pipelines/{run['pipeline_id']}/runs/{run['id']}/"


def ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def token_id(db, token: str) -> int:
    return (await token_store.find_token(db, token))["id"]


async def events_of(db, run_id) -> list[dict]:
    rows = await db.fetch("SELECT * FROM run_events WHERE run_id = $1 ORDER BY version", run_id)
    return [dict(r) for r in rows]


def run_level(events: list[dict]) -> list[dict]:
    """The run's own events (run.*), without the stage-run events a move may cascade to."""
    return [e for e in events if e["type"].startswith("run.")]


async def assert_projection(db, run: dict) -> list[dict]:
    """The projection row equals the API's run and the fold of the run's events."""
    row = dict(await db.fetchrow("SELECT * FROM pipeline_runs WHERE id = $1", run["id"]))
    events = await events_of(db, run["id"])
    folded = lc.fold(events)
    assert row == {key: folded[key] for key in row}
    assert [e["version"] for e in events] == list(range(1, run["version"] + 1))
    for key in RUN_FIELDS - {"pipeline_name", *TIMESTAMPS}:
        stored = str(row[key]) if isinstance(row[key], uuid.UUID) else row[key]
        assert stored == run[key], key
    for key in TIMESTAMPS:
        assert row[key] == ts(run[key]), key
    own = run_level(events)
    assert row["created_at"] == own[0]["occurred_at"]
    assert row["updated_at"] == own[-1]["occurred_at"]
    return events


async def walk(api, path: str) -> tuple[list[dict], list[dict]]:
    """Follow `next` from `path`; returns (pages, every item in the order served)."""
    pages, items, url = [], [], path
    while url is not None:
        page = await api.get(url)
        pages.append(page)
        items.extend(page["results"])
        url = page["next"]
        assert url is None or URL(url).is_absolute(), url
        assert len(pages) <= 100, "next never ends"
    assert len(items) == pages[0]["count"] and all(p["count"] == len(items) for p in pages)
    return pages, items


async def run_in(api, pipeline: dict, status: str) -> dict:
    """A new run of `pipeline` brought to `status` by a legal walk."""
    run = await api.run(pipeline["id"])
    return await api.move(run, *legal_path(status)) if status != "pending" else run


# --- the lifecycle's moves ------------------------------------------------------------

# The oracle, written out by hand from the API document (/work/shared/seed/
# pipeline-runs-api.txt) and README's "Status lifecycle" table, NOT derived from
# service/domain/lifecycle.py: a wrong edge in the code must turn tests red.
STATUSES = ("pending", "queued", "processing", "running", "waiting", "complete", "success",
            "failure", "cancelled", "timeout", "invalid")
RUN_MOVES: dict[str, set[str]] = {
    "pending": {"queued", "processing", "running", "cancelled", "timeout", "invalid"},
    "queued": {"processing", "running", "cancelled", "timeout", "invalid"},
    "processing": {"running", "cancelled", "timeout", "invalid"},
    "running": {"waiting", "complete", "cancelled", "timeout"},
    "waiting": {"running", "complete", "cancelled", "timeout"},
    "complete": {"success", "failure"},
    "success": set(), "failure": set(), "cancelled": set(), "timeout": set(), "invalid": set(),
}
# "Stage runs follow the same rules without `waiting`."
STAGE_RUN_STATUSES = ("pending", "queued", "processing", "running", "complete", "success",
                      "failure", "cancelled", "timeout", "invalid")
STAGE_RUN_MOVES: dict[str, set[str]] = {
    "pending": {"queued", "processing", "running", "cancelled", "timeout", "invalid"},
    "queued": {"processing", "running", "cancelled", "timeout", "invalid"},
    "processing": {"running", "cancelled", "timeout", "invalid"},
    "running": {"complete", "cancelled", "timeout"},
    "complete": {"success", "failure"},
    "success": set(), "failure": set(), "cancelled": set(), "timeout": set(), "invalid": set(),
}
ALL_PAIRS = list(itertools.product(STATUSES, repeat=2))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if b in RUN_MOVES[a]]
REFUSED = [(a, b) for a, b in ALL_PAIRS if a != b and b not in RUN_MOVES[a]]
STAGE_PAIRS = list(itertools.product(STAGE_RUN_STATUSES, repeat=2))
STAGE_ALLOWED = [(a, b) for a, b in STAGE_PAIRS if b in STAGE_RUN_MOVES[a]]
STAGE_REFUSED = [(a, b) for a, b in STAGE_PAIRS if a != b and b not in STAGE_RUN_MOVES[a]]


def expected_status(current: str, target: str, moves=RUN_MOVES) -> int:
    """What a PUT of `target` on a live item in `current` answers, by the tables."""
    return 200 if target == current or target in moves[current] else 409


def _parents(start: str, transitions=RUN_MOVES) -> dict[str, str | None]:
    """Breadth-first search: each status reachable from `start`, with its predecessor."""
    parents: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for nxt in sorted(transitions[current]):
            if nxt not in parents:
                parents[nxt] = current
                queue.append(nxt)
    return parents


def legal_path(target: str, start: str = "pending", moves=RUN_MOVES) -> list[str]:
    """The shortest legal walk from `start` to `target`, `start` excluded."""
    parents = _parents(start, moves)
    assert target in parents, f"{target} is unreachable from {start}"
    path = []
    while target != start:
        path.append(target)
        target = parents[target]
    return path[::-1]


# --- routes ----------------------------------------------------------------------------

CORE_ROUTES = [
    ("GET", "/pipelines/"), ("POST", "/pipelines/"),
    ("GET", "/pipelines/{pipeline_id}/"), ("PUT", "/pipelines/{pipeline_id}/"),
    ("DELETE", "/pipelines/{pipeline_id}/"),
    ("GET", "/pipelines/{pipeline_id}/stages/"), ("POST", "/pipelines/{pipeline_id}/stages/"),
    ("GET", "/pipelines/{pipeline_id}/stages/{stage_id}/"),
    ("PUT", "/pipelines/{pipeline_id}/stages/{stage_id}/"),
    ("DELETE", "/pipelines/{pipeline_id}/stages/{stage_id}/"),
    ("GET", "/runs/"),
    ("GET", "/pipelines/{pipeline_id}/runs/"), ("POST", "/pipelines/{pipeline_id}/runs/"),
    ("GET", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/"),
    ("PUT", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/"),
    ("DELETE", "/pipelines/{pipeline_id}/runs/{pipeline_run_id}/"),
]
ID_ROUTES = [(m, p, param) for m, p in CORE_ROUTES for param in re.findall(r"{(\w+)}", p)]


def body_for(method: str, template: str):
    if method == "PUT" and template.endswith("_run_id}/"):
        return {"status": "running"}
    return {"name": "x"} if method in ("POST", "PUT") else None


async def ids(api) -> dict[str, str]:
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    return {"pipeline_id": pipeline["id"], "stage_id": pipeline["stages"][0]["id"],
            "pipeline_run_id": run["id"]}


async def world(api) -> dict[str, str]:
    """A pipeline with two stages and a run: ids for every path parameter."""
    pipeline = await api.pipeline()
    run = await api.run(pipeline["id"])
    stage_runs = await api.get(f"/runs/{run['id']}/stageruns/")
    return {"pipeline_id": pipeline["id"], "stage_id": pipeline["stages"][0]["id"],
            "pipeline_run_id": run["id"], "stage_run_id": stage_runs["results"][0]["id"]}


async def counts(db, enterprise: str) -> dict[str, int]:
    return {table: await db.fetchval(f"SELECT count(*) FROM {table} WHERE enterprise_id = $1",
                                     enterprise)
            for table in ("pipelines", "stages", "pipeline_runs", "run_events", "stage_runs",
                          "idempotency_keys")}


async def send(api, method: str, path: str, **kwargs):
    """(status, text, parsed body) of a raw request with the api's token."""
    headers = {"Authorization": f"Bearer {api.token}", **kwargs.pop("headers", {})}
    resp = await api.client.request(method, api.url(path), headers=headers, **kwargs)
    text = await resp.text()
    return resp.status, text, resp


def check_error(status: int, text: str, resp, where) -> None:
    """A 4xx envelope with no internals in it."""
    assert 400 <= status < 500, (where, status, text[:300])
    assert resp.content_type == "application/json", (where, text[:300])
    body = json.loads(text)
    assert set(body) == {"code", "message", "content"} and body["code"] == status, (where, body)
    lowered = text.lower()
    assert not any(word in lowered for word in INTERNALS), (where, text[:300])


# --- run lists --------------------------------------------------------------------------

STATUS_RANK = {s: i for i, s in enumerate(STATUSES)}  # README: ordering=status is lifecycle order


def expected_order(runs: list[dict], ordering: str | None) -> list[str]:
    """The ordering's definition, in Python."""
    def t(v):
        return datetime.fromisoformat(v)

    def nulls_last(rows, field, desc):
        present = sorted((r for r in rows if r[field] is not None),
                         key=lambda r: (t(r[field]), r["id"]), reverse=desc)
        absent = sorted((r for r in rows if r[field] is None), key=lambda r: r["id"],
                        reverse=desc)
        return present + absent

    key = (ordering or "").lstrip("-")
    desc = (ordering or "-").startswith("-")
    if key in ("started_at", "ended_at"):
        rows = nulls_last(runs, key, desc)
    elif key == "":
        rows = sorted(runs, key=lambda r: (t(r["created_at"]), r["id"]), reverse=True)
    elif key == "status":
        newest = sorted(runs, key=lambda r: (t(r["created_at"]), r["id"]), reverse=True)
        rows = sorted(newest, key=lambda r: STATUS_RANK[r["status"]], reverse=desc)  # stable
    elif key == "run_number":
        rows = sorted(runs, key=lambda r: (r["run_number"], t(r["created_at"]), r["id"]),
                      reverse=desc)
    else:
        rows = sorted(runs, key=lambda r: (r["pipeline_name"], r["run_number"], r["id"]),
                      reverse=desc)
    return [r["id"] for r in rows]


async def cursor_walk(api, path: str, limit: int) -> list[str]:
    """Page by next_cursor from the first page; every id in the order served."""
    sep = "&" if "?" in path else "?"
    page = await api.get(f"{path}{sep}limit={limit}")
    seen = [r["id"] for r in page["results"]]
    first_count = page["count"]
    while page["next_cursor"] is not None:
        assert len(page["results"]) == limit and page["next"] is not None
        page = await api.get(f"{path}{sep}limit={limit}&cursor={page['next_cursor']}")
        assert "cursor=" in page["previous"] and page["count"] == first_count
        if page["next_cursor"] is not None:  # cursor pages link by cursor
            assert "cursor=" in page["next"] and "offset=" not in page["next"], page["next"]
        seen += [r["id"] for r in page["results"]]
        assert len(seen) <= 1000
    assert page["next"] is None
    return seen


async def cursor_world(api) -> dict:
    """Runs in every kind of state over pipelines with a shared name, plus a deleted one."""
    alpha = await api.pipeline("alpha")
    beta_1 = await api.pipeline("beta")
    beta_2 = await api.pipeline("beta", stages=("only",))
    empty = await api.pipeline("empty", stages=())  # its runs are invalid at once
    doomed = await api.pipeline("doomed")
    plan = [(alpha, "pending"), (beta_1, "running"), (alpha, "success"), (beta_2, "queued"),
            (alpha, "waiting"), (beta_1, "cancelled"), (beta_2, "running"), (alpha, "failure"),
            (beta_1, "pending"), (alpha, "complete"), (beta_2, "success"), (empty, "invalid"),
            (alpha, "running"), (beta_2, "pending"), (beta_1, "processing"), (alpha, "pending")]
    for pipeline, status in plan:
        if status == "invalid":
            await api.run(pipeline["id"])
        else:
            await run_in(api, pipeline, status)
    await api.run(doomed["id"])
    await api.delete(f"/pipelines/{doomed['id']}/")
    runs = (await api.get("/runs/?limit=1000"))["results"]
    assert len(runs) == len(plan)
    return {"alpha": alpha, "beta": beta_1, "runs": runs}


def matches_filter(run: dict, filters: str) -> bool:
    if not filters:
        return True
    field, value = filters.split("=")
    return run[field] == value


def iso(value: datetime) -> str:
    return quote(value.isoformat(), safe="")


FILTERS = ["", "status=pending", "status=running", "pipeline_name=beta", "pipeline_name=nope"]


async def tail_feed(api, done, seen: list[int], limit: int) -> None:
    """Read the feed from the start, `limit` events a page, into `seen` until `done` is set
    and a page after it is empty (a consumer tailing the feed while writers write)."""
    after = 0
    while True:
        finished = done.is_set()  # read before querying: the last read is after all commits
        feed = await api.get(f"/events/?after={after}&limit={limit}")
        seen.extend(e["position"] for e in feed["results"])
        after = feed["next_after"]
        if finished and not feed["results"]:
            return


async def random_writer(api, pipeline_id: str, changes: int) -> None:
    """Creates runs and moves each through a random short legal path, over the API."""
    for _ in range(changes):
        run = await api.run(pipeline_id)
        path = f"/pipelines/{pipeline_id}/runs/{run['id']}/"
        for status in random.choice([["running", "waiting"], ["queued"], ["cancelled"]]):
            await api.put(path, {"status": status})


async def slow_writer(pool, enterprise: str, pipeline_id: str, changes: int) -> None:
    """Appends, then lingers before COMMIT: the widest window for an out-of-order commit.

    After each commit it wakes the feed's readers as the service's own writers do (a NOTIFY
    after commit, infra/feedwait.py): a reader must not depend on another writer for it."""
    for _ in range(changes):
        async with pool.acquire() as conn:
            async with conn.transaction():
                await runs.create(OnConnection(conn), Actor(enterprise, "slow", None),
                                  uuid.UUID(pipeline_id))
                await asyncio.sleep(0.02)
            await conn.execute(NOTIFY_FEED, [enterprise])


# --- the pages (/ui/) -----------------------------------------------------------------

def origin(client) -> dict[str, str]:
    """The Origin header a browser sends with a form of our own pages."""
    return {"Origin": str(client.make_url("/").origin())}


async def sign_in(client, token: str, status: int = 303):
    resp = await client.post("/ui/login", data={"token": token, "next": "/ui/runs"},
                             headers=origin(client), allow_redirects=False)
    assert resp.status == status, await resp.text()
    return resp
