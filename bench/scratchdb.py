"""Where the benchmarks make their scratch databases: an admin DSN and small helpers."""
from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def dsn_for(admin_dsn: str, dbname: str) -> str:
    return urlunsplit(urlsplit(admin_dsn)._replace(path="/" + dbname))


# The service under measurement runs as production should (docs/security.md): migrations
# as the admin (the owner), the service as a runtime role that cannot change run_events.
RUNTIME_ROLE = "pr_bench_runtime"


def service_env(dsn: str) -> dict[str, str]:
    """The environment of a `python -m service` command on the scratch database `dsn`."""
    from service.infra.db import with_login

    return {"MIGRATE_DATABASE_URL": dsn,
            "DATABASE_URL": with_login(dsn, RUNTIME_ROLE, RUNTIME_ROLE)}


def can_connect(dsn: str) -> bool:
    async def probe():
        conn = await asyncpg.connect(dsn, timeout=2)
        await conn.close()

    try:
        asyncio.run(probe())
        return True
    except Exception:
        return False


@contextmanager
def admin_dsn():
    dsn = os.environ.get("BENCH_ADMIN_DSN") or os.environ.get("DATABASE_URL")
    if dsn:
        yield dsn
        return
    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    if can_connect(dsn):
        yield dsn
        return
    from service.infra.embedded import start_embedded

    server = start_embedded(str(ROOT / ".data" / "bench"))
    try:
        yield server.dsn
    finally:
        server.stop()


async def admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_scratch(prefix: str, main: Callable[[str, str], Awaitable[T]]) -> T:
    """asyncio.run(main(admin_dsn, name)) on a new database `name` (prefix + a random
    suffix), dropped afterwards whatever happens."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin_dsn() as admin_url:
        asyncio.run(admin(admin_url, f'CREATE DATABASE "{name}"'))
        try:
            return asyncio.run(main(admin_url, name))
        finally:
            asyncio.run(admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
