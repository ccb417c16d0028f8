-- run_insights and run_recoveries (the insights projections; see schema.sql) on a database
-- from before they existed: created and filled from the runs projection; writers of pipeline_runs wait
-- meanwhile (SHARE lock until the migration commits), and schema.sql, applied in the same
-- transaction right after, adds the trigger that keeps it from then on.
CREATE TABLE IF NOT EXISTS run_insights (
    enterprise_id text        NOT NULL,
    hour          timestamptz NOT NULL,
    pipeline_id   uuid        NOT NULL,
    metric        text        NOT NULL,
    bin           integer     NOT NULL,
    n             bigint      NOT NULL,
    PRIMARY KEY (enterprise_id, hour, pipeline_id, metric, bin)
);

-- The lower bounds of the log bins, in microseconds: 1, 2, ... (one bin per microsecond
-- while that is finer), then each bound 101/99 of the previous (integer arithmetic, the
-- same in Python: service/domain/insights.py), up to 100 years. Constant-folded by the
-- planner (IMMUTABLE, no argument).
CREATE OR REPLACE FUNCTION insights_bounds() RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH RECURSIVE b(t) AS (
        SELECT 1::bigint
        UNION ALL
        SELECT greatest(t + 1, t * 101 / 99) FROM b WHERE t < 3153600000000000
    )
    SELECT array_agg(t ORDER BY t) FROM b
$$;
-- A time's bin: how many bounds are <= it (0: under a microsecond).
CREATE OR REPLACE FUNCTION insights_bin(micros numeric) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT width_bucket(micros::bigint, insights_bounds())
$$;
-- A run's keys (hour, metric, bin) as its state gives them (the Python twin:
-- service/domain/insights.py run_keys).
CREATE OR REPLACE FUNCTION run_insight_keys(created_at timestamptz, started_at timestamptz,
                                            ended_at timestamptz, status text)
