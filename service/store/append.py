"""The only code that appends events: the enterprise's feed lock, the counters, the insert.

Every write of the store is ONE statement (the general path updates a run's stage runs
before it: store/changes.py) whose own CTEs compute the events to append in a CTE named
`appended` (APPENDED_COLUMNS, plus `ord`: their order) and which then ends with the
append's CTEs (`statement`). In that order:
- the feed lock of each enterprise appended to (store/locks.py; one, but for a group
  commit's statement): taken only if something is appended, after every row lock the
  statement's own CTEs took, right before the events get their positions, and held to
  commit, so one enterprise's appends commit in position order (store/events.py);
- the run_counts deltas, derived from the run-level events themselves (a run's status
  leaves `from_status` and enters `to_status`), so no writer computes them by hand; written
  after the feed lock, which is what keeps counter rows free of contention (counts.py);
- the events, in `ord` order, so positions follow the order the writer gave.
"""
from __future__ import annotations

import asyncpg

from service.domain import lifecycle
from service.store.counts import COUNT_DELTAS
from service.store.locks import FEED_LOCK, FEED_LOCKS

# The columns of the `appended` CTE (and of run_events a writer fills).
APPENDED_COLUMNS: tuple[str, ...] = (
    "enterprise_id", "pipeline_id", "run_id", "version", "type", "from_status", "to_status",
    "actor", "actor_id", "occurred_at", "data",
)
_COLUMNS = ", ".join(APPENDED_COLUMNS)
# Events whose statuses are the run's (a stage run's event carries the stage run's).
_RUN_LEVEL = ", ".join(f"'{t}'" for t in lifecycle.RUN_EVENT_TYPES)

_APPEND = f"""feed_lock AS (
    {FEED_LOCKS.format(enterprises="SELECT enterprise_id FROM appended")}
), counted AS (
    {COUNT_DELTAS.format(rows=f'''
    SELECT a.enterprise_id, a.pipeline_id, d.status, sum(d.delta)
    FROM appended a, feed_lock,
         LATERAL (VALUES (a.from_status, -1), (a.to_status, 1)) AS d(status, delta)
    WHERE a.type IN ({_RUN_LEVEL}) AND d.status IS NOT NULL
    GROUP BY 1, 2, 3 HAVING sum(d.delta) <> 0
    ORDER BY 1, 2, 3''')}
), appended_events AS (
    INSERT INTO run_events ({_COLUMNS})
    SELECT {', '.join('a.' + c for c in APPENDED_COLUMNS)}
    FROM appended a, feed_lock
    ORDER BY a.ord
    RETURNING position
)"""


def statement(ctes: str, select: str) -> str:
    """A write statement: the writer's CTEs (the last named `appended`), the append, `select`.

    `select` may read `appended_events` (what was appended).
    """
    return f"WITH {ctes},\n{_APPEND}\n{select}"


# The general path's events (store/changes.py), given as arrays, one per column: the
# `appended` CTE for $1 enterprise, $2 pipeline, $3 run, $4 occurred_at and $5..$11 the
# arrays (event_arrays).
EVENTS_FROM_ARRAYS = """appended AS (
    SELECT $1::text AS enterprise_id, $2::uuid AS pipeline_id, $3::uuid AS run_id,
           ev.version, ev.type, ev.from_status, ev.to_status, ev.actor, ev.actor_id,
           $4::timestamptz AS occurred_at, ev.data, ev.n AS ord
    FROM unnest($5::int[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[],
                $11::jsonb[]) WITH ORDINALITY
         AS ev(version, type, from_status, to_status, actor, actor_id, data, n)
)"""


def event_arrays(events: list[dict]) -> list[list]:
    """EVENTS_FROM_ARRAYS' $5..$11: the events' columns, in list order."""
    return [[e[k] for e in events] for k in ("version", "type", "from_status", "to_status",
                                              "actor", "actor_id", "data")]


# Bulk loads (the seeder): the feed lock alone; the rows then go in by COPY.
TAKE_FEED_LOCK = f"SELECT {FEED_LOCK}"


async def copy_events(conn: asyncpg.Connection, enterprise_id: str, records: list[tuple]) -> None:
    """Bulk-append (COPY) events given as APPENDED_COLUMNS tuples, positions in list order.

    The caller owns the transaction and adds the counters of the rows it loads itself.
    """
    await conn.fetchval(TAKE_FEED_LOCK, enterprise_id)
    await conn.copy_records_to_table("run_events", records=records, columns=APPENDED_COLUMNS)
