"""The lean reference the benchmark measures the service against.

The leanest hand-written handler, so the ratio predicts what a user would see choosing the
service over writing it themselves: plain aiohttp + asyncpg, a pool of 10, stdlib json, the
default asyncio loop (uvloop only with --uvloop), no logging; no auth, no validation, no
lifecycle checks, no envelope. Its own two tables, each with only a primary key (created
by bench/run.py in the scratch database, never in schema.sql):

    GET /runs/{id}   SELECT the row, answer it as JSON
    PUT /runs/{id}   BEGIN; UPDATE ref_runs; INSERT INTO ref_events; COMMIT

    python bench/reference.py --dsn postgresql://... --port 8181 [--uvloop]
"""
from __future__ import annotations

import argparse
import asyncio
import json
from functools import partial

import asyncpg
from aiohttp import web

DDL = """
CREATE TABLE IF NOT EXISTS ref_runs (
    id          uuid PRIMARY KEY,
    pipeline_id uuid        NOT NULL,
    run_number  integer     NOT NULL,
    status      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     integer     NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS ref_events (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid        NOT NULL,
    version     integer     NOT NULL,
    to_status   text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    data        jsonb       NOT NULL DEFAULT '{}'
);
"""

GET = "SELECT * FROM ref_runs WHERE id = $1"
UPDATE = """
UPDATE ref_runs SET status = $2, version = version + 1, updated_at = now()
WHERE id = $1 RETURNING *
"""
INSERT = """
INSERT INTO ref_events (run_id, version, to_status, occurred_at) VALUES ($1, $2, $3, $4)
"""

POOL = web.AppKey("pool", asyncpg.Pool)
APPLICATION_NAME = "bench-reference"  # how the benchmark finds its database backends
json_response = partial(web.json_response, dumps=partial(json.dumps, default=str))


async def get_run(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(GET, request.match_info["id"])
    if row is None:
        return json_response({"error": "not found"}, status=404)
    return json_response(dict(row))


async def put_run(request: web.Request) -> web.Response:
    body = await request.json()
    async with request.app[POOL].acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(UPDATE, request.match_info["id"], body["status"])
            if row is None:
                return json_response({"error": "not found"}, status=404)
            await conn.execute(INSERT, row["id"], row["version"], row["status"],
                               row["updated_at"])
    return json_response(dict(row))


def create_app(dsn: str) -> web.Application:
    async def pool_ctx(app: web.Application):
        app[POOL] = await asyncpg.create_pool(
            dsn, min_size=2, max_size=10,
            server_settings={"application_name": APPLICATION_NAME})
        yield
        await app[POOL].close()

    app = web.Application()
    app.router.add_get("/runs/{id}", get_run)
    app.router.add_put("/runs/{id}", put_run)
    app.cleanup_ctx.append(pool_ctx)
    return app


async def create_tables(conn: asyncpg.Connection) -> None:
    await conn.execute(DDL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8181)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    loop = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(create_app(args.dsn), host=args.host, port=args.port, print=None,
                access_log=None, loop=loop or asyncio.new_event_loop())


if __name__ == "__main__":
    main()
