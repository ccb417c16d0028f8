-- pipeline-runs schema: the current schema, the only DDL of the service besides migrations/.
--
-- `python -m service migrate` (and `serve` on start; service/store/meta.py) applies it:
-- - to a fresh database: this file, and every file of migrations/ is recorded as applied
--   (in schema_migrations, the migrator's own table);
-- - to an existing one: first the migrations it has not had yet, in order, each recorded
--   so it runs once (conversions of older databases live there, not here), then this
--   file again. So this file stays idempotent (IF NOT EXISTS, OR REPLACE): re-applied, it
--   only adds what is missing, makes partitions ahead and restores guards.
-- All of it in one transaction, under an advisory lock: processes starting together take
-- turns, and a failed migration leaves the database as it was.
-- A change of schema: edit this file, and add a migration when existing databases need
-- more than this file's IF NOT EXISTS can give them (a new column, a backfill, a drop).
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
-- Requests/s of this token (create-token --rate-limit N); NULL: RATE_LIMIT_RPS; 0: none.
-- Added after the table's first release, hence ALTER (a no-op once applied).
ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS rate_limit integer
    CHECK (rate_limit >= 0);

-- Sign-ins of the /ui/ pages (service/app/ui_sessions.py): the cookie holds a random id,
-- this row the token it signed in with. Sign-out deletes the row, so a copied cookie ends
-- with it; a revoked token ends its sessions (joined on every page).
-- Found by the cookie's hash alone, like api_tokens: a reference table under Citus.
CREATE TABLE IF NOT EXISTS ui_sessions (
    id_hash       bytea       PRIMARY KEY,  -- sha256 of the cookie's session id
    enterprise_id text        NOT NULL,
    token_id      bigint      NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    expires_at    timestamptz NOT NULL
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
-- - (enterprise_id, run_id, version) cannot be a UNIQUE constraint here (the same version
--   in two months would not collide). Its uniqueness is guaranteed by run_heads below: a
--   plain table keyed by run, moved by a trigger on every append, whatever the writer.
--   (The write path also appends under the lock of the run's projection row, version =
--   row version + 1, so it never meets the guard; `python -m service verify` and replay
--   check versions again, for databases restored without triggers.) The index below is
--   the same key, non-unique: history, as_of and replay read by it.

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
    chain_hash    bytea,      -- the enterprise's hash chain at this event (see below)
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
-- SECURITY DEFINER: the runtime role (store/roles.py) owns nothing, yet its sweeper makes
-- the months ahead; the partitions belong to the owner. search_path is fixed, pg_temp last,
-- so no caller's temporary table or schema can stand in for run_events.
CREATE OR REPLACE FUNCTION run_events_ensure_partitions(from_at timestamptz, to_at timestamptz)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
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
-- Only the owner and the runtime role (granted by migrate) may call it.
REVOKE EXECUTE ON FUNCTION run_events_ensure_partitions(timestamptz, timestamptz) FROM PUBLIC;

-- Planner statistics where autovacuum keeps none (autovacuum = off in the cluster, or a
-- table's autovacuum_enabled = false): ANALYZE the first table of the schema that
-- autovacuum would have analyzed by now, by autovacuum's own rule (more rows changed since
-- its last analysis than autovacuum_analyze_threshold + autovacuum_analyze_scale_factor x
-- its rows; the cluster's settings), and no more often than autovacuum would (once an
-- autovacuum_naptime; a table never analyzed at once). Leaf tables only, as autovacuum:
-- run_events' partitions, not the partitioned parent. Returns the table analyzed, NULL
-- when none is due or another caller is at it (advisory lock 1706); one table a call, so
-- each call's transaction and locks stay short (the caller calls again). Why the service cares: a
-- table never analyzed gives the planner no row counts per enterprise or pipeline, and it
-- then reads a run by any index that starts with enterprise_id (all of its pipeline's
-- entries) as readily as by the primary key (docs/performance.md, "Planner statistics").
-- ANALYZE samples at most 30,000 rows a table and takes SHARE UPDATE EXCLUSIVE, which
-- blocks no read or write. SECURITY DEFINER: only a table's owner may analyze it and the
-- runtime role owns nothing; search_path fixed, pg_temp last, as above.
CREATE OR REPLACE FUNCTION service_analyze_stale() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    due regclass;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1706) THEN
        RETURN NULL;
    END IF;
    SELECT c.oid::regclass INTO due
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
      AND c.relowner = current_user::regrole  -- (the definer: only its own tables)
      AND (current_setting('autovacuum')::boolean IS FALSE
           OR EXISTS (SELECT FROM pg_options_to_table(c.reloptions) o
                      WHERE o.option_name = 'autovacuum_enabled'
                        AND o.option_value::boolean IS FALSE))
      AND s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
          + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)
      AND coalesce(greatest(s.last_analyze, s.last_autoanalyze), '-infinity')
          < now() - current_setting('autovacuum_naptime')::interval
    ORDER BY s.n_mod_since_analyze DESC, c.oid
    LIMIT 1;
    IF due IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('ANALYZE %s', due);
    RETURN due::text;
END
$$;
REVOKE EXECUTE ON FUNCTION service_analyze_stale() FROM PUBLIC;

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

SELECT run_events_ensure_partitions(now(), now() + interval '3 months');

-- Per-run versions: (enterprise_id, run_id, version) is unique, and versions are 1..n with
-- no gap, guaranteed here rather than by the write path alone. run_events cannot have that
-- unique index (see Keys above), so run_heads, a plain table, holds each run's last
-- version under its primary key, and a trigger on every append (BEFORE INSERT, cloned
-- onto every partition; COPY included) moves it: version 1 inserts the head (refused if
-- the run has one), version v > 1 moves it from v - 1 to v (refused otherwise). A
-- duplicate or a gap is refused with unique_violation and its whole statement rolls back.
-- Two appends of one version race on the head row: the second waits for the first and
-- then finds the head moved on. The write path already holds the run's projection row, so
-- the head row adds no wait to it; the cost is one small HOT update per event. Heads of
-- deleted runs stay, so their versions stay guarded too. Only writes that skip triggers
-- (pg_restore, session_replication_role = replica) bypass it: verify still checks.
-- The trigger is SECURITY DEFINER: the runtime role may only read run_heads, so it cannot
-- delete a head and append a run's version 1 again.
CREATE TABLE IF NOT EXISTS run_heads (
    enterprise_id text    NOT NULL,
    run_id        uuid    NOT NULL,
    version       integer NOT NULL,
    PRIMARY KEY (enterprise_id, run_id)
);
CREATE OR REPLACE FUNCTION run_events_take_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NEW.version = 1 THEN
        INSERT INTO run_heads (enterprise_id, run_id, version)
        VALUES (NEW.enterprise_id, NEW.run_id, 1)
        ON CONFLICT (enterprise_id, run_id) DO NOTHING;
    ELSE
        UPDATE run_heads SET version = NEW.version
        WHERE enterprise_id = NEW.enterprise_id AND run_id = NEW.run_id
          AND version = NEW.version - 1;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run_events: version % of run % is not the next version',
            NEW.version, NEW.run_id USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER run_events_version_is_next BEFORE INSERT ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_take_version();

