"""What the request path around a handler costs, in process, without a database: µs/request.

A GET shaped like a run's (a token, two UUIDs in the path, no query string) goes through
the app's real middleware, auth (token cached), rate limit, validation, metrics and the
JSON access line (written to /dev/null) to a handler that answers a run-sized envelope at
once; each part is also timed alone. The best of several repeats, so other work on the
machine disturbs it little: the numbers to compare two versions of the code by.

    .venv/bin/python bench/request_cost.py [--requests 20000]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
import timeit
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import make_mocked_request  # noqa: E402
from aiohttp_apispec import match_info_schema, querystring_schema  # noqa: E402

from service.config import Config  # noqa: E402
from service.infra import logs  # noqa: E402
from service.store import tokens as token_store  # noqa: E402
from service.web import schemas as s  # noqa: E402
from service.web.app import create_app  # noqa: E402
from service.web.auth import requires  # noqa: E402
from service.web.envelope import envelope  # noqa: E402
from service.web.keys import RATE_LIMITER, TOKEN_CACHE, Principal  # noqa: E402
from service.web.limits import RateLimiter  # noqa: E402

PATH = "/bench/pipelines/{pipeline_id}/runs/{pipeline_run_id}/"
NOW = dt.datetime.now(dt.timezone.utc)
RUN = {"id": uuid.uuid4(), "enterprise_id": "bench", "run_number": 3,
       "pipeline_id": uuid.uuid4(), "pipeline_name": "bench", "status": "running",
       "status_meta": None, "created_by": "bench", "updated_by": "bench", "created_at": NOW,
       "updated_at": NOW, "started_at": NOW, "ended_at": None, "version": 3}


@requires("runs:read")
@match_info_schema(s.RunPath)
@querystring_schema(s.RunGetQuery)
async def answer(request):
    return envelope(RUN, headers={"ETag": '"3"'})


def best(fn, number: int) -> float:
    """µs per call: the best of 5 repeats."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    devnull = open(os.devnull, "w")
    logs.setup_logging(Config(), devnull)
    app = create_app(Config(database_url="postgresql://unused/", rate_limit_rps=100000,
                            rate_limit_burst=100000))
    app.router.add_get(PATH, answer)
    app.freeze()
    token = "bench-token"
    app[TOKEN_CACHE].put(token_store.hash_token(token),
                         Principal(1, "bench", "bench", frozenset({"runs:read"}), None),
                         time.monotonic() + 3600)
    path = PATH.format(pipeline_id=uuid.uuid4(), pipeline_run_id=uuid.uuid4())
    headers = {"Authorization": f"Bearer {token}"}

    # One mocked request (mocks are slow to make), cloned per request: a request of its own.
    template = make_mocked_request("GET", path, headers=headers, app=app)

    async def requests(n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            request = template.clone()
            response = await app._handle(request)
            assert response.status == 200, response.text
        return (time.process_time() - started) / n * 1e6

    await requests(2000)  # warm up: the first request of a route resolves its plan
    per_request = min([await requests(args.requests) for _ in range(5)])
    bare = best(template.clone, args.requests)
    limiter = RateLimiter(100000, 100000)
    fields = ("GET", "/pipelines/v0/pipelines/{pipeline_id}/runs/{pipeline_run_id}/", path, 200,
              1.234, "bench", "bench")
    names = ("method", "route", "path", "status", "duration_ms", "enterprise", "actor")
    access = (lambda: logs.log_request(*fields)) if hasattr(logs, "log_request") else (
        lambda: logs.log_access(dict(zip(names, fields))))
    print(f"request through the app, less making the request: {per_request - bare:6.1f} µs")
    print(f"  of which the handler's envelope:                 "
          f"{best(lambda: envelope(RUN, headers={'ETag': '3'}), 20000):6.1f} µs")
    print(f"  of which the access line:                        {best(access, 20000):6.1f} µs")
    print(f"  of which the rate limit:                         "
          f"{best(lambda: limiter.take(1, None), 20000):6.1f} µs")
    logs.logging.getLogger().handlers[-1].flush()


if __name__ == "__main__":
    asyncio.run(main())
