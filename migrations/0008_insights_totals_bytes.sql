-- run_insights_totals' histograms (duration, queue) from int4[] to bytes (schema.sql): the
-- first nonzero bin, then each count from it to the last nonzero one, each a big-endian
-- int4; an empty array no bytes. Each row rewritten once; writers of pipeline_runs wait
-- meanwhile (SHARE lock until the migration commits), and schema.sql, applied in the same
-- transaction right after, replaces the functions that keep them.
LOCK TABLE pipeline_runs IN SHARE MODE;
CREATE OR REPLACE FUNCTION pg_temp.insights_hist_bytes(h integer[]) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(int4send(array_lower(h, 1))
                    || (SELECT string_agg(int4send(x), ''::bytea ORDER BY i)
                        FROM unnest(h) WITH ORDINALITY AS u(x, i)), '\x')
$$;
ALTER TABLE run_insights_totals
    ALTER COLUMN duration TYPE bytea USING pg_temp.insights_hist_bytes(duration),
    ALTER COLUMN queue TYPE bytea USING pg_temp.insights_hist_bytes(queue);
DROP FUNCTION IF EXISTS insights_hist_add(integer[], integer[], bigint[]);
