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
    PRIMARY KEY (enterprise_id, position),
    UNIQUE (enterprise_id, run_id, version)
);

-- Append-only, enforced by PostgreSQL itself (for every role, the service's included).
CREATE OR REPLACE FUNCTION run_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER IF EXISTS run_events_no_update_delete ON run_events;
CREATE TRIGGER run_events_no_update_delete BEFORE UPDATE OR DELETE ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_refuse_change();
DROP TRIGGER IF EXISTS run_events_no_truncate ON run_events;
CREATE TRIGGER run_events_no_truncate BEFORE TRUNCATE ON run_events
    FOR EACH STATEMENT EXECUTE FUNCTION run_events_refuse_change();

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
CREATE INDEX IF NOT EXISTS pipeline_runs_newest ON pipeline_runs (enterprise_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_pipeline ON pipeline_runs (enterprise_id, pipeline_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_status ON pipeline_runs (enterprise_id, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS pipeline_runs_deadline ON pipeline_runs (deadline)
    WHERE ended_at IS NULL;

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
