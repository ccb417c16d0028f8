-- The insights' running totals hold closed periods only (schema.sql run_insights_closed):
-- each enterprise with totals gets the current period's start as its watermark, and its
-- rows at or after it (the current, still open period's, and any later one a run's future
-- time made) go: answers read those periods from run_insights and run_recoveries, which
-- hold them already. schema.sql, applied in the same transaction, makes the write path
-- leave periods from the watermark on alone. Writes wait meanwhile (SHARE lock until the
-- migration commits): none adds to a row this drops by the old rule.
CREATE TABLE IF NOT EXISTS run_insights_closed (
    enterprise_id text        PRIMARY KEY,
    through       timestamptz NOT NULL
);
LOCK TABLE pipeline_runs IN SHARE MODE;
INSERT INTO run_insights_closed (enterprise_id, through)
SELECT DISTINCT enterprise_id, date_bin('6 hours', now(), timestamptz '2000-01-01 00:00Z')
FROM run_insights_totals
ON CONFLICT (enterprise_id) DO NOTHING;
DELETE FROM run_insights_totals t USING run_insights_closed c
WHERE t.enterprise_id = c.enterprise_id AND t.at >= c.through;
