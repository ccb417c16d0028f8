-- run_insights_totals (the insights' running totals per 6-hour period; see schema.sql) on
-- a database from before they existed: created and filled from run_insights and
-- run_recoveries, a pipeline (and each enterprise's rollup) at a time, period by period.
-- The per-day rollup rows that run_insights held (pipeline all zeros) and their index go:
-- the running totals answer whole periods now. Writers of pipeline_runs wait meanwhile
-- (SHARE lock until the migration commits), and schema.sql, applied in the same
-- transaction right after, makes the triggers keep them from then on.
LOCK TABLE pipeline_runs IN SHARE MODE;
DELETE FROM run_insights WHERE pipeline_id = '00000000-0000-0000-0000-000000000000';
DROP INDEX IF EXISTS run_insights_rollup;
DROP FUNCTION IF EXISTS run_insight_rows(uuid, timestamptz, timestamptz, timestamptz, text);

-- Projection: the insights' running totals (service/store/insights.py reads them). Per
-- enterprise, pipeline (or the rollup's all-zeros id: every pipeline's) and 6-hour period
-- (UTC, from midnight: insights_period): everything the run_insights rows of that
-- pipeline hold up to the end of that period, summed, and the recoveries ended by then
-- (run_recoveries: count, and their times summed in microseconds, exactly). So any span
-- [a, b) of whole periods is two rows per pipeline: the last row before b less the last
-- row before a, however long the span; a 90-day answer per pipeline reads 400 rows
-- instead of every hourly row of the quarter, and at most 3 hours at each ragged end of a
-- window come from run_insights. duration and queue are the log-bin histograms
-- (insights_bin) as dense arrays whose subscripts are the bins (lower bound: the first
-- nonzero bin, upper: the last). A row exists for the periods that have something of
-- their own (a key in run_insights or a recovery): the row of a period that has none
-- would equal the one before. Kept with run_insights by its trigger
-- (run_insights_totals_add) and by run_recoveries' trigger; replay rebuilds a drifted
-- pipeline's rows from run_insights and run_recoveries (run_insights_totals_rebuild) and
-- verify names drifted rows (service/app/replay.py).
CREATE OR REPLACE FUNCTION insights_period(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_bin('6 hours', at, timestamptz '2000-01-01 00:00Z')
$$;
CREATE TABLE IF NOT EXISTS run_insights_totals (
    enterprise_id    text        NOT NULL,
    pipeline_id      uuid        NOT NULL,
    at               timestamptz NOT NULL,  -- the period's start
    created          bigint      NOT NULL,
    success          bigint      NOT NULL,
    failure          bigint      NOT NULL,
    timeout          bigint      NOT NULL,
    invalid          bigint      NOT NULL,
    cancelled        bigint      NOT NULL,
    recovered        bigint      NOT NULL,
    recovered_micros bigint      NOT NULL,
    duration         integer[]   NOT NULL,
    queue            integer[]   NOT NULL,
    PRIMARY KEY (enterprise_id, pipeline_id, at)
) WITH (toast_tuple_target = 8160);  -- rows of a few KB stay inline, uncompressed:
                                      -- the write path rewrites the current row each time

-- A time in microseconds (the bins' unit; exact: extract gives numeric).
CREATE OR REPLACE FUNCTION insights_micros(t interval) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(epoch FROM t) * 1000000)::bigint
$$;

-- A histogram with counts added at bins (ns[i] at bins[i]; negative: taken out), widened
-- as needed and trimmed to its first and last nonzero bin ('{}' when nothing is left).
CREATE OR REPLACE FUNCTION insights_hist_add(h integer[], bins integer[], ns bigint[])
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    lo integer := array_lower(h, 1);
    hi integer := array_upper(h, 1);
    b_lo integer;
    b_hi integer;
BEGIN
    IF coalesce(cardinality(bins), 0) = 0 THEN
        RETURN h;
    END IF;
    b_lo := bins[1];
    b_hi := bins[1];
    FOR i IN 2 .. cardinality(bins) LOOP  -- plain expressions: no query per call
        b_lo := least(b_lo, bins[i]);
        b_hi := greatest(b_hi, bins[i]);
    END LOOP;
    IF lo IS NULL THEN
        h := array_fill(0, ARRAY[b_hi - b_lo + 1], ARRAY[b_lo]);
        lo := b_lo;
        hi := b_hi;
    END IF;
    IF b_lo < lo THEN  -- a concatenation keeps the left operand's lower bound
        h := array_fill(0, ARRAY[lo - b_lo], ARRAY[b_lo]) || h;
        lo := b_lo;
    END IF;
    IF b_hi > hi THEN
        h := h || array_fill(0, ARRAY[b_hi - hi]);
        hi := b_hi;
    END IF;
    FOR i IN 1 .. cardinality(bins) LOOP
        h[bins[i]] := h[bins[i]] + ns[i];
    END LOOP;
    WHILE lo <= hi AND h[lo] = 0 LOOP
        lo := lo + 1;
    END LOOP;
    WHILE hi >= lo AND h[hi] = 0 LOOP
        hi := hi - 1;
    END LOOP;
    IF lo > hi THEN
        RETURN '{}';
    ELSIF lo = array_lower(h, 1) AND hi = array_upper(h, 1) THEN
        RETURN h;
    END IF;
    RETURN array_fill(h[lo], ARRAY[1], ARRAY[lo]) || h[lo + 1 : hi];  -- a slice starts at 1
END
$$;

-- Add keys of one period (metric, bin, n: as in run_insights, plus 'recovered' and
-- 'recovered_micros' at bin 0) to the running totals of each of the pipelines `ps` (a
-- run's pipeline and its enterprise's rollup): the period's row and every later one added
-- to, the period's row made if missing (the last row before it, plus the keys), and
-- dropped when it no longer differs from the one before. Later rows exist only when
-- a change reaches back (a run's earlier keys moved or deleted). The keys are sorted into
-- columns here in plain expressions: the write path's trigger calls this once per change.
CREATE OR REPLACE FUNCTION run_insights_totals_add(e text, ps uuid[], d timestamptz,
                                                 metrics text[], bins integer[],
                                                 ns bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- created, success, failure, timeout, invalid, cancelled, recovered, recovered_micros
    c bigint[] := '{0,0,0,0,0,0,0,0}';
    columns CONSTANT text[] := '{created,success,failure,timeout,invalid,cancelled,'
                               'recovered,recovered_micros}';
    d_bins integer[];
    d_ns bigint[];
    q_bins integer[];
    q_ns bigint[];
    gone boolean := false;
    made integer;
BEGIN
    IF cardinality(metrics) > 8 THEN  -- a rebuild's period: two queries, not n appends
        SELECT array_agg(u.bin) FILTER (WHERE u.metric = 'duration'),
               array_agg(u.n) FILTER (WHERE u.metric = 'duration'),
               array_agg(u.bin) FILTER (WHERE u.metric = 'queue'),
               array_agg(u.n) FILTER (WHERE u.metric = 'queue'), bool_or(u.n < 0)
        INTO d_bins, d_ns, q_bins, q_ns, gone
        FROM unnest(metrics, bins, ns) AS u(metric, bin, n);
        SELECT array_agg(coalesce(v.n, 0) ORDER BY x.i) INTO c
        FROM unnest(columns) WITH ORDINALITY AS x(metric, i)
        LEFT JOIN (SELECT u.metric, sum(u.n)::bigint AS n
                   FROM unnest(metrics, ns) AS u(metric, n) GROUP BY 1) AS v
          ON v.metric = x.metric;
    ELSE
        FOR i IN 1 .. cardinality(metrics) LOOP  -- plain expressions: the trigger's few keys
            IF metrics[i] = 'duration' THEN
                d_bins := d_bins || bins[i];
                d_ns := d_ns || ns[i];
            ELSIF metrics[i] = 'queue' THEN
                q_bins := q_bins || bins[i];
                q_ns := q_ns || ns[i];
            ELSE
                c[array_position(columns, metrics[i])] :=
                    c[array_position(columns, metrics[i])] + ns[i];
            END IF;
            gone := gone OR ns[i] < 0;
        END LOOP;
    END IF;
    -- The period's row and later ones; a period's first change (per pipeline) finds none.
    WITH changed AS (
        UPDATE run_insights_totals AS t SET
            created = t.created + c[1], success = t.success + c[2],
            failure = t.failure + c[3], timeout = t.timeout + c[4],
            invalid = t.invalid + c[5], cancelled = t.cancelled + c[6],
            recovered = t.recovered + c[7], recovered_micros = t.recovered_micros + c[8],
            duration = CASE WHEN d_bins IS NULL THEN t.duration
                            ELSE insights_hist_add(t.duration, d_bins, d_ns) END,
            queue = CASE WHEN q_bins IS NULL THEN t.queue
                         ELSE insights_hist_add(t.queue, q_bins, q_ns) END
        WHERE t.enterprise_id = e AND t.pipeline_id = ANY(ps) AND t.at >= d
        RETURNING t.at)
    SELECT count(*) INTO made FROM changed WHERE changed.at = d;
    IF made < cardinality(ps) THEN  -- the missing rows: the last row before, plus the keys
        INSERT INTO run_insights_totals AS t
        SELECT e, p.id, d, coalesce(b.created, 0) + c[1], coalesce(b.success, 0) + c[2],
               coalesce(b.failure, 0) + c[3], coalesce(b.timeout, 0) + c[4],
               coalesce(b.invalid, 0) + c[5], coalesce(b.cancelled, 0) + c[6],
               coalesce(b.recovered, 0) + c[7], coalesce(b.recovered_micros, 0) + c[8],
               insights_hist_add(coalesce(b.duration, '{}'), d_bins, d_ns),
               insights_hist_add(coalesce(b.queue, '{}'), q_bins, q_ns)
        FROM unnest(ps) AS p(id) LEFT JOIN LATERAL (
            SELECT * FROM run_insights_totals t
            WHERE t.enterprise_id = e AND t.pipeline_id = p.id AND t.at < d
            ORDER BY t.at DESC LIMIT 1) AS b ON true
        WHERE NOT EXISTS (SELECT FROM run_insights_totals t
                          WHERE t.enterprise_id = e AND t.pipeline_id = p.id AND t.at = d);
    END IF;
    IF gone THEN
        DELETE FROM run_insights_totals AS t
        USING unnest(ps) AS p(id) LEFT JOIN LATERAL (
            SELECT * FROM run_insights_totals b
            WHERE b.enterprise_id = e AND b.pipeline_id = p.id AND b.at < d
            ORDER BY b.at DESC LIMIT 1) AS b ON true
        WHERE t.enterprise_id = e AND t.pipeline_id = p.id AND t.at = d
          AND (t.created, t.success, t.failure, t.timeout, t.invalid, t.cancelled,
               t.recovered, t.recovered_micros, t.duration, t.queue)
              = (coalesce(b.created, 0), coalesce(b.success, 0), coalesce(b.failure, 0),
                 coalesce(b.timeout, 0), coalesce(b.invalid, 0), coalesce(b.cancelled, 0),
                 coalesce(b.recovered, 0), coalesce(b.recovered_micros, 0),
                 coalesce(b.duration, '{}'), coalesce(b.queue, '{}'));
    END IF;
END
$$;

-- A pipeline's running totals from the period of `since` on rebuilt from run_insights and
-- run_recoveries (whole: replay's repair, migration 0007's fill; from its batch's first
-- period: the seeder's bulk load), period by period in order (each add then writes one
-- row, carrying over the one before).
CREATE OR REPLACE FUNCTION run_insights_totals_rebuild(e text, p uuid,
                                                       since timestamptz DEFAULT '-infinity')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    IF isfinite(since) THEN
        since := insights_period(since);
    END IF;
    DELETE FROM run_insights_totals WHERE enterprise_id = e AND pipeline_id = p AND at >= since;
    FOR k IN
        SELECT u.at, array_agg(u.metric) AS metrics, array_agg(u.bin) AS bins,
               array_agg(u.n) AS ns
        FROM (SELECT insights_period(i.hour) AS at,
                     i.metric, i.bin, sum(i.n)::bigint AS n
              FROM run_insights i
              WHERE i.enterprise_id = e AND i.hour >= since
                AND (i.pipeline_id = p OR p = '00000000-0000-0000-0000-000000000000')
              GROUP BY 1, 2, 3
              UNION ALL
              SELECT r.at, m.metric, 0, m.n
              FROM (SELECT insights_period(r.recovered_at) AS at, count(*) AS n,
                           sum(insights_micros(r.recovered_at - r.failed_at))::bigint
                               AS micros
                    FROM run_recoveries r
                    WHERE r.enterprise_id = e AND r.recovered_at >= since
                      AND (r.pipeline_id = p OR p = '00000000-0000-0000-0000-000000000000')
                    GROUP BY 1) AS r,
                   LATERAL (VALUES ('recovered', r.n), ('recovered_micros', r.micros))
                       AS m(metric, n)) AS u
        WHERE u.n <> 0
        GROUP BY u.at ORDER BY u.at
    LOOP
        PERFORM run_insights_totals_add(e, ARRAY[p], k.at, k.metrics, k.bins, k.ns);
    END LOOP;
END
$$;

SELECT count(run_insights_totals_rebuild(p.enterprise_id, p.pipeline_id))
FROM (SELECT DISTINCT enterprise_id, pipeline_id FROM run_insights
      UNION
      SELECT DISTINCT enterprise_id, '00000000-0000-0000-0000-000000000000'::uuid
      FROM run_insights) AS p;
