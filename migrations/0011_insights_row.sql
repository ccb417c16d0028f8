-- The insights' write path as one row trigger (schema.sql run_insights_row): the notes'
-- triggers and functions go (run_insights_collect, the deferred run_insights_move, the
-- pass). schema.sql, applied in the same transaction, adds the row trigger; the
-- projection's rows are the same, nothing to fill. No change is missed or moved twice
-- across the switch: dropping the triggers waits for every transaction that wrote
-- pipeline_runs to end (their ACCESS EXCLUSIVE lock), so each applied its notes at its own
-- commit, and every later write meets the row trigger only.
DROP TRIGGER IF EXISTS run_insights_insert_delete ON pipeline_runs;
DROP TRIGGER IF EXISTS run_insights_update ON pipeline_runs;
DROP TRIGGER IF EXISTS run_insights_collect_update ON pipeline_runs;
DROP TRIGGER IF EXISTS run_insights_collect_insert_delete ON pipeline_runs;
DROP FUNCTION IF EXISTS run_insights_move();
DROP FUNCTION IF EXISTS run_insights_collect();
DROP FUNCTION IF EXISTS run_insights_pass(run_insights_change[], boolean);
