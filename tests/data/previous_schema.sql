-- pipeline-runs schema: the only DDL of the service. Idempotent: `python -m service migrate`
-- (and `serve` on start) applies it as a whole, any number of times.
--
-- Every table carries enterprise_id and every primary key / unique constraint of tenant
-- data includes it, so the tables can be distributed by enterprise_id later (Citus).

CREATE TABLE IF NOT EXISTS api_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enterprise_id text        NOT NULL,
    name          text        NOT NULL,
    -- sha256 of the token: the token itself is never stored.
    token_hash    bytea       NOT NULL UNIQUE,
    scopes        text[]      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE IF NOT EXISTS pipelines (
    enterprise_id   text        NOT NULL,
    id              uuid        NOT NULL,
    name            text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    timeout_seconds integer,
    is_active       boolean     NOT NULL DEFAULT true,
    is_default      boolean     NOT NULL DEFAULT false,
    -- Run numbers are handed out by incrementing this under the row lock, so they are
    -- 1..n per pipeline with no gap even under concurrent creates.
    last_run_number integer     NOT NULL DEFAULT 0,
    last_stage_ordinal integer  NOT NULL DEFAULT 0,
    created_by      bigint,
    updated_by      bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    PRIMARY KEY (enterprise_id, id)
);
CREATE INDEX IF NOT EXISTS pipelines_by_name ON pipelines (enterprise_id, name, id)
    WHERE deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS stages (
    enterprise_id   text        NOT NULL,
    id              uuid        NOT NULL,
    pipeline_id     uuid        NOT NULL,
    name            text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    timeout_seconds integer,
    ordinal         integer     NOT NULL,
    created_by      bigint,
    updated_by      bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise_id, id),
    FOREIGN KEY (enterprise_id, pipeline_id) REFERENCES pipelines (enterprise_id, id)
);
CREATE INDEX IF NOT EXISTS stages_by_pipeline ON stages (enterprise_id, pipeline_id, ordinal);

