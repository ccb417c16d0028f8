"""Citus readiness: every unique key of a tenant table includes enterprise_id; reference
tables are documented in schema.sql."""
from __future__ import annotations

from tests.helpers import SCHEMA


# Reference tables (replicated whole, not distributed): documented in schema.sql.
REFERENCE_TABLES = {"api_tokens", "ui_sessions"}  # a session is found by its hash, as a token
# The migrator's record of applied migrations (service/store/meta.py): not tenant data.
MIGRATOR_TABLES = {"schema_migrations"}


async def test_every_unique_key_of_tenant_tables_includes_enterprise_id(db):
    rows = await db.fetch("""
        SELECT t.relname AS table_name, i.relname AS index_name,
               coalesce(bool_or(a.attname = 'enterprise_id'), false) AS has_enterprise
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = current_schema()
        LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey)
        WHERE x.indisunique AND t.relkind IN ('r', 'p')
        GROUP BY t.relname, i.relname""")
    tables = {r["table_name"] for r in rows}
    assert {"pipelines", "stages", "pipeline_runs", "stage_runs", "run_events",
            "run_counts", "run_heads"} <= tables
    offenders = [(r["table_name"], r["index_name"]) for r in rows
                 if r["table_name"] not in REFERENCE_TABLES | MIGRATOR_TABLES
                 and not r["has_enterprise"]]
    assert offenders == []
    every_table = {r["relname"] for r in await db.fetch(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND relkind IN ('r', 'p') AND NOT relispartition")}
    without_enterprise = {r["table_name"] for r in await db.fetch("""
        SELECT c.relname AS table_name FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
        WHERE c.relkind IN ('r', 'p') AND NOT EXISTS (
            SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
            AND a.attname = 'enterprise_id' AND NOT a.attisdropped)""")}
    assert without_enterprise & every_table == MIGRATOR_TABLES
    assert "create_distributed_table('run_events', 'enterprise_id'" in SCHEMA
    assert "create_reference_table('api_tokens')" in SCHEMA
