-- run_counts (live runs per pipeline and status) on a database from before it existed:
-- created and filled from the projection; writers of pipeline_runs wait meanwhile, so no
-- change is counted twice or missed.
DO $$
BEGIN
    IF to_regclass('run_counts') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE TABLE run_counts (
        enterprise_id text   NOT NULL,
        pipeline_id   uuid   NOT NULL,
        status        text   NOT NULL,
        n             bigint NOT NULL,
        PRIMARY KEY (enterprise_id, pipeline_id, status)
    );
    LOCK TABLE pipeline_runs IN SHARE MODE;
    INSERT INTO run_counts (enterprise_id, pipeline_id, status, n)
    SELECT enterprise_id, pipeline_id, status, count(*) FROM pipeline_runs
    GROUP BY enterprise_id, pipeline_id, status;
END
$$;
