-- run_events from before partitioning (a plain table with UNIQUE (enterprise_id, run_id,
-- version)) becomes the table partitioned by month of occurred_at, converted in place:
-- every row and position kept, the position sequence continuing after the old one.
-- Nothing to do on a database whose run_events is already partitioned.
--
-- A migration is history: it creates run_events as it was when it was partitioned, so it
-- keeps converting the same way whatever schema.sql becomes later (schema.sql, applied
-- after the migrations, brings the table up to date).
DO $$
DECLARE
    lo timestamptz;
    hi timestamptz;
    next_position bigint;
    month timestamp;
    name text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('run_events')
                   AND relkind = 'r') THEN
        RETURN;
    END IF;
    ALTER TABLE run_events RENAME TO run_events_unpartitioned;
    ALTER INDEX IF EXISTS run_events_pkey RENAME TO run_events_unpartitioned_pkey;
    ALTER INDEX IF EXISTS run_events_enterprise_id_run_id_version_key
        RENAME TO run_events_unpartitioned_version_key;
    ALTER SEQUENCE IF EXISTS run_events_position_seq
        RENAME TO run_events_unpartitioned_position_seq;

    CREATE TABLE run_events (
        position      bigint      GENERATED ALWAYS AS IDENTITY,
        id            uuid        NOT NULL DEFAULT gen_random_uuid(),
        enterprise_id text        NOT NULL,
        pipeline_id   uuid        NOT NULL,
        run_id        uuid        NOT NULL,
        version       integer     NOT NULL,
        type          text        NOT NULL,
        from_status   text,
        to_status     text,
        actor         text        NOT NULL,
        actor_id      bigint,
        occurred_at   timestamptz NOT NULL,
        data          jsonb       NOT NULL DEFAULT '{}',
        PRIMARY KEY (enterprise_id, position, occurred_at)
    ) PARTITION BY RANGE (occurred_at);
    CREATE INDEX run_events_by_run ON run_events (enterprise_id, run_id, version);

    SELECT min(occurred_at), max(occurred_at), max(position) + 1
    INTO lo, hi, next_position FROM run_events_unpartitioned;
    IF lo IS NOT NULL THEN
        -- The old rows' months (schema.sql adds the TRUNCATE guards and the months ahead).
        month := date_trunc('month', lo AT TIME ZONE 'UTC');
        WHILE month <= date_trunc('month', hi AT TIME ZONE 'UTC') LOOP
            name := 'run_events_' || to_char(month, '"y"YYYY"m"MM');
            EXECUTE format('CREATE TABLE %I PARTITION OF run_events FOR VALUES FROM (%L) TO (%L)',
                           name, month AT TIME ZONE 'UTC',
                           (month + interval '1 month') AT TIME ZONE 'UTC');
            month := month + interval '1 month';
        END LOOP;
        INSERT INTO run_events OVERRIDING SYSTEM VALUE
        SELECT position, id, enterprise_id, pipeline_id, run_id, version, type, from_status,
               to_status, actor, actor_id, occurred_at, data
        FROM run_events_unpartitioned ORDER BY position;
        EXECUTE format('ALTER TABLE run_events ALTER COLUMN position RESTART WITH %s',
                       next_position);
    END IF;
    DROP TABLE run_events_unpartitioned;
END
$$;
