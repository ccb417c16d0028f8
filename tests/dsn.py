"""Pick the admin DSN for tests: DATABASE_URL, else local PostgreSQL on TCP, else embedded PG."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import Callable, Mapping

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO_ROOT / ".data" / "test"  # anchored so running pytest from tests/ works too


def _can_query(dsn: str, timeout: float) -> bool:
    async def probe() -> bool:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            return await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    # Run in a fresh thread so this also works when called under a running event loop
    # (asyncio.run refuses to nest).
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(asyncio.run(probe()))
        except Exception:  # any failure (refused, auth, timeout) means "not usable"
            result.append(False)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return bool(result and result[0])


def resolve_admin_dsn(
    host: str = "127.0.0.1",
    port: int = 5432,
    env: Mapping[str, str] | None = None,
    embedded_dir: str | os.PathLike = EMBEDDED_DIR,
    timeout: float = 2.0,
) -> tuple[str, Callable[[], None] | None]:
    """Return (dsn, stop); stop is None unless an embedded server was started for the tests."""
    env = os.environ if env is None else env
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"], None
    dsn = f"postgresql://postgres@{host}:{port}/postgres"
    try:
        # Cheap TCP probe first so a closed port fails fast without asyncpg's retries.
        socket.create_connection((host, port), timeout=timeout).close()
        if _can_query(dsn, timeout):
            return dsn, None
    except OSError:
        pass
    # Imported here so DATABASE_URL / local-PG runs never touch pgserver.
    from service.infra.embedded import start_embedded

    server = start_embedded(str(embedded_dir))
    return server.dsn, server.stop