-- The event store: one immutable row per change of a run. The source of truth.
--
-- Growth: run_events is partitioned by month of occurred_at (native range partitioning),
-- so old months can be archived whole (see "Archiving old events" at the end of this file)
-- and no index grows without bound. Partitions are created ahead: by every migration (this
-- month and the next three) and by the sweeper loop of every service process
-- (store/partitions.py), so an append never meets a month without its partition. There is
-- deliberately no DEFAULT partition: rows parked there would have to be moved (deleted,
-- which the append-only rule forbids) before their month's partition could be created.
--
-- Keys. A unique index of a partitioned table must contain the partition key, so:
-- - the primary key is (enterprise_id, position, occurred_at); position alone is unique
--   anyway (one identity sequence), and the key's (enterprise_id, position) prefix serves
--   the change feed, which merges the partitions in position order.
-- - (enterprise_id, run_id, version) can no longer be a UNIQUE constraint (the same version
--   in two months would not collide). Version uniqueness is guaranteed by the write path
--   instead: every append of a run happens under the lock of the run's projection row
--   (FOR UPDATE, or the INSERT of a fresh run id for version 1), and writes version =
--   row version + 1 in the transaction that bumps the row, so two appends of one run are
--   serialized and can never write the same version; after run.deleted there is no row, so
--   nothing can append to the run again. `python -m service verify` (and replay) check it
--   independently: a run whose versions are not consecutive is reported as a drift. The
--   index below is the same key, non-unique: history, as_of and replay read by it.
--
-- A table from before partitioning is converted in place, rows and positions kept: it is
-- renamed out of the way here, and copied into the partitions further down.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('run_events') AND relkind = 'r') THEN
        ALTER TABLE run_events RENAME TO run_events_unpartitioned;
        ALTER INDEX IF EXISTS run_events_pkey RENAME TO run_events_unpartitioned_pkey;
        ALTER INDEX IF EXISTS run_events_enterprise_id_run_id_version_key
            RENAME TO run_events_unpartitioned_version_key;
        ALTER SEQUENCE IF EXISTS run_events_position_seq
            RENAME TO run_events_unpartitioned_position_seq;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS run_events (
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
CREATE INDEX IF NOT EXISTS run_events_by_run ON run_events (enterprise_id, run_id, version);

-- Append-only, enforced by PostgreSQL itself (for every role, the service's included). The
-- row triggers of the partitioned table are cloned onto every partition, present and
-- future; TRUNCATE triggers are not, so each partition gets its own.
CREATE OR REPLACE FUNCTION run_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER run_events_no_update_delete BEFORE UPDATE OR DELETE ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_refuse_change();
CREATE OR REPLACE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON run_events
    FOR EACH STATEMENT EXECUTE FUNCTION run_events_refuse_change();

-- The partitions of every month that meets [from_at, to_at] (UTC months), created when
-- missing, each with its TRUNCATE guard; returns how many were created. Safe to call from
-- many processes at once (advisory lock 1705). Creating a partition locks run_events
-- exclusively for a moment, so callers outside migrations set a lock_timeout and try again
-- later (partitions are made months ahead, a failed attempt costs nothing).
CREATE OR REPLACE FUNCTION run_events_ensure_partitions(from_at timestamptz, to_at timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month timestamp := date_trunc('month', from_at AT TIME ZONE 'UTC');
    last_month timestamp := date_trunc('month', to_at AT TIME ZONE 'UTC');
    name text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(1705);
    WHILE month <= last_month LOOP
        name := 'run_events_' || to_char(month, '"y"YYYY"m"MM');
        IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = 'run_events'::regclass AND c.relname = name) THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF run_events FOR VALUES FROM (%L) TO (%L)',
                           name, month AT TIME ZONE 'UTC',
                           (month + interval '1 month') AT TIME ZONE 'UTC');
            EXECUTE format('CREATE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION run_events_refuse_change()', name);
            created := created + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN created;
END
$$;

-- Every partition keeps its TRUNCATE guard (partitions made by hand or restored included).
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'run_events'::regclass LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION run_events_refuse_change()', part);
    END LOOP;
END
$$;

-- The conversion's second half: the old rows, positions included, into their partitions;
-- the position sequence continues after the old one.
DO $$
DECLARE
    lo timestamptz;
    hi timestamptz;
    next_position bigint;
BEGIN
    IF to_regclass('run_events_unpartitioned') IS NULL THEN
        RETURN;
    END IF;
    SELECT min(occurred_at), max(occurred_at), max(position) + 1
    INTO lo, hi, next_position FROM run_events_unpartitioned;
    IF lo IS NOT NULL THEN
        PERFORM run_events_ensure_partitions(lo, hi);
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

SELECT run_events_ensure_partitions(now(), now() + interval '3 months');

-- The projection the API reads: one row per live run, derived from run_events only.
CREATE TABLE IF NOT EXISTS pipeline_runs (
    enterprise_id text        NOT NULL,
    id            uuid        NOT NULL,
    pipeline_id   uuid        NOT NULL,
    run_number    integer     NOT NULL,
    status        text        NOT NULL,
    status_meta   jsonb       NOT NULL DEFAULT '{}',
    created_by    bigint,
    updated_by    bigint,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    started_at    timestamptz,
    ended_at      timestamptz,
    version       integer     NOT NULL,
    -- created_at + the pipeline's timeout at creation; the sweeper times out runs past it.
    deadline      timestamptz NOT NULL,
    PRIMARY KEY (enterprise_id, id),
    UNIQUE (enterprise_id, pipeline_id, run_number)
);
-- List indexes (store/run_lists.py). A list reads one ordered index range per segment (a
-- status, or a pipeline and a status, and for started_at/ended_at the non-NULL and the NULL
-- part) and merges the segments' first rows, so two families of four orders cover every
-- ordering x filter: (enterprise, status, <order>) and (enterprise, pipeline, status,
-- <order>). The status ordering needs no index of its own (its segments are the statuses,
-- in lifecycle order), nor do NULLS LAST orders (the NULL part is its own segment, read
-- by id from the same index). The unique (enterprise_id, pipeline_id, run_number) above
-- serves run_number and pipeline__name orders within a pipeline.
DROP INDEX IF EXISTS pipeline_runs_newest;       -- replaced by the status-segmented reads
DROP INDEX IF EXISTS pipeline_runs_by_pipeline;  -- a prefix of pipeline_runs_pipeline_status
CREATE INDEX IF NOT EXISTS pipeline_runs_by_status
    ON pipeline_runs (enterprise_id, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS pipeline_runs_status_number
    ON pipeline_runs (enterprise_id, status, run_number, created_at, id);
CREATE INDEX IF NOT EXISTS pipeline_runs_status_started
    ON pipeline_runs (enterprise_id, status, started_at, id);
CREATE INDEX IF NOT EXISTS pipeline_runs_status_ended
    ON pipeline_runs (enterprise_id, status, ended_at, id);
CREATE INDEX IF NOT EXISTS pipeline_runs_pipeline_status
    ON pipeline_runs (enterprise_id, pipeline_id, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS pipeline_runs_pipeline_status_number
    ON pipeline_runs (enterprise_id, pipeline_id, status, run_number);
CREATE INDEX IF NOT EXISTS pipeline_runs_pipeline_status_started
    ON pipeline_runs (enterprise_id, pipeline_id, status, started_at, id);
CREATE INDEX IF NOT EXISTS pipeline_runs_pipeline_status_ended
    ON pipeline_runs (enterprise_id, pipeline_id, status, ended_at, id);
-- updated_after / updated_before: a narrow range is read from here (store/run_lists.py);
-- created_ ranges use the (enterprise_id, status, created_at) indexes above.
CREATE INDEX IF NOT EXISTS pipeline_runs_updated ON pipeline_runs (enterprise_id, updated_at);
CREATE INDEX IF NOT EXISTS pipeline_runs_deadline ON pipeline_runs (deadline)
    WHERE ended_at IS NULL;

-- Projection: how many live runs each pipeline has in each status, so a list's `count`
-- costs a few rows instead of a COUNT(*) over up to millions. Maintained by the same
-- statement/transaction as every write of pipeline_runs (store/runs.py, store/changes.py,
-- replay's patches), as +1/-1 deltas; replay rebuilds it from the fold and verify reports
-- a counter that differs from the fold. Runs of soft-deleted pipelines stay counted here
-- (as they stay in pipeline_runs); readers join the live pipelines.
--
-- Contention: a counter row is shared by every run of its pipeline and status, but it is
-- only ever written by a transaction that holds its enterprise's feed lock (the delta is
-- taken right after that lock, in the same statement as the event append). The feed lock
-- already serializes an enterprise's appends until commit, so counter rows add no waiting
-- and no deadlock: whoever holds a counter row holds the feed lock and waits for nothing.
-- Created with a backfill from pipeline_runs when it does not exist yet (writers wait).
DO $$
BEGIN
    IF to_regclass('run_counts') IS NULL THEN
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
    END IF;
END
$$;

-- Projection: the stage runs of each live run, a snapshot of the pipeline's stages taken
-- when the run was created (carried in its run.created event).
CREATE TABLE IF NOT EXISTS stage_runs (
    enterprise_id   text        NOT NULL,
    id              uuid        NOT NULL,
    run_id          uuid        NOT NULL,
    pipeline_id     uuid        NOT NULL,
    stage_id        uuid        NOT NULL,
    ordinal         integer     NOT NULL,
    stage_meta      jsonb       NOT NULL,
    timeout_seconds integer     NOT NULL,
    status          text        NOT NULL,
    created_by      bigint,
    updated_by      bigint,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    started_at      timestamptz,
    ended_at        timestamptz,
    PRIMARY KEY (enterprise_id, id),
    UNIQUE (enterprise_id, run_id, ordinal)
);
CREATE INDEX IF NOT EXISTS stage_runs_running ON stage_runs (started_at)
    WHERE status = 'running';

-- Idempotency-Key of POSTs: the first successful response, replayed for 24 hours. The row
-- is claimed and its response stored in the transaction of the write it protects.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    enterprise_id text        NOT NULL,
    key           text        NOT NULL,
    method        text        NOT NULL,
    path          text        NOT NULL,
    -- sha256 of the operation, its path parameters and the canonical JSON body.
    fingerprint   bytea       NOT NULL,
    status        integer,
    headers       jsonb,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

-- Archiving old events. run_events is append-only: a month leaves whole, never row by row.
--   1. Choose a month M older than the retention horizon, archiving oldest first. No live
--      run may have been created before M ends: replay folds what is left, and a live run
--      whose run.created were archived would be dropped from the projection. Feed
--      consumers must be past M's positions.
--        SELECT count(*) FROM pipeline_runs WHERE created_at < '2024-02-01Z';  -- must be 0
--   2. ALTER TABLE run_events DETACH PARTITION run_events_y2024m01 CONCURRENTLY;
--   3. pg_dump --format=custom --table=run_events_y2024m01 \
--          --file=run_events_y2024m01.dump "$DATABASE_URL"
--      (check it with pg_restore --list; keep it with the audit archives)
--   4. DROP TABLE run_events_y2024m01;
--   To read it again: pg_restore into a scratch database, or into this one followed by
--   ALTER TABLE run_events ATTACH PARTITION run_events_y2024m01
--       FOR VALUES FROM ('2024-01-01Z') TO ('2024-02-01Z');
--   (the next migration gives it back its TRUNCATE guard).
-- Deleted runs whose first months are archived fold to nothing, as they should; their
-- history and as_of answer from the months that remain.

-- Citus readiness. Every tenant table is keyed by enterprise_id: each primary key and
-- unique constraint includes it (tests/test_scale_features.py checks the catalogue) and
-- every statement of the service filters on enterprise_id = $1, so a statement, the
-- multi-table CTE writes included, runs on the one node holding that enterprise.
-- The plan:
--   SELECT create_reference_table('api_tokens');  -- exception: looked up by token hash,
--                                                  -- before the enterprise is known
--   SELECT create_distributed_table('pipelines', 'enterprise_id');
--   SELECT create_distributed_table('stages', 'enterprise_id', colocate_with => 'pipelines');
--   SELECT create_distributed_table('pipeline_runs', 'enterprise_id', colocate_with => 'pipelines');
--   SELECT create_distributed_table('stage_runs', 'enterprise_id', colocate_with => 'pipelines');
--   SELECT create_distributed_table('run_counts', 'enterprise_id', colocate_with => 'pipelines');
--   SELECT create_distributed_table('run_events', 'enterprise_id', colocate_with => 'pipelines');
--   SELECT create_distributed_table('idempotency_keys', 'enterprise_id', colocate_with => 'pipelines');
-- (run_events stays partitioned by month: Citus distributes each partition alike.)
-- To settle before switching: (1) NOTIFY from a worker does not reach LISTENers on the
-- coordinator, so long-polling feed readers need a polling fallback; (2) run_events.position
-- must then be taken under the feed lock on the worker (a per-enterprise counter row), not
-- from a sequence the coordinator evaluates before routing, or position order stops being
-- commit order and the feed loses its gap safety; (3) the replay/verify scan reads across
-- all enterprises: run it per node or per enterprise.
