-- run_insights (the insights projection; see schema.sql) on a database from before it
-- existed: created and filled from the runs projection; writers of pipeline_runs wait
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
LOCK TABLE pipeline_runs IN SHARE MODE;
INSERT INTO run_insights (enterprise_id, hour, pipeline_id, metric, bin, n)
SELECT r.enterprise_id, k.hour, k.pipeline_id, k.metric, k.bin, count(*)
FROM pipeline_runs r,
     LATERAL run_insight_rows(r.pipeline_id, r.created_at, r.started_at, r.ended_at, r.status) k
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin) DO NOTHING;
