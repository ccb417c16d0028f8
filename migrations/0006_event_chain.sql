-- The hash chain of every enterprise's events (see schema.sql, "Tamper evidence") on a
-- database from before it: the column, the heads, and the events already stored chained in
-- position order. Appends wait meanwhile (the table is locked until the migration commits);
-- schema.sql, applied right after in the same transaction, adds the trigger that chains
-- every append from then on. The append-only guard is lifted for this one fill only.
ALTER TABLE run_events ADD COLUMN IF NOT EXISTS chain_hash bytea;
-- Verbatim copy of schema.sql's definitions (tests/test_audit_chain.py checks it).
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
LOCK TABLE run_events IN SHARE ROW EXCLUSIVE MODE;
DO $$
DECLARE
    e record;
    head bytea;
    last_enterprise text;
    n bigint;
    last_position bigint;
    guarded boolean := EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'run_events'::regclass
                               AND tgname = 'run_events_no_update_delete');
BEGIN
    IF guarded THEN
        ALTER TABLE run_events DISABLE TRIGGER run_events_no_update_delete;
    END IF;
    FOR e IN SELECT position, occurred_at, enterprise_id,
                    run_event_canonical(position, id, enterprise_id, pipeline_id, run_id,
                                        version, type, from_status, to_status, actor,
                                        actor_id, occurred_at, data) AS bytes
             FROM run_events WHERE chain_hash IS NULL ORDER BY enterprise_id, position LOOP
        IF last_enterprise IS DISTINCT FROM e.enterprise_id THEN
            IF last_enterprise IS NOT NULL THEN
                INSERT INTO event_chain_heads VALUES (last_enterprise, last_position, n, head);
            END IF;
            last_enterprise := e.enterprise_id;
            head := decode(repeat('00', 32), 'hex');
            n := 0;
        END IF;
        head := sha256(head || e.bytes);
        n := n + 1;
        last_position := e.position;
        UPDATE run_events SET chain_hash = head
        WHERE enterprise_id = e.enterprise_id AND position = e.position
          AND occurred_at = e.occurred_at;
    END LOOP;
    IF last_enterprise IS NOT NULL THEN
        INSERT INTO event_chain_heads VALUES (last_enterprise, last_position, n, head);
    END IF;
    IF guarded THEN
        ALTER TABLE run_events ENABLE TRIGGER run_events_no_update_delete;
    END IF;
END
$$;
