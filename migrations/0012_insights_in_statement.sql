-- The insights' upkeep moves into the writing statements (schema.sql run_insights_rest,
-- service/store/append.py INSIGHTS): the row trigger stays for the writers that ask for it
-- (insights.by_trigger: replay's patches) and schema.sql, applied in the same
-- transaction, makes both triggers again with that condition; the projection's rows are
-- the same, nothing to fill. Dropping them waits for every transaction that wrote
-- pipeline_runs to end (their ACCESS EXCLUSIVE lock). Service processes of an older
-- release must be stopped first: their statements carry no upkeep of their own, and
-- their writes would no longer move the insights (verify would name the drift, replay
-- repairs it).
DROP TRIGGER IF EXISTS run_insights_row_update ON pipeline_runs;
DROP TRIGGER IF EXISTS run_insights_row_insert_delete ON pipeline_runs;
