-- The insights' write path as notes and one pass per transaction (schema.sql:
-- run_insights_collect, run_insights_pass): the old per-row trigger's deltas function
-- goes. schema.sql, applied in the same transaction, adds the notes' triggers and replaces
-- run_insights_move; the projection's rows are the same, nothing to fill. No change goes
-- un-noted across the switch: creating the triggers waits for every transaction that
-- wrote pipeline_runs to end (their lock), and the new run_insights_move is visible only
-- to transactions that begin their writes after this one commits.
DROP FUNCTION IF EXISTS run_insight_deltas(pipeline_runs, pipeline_runs);
