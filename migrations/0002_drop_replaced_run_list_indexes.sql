-- Run-list indexes replaced by the status-segmented reads (store/run_lists.py):
-- pipeline_runs_newest by the (enterprise_id, status, ...) family, and
-- pipeline_runs_by_pipeline, a prefix of pipeline_runs_pipeline_status.
DROP INDEX IF EXISTS pipeline_runs_newest;
DROP INDEX IF EXISTS pipeline_runs_by_pipeline;
