-- run_heads (each run's last event version, the guard of per-run version uniqueness; see
-- schema.sql) on a database from before it existed: created and filled from the events.
-- Appends wait meanwhile (SHARE lock until the migration commits), and schema.sql, applied
-- in the same transaction right after, adds the trigger that keeps it from then on.
CREATE TABLE IF NOT EXISTS run_heads (
    enterprise_id text    NOT NULL,
    run_id        uuid    NOT NULL,
    version       integer NOT NULL,
    PRIMARY KEY (enterprise_id, run_id)
);
LOCK TABLE run_events IN SHARE MODE;
INSERT INTO run_heads (enterprise_id, run_id, version)
SELECT enterprise_id, run_id, max(version) FROM run_events GROUP BY enterprise_id, run_id
ON CONFLICT (enterprise_id, run_id) DO NOTHING;