-- Tamper evidence (docs/audit-chain.md): every enterprise's events form a hash chain.
-- Each event's chain_hash = sha256(previous chain_hash of its enterprise || its canonical
-- bytes), the first event's previous hash being 32 zero bytes, in position order. The
-- canonical bytes are defined HERE only (migrations/0006_event_chain.sql holds a verbatim
-- copy, checked by tests/test_audit_chain.py): a version line, then each field as
-- "<byte length>:<UTF-8 text>\n", a NULL as "-\n". A trigger (BEFORE INSERT, cloned onto
-- every partition, COPY included) chains each appended row, so every writer (the
-- statement's append, a group commit's, the seeder's COPY) goes through this one
-- definition, row after row in position order. event_chain_heads holds each enterprise's
-- head; the row is only written under the enterprise's feed lock (store/locks.py), which
-- the append already holds, so it adds no wait. An append out of position order (a writer
-- without the feed lock) is refused rather than chained wrongly.
CREATE TABLE IF NOT EXISTS event_chain_heads (
    enterprise_id text   PRIMARY KEY,
    position      bigint NOT NULL,
    events        bigint NOT NULL,
    chain_hash    bytea  NOT NULL
);
-- One field of the canonical bytes: "<byte length>:<text>\n", or "-\n" for a NULL.
CREATE OR REPLACE FUNCTION run_event_field(f text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE WHEN f IS NULL THEN '-' ELSE octet_length(f) || ':' || f END || E'\n'
$$;
CREATE OR REPLACE FUNCTION run_event_canonical(
    pos bigint, id uuid, enterprise_id text, pipeline_id uuid, run_id uuid,
    version integer, type text, from_status text, to_status text, actor text,
    actor_id bigint, occurred_at timestamptz, data jsonb) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT convert_to(E'pipeline-runs event v1\n' || run_event_field(pos::text)
    || run_event_field(id::text) || run_event_field(enterprise_id)
    || run_event_field(pipeline_id::text) || run_event_field(run_id::text)
    || run_event_field(version::text) || run_event_field(type)
    || run_event_field(from_status) || run_event_field(to_status) || run_event_field(actor)
    || run_event_field(actor_id::text)
    || run_event_field(to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    || run_event_field(data::text), 'UTF8')
$$;
-- Each row: its previous hash is the head's (the chain's cost on the write path is mostly
-- here, so it is kept to one query per enterprise and transaction): the first row a
-- transaction appends to an enterprise moves the enterprise's head in ONE statement that
-- reads the previous hash and writes the new one (a PUT's whole chain cost, no statement
-- trigger function runs after it); later rows of the same transaction chain from the hash
-- it last chained, kept in a transaction-local setting per enterprise
-- (`position:events:hash`, `:lag` appended while the head is behind), and leave the head
-- row to the statement's end (below), so a COPY of many events does not update one row
-- many times over. A savepoint rolled back takes its settings back with its rows.
-- Both chain functions are SECURITY DEFINER (as run_events_take_version above): the runtime
-- role may only read event_chain_heads, so it cannot move or delete a head by hand.
CREATE OR REPLACE FUNCTION run_events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    slot text := 'pipeline_runs.chain_' || md5(NEW.enterprise_id);
    cached text := current_setting(slot, true);
    parts text[];
    lag text := '';
    n bigint;
    canon bytea;
BEGIN
    -- The row's canonical bytes, one expression for every path: PL/pgSQL builds its
    -- evaluation once a transaction and keeps it for the transaction's later rows, where
    -- the head's UPDATE would build it again at every execution (one per enterprise of a
    -- group commit's statement: ~4 µs an event measured, docs/performance.md).
    canon := run_event_canonical(
        NEW.position, NEW.id, NEW.enterprise_id, NEW.pipeline_id, NEW.run_id,
        NEW.version, NEW.type, NEW.from_status, NEW.to_status, NEW.actor,
        NEW.actor_id, NEW.occurred_at, NEW.data);
    IF coalesce(cached, '') = '' THEN
        UPDATE event_chain_heads h SET position = NEW.position, events = h.events + 1,
            chain_hash = sha256(h.chain_hash || canon)
        WHERE h.enterprise_id = NEW.enterprise_id AND h.position < NEW.position
        RETURNING h.events, h.chain_hash INTO n, NEW.chain_hash;
        IF NOT FOUND THEN  -- the enterprise's first event, or a writer without the feed lock
            n := 1;
            NEW.chain_hash := sha256('\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
                || canon);
            INSERT INTO event_chain_heads (enterprise_id, position, events, chain_hash)
            VALUES (NEW.enterprise_id, NEW.position, 1, NEW.chain_hash)
            ON CONFLICT (enterprise_id) DO NOTHING;
            IF NOT FOUND THEN
                PERFORM run_events_chain_behind(NEW.enterprise_id, NEW.position,
                    (SELECT h.position FROM event_chain_heads h
                     WHERE h.enterprise_id = NEW.enterprise_id));
            END IF;
        END IF;
    ELSE
        parts := string_to_array(cached, ':');
        IF parts[1]::bigint >= NEW.position THEN
            PERFORM run_events_chain_behind(NEW.enterprise_id, NEW.position, parts[1]::bigint);
        END IF;
        n := parts[2]::bigint + 1;
        NEW.chain_hash := sha256(decode(parts[3], 'hex') || canon);
        lag := ':lag';  -- the head is behind from here (once per enterprise and statement)
        IF parts[4] IS NULL THEN
            PERFORM set_config('pipeline_runs.chain_lagging', (coalesce(nullif(
                current_setting('pipeline_runs.chain_lagging', true), ''), '{}')::text[]
                || NEW.enterprise_id)::text, true);
        END IF;
    END IF;
    PERFORM set_config(slot, NEW.position || ':' || n || ':' || encode(NEW.chain_hash, 'hex')
                       || lag, true);
    RETURN NEW;
END
$$;
CREATE OR REPLACE FUNCTION run_events_chain_behind(enterprise text, pos bigint, head bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run_events: position % of enterprise % is behind its chain (%)',
        pos, enterprise, head USING ERRCODE = 'serialization_failure';
END
$$;
CREATE OR REPLACE TRIGGER run_events_chain BEFORE INSERT ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_chain();
-- Each statement whose rows left heads behind (the setting above lists their enterprises):
-- those heads moved to the last event chained, once. A statement of one event per
-- enterprise (a PUT, a group commit) skips it by the WHEN, before any function runs.
-- The settings are the caller's to write (any role may set_config them), so a head moves
-- only forward, onto its enterprise's latest event holding that hash; else the statement
-- is refused (one index probe per enterprise left behind, per statement).
-- Its plans are kept generic: left to choose, the plan cache kept planning its INSERT anew
-- for each statement (~0.4 ms, a tenth of a PUT's database CPU under group commit;
-- docs/performance.md), its generic plan being no worse.
CREATE OR REPLACE FUNCTION run_events_chain_heads() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    e text;
    s text;
    pos bigint;
    hash bytea;
    moved bigint;
BEGIN
    -- One enterprise at a time; the event its setting names must be the enterprise's
    -- latest (this statement appended it, under the feed lock): read as the primary key's
    -- last entry, an order no other index gives. (Read as an equality on position, the
    -- generic plan, made while run_events was small, kept to another index and read every
    -- event of the enterprise.)
    FOREACH e IN ARRAY current_setting('pipeline_runs.chain_lagging')::text[] LOOP
        s := current_setting('pipeline_runs.chain_' || md5(e));
        pos := split_part(s, ':', 1)::bigint;
        hash := decode(split_part(s, ':', 3), 'hex');
        moved := 0;
        IF (SELECT r.position = pos AND r.chain_hash = hash FROM run_events r
            WHERE r.enterprise_id = e ORDER BY r.position DESC LIMIT 1) THEN
            INSERT INTO event_chain_heads AS h (enterprise_id, position, events, chain_hash)
            VALUES (e, pos, split_part(s, ':', 2)::bigint, hash)
            ON CONFLICT (enterprise_id) DO UPDATE
            SET position = EXCLUDED.position, events = EXCLUDED.events,
                chain_hash = EXCLUDED.chain_hash
            WHERE h.position < EXCLUDED.position;
            GET DIAGNOSTICS moved = ROW_COUNT;
        END IF;
        IF moved <> 1 THEN
            RAISE EXCEPTION 'run_events: a chain head set by hand is refused'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- caught up: no longer lagging
        PERFORM set_config('pipeline_runs.chain_' || md5(e), regexp_replace(s, ':lag$', ''),
                           true);
    END LOOP;
    PERFORM set_config('pipeline_runs.chain_lagging', '', true);
    RETURN NULL;
END
$$;
DO $$
BEGIN  -- the older form of the statement trigger read a transition table
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'run_events'::regclass
               AND tgname = 'run_events_chain_heads') THEN
        DROP TRIGGER run_events_chain_heads ON run_events;
    END IF;
END
$$;
CREATE OR REPLACE TRIGGER run_events_chain_lagging_heads AFTER INSERT ON run_events
    FOR EACH STATEMENT
    WHEN (coalesce(current_setting('pipeline_runs.chain_lagging', true), '') <> '')
    EXECUTE FUNCTION run_events_chain_heads();

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

-- The changes of a status-change statement (store/moves.py) as rows, in order. A called
-- function, not inlined (plpgsql), so the planner estimates its ROWS in the generic plan
-- and in a custom one alike, and keeps the generic plan after a connection's first five
-- statements: with the arrays in the statement itself, a custom plan (which counts them)
-- beat the generic plan's guess of 10 rows for groups of 1-4 changes, so every such
-- statement was planned anew, ~0.7-2 ms of database CPU (most of a one-change statement's:
-- many quiet enterprises, each group one change). Its own query's plan is cached.
CREATE OR REPLACE FUNCTION run_status_changes(
    enterprise_ids text[], pipeline_ids uuid[], run_ids uuid[], targets text[],
    actors text[], actor_ids bigint[], datas jsonb[], status_metas jsonb[],
    expected_versions integer[])
RETURNS TABLE (enterprise_id text, pipeline_id uuid, run_id uuid, target text, actor text,
               actor_id bigint, data jsonb, status_meta jsonb, expected_version integer,
               ord bigint)
LANGUAGE plpgsql STABLE ROWS 8 AS $$
BEGIN
    RETURN QUERY SELECT * FROM unnest(enterprise_ids, pipeline_ids, run_ids, targets, actors,
                                      actor_ids, datas, status_metas, expected_versions)
                 WITH ORDINALITY;
END
$$;

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
CREATE TABLE IF NOT EXISTS run_counts (
    enterprise_id text   NOT NULL,
    pipeline_id   uuid   NOT NULL,
    status        text   NOT NULL,
    n             bigint NOT NULL,
    PRIMARY KEY (enterprise_id, pipeline_id, status)
);

-- Projection: insights (GET /insights/runs/, service/app/insights.py). Each live run adds
-- to a few (enterprise, pipeline, UTC hour, metric, bin) counters: `created` in the hour
-- of its created_at; its outcome (success, failure, timeout, invalid, cancelled) in the
-- hour of its ended_at; `duration` (started_at -> ended_at, runs that started and ended)
-- in the hour of its ended_at and `queue` (created_at -> started_at, runs that started)
-- in the hour of its started_at, both in the log bin of the time in microseconds
-- (insights_bin: bins at most 2% wide, so a bin's midpoint is within 1% of every value in
-- it; a mergeable DDSketch-style histogram). Outcome and `created` rows use bin 0.
-- Kept by a row trigger on pipeline_runs (run_insights_row, below): every writer of the
-- runs projection moves it in the same statement (a run's keys out, its new keys in),
-- under its enterprise's feed lock, so like run_counts its rows are only written by the
-- holder of the feed lock and no writer waits on them. Runs of soft-deleted pipelines
-- stay in (readers join the live pipelines); a deleted run leaves. Whole 6-hour periods
-- before the watermark are answered from run_insights_totals (below), the hours at a
-- window's ends and from the watermark on from here. Replay rebuilds it from the fold and verify names its drift (app/replay.py).
CREATE TABLE IF NOT EXISTS run_insights (
    enterprise_id text        NOT NULL,
    hour          timestamptz NOT NULL,
    pipeline_id   uuid        NOT NULL,
    metric        text        NOT NULL,
    bin           integer     NOT NULL,
    n             bigint      NOT NULL,
    PRIMARY KEY (enterprise_id, hour, pipeline_id, metric, bin)
);

-- The lower bounds of the log bins, in microseconds: 1, 2, ... (one bin per microsecond
-- while that is finer), then each bound 101/99 of the previous (integer arithmetic, the
-- same in Python: service/domain/insights.py), up to 100 years: 1,667 bounds. Computed
-- here, once a migration, and written into the function as a literal: the planner folds
-- the function (IMMUTABLE, no argument) into a constant wherever a query uses it, and
-- folding the recursive query itself cost ~1.1 ms each time, four times in every plan of
-- the insights trigger's statement (re-planned after each ANALYZE of its tables); the
-- literal costs ~0.2 ms.
DO $$
DECLARE
    bounds bigint[];
BEGIN
    WITH RECURSIVE b(t) AS (
        SELECT 1::bigint
        UNION ALL
        SELECT greatest(t + 1, t * 101 / 99) FROM b WHERE t < 3153600000000000
    )
    SELECT array_agg(t ORDER BY t) INTO bounds FROM b;
    EXECUTE format('CREATE OR REPLACE FUNCTION insights_bounds() RETURNS bigint[] '
                   'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
                   format('SELECT %L::bigint[]', bounds::text));
END
$$;
-- A time's bin: how many bounds are <= it (0: under a microsecond).
CREATE OR REPLACE FUNCTION insights_bin(micros numeric) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT width_bucket(micros::bigint, insights_bounds())
$$;
-- A run's keys (hour, metric, bin) as its state gives them (the Python twin:
-- service/domain/insights.py run_keys).
CREATE OR REPLACE FUNCTION run_insight_keys(created_at timestamptz, started_at timestamptz,
                                            ended_at timestamptz, status text)
RETURNS TABLE (hour timestamptz, metric text, bin integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT k.hour, k.metric, k.bin FROM (VALUES
        (date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00Z'), 'created', 0),
        (CASE WHEN status IN ('success', 'failure', 'timeout', 'invalid', 'cancelled')
              THEN date_bin('1 hour', ended_at, timestamptz '2000-01-01 00:00Z') END,
         status, 0),
        (CASE WHEN status IN ('success', 'failure', 'timeout', 'invalid', 'cancelled')
                   AND started_at IS NOT NULL
              THEN date_bin('1 hour', ended_at, timestamptz '2000-01-01 00:00Z') END,
         'duration',
         insights_bin(extract(epoch FROM ended_at - started_at) * 1000000)),
        (date_bin('1 hour', started_at, timestamptz '2000-01-01 00:00Z'), 'queue',
         insights_bin(extract(epoch FROM started_at - created_at) * 1000000))
    ) AS k(hour, metric, bin)
    WHERE k.hour IS NOT NULL
$$;
-- Projection: recoveries (MTTR of the insights). Per pipeline, its finished runs (success,
-- failure, timeout) in order of (ended_at, id): each success that ends a streak of failures
-- and timeouts is one row, with the end of the streak's first run (failed_at). Kept by the
-- insights trigger (run_recoveries_refresh: the changed run's stretch, from the success
-- before it to the success after it, recomputed from pipeline_runs) under the same feed
-- lock; verify compares it with the whole recomputation (store/insights.py).
CREATE TABLE IF NOT EXISTS run_recoveries (
    enterprise_id text        NOT NULL,
    pipeline_id   uuid        NOT NULL,
    recovered_at  timestamptz NOT NULL,
    run_id        uuid        NOT NULL,  -- the success
    failed_at     timestamptz NOT NULL,
    PRIMARY KEY (enterprise_id, pipeline_id, recovered_at, run_id)
);
-- Answers read a window of an enterprise's recoveries (index only).
CREATE INDEX IF NOT EXISTS run_recoveries_by_time
    ON run_recoveries (enterprise_id, recovered_at) INCLUDE (pipeline_id, failed_at);
-- Recompute a pipeline's recoveries around the runs that ended in [lo, hi]: from the last
-- success before lo to the first success after hi, every streak that a run there can change
-- (ties in ended_at are ordered by id, as the answers order them).
CREATE OR REPLACE FUNCTION run_recoveries_refresh(e text, p uuid, lo timestamptz,
                                                  hi timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a timestamptz;
    b timestamptz;
BEGIN
    SELECT coalesce(max(r.ended_at), '-infinity') INTO a FROM pipeline_runs r
    WHERE r.enterprise_id = e AND r.pipeline_id = p AND r.status = 'success'
      AND r.ended_at < lo;
    SELECT coalesce(min(r.ended_at), 'infinity') INTO b FROM pipeline_runs r
    WHERE r.enterprise_id = e AND r.pipeline_id = p AND r.status = 'success'
      AND r.ended_at > hi;
    DELETE FROM run_recoveries r WHERE r.enterprise_id = e AND r.pipeline_id = p
      AND r.recovered_at > a AND r.recovered_at <= b;
    INSERT INTO run_recoveries (enterprise_id, pipeline_id, recovered_at, run_id, failed_at)
    SELECT e, p, g.recovered_at, g.run_id, g.failed_at
    FROM (SELECT min(t.ended_at) FILTER (WHERE t.status <> 'success') AS failed_at,
                 min(t.ended_at) FILTER (WHERE t.status = 'success') AS recovered_at,
                 (array_agg(t.id ORDER BY t.ended_at, t.id)
                      FILTER (WHERE t.status = 'success'))[1] AS run_id
          FROM (SELECT r.id, r.ended_at, r.status,
                       count(*) FILTER (WHERE r.status = 'success') OVER (
                           ORDER BY r.ended_at, r.id
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS streak
                FROM pipeline_runs r
                WHERE r.enterprise_id = e AND r.pipeline_id = p
                  AND r.status IN ('success', 'failure', 'timeout')
                  AND r.ended_at >= a AND r.ended_at <= b) AS t
          GROUP BY t.streak) AS g
    WHERE g.failed_at IS NOT NULL AND g.recovered_at > a;
END
$$;
-- Projection: the insights' running totals (service/store/insights.py reads them). Per
-- enterprise, pipeline (or the rollup's all-zeros id: every pipeline's) and 6-hour period
-- (UTC, from midnight: insights_period): everything the run_insights rows of that
-- pipeline hold up to the end of that period, summed, and the recoveries ended by then
-- (run_recoveries: count, and their times summed in microseconds, exactly). So any span
-- [a, b) of whole periods is two rows per pipeline: the last row before b less the last
-- row before a, however long the span; a 90-day answer per pipeline reads 400 rows
-- instead of every hourly row of the quarter, and at most 3 hours at each ragged end of a
-- window come from run_insights. duration and queue are the log-bin histograms
-- (insights_bin), dense, as bytes (insights_hist_add): the first nonzero bin, then the
-- count of each bin from it to the last nonzero one, each a big-endian int4 (empty: no
-- bytes). Bytes rather than an int4[]: an answer reads ~800 of them, which PostgreSQL
-- sends as they are stored (an array's binary form is made a call per element: 3x the
-- statement's CPU) and numpy reads as they come (migration 0008 converted the arrays). A row exists for the periods that have something of
-- their own (a key in run_insights or a recovery): the row of a period that has none
-- would equal the one before. Kept with run_insights by its trigger
-- (run_insights_totals_add) and by run_recoveries' trigger; replay rebuilds a drifted
-- pipeline's rows from run_insights and run_recoveries (run_insights_totals_rebuild) and
-- verify names drifted rows (service/app/replay.py).
CREATE OR REPLACE FUNCTION insights_period(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_bin('6 hours', at, timestamptz '2000-01-01 00:00Z')
$$;
-- The UTC hour `at` is in (the watermark's grain).
CREATE OR REPLACE FUNCTION insights_hour(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_bin('1 hour', at, timestamptz '2000-01-01 00:00Z')
$$;
CREATE TABLE IF NOT EXISTS run_insights_totals (
    enterprise_id    text        NOT NULL,
    pipeline_id      uuid        NOT NULL,
    at               timestamptz NOT NULL,  -- the period's start
    created          bigint      NOT NULL,
    success          bigint      NOT NULL,
    failure          bigint      NOT NULL,
    timeout          bigint      NOT NULL,
    invalid          bigint      NOT NULL,
    cancelled        bigint      NOT NULL,
    recovered        bigint      NOT NULL,
    recovered_micros bigint      NOT NULL,
    duration         bytea       NOT NULL,
    queue            bytea       NOT NULL,
    PRIMARY KEY (enterprise_id, pipeline_id, at)
) WITH (toast_tuple_target = 8160);  -- rows of a few KB stay inline, uncompressed:
                                      -- a reach-back change rewrites them in place
-- The running totals hold CLOSED hours only: per enterprise, everything before `through`
-- (an hour start; no row: nothing closed, '-infinity'); a period's row holds its hours
-- before `through` (all of them once the period has ended). Keys and recoveries at or
-- after it are only in run_insights and run_recoveries, which answers read from `through`
-- on; so the write path's usual change (keys of the current hour) writes no totals row at
-- all, and a change reaching back before `through` (an old run deleted or backdated)
-- still adds to every row from its period on. run_insights_close (the sweeper, soon after
-- each hour ends; the seeder) moves it forward under the enterprise's feed lock, the lock
-- the write path's insights trigger runs under: no change falls between the hourly rows
-- and the totals.
CREATE TABLE IF NOT EXISTS run_insights_closed (
    enterprise_id text        PRIMARY KEY,
    through       timestamptz NOT NULL
);

-- A time in microseconds (the bins' unit; exact: extract gives numeric).
CREATE OR REPLACE FUNCTION insights_micros(t interval) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(epoch FROM t) * 1000000)::bigint
$$;

-- A histogram (bytes, as in run_insights_totals) with counts added at bins (ns[i] at
-- bins[i]; negative: taken out), widened as needed and trimmed to its first and last
-- nonzero bin (no bytes when nothing is left). A count is read from its 4 bytes and
-- written back in place (overlay: one copy of the few KB), a few per change.
CREATE OR REPLACE FUNCTION insights_hist_add(h bytea, bins integer[], ns bigint[])
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    lo integer;
    hi integer;
    b_lo integer;
    b_hi integer;
    o integer;
    v bigint;
    was_lo integer;
    was_hi integer;
BEGIN
    IF coalesce(cardinality(bins), 0) = 0 THEN
        RETURN h;
    END IF;
    b_lo := bins[1];
    b_hi := bins[1];
    FOR i IN 2 .. cardinality(bins) LOOP  -- plain expressions: no query per call
        b_lo := least(b_lo, bins[i]);
        b_hi := greatest(b_hi, bins[i]);
    END LOOP;
    IF length(h) < 8 THEN
        h := int4send(b_lo) || decode(repeat('00', 4 * (b_hi - b_lo + 1)), 'hex');
    ELSE
        lo := (get_byte(h, 0) << 24) | (get_byte(h, 1) << 16) | (get_byte(h, 2) << 8)
              | get_byte(h, 3);
        hi := lo + (length(h) - 4) / 4 - 1;
        IF b_lo < lo THEN
            h := int4send(b_lo) || decode(repeat('00', 4 * (lo - b_lo)), 'hex')
                 || substring(h FROM 5);
        END IF;
        IF b_hi > hi THEN
            h := h || decode(repeat('00', 4 * (b_hi - hi)), 'hex');
        END IF;
    END IF;
    lo := least(lo, b_lo);
    hi := greatest(hi, b_hi);
    FOR i IN 1 .. cardinality(bins) LOOP
        o := 4 * (bins[i] - lo + 1);  -- the count's first byte (from 0)
        v := ((get_byte(h, o) << 24) | (get_byte(h, o + 1) << 16) | (get_byte(h, o + 2) << 8)
              | get_byte(h, o + 3)) + ns[i];
        h := overlay(h PLACING int4send(v::integer) FROM o + 1 FOR 4);
    END LOOP;
    was_lo := lo;
    was_hi := hi;
    WHILE lo <= hi AND substring(h FROM 4 * (lo - was_lo + 1) + 1 FOR 4) = '\x00000000' LOOP
        lo := lo + 1;
    END LOOP;
    WHILE hi >= lo AND substring(h FROM 4 * (hi - was_lo + 1) + 1 FOR 4) = '\x00000000' LOOP
        hi := hi - 1;
    END LOOP;
    IF lo > hi THEN
        RETURN '\x';
    ELSIF lo = was_lo AND hi = was_hi THEN
        RETURN h;
    END IF;
    RETURN int4send(lo) || substring(h FROM 4 * (lo - was_lo + 1) + 1 FOR 4 * (hi - lo + 1));
END
$$;

-- Add keys of one period (metric, bin, n: as in run_insights, plus 'recovered' and
-- 'recovered_micros' at bin 0) to the running totals of each of the pipelines `ps` (a
-- run's pipeline and its enterprise's rollup): the period's row and every later one added
-- to, the period's row made if missing (the last row before it, plus the keys), and
-- dropped when it no longer differs from the one before. Later rows exist only when
-- a change reaches back (a run's earlier keys moved or deleted). The keys are sorted into
-- columns here in plain expressions: the write path's trigger calls this once per change.
CREATE OR REPLACE FUNCTION run_insights_totals_add(e text, ps uuid[], d timestamptz,
                                                 metrics text[], bins integer[],
                                                 ns bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- created, success, failure, timeout, invalid, cancelled, recovered, recovered_micros
    c bigint[] := '{0,0,0,0,0,0,0,0}';
    columns CONSTANT text[] := '{created,success,failure,timeout,invalid,cancelled,'
                               'recovered,recovered_micros}';
    d_bins integer[];
    d_ns bigint[];
    q_bins integer[];
    q_ns bigint[];
    gone boolean := false;
    made integer;
BEGIN
    IF cardinality(metrics) > 8 THEN  -- a rebuild's period: two queries, not n appends
        SELECT array_agg(u.bin) FILTER (WHERE u.metric = 'duration'),
               array_agg(u.n) FILTER (WHERE u.metric = 'duration'),
               array_agg(u.bin) FILTER (WHERE u.metric = 'queue'),
               array_agg(u.n) FILTER (WHERE u.metric = 'queue'), bool_or(u.n < 0)
        INTO d_bins, d_ns, q_bins, q_ns, gone
        FROM unnest(metrics, bins, ns) AS u(metric, bin, n);
        SELECT array_agg(coalesce(v.n, 0) ORDER BY x.i) INTO c
        FROM unnest(columns) WITH ORDINALITY AS x(metric, i)
        LEFT JOIN (SELECT u.metric, sum(u.n)::bigint AS n
                   FROM unnest(metrics, ns) AS u(metric, n) GROUP BY 1) AS v
          ON v.metric = x.metric;
    ELSE
        FOR i IN 1 .. cardinality(metrics) LOOP  -- plain expressions: the trigger's few keys
            IF metrics[i] = 'duration' THEN
                d_bins := d_bins || bins[i];
                d_ns := d_ns || ns[i];
            ELSIF metrics[i] = 'queue' THEN
                q_bins := q_bins || bins[i];
                q_ns := q_ns || ns[i];
            ELSE
                c[array_position(columns, metrics[i])] :=
                    c[array_position(columns, metrics[i])] + ns[i];
            END IF;
            gone := gone OR ns[i] < 0;
        END LOOP;
    END IF;
    -- The period's row and later ones; a period's first change (per pipeline) finds none.
    WITH changed AS (
        UPDATE run_insights_totals AS t SET
            created = t.created + c[1], success = t.success + c[2],
            failure = t.failure + c[3], timeout = t.timeout + c[4],
            invalid = t.invalid + c[5], cancelled = t.cancelled + c[6],
            recovered = t.recovered + c[7], recovered_micros = t.recovered_micros + c[8],
            duration = CASE WHEN d_bins IS NULL THEN t.duration
                            ELSE insights_hist_add(t.duration, d_bins, d_ns) END,
            queue = CASE WHEN q_bins IS NULL THEN t.queue
                         ELSE insights_hist_add(t.queue, q_bins, q_ns) END
        WHERE t.enterprise_id = e AND t.pipeline_id = ANY(ps) AND t.at >= d
        RETURNING t.at)
    SELECT count(*) INTO made FROM changed WHERE changed.at = d;
    IF made < cardinality(ps) THEN  -- the missing rows: the last row before, plus the keys
        INSERT INTO run_insights_totals AS t
        SELECT e, p.id, d, coalesce(b.created, 0) + c[1], coalesce(b.success, 0) + c[2],
               coalesce(b.failure, 0) + c[3], coalesce(b.timeout, 0) + c[4],
               coalesce(b.invalid, 0) + c[5], coalesce(b.cancelled, 0) + c[6],
               coalesce(b.recovered, 0) + c[7], coalesce(b.recovered_micros, 0) + c[8],
               insights_hist_add(coalesce(b.duration, '\x'), d_bins, d_ns),
               insights_hist_add(coalesce(b.queue, '\x'), q_bins, q_ns)
        FROM unnest(ps) AS p(id) LEFT JOIN LATERAL (
            SELECT * FROM run_insights_totals t
            WHERE t.enterprise_id = e AND t.pipeline_id = p.id AND t.at < d
            ORDER BY t.at DESC LIMIT 1) AS b ON true
        WHERE NOT EXISTS (SELECT FROM run_insights_totals t
                          WHERE t.enterprise_id = e AND t.pipeline_id = p.id AND t.at = d);
    END IF;
    IF gone THEN
        DELETE FROM run_insights_totals AS t
        USING unnest(ps) AS p(id) LEFT JOIN LATERAL (
            SELECT * FROM run_insights_totals b
            WHERE b.enterprise_id = e AND b.pipeline_id = p.id AND b.at < d
            ORDER BY b.at DESC LIMIT 1) AS b ON true
        WHERE t.enterprise_id = e AND t.pipeline_id = p.id AND t.at = d
          AND (t.created, t.success, t.failure, t.timeout, t.invalid, t.cancelled,
               t.recovered, t.recovered_micros, t.duration, t.queue)
              = (coalesce(b.created, 0), coalesce(b.success, 0), coalesce(b.failure, 0),
                 coalesce(b.timeout, 0), coalesce(b.invalid, 0), coalesce(b.cancelled, 0),
                 coalesce(b.recovered, 0), coalesce(b.recovered_micros, 0),
                 coalesce(b.duration, '\x'), coalesce(b.queue, '\x'));
    END IF;
END
$$;

-- What run_insights and run_recoveries hold in [lo, hi), summed per period (insights_period)
-- under each pipeline and under the rollup (the all-zeros id), as the keys
-- run_insights_totals_add takes ('recovered' and 'recovered_micros' at bin 0); `only_p`:
-- that pipeline's (or the rollup's) alone. What a period adds to the running totals, for
-- their rebuild and for closing hours alike.
CREATE OR REPLACE FUNCTION run_insights_period_keys(e text, lo timestamptz, hi timestamptz,
                                                    only_p uuid DEFAULT NULL)
RETURNS TABLE (p uuid, at timestamptz, metrics text[], bins integer[], ns bigint[])
LANGUAGE sql STABLE AS $$
    SELECT u.p, u.at, array_agg(u.metric), array_agg(u.bin), array_agg(u.n)
    FROM (SELECT l.p, insights_period(i.hour) AS at, i.metric, i.bin, sum(i.n)::bigint AS n
          FROM run_insights i,
               LATERAL (VALUES (i.pipeline_id), ('00000000-0000-0000-0000-000000000000'::uuid)) AS l(p)
          WHERE i.enterprise_id = e AND i.hour >= lo AND i.hour < hi
            AND (only_p IS NULL OR l.p = only_p)
          GROUP BY 1, 2, 3, 4
          UNION ALL
          SELECT r.p, r.at, m.metric, 0, m.n
          FROM (SELECT l.p, insights_period(r.recovered_at) AS at, count(*) AS n,
                       sum(insights_micros(r.recovered_at - r.failed_at))::bigint AS micros
                FROM run_recoveries r,
                     LATERAL (VALUES (r.pipeline_id), ('00000000-0000-0000-0000-000000000000'::uuid)) AS l(p)
                WHERE r.enterprise_id = e AND r.recovered_at >= lo AND r.recovered_at < hi
                  AND (only_p IS NULL OR l.p = only_p)
                GROUP BY 1, 2) AS r,
               LATERAL (VALUES ('recovered', r.n), ('recovered_micros', r.micros))
                   AS m(metric, n)) AS u
    WHERE u.n <> 0
    GROUP BY u.at, u.p
$$;
-- A pipeline's running totals from the period of `since` on rebuilt from run_insights and
-- run_recoveries (whole: replay's repair, migration 0007's fill; from its batch's first
-- period: the seeder's bulk load), period by period in order (each add then writes one
-- row, carrying over the one before), up to its enterprise's watermark (run_insights_closed).
CREATE OR REPLACE FUNCTION run_insights_totals_rebuild(e text, p uuid,
                                                       since timestamptz DEFAULT '-infinity')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k record;
    upto timestamptz := coalesce((SELECT c.through FROM run_insights_closed c
                                  WHERE c.enterprise_id = e), '-infinity');
BEGIN
    IF isfinite(since) THEN
        since := insights_period(since);
    END IF;
    DELETE FROM run_insights_totals WHERE enterprise_id = e AND pipeline_id = p AND at >= since;
    FOR k IN
        SELECT * FROM run_insights_period_keys(e, since, upto, p) ORDER BY at
    LOOP
        PERFORM run_insights_totals_add(e, ARRAY[p], k.at, k.metrics, k.bins, k.ns);
    END LOOP;
END
$$;

-- Close an enterprise's hours that ended by `upto` (at most the current hour's start: an
-- hour is closed once it has ended): each period from the watermark on gets its hours
-- before `upto` added to its row, per pipeline with keys or recoveries in them and the
-- rollup, in order (each add writes or rewrites one row, carrying over the one before),
-- and the watermark moves to `upto`. Hourly, so answers read at most the current hour
-- (and the sweeper's lag) from run_insights at a window's end; the current period's row
-- is rewritten once an hour instead of once a change. The caller holds the enterprise's
-- feed lock (the write path's insights trigger runs under it: no change is applied
-- between reading the hours' rows here and moving the watermark). Returns the rows written or rewritten.
-- Closing hours without keys only moves the watermark.
CREATE OR REPLACE FUNCTION run_insights_close(e text, upto timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    was timestamptz;
    k record;
    made integer := 0;
BEGIN
    upto := least(insights_hour(upto), insights_hour(now()));
    was := coalesce((SELECT c.through FROM run_insights_closed c WHERE c.enterprise_id = e),
                    '-infinity');
    IF upto <= was THEN
        RETURN 0;
    END IF;
    FOR k IN
        SELECT * FROM run_insights_period_keys(e, was, upto) ORDER BY at, p
    LOOP
        PERFORM run_insights_totals_add(e, ARRAY[k.p], k.at, k.metrics, k.bins, k.ns);
        made := made + 1;
    END LOOP;
    INSERT INTO run_insights_closed AS c (enterprise_id, through) VALUES (e, upto)
    ON CONFLICT (enterprise_id) DO UPDATE SET through = EXCLUDED.through;
    RETURN made;
END
$$;

-- The write path's upkeep, in the writing statement itself (service/store/append.py
-- INSIGHTS): every one-statement writer of pipeline_runs (a run created or deleted, a group
-- commit's status changes, the general path's write) names the states its statement
-- leaves and makes, for the runs whose keys move, in a CTE (`run_states`), and the
-- statement, after its feed lock, moves their keys in run_insights (one INSERT ... ON
-- CONFLICT, whose RETURNING says whether one lies in a closed hour: before its enterprise's
-- watermark, run_insights_closed, read afresh by run_insights_back); only when a state is
-- rated (success, failure, timeout) or a key reaches back does it call run_insights_rest
-- with the states as notes (run_insights_change): the running totals
-- (run_insights_reach_back) and the recoveries around the run (run_recoveries_check). So,
-- like run_counts, the projection's rows are only written by the holder of their
-- enterprise's feed lock, and no writer waits on them; and the usual change pays no
-- trigger, no second statement and no PL/pgSQL call but the watermark's read
-- (docs/performance.md, "The insights upkeep in the writing statement").
-- Writers of pipeline_runs outside those statements (replay's patches) set
-- insights.by_trigger = 'on' in their transaction: the row trigger (run_insights_row)
-- then does the same per row, after their row locks and under the feed lock, which it
-- takes itself (replay takes every feed lock of a batch first, in order:
-- store/replay.py), the order every writer keeps.
DO $$
BEGIN
    IF to_regtype('run_insights_change') IS NULL THEN
        CREATE TYPE run_insights_change AS (
            sign integer, enterprise_id text, pipeline_id uuid,
            created_at bigint, started_at bigint, ended_at bigint,  -- micros since 1970
            status text);
    END IF;
END
$$;
-- Whether any key (enterprise es[i], hour hs[i]) lies before its enterprise's watermark,
-- read afresh. The writing statement asks once it holds the feed lock: its own snapshot
-- was taken before it waited for that lock, and a close committed meanwhile (the sweeper,
-- under the same lock) moved the watermark past hours this statement's keys are in; read
-- with that snapshot, the keys would miss the running totals (a run deleted while its
-- hour closed stayed counted: tests/test_insights_close_race.py). PL/pgSQL and VOLATILE:
-- its query takes a new snapshot (READ COMMITTED) and keeps its plan across calls.
CREATE OR REPLACE FUNCTION run_insights_back(es text[], hs timestamptz[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN EXISTS (SELECT FROM unnest(es, hs) AS k(e, h)
                   JOIN run_insights_closed c ON c.enterprise_id = k.e AND k.h < c.through);
END
$$;
-- A run's state as a note: sign -1 for the state a change leaves, +1 for the one it makes.
CREATE OR REPLACE FUNCTION run_insights_note(sign integer, r pipeline_runs)
RETURNS run_insights_change
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(sign, r.enterprise_id, r.pipeline_id,
               (extract(epoch FROM r.created_at) * 1000000)::bigint,
               (extract(epoch FROM r.started_at) * 1000000)::bigint,
               (extract(epoch FROM r.ended_at) * 1000000)::bigint,
               r.status)::run_insights_change
$$;
-- The notes' keys: every run's keys (run_insight_keys) before out and after in, summed per
-- key, zero sums left out.
CREATE OR REPLACE FUNCTION run_insights_note_keys(changes run_insights_change[])
RETURNS TABLE (e text, p uuid, hour timestamptz, metric text, bin integer, n bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.enterprise_id, c.pipeline_id, k.hour, k.metric, k.bin, sum(c.sign)::bigint
    FROM (SELECT u.sign, u.enterprise_id, u.pipeline_id, u.status,
                 timestamptz 'epoch' + u.created_at * interval '1 microsecond' AS created_at,
                 timestamptz 'epoch' + u.started_at * interval '1 microsecond' AS started_at,
                 timestamptz 'epoch' + u.ended_at * interval '1 microsecond' AS ended_at
          FROM unnest(changes) AS u) AS c,
         LATERAL run_insight_keys(c.created_at, c.started_at, c.ended_at, c.status) AS k
    GROUP BY 1, 2, 3, 4, 5 HAVING sum(c.sign) <> 0
$$;
-- A change reaching back (keys in closed hours: an old run deleted or backdated): those
-- keys into the running totals, once per (pipeline, period) they touch
-- (run_insights_totals_add: that period's row and any later one, the pipeline's and the
-- rollup's together).
CREATE OR REPLACE FUNCTION run_insights_reach_back(changes run_insights_change[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT k.e, insights_period(k.hour) AS at,
               ARRAY[k.p, '00000000-0000-0000-0000-000000000000'::uuid] AS ps,
               array_agg(k.metric) AS metrics, array_agg(k.bin) AS bins,
               array_agg(k.n) AS ns
        FROM run_insights_note_keys(changes) AS k
        JOIN run_insights_closed c ON c.enterprise_id = k.e AND k.hour < c.through
        GROUP BY k.e, 2, k.p ORDER BY 1, 2, 3
    LOOP
        PERFORM run_insights_totals_add(g.e, g.ps, g.at, g.metrics, g.bins, g.ns);
    END LOOP;
END
$$;
-- The recoveries one of a changed run's states (gone: its state before the change, else
-- after) can move, recomputed over that state's stretch (run_recoveries_refresh: the
-- stretches between successes around its end, from the runs as they are). A failure or
-- timeout that no success follows (the usual newest run) is in no closed streak: nothing
-- to recompute; nor is a new success with no failure or timeout since the success before
-- it (the usual success: it closes no streak, and no streak after it changes, there being
-- no failure there). One status a probe, so each is one range of
-- pipeline_runs_pipeline_status_ended (with both statuses in one probe the generic plan
-- read every failure of the enterprise by another index: ms per change at 10,000 runs).
-- enable_seqscan off: its plans are kept by the pool's connections for their life, and
-- one made while pipeline_runs was a few pages would read the whole table later.
CREATE OR REPLACE FUNCTION run_recoveries_check(e text, p uuid, at timestamptz, status text,
                                                gone boolean) RETURNS void
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    since timestamptz;
BEGIN
    IF status = 'success' AND NOT gone THEN
        since := coalesce((SELECT max(x.ended_at) FROM pipeline_runs x
                           WHERE x.enterprise_id = e AND x.pipeline_id = p
                             AND x.status = 'success' AND x.ended_at < at), '-infinity');
        IF NOT EXISTS (SELECT FROM pipeline_runs r WHERE r.enterprise_id = e
                       AND r.pipeline_id = p AND r.status = 'failure' AND r.ended_at > since)
           AND NOT EXISTS (SELECT FROM pipeline_runs r WHERE r.enterprise_id = e
                           AND r.pipeline_id = p AND r.status = 'timeout'
                           AND r.ended_at > since) THEN
            RETURN;
        END IF;
    ELSIF status <> 'success' AND NOT EXISTS (
            SELECT FROM pipeline_runs r WHERE r.enterprise_id = e AND r.pipeline_id = p
            AND r.status = 'success' AND r.ended_at >= at) THEN
        RETURN;
    END IF;
    PERFORM run_recoveries_refresh(e, p, at, at);  -- a success gone: its recovery may go
END
$$;
-- The rest of a writing statement's upkeep (store/append.py INSIGHTS), called only when
-- one of its notes is rated or one of its keys reached back (`back`): the running totals
-- of the closed hours and the recoveries around each rated state, as the row trigger
-- does. Called from the statement after its writes to pipeline_runs (it aggregates their
-- RETURNING rows first), so its queries see the runs as the statement left them.
CREATE OR REPLACE FUNCTION run_insights_rest(changes run_insights_change[], back boolean)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    c run_insights_change;
BEGIN
    IF back THEN
        PERFORM run_insights_reach_back(changes);
    END IF;
    FOREACH c IN ARRAY changes LOOP
        IF c.status IN ('success', 'failure', 'timeout') THEN
            PERFORM run_recoveries_check(
                c.enterprise_id, c.pipeline_id,
                timestamptz 'epoch' + c.ended_at * interval '1 microsecond', c.status,
                c.sign < 0);
        END IF;
    END LOOP;
    RETURN 1;
END
$$;
-- The row trigger (see above). OLD's fields are NULL on an INSERT, NEW's on a DELETE, and a
-- state of NULL times has no keys (run_insight_keys gives none). Its plans are generic:
-- planning its INSERT folds the bins' bounds (insights_bounds), ~2 ms, which a custom plan
-- would do on every change.
CREATE OR REPLACE FUNCTION run_insights_row() RETURNS trigger
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    reaching_back boolean;
    changes run_insights_change[];
BEGIN
    IF current_setting('insights.bulk_load', true) = 'on' THEN
        RETURN NULL;  -- the seeder adds its runs' keys and recoveries itself
    END IF;
    -- the feed lock (store/locks.py), before anything is written
    PERFORM pg_advisory_xact_lock(1701, hashtext(coalesce(NEW.enterprise_id,
                                                          OLD.enterprise_id)));
    -- No ORDER BY: the feed lock serializes every writer of these rows, none can deadlock.
    WITH k AS (
        SELECT OLD.pipeline_id AS p, x.hour, x.metric, x.bin, -1 AS n
        FROM run_insight_keys(OLD.created_at, OLD.started_at, OLD.ended_at, OLD.status) AS x
        UNION ALL
        SELECT NEW.pipeline_id, y.hour, y.metric, y.bin, 1
        FROM run_insight_keys(NEW.created_at, NEW.started_at, NEW.ended_at, NEW.status) AS y
    ), moved AS (
        INSERT INTO run_insights AS i (enterprise_id, hour, pipeline_id, metric, bin, n)
        SELECT coalesce(NEW.enterprise_id, OLD.enterprise_id), k.hour, k.p, k.metric, k.bin,
               sum(k.n)
        FROM k GROUP BY k.hour, k.p, k.metric, k.bin HAVING sum(k.n) <> 0
        ON CONFLICT (enterprise_id, hour, pipeline_id, metric, bin)
        DO UPDATE SET n = i.n + EXCLUDED.n
        RETURNING i.enterprise_id, i.hour
    )
    SELECT EXISTS (SELECT FROM moved m JOIN run_insights_closed c
                   ON c.enterprise_id = m.enterprise_id AND m.hour < c.through)
    INTO reaching_back;
    IF reaching_back THEN
        changes := ARRAY[]::run_insights_change[];
        IF OLD.enterprise_id IS NOT NULL THEN
            changes := changes || run_insights_note(-1, OLD);
        END IF;
        IF NEW.enterprise_id IS NOT NULL THEN
            changes := changes || run_insights_note(1, NEW);
        END IF;
        PERFORM run_insights_reach_back(changes);
    END IF;
    IF OLD.status IN ('success', 'failure', 'timeout') THEN
        PERFORM run_recoveries_check(OLD.enterprise_id, OLD.pipeline_id, OLD.ended_at,
                                     OLD.status, true);
    END IF;
    IF NEW.status IN ('success', 'failure', 'timeout') THEN
        PERFORM run_recoveries_check(NEW.enterprise_id, NEW.pipeline_id, NEW.ended_at,
                                     NEW.status, false);
    END IF;
    RETURN NULL;
END
$$;
-- Which updates move a key (the rest, most simple moves: queued, processing, waiting, a
-- second running, fire nothing): the update trigger's WHEN, checked per row; and only in
-- a transaction that asked for the row trigger (insights.by_trigger: the one-statement
-- writers keep the projection themselves).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'pipeline_runs'::regclass
                   AND tgname = 'run_insights_row_update') THEN
        CREATE TRIGGER run_insights_row_update AFTER UPDATE ON pipeline_runs FOR EACH ROW
        WHEN (current_setting('insights.by_trigger', true) = 'on'
              AND (OLD.started_at IS DISTINCT FROM NEW.started_at
                   OR OLD.ended_at IS DISTINCT FROM NEW.ended_at
                   OR OLD.status IS DISTINCT FROM NEW.status
                      AND (NEW.status IN ('success', 'failure', 'timeout', 'invalid',
                                          'cancelled')
                           OR OLD.status IN ('success', 'failure', 'timeout', 'invalid',
                                             'cancelled'))
                   OR OLD.created_at IS DISTINCT FROM NEW.created_at
                   OR OLD.pipeline_id IS DISTINCT FROM NEW.pipeline_id))
        EXECUTE FUNCTION run_insights_row();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'pipeline_runs'::regclass
                   AND tgname = 'run_insights_row_insert_delete') THEN
        CREATE TRIGGER run_insights_row_insert_delete
            AFTER INSERT OR DELETE ON pipeline_runs FOR EACH ROW
            WHEN (current_setting('insights.by_trigger', true) = 'on')
            EXECUTE FUNCTION run_insights_row();
    END IF;
END
$$;
-- run_recoveries' rows in the running totals of their pipeline and the rollup:
-- every writer of run_recoveries (run_recoveries_refresh, under the feed lock) moves them.
CREATE OR REPLACE FUNCTION run_recoveries_move() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r run_recoveries := CASE WHEN TG_OP = 'INSERT' THEN NEW ELSE OLD END;
    sign integer := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    IF current_setting('insights.bulk_load', true) = 'on' THEN
        RETURN NULL;  -- the seeder rebuilds the running totals of its batch's periods
    END IF;
    IF NOT EXISTS (SELECT FROM run_insights_closed c WHERE c.enterprise_id = r.enterprise_id
                   AND c.through > r.recovered_at) THEN
        RETURN NULL;  -- an open period's: answers read it from run_recoveries
    END IF;
    PERFORM run_insights_totals_add(
        r.enterprise_id, ARRAY[r.pipeline_id, '00000000-0000-0000-0000-000000000000'::uuid],
        insights_period(r.recovered_at),
        ARRAY['recovered', 'recovered_micros'], ARRAY[0, 0],
        ARRAY[sign, sign * insights_micros(r.recovered_at - r.failed_at)]);
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER run_recoveries_totals AFTER INSERT OR DELETE ON run_recoveries
    FOR EACH ROW EXECUTE FUNCTION run_recoveries_move();

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

-- Webhook subscriptions (service/app/webhooks.py). `cursor` is the feed position up to which
-- the enterprise's events have been queued as deliveries: the feed is gap-safe
-- (store/events.py), so reading `position > cursor` misses nothing. A subscription that is
-- not active keeps its cursor, so enabling it again resumes where it stopped.
CREATE TABLE IF NOT EXISTS webhooks (
    enterprise_id   text        NOT NULL,
    id              uuid        NOT NULL,
    url             text        NOT NULL,
    event_types     text[],                       -- NULL: every event type
    pipeline_id     uuid,                         -- NULL: every pipeline
    description     text        NOT NULL DEFAULT '',
    is_active       boolean     NOT NULL DEFAULT true,
    secret          text        NOT NULL,         -- whsec_...: shown once, never logged
    disabled_reason text,                         -- why the service disabled it
    disabled_at     timestamptz,
    cursor          bigint      NOT NULL DEFAULT 0,
    created_by      bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise_id, id)
);
CREATE INDEX IF NOT EXISTS webhooks_active ON webhooks (cursor) WHERE is_active;

-- One row per (subscription, event) to deliver: the durable at-least-once state. A worker
-- claims a due row by setting claimed_until (a lease, SKIP LOCKED); a crashed worker's
-- lease runs out and another takes the row again.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    enterprise_id   text        NOT NULL,
    webhook_id      uuid        NOT NULL,
    position        bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    run_id          uuid        NOT NULL,
    version         integer     NOT NULL,
    occurred_at     timestamptz NOT NULL,
    state           text        NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts        integer     NOT NULL DEFAULT 0,  -- every attempt ever (audit numbering)
    failures        integer     NOT NULL DEFAULT 0,  -- failed attempts since the last success
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    delivered_at    timestamptz,
    PRIMARY KEY (enterprise_id, webhook_id, position),
    FOREIGN KEY (enterprise_id, webhook_id) REFERENCES webhooks (enterprise_id, id)
        ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_run
    ON webhook_deliveries (enterprise_id, webhook_id, run_id, position) WHERE state <> 'delivered';
CREATE INDEX IF NOT EXISTS webhook_deliveries_event
    ON webhook_deliveries (enterprise_id, webhook_id, event_id);

-- Every attempt (pings included), for GET /webhooks/{id}/deliveries/.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    enterprise_id   text        NOT NULL,
    webhook_id      uuid        NOT NULL,
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    attempt         integer     NOT NULL,
    attempted_at    timestamptz NOT NULL,
    status_code     integer,
    latency_ms      double precision NOT NULL,
    error           text,
    next_attempt_at timestamptz,
    PRIMARY KEY (enterprise_id, webhook_id, id),
    FOREIGN KEY (enterprise_id, webhook_id) REFERENCES webhooks (enterprise_id, id)
        ON DELETE CASCADE
);

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
-- unique constraint includes it (tests/test_tenant_keys.py checks the catalogue) and
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
--   SELECT create_distributed_table('run_heads', 'enterprise_id', colocate_with => 'pipelines');
--   SELECT create_distributed_table('idempotency_keys', 'enterprise_id', colocate_with => 'pipelines');
--   (and webhooks, webhook_deliveries, webhook_attempts alike)
-- (run_events stays partitioned by month: Citus distributes each partition alike.)
-- To settle before switching: (1) NOTIFY from a worker does not reach LISTENers on the
-- coordinator, so long-polling feed readers need a polling fallback; (2) run_events.position
-- must then be taken under the feed lock on the worker (a per-enterprise counter row), not
-- from a sequence the coordinator evaluates before routing, or position order stops being
-- commit order and the feed loses its gap safety; (3) the replay/verify scan reads across
-- all enterprises: run it per node or per enterprise.
