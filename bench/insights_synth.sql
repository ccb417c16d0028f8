-- A synthetic 1M-run enterprise 'scale' (200 pipelines, Zipf-weighted like the seeder's,
-- 120 days): the runs projection only (no events), then the insights projections filled
-- as the migrations do, in minutes instead of the seeder's hours. Only for timing the
-- insights answers (docs/performance.md#insights): verify would find every run drifted.
-- Outcomes 70% success, 12% failure, 5% timeout, 8% cancelled, 5% invalid; queue 5-500 s;
-- durations log-normal around 10 minutes. On a migrated database without the enterprise:
--     psql -d NAME -f bench/insights_synth.sql
-- (The figures before migration 0007 came from the same runs filled the 0006 way:
-- run_insights with its per-day rollup rows, then migrated.)
\set ON_ERROR_STOP on
ALTER TABLE pipeline_runs DISABLE TRIGGER USER;
INSERT INTO pipelines (enterprise_id, id, name, description, created_at, updated_at)
SELECT 'scale', gen_random_uuid(), 'syn-' || lpad(i::text, 3, '0'), 'synthetic',
       now() - interval '130 days', now() - interval '130 days'
FROM generate_series(0, 199) AS i;
INSERT INTO pipeline_runs (enterprise_id, id, pipeline_id, run_number, status, created_at,
                           updated_at, started_at, ended_at, version, deadline)
SELECT 'scale', gen_random_uuid(), p.id, x.g, s.status, x.created,
       coalesce(s.ended, s.started, x.created), s.started, s.ended, 3,
       x.created + interval '1 day'
FROM (SELECT id, round(1000000 * (1.0 / (i + 1)) / 5.8780)::int AS n
      FROM (SELECT id, row_number() OVER (ORDER BY name) - 1 AS i FROM pipelines
            WHERE enterprise_id = 'scale') AS q) AS p,
     LATERAL (SELECT g, now() - interval '120 days' * random() AS created, random() AS r,
                     random() AS q, random() AS u1, random() AS u2
              FROM generate_series(1, p.n) AS g) AS x,
     LATERAL (SELECT x.created + make_interval(secs => 5 + 495 * x.q * x.q) AS started,
                     exp(ln(600) + sqrt(-2 * ln(greatest(x.u1, 1e-9))) * cos(2 * pi() * x.u2))
                         AS secs) AS t,
     LATERAL (SELECT CASE WHEN x.r < 0.70 THEN 'success' WHEN x.r < 0.82 THEN 'failure'
                          WHEN x.r < 0.87 THEN 'timeout' WHEN x.r < 0.95 THEN 'cancelled'
                          ELSE 'invalid' END AS planned) AS o,
     LATERAL (SELECT CASE WHEN o.planned = 'invalid' THEN NULL ELSE t.started END AS started,
                     CASE WHEN o.planned = 'invalid' THEN x.created + interval '30 seconds'
                          ELSE t.started + make_interval(secs => t.secs) END AS ended) AS e,
     LATERAL (SELECT CASE WHEN e.ended > now() THEN 'running' ELSE o.planned END AS status,
                     CASE WHEN e.started > now() THEN NULL ELSE e.started END AS started,
                     CASE WHEN e.ended > now() THEN NULL ELSE e.ended END AS ended) AS s;
UPDATE pipeline_runs SET status = 'pending'
WHERE enterprise_id = 'scale' AND status = 'running' AND started_at IS NULL;
ALTER TABLE pipeline_runs ENABLE TRIGGER USER;
UPDATE pipelines p SET last_run_number = c.n
FROM (SELECT pipeline_id, count(*) AS n FROM pipeline_runs WHERE enterprise_id = 'scale'
      GROUP BY 1) AS c
WHERE p.id = c.pipeline_id;
INSERT INTO run_counts (enterprise_id, pipeline_id, status, n)
SELECT enterprise_id, pipeline_id, status, count(*) FROM pipeline_runs
WHERE enterprise_id = 'scale' GROUP BY 1, 2, 3;
INSERT INTO run_insights (enterprise_id, hour, pipeline_id, metric, bin, n)
SELECT r.enterprise_id, k.hour, r.pipeline_id, k.metric, k.bin, count(*)
FROM pipeline_runs r,
     LATERAL run_insight_keys(r.created_at, r.started_at, r.ended_at, r.status) AS k
WHERE r.enterprise_id = 'scale'
GROUP BY 1, 2, 3, 4, 5;
ALTER TABLE run_recoveries DISABLE TRIGGER USER;  -- the running totals are rebuilt below
SELECT count(run_recoveries_refresh(enterprise_id, pipeline_id, '-infinity', 'infinity'))
FROM (SELECT DISTINCT enterprise_id, pipeline_id FROM pipeline_runs
      WHERE enterprise_id = 'scale' AND status IN ('success', 'failure', 'timeout')) AS p;
ALTER TABLE run_recoveries ENABLE TRIGGER USER;
SELECT count(run_insights_totals_rebuild('scale', p.id))
FROM (SELECT id FROM pipelines WHERE enterprise_id = 'scale'
      UNION ALL SELECT '00000000-0000-0000-0000-000000000000') AS p;
VACUUM ANALYZE;
