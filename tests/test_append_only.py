"""run_events is append-only, enforced by PostgreSQL itself for every connection."""
from __future__ import annotations

import asyncpg
import pytest


@pytest.mark.parametrize("statement", [
    "UPDATE run_events SET actor = 'mallory' WHERE enterprise_id = $1",
    "DELETE FROM run_events WHERE enterprise_id = $1",
])
async def test_rows_cannot_be_changed_or_removed(api, db, enterprise, statement):
    await api.run((await api.pipeline())["id"])
    before = await db.fetch("SELECT * FROM run_events WHERE enterprise_id = $1", enterprise)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(statement, enterprise)
    after = await db.fetch("SELECT * FROM run_events WHERE enterprise_id = $1", enterprise)
    assert before == after and len(after) == 1


async def test_table_cannot_be_truncated(api, db, enterprise):
    await api.run((await api.pipeline())["id"])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("TRUNCATE run_events")
    assert await db.fetchval(
        "SELECT count(*) FROM run_events WHERE enterprise_id = $1", enterprise) == 1


async def test_the_services_own_pool_is_refused_too(client, api, enterprise):
    from service.web.keys import POOL

    await api.run((await api.pipeline())["id"])
    async with client.app[POOL].acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM run_events WHERE enterprise_id = $1", enterprise)
