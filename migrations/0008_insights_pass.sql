-- The insights' write path as notes and one pass per transaction (schema.sql:
-- run_insights_collect, run_insights_pass, run_insights_totals_apply): the per-row
-- deltas function of the old trigger goes. schema.sql, applied in the same transaction,
-- adds the new functions and triggers and replaces run_insights_move.
DROP FUNCTION IF EXISTS run_insight_deltas(pipeline_runs, pipeline_runs);