RETURNS TABLE (hour timestamptz, metric text, bin integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT k.hour, k.metric, k.bin FROM (VALUES
        (date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00Z'), 'created', 0),
        (CASE WHEN status IN ('success', 'failure', 'timeout', 'invalid', 'cancelled')
              THEN date_bin('1 hour', ended_at, timestamptz '2000-01-01 00:00Z') END,
         status, 0),
        (CASE WHEN status IN ('success', 'failure', 'timeout', 'invalid', 'cancelled')
                   AND started_at IS NOT NULL
              THEN date_bin('1 hour', ended_at, timestamptz '2000-01-01 00:00Z') END,
         'duration',
         insights_bin(extract(epoch FROM ended_at - started_at) * 1000000)),
        (date_bin('1 hour', started_at, timestamptz '2000-01-01 00:00Z'), 'queue',
         insights_bin(extract(epoch FROM started_at - created_at) * 1000000))
    ) AS k(hour, metric, bin)
    WHERE k.hour IS NOT NULL
$$;
-- The rows a run adds to: its keys per pipeline and hour, and the same keys in the
-- enterprise's per-day rollup (pipeline_id all zeros, hour the UTC day's start), which
-- answers without a pipeline filter or grouping read for whole days (store/insights.py).
CREATE OR REPLACE FUNCTION run_insight_rows(pipeline uuid, created_at timestamptz,
                                            started_at timestamptz,
                                            ended_at timestamptz, status text)
RETURNS TABLE (hour timestamptz, pipeline_id uuid, metric text, bin integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT t.hour, t.pipeline_id, k.metric, k.bin
    FROM run_insight_keys(created_at, started_at, ended_at, status) AS k,
         LATERAL (VALUES (k.hour, pipeline),
                         (date_bin('1 day', k.hour, timestamptz '2000-01-01 00:00Z'),
                          '00000000-0000-0000-0000-000000000000'::uuid)) AS t(hour, pipeline_id)
$$;
-- Projection: recoveries (MTTR of the insights). Per pipeline, its finished runs (success,
-- failure, timeout) in order of (ended_at, id): each success that ends a streak of failures
-- and timeouts is one row, with the end of the streak's first run (failed_at). Kept by the
-- insights trigger (run_recoveries_refresh: the changed run's stretch, from the success
-- before it to the success after it, recomputed from pipeline_runs) under the same feed
-- lock; verify compares it with the whole recomputation (store/insights.py).
CREATE TABLE IF NOT EXISTS run_recoveries (
    enterprise_id text        NOT NULL,
    pipeline_id   uuid        NOT NULL,
    recovered_at  timestamptz NOT NULL,
    run_id        uuid        NOT NULL,  -- the success
    failed_at     timestamptz NOT NULL,
    PRIMARY KEY (enterprise_id, pipeline_id, recovered_at, run_id)
);
-- Answers read a window of an enterprise's recoveries (index only).
CREATE INDEX IF NOT EXISTS run_recoveries_by_time
    ON run_recoveries (enterprise_id, recovered_at) INCLUDE (pipeline_id, failed_at);
-- Recompute a pipeline's recoveries around the runs that ended in [lo, hi]: from the last
-- success before lo to the first success after hi, every streak that a run there can change
-- (ties in ended_at are ordered by id, as the answers order them).
CREATE OR REPLACE FUNCTION run_recoveries_refresh(e text, p uuid, lo timestamptz,
                                                  hi timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a timestamptz;
    b timestamptz;
BEGIN
    SELECT coalesce(max(r.ended_at), '-infinity') INTO a FROM pipeline_runs r
    WHERE r.enterprise_id = e AND r.pipeline_id = p AND r.status = 'success'
      AND r.ended_at < lo;
    SELECT coalesce(min(r.ended_at), 'infinity') INTO b FROM pipeline_runs r
    WHERE r.enterprise_id = e AND r.pipeline_id = p AND r.status = 'success'
      AND r.ended_at > hi;
    DELETE FROM run_recoveries r WHERE r.enterprise_id = e AND r.pipeline_id = p
      AND r.recovered_at > a AND r.recovered_at <= b;
    INSERT INTO run_recoveries (enterprise_id, pipeline_id, recovered_at, run_id, failed_at)
    SELECT e, p, g.recovered_at, g.run_id, g.failed_at
    FROM (SELECT min(t.ended_at) FILTER (WHERE t.status <> 'success') AS failed_at,
                 min(t.ended_at) FILTER (WHERE t.status = 'success') AS recovered_at,
                 (array_agg(t.id ORDER BY t.ended_at, t.id)
                      FILTER (WHERE t.status = 'success'))[1] AS run_id
          FROM (SELECT r.id, r.ended_at, r.status,
                       count(*) FILTER (WHERE r.status = 'success') OVER (
                           ORDER BY r.ended_at, r.id
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS streak
                FROM pipeline_runs r
                WHERE r.enterprise_id = e AND r.pipeline_id = p
                  AND r.status IN ('success', 'failure', 'timeout')
                  AND r.ended_at >= a AND r.ended_at <= b) AS t
          GROUP BY t.streak) AS g
    WHERE g.failed_at IS NOT NULL AND g.recovered_at > a;
END
$$;
LOCK TABLE pipeline_runs IN SHARE MODE;
INSERT INTO run_insights (enterprise_id, hour, pipeline_id, metric, bin, n)
SELECT r.enterprise_id, k.hour, k.pipeline_id, k.metric, k.bin, count(*)
FROM pipeline_runs r,
     LATERAL run_insight_rows(r.pipeline_id, r.created_at, r.started_at, r.ended_at, r.status) k
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin) DO NOTHING;
-- Every pipeline's recoveries, from its first finished run on.
SELECT run_recoveries_refresh(enterprise_id, pipeline_id, '-infinity', 'infinity')
FROM (SELECT DISTINCT enterprise_id, pipeline_id FROM pipeline_runs
      WHERE status IN ('success', 'failure', 'timeout')) AS p;
