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
- the insights' upkeep (INSIGHTS), for writers of pipeline_runs: the keys of the runs'
  states named in their CTE `run_states` (RUN_STATES), after the feed lock.
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

_LOCK_AND_COUNTS = f"""feed_lock AS (
    {FEED_LOCKS.format(enterprises="SELECT enterprise_id FROM appended")}
), counted AS (
    {COUNT_DELTAS.format(rows=f'''
    SELECT a.enterprise_id, a.pipeline_id, d.status, sum(d.delta)
    FROM appended a, feed_lock,
         LATERAL (VALUES (a.from_status, -1), (a.to_status, 1)) AS d(status, delta)
    WHERE a.type IN ({_RUN_LEVEL}) AND d.status IS NOT NULL
    GROUP BY 1, 2, 3 HAVING sum(d.delta) <> 0
    ORDER BY 1, 2, 3''')}
)"""
# {after}: a condition the events wait for (the insights' upkeep, below), or TRUE.
_EVENTS = f"""appended_events AS (
    INSERT INTO run_events ({_COLUMNS})
    SELECT {', '.join('a.' + c for c in APPENDED_COLUMNS)}
    FROM appended a, feed_lock
    WHERE {{after}}
    ORDER BY a.ord
    RETURNING position
)"""


# The insights projection (schema.sql run_insights), kept by the statements that write
# pipeline_runs: each names, in a CTE `run_states` with these columns, the states it
# leaves (sign -1) and makes (+1) of each run whose keys may move (a run created or
# deleted; an update that stamps started_at or ended_at or enters or leaves an outcome);
# the rest of its runs it leaves out (most moves: queued, processing, waiting move no key).
RUN_STATES = ("sign", "enterprise_id", "pipeline_id", "created_at", "started_at", "ended_at",
              "status")
RUN_STATE_NAMES = ", ".join(RUN_STATES)  # the column list of a `run_states` VALUES alias
_RATED = "'success', 'failure', 'timeout'"
_MICROS = "(extract(epoch FROM s.{}) * 1000000)::bigint"
# Whether a moved key lies before its enterprise's watermark (a change reaching back): the
# watermark read afresh after the feed lock (schema.sql run_insights_back: this statement's
# snapshot predates a close committed while it waited for the lock), once (a CTE read twice).
_BACK = "(SELECT back FROM insights_back)"
# After the feed lock, the keys' deltas in one INSERT (its RETURNING, the keys' hours, says
# with the watermark whether one reached back); then, only when a state is rated or a key
# reached back, one call for the rest (schema.sql run_insights_rest: running totals,
# recoveries); its conditions are one-time filters, so a statement that needs none pays a
# probe and the watermark's read. Its argument aggregates every `run_states` row first,
# i.e. the RETURNING rows of the statement's own writes of pipeline_runs, so by the call
# those writes are done and its queries (a fresh snapshot and command id, as a volatile
# function's) see them; and it runs after the feed lock (its FROM, and insights_keys, read
# feed_lock).
# A CTE that nothing reads is not run: the events' INSERT reads `insights_rest`'s count,
# an init plan evaluated once.
INSIGHTS = f"""insights_keys AS (
    INSERT INTO run_insights AS i (enterprise_id, hour, pipeline_id, metric, bin, n)
    SELECT s.enterprise_id, k.hour, s.pipeline_id, k.metric, k.bin, sum(s.sign)
    FROM run_states s, feed_lock,
         LATERAL run_insight_keys(s.created_at, s.started_at, s.ended_at, s.status) AS k
    GROUP BY 1, 2, 3, 4, 5 HAVING sum(s.sign) <> 0
    ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin)
    DO UPDATE SET n = i.n + EXCLUDED.n
    RETURNING i.enterprise_id, i.hour
), insights_back AS (
    SELECT run_insights_back(array_agg(k.enterprise_id), array_agg(k.hour)) AS back
    FROM insights_keys k
), insights_rest AS (
    SELECT run_insights_rest(
               (SELECT array_agg(ROW(s.sign, s.enterprise_id, s.pipeline_id,
                                     {_MICROS.format("created_at")},
                                     {_MICROS.format("started_at")},
                                     {_MICROS.format("ended_at")}, s.status)::run_insights_change)
                FROM run_states s),
               {_BACK})
    FROM feed_lock
    WHERE EXISTS (SELECT FROM run_states s WHERE s.status IN ({_RATED})) OR {_BACK}
)"""


def statement(ctes: str, select: str, *, run_states: bool = False) -> str:
    """A write statement: the writer's CTEs (the last named `appended`), the append, `select`.

    `select` may read `appended_events` (what was appended). run_states: the writer's CTEs
    name `run_states` (RUN_STATES), whose insights keys the statement moves.
    """
    if not run_states:
        return f"WITH {ctes},\n{_LOCK_AND_COUNTS}, {_EVENTS.format(after='TRUE')}\n{select}"
    return (f"WITH {ctes},\n{_LOCK_AND_COUNTS}, {INSIGHTS}, "
            f"{_EVENTS.format(after='(SELECT count(*) FROM insights_rest) >= 0')}\n{select}")


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
