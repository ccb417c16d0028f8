-- A 1M-run database from a 100,000-run seed, in minutes (bench only; see docs/performance.md
-- "Replay and seed"): the seeded enterprise 'e' copied under e1..e9, every table the scan
-- reads, with triggers off (session_replication_role = replica: the copies are made
-- consistent by hand, so replay and the projection checks of verify find them clean; the
-- copies' hash chains do not verify, having no heads). Positions are new, in the original's
-- order.
--   python -m service seed --enterprise e --runs 100000 --pipelines 50 --batch 10000
--   psql -d DB -f bench/copy_enterprises.sql && psql -d DB -c 'VACUUM ANALYZE'
SET session_replication_role = replica;
SET maintenance_work_mem = '512MB';
DO $$
DECLARE k int; e text;
BEGIN
  FOR k IN 1..9 LOOP
    e := 'e' || k;
    INSERT INTO pipelines SELECT (jsonb_populate_record(p, jsonb_build_object('enterprise_id', e))).* FROM pipelines p WHERE enterprise_id = 'e';
    INSERT INTO stages SELECT (jsonb_populate_record(s, jsonb_build_object('enterprise_id', e))).* FROM stages s WHERE enterprise_id = 'e';
    INSERT INTO run_events (enterprise_id, pipeline_id, run_id, version, type, from_status, to_status, actor, actor_id, occurred_at, data, chain_hash)
      SELECT e, pipeline_id, run_id, version, type, from_status, to_status, actor, actor_id, occurred_at, data, chain_hash
      FROM run_events WHERE enterprise_id = 'e' ORDER BY position;
    INSERT INTO pipeline_runs SELECT (jsonb_populate_record(r, jsonb_build_object('enterprise_id', e))).* FROM pipeline_runs r WHERE enterprise_id = 'e';
    INSERT INTO stage_runs SELECT (jsonb_populate_record(r, jsonb_build_object('enterprise_id', e))).* FROM stage_runs r WHERE enterprise_id = 'e';
    INSERT INTO run_counts SELECT (jsonb_populate_record(r, jsonb_build_object('enterprise_id', e))).* FROM run_counts r WHERE enterprise_id = 'e';
    INSERT INTO run_insights SELECT (jsonb_populate_record(r, jsonb_build_object('enterprise_id', e))).* FROM run_insights r WHERE enterprise_id = 'e';
    INSERT INTO run_recoveries SELECT (jsonb_populate_record(r, jsonb_build_object('enterprise_id', e))).* FROM run_recoveries r WHERE enterprise_id = 'e';
    INSERT INTO run_heads SELECT (jsonb_populate_record(r, jsonb_build_object('enterprise_id', e))).* FROM run_heads r WHERE enterprise_id = 'e';
    RAISE NOTICE 'copy % done at %', k, clock_timestamp();
  END LOOP;
END $$;
