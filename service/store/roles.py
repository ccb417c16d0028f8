"""The runtime role: created and granted by migrate; the event log's protection, as checked.

The owner role (the one `migrate` connects as) owns every table and function. The runtime
role (the one `serve` connects as) may read and append run_events and nothing more there:
no UPDATE, DELETE or TRUNCATE, no ownership (so no ALTER/DETACH/DROP and no trigger
switched off), no superuser (so no session_replication_role = replica). Elsewhere it gets
the rows the service writes (SELECT/INSERT/UPDATE/DELETE on the other tables), and the
things it needs an owner for go through SECURITY DEFINER functions of schema.sql: making
next month's partition, moving run_heads (the per-run version guard), moving
event_chain_heads (each enterprise's hash chain) and analyzing the tables where
autovacuum does not (store/statistics.py).
"""
from __future__ import annotations

import asyncio
import random
from typing import NamedTuple

import asyncpg

# Attributes set on every migrate, so a role widened by hand is narrowed again.
ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
ROLE_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)"
# Role statements take no parameters: quoted by the server's format() instead.
CREATE_ROLE = f"""
SELECT format('CREATE ROLE %I {ATTRIBUTES}', $1::text)
       || coalesce(format(' PASSWORD %L', $2::text), '')"""
ALTER_ROLE = f"""
SELECT format('ALTER ROLE %I WITH {ATTRIBUTES}', $1::text)
       || coalesce(format(' PASSWORD %L', $2::text), '')"""

# Grants, per database, made afresh on every migrate (inside its transaction): everything
# revoked, then each table of the schema (partitions excluded: reached only through
# run_events) gets its share. run_heads and event_chain_heads are moved by SECURITY
# DEFINER triggers only; schema_migrations is the migrator's.
GRANTS = """
SELECT format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', current_schema(), $1::text)
UNION ALL
SELECT format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', current_schema(), $1::text)
UNION ALL
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), $1::text)
UNION ALL
SELECT format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO %I', current_schema(), $1::text)
UNION ALL
SELECT format('GRANT EXECUTE ON FUNCTION run_events_ensure_partitions(timestamptz, '
              'timestamptz) TO %I', $1::text)
UNION ALL
SELECT format('GRANT EXECUTE ON FUNCTION service_analyze_stale() TO %I', $1::text)
UNION ALL
(SELECT format('GRANT %s ON %s TO %I',
               CASE c.relname WHEN 'run_events' THEN 'SELECT, INSERT'
                              WHEN 'run_heads' THEN 'SELECT'
                              WHEN 'event_chain_heads' THEN 'SELECT'
                              WHEN 'schema_migrations' THEN 'SELECT'
                              ELSE 'SELECT, INSERT, UPDATE, DELETE' END,
               c.oid::regclass, $1::text)
 FROM pg_class c
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition ORDER BY c.relname)
"""

# Why the connected role could change the event log (NULL: it cannot): a superuser, a
# member of the owner of run_events or of one of its partitions, or a role granted UPDATE,
# DELETE or TRUNCATE on either.
UNPROTECTED_BECAUSE = """
SELECT CASE
    WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN 'superuser'
    WHEN EXISTS (SELECT 1 FROM pg_class c
                 WHERE (c.oid = 'run_events'::regclass OR c.oid IN (
                        SELECT inhrelid FROM pg_inherits
                        WHERE inhparent = 'run_events'::regclass))
                   AND pg_has_role(current_user, c.relowner, 'USAGE')) THEN 'owner'
    WHEN EXISTS (SELECT 1 FROM pg_class c
                 WHERE (c.oid = 'run_events'::regclass OR c.oid IN (
                        SELECT inhrelid FROM pg_inherits
                        WHERE inhparent = 'run_events'::regclass))
                   AND has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE'))
        THEN 'granted UPDATE, DELETE or TRUNCATE'
END"""
# May this role migrate: it owns run_events (or may create it in a fresh database).
CAN_MIGRATE = """
SELECT CASE WHEN to_regclass('run_events') IS NULL
            THEN has_schema_privilege(current_schema(), 'CREATE')
            -- to_regclass, not a ::regclass cast: a cast is folded while planning, so it
            -- would fail on a fresh database even in the branch not taken.
            ELSE pg_has_role(current_user, (SELECT relowner FROM pg_class
                                            WHERE oid = to_regclass('run_events')), 'USAGE')
       END"""

# Role rows are cluster-wide: migrations of two databases of one cluster at once (test
# sessions do it) race on them, and the loser gets one of these. It then tries again.
_RACES = (asyncpg.UniqueViolationError, asyncpg.DuplicateObjectError,
          asyncpg.InternalServerError)  # XX000 "tuple concurrently updated"
ATTEMPTS = 20


class RuntimeRole(NamedTuple):
    name: str
    password: str | None  # None: left as it is (auth by other means, or set by a DBA)


class SameRole(Exception):
    """The runtime role named is the migrating role itself."""


async def ensure_role(conn: asyncpg.Connection, role: RuntimeRole) -> None:
    """Create the runtime role, or reset its attributes (and password); outside a transaction."""
    if role.name == await conn.fetchval("SELECT current_user"):
        raise SameRole(f"the runtime role {role.name!r} is the migrating role itself")
    for attempt in range(ATTEMPTS):
        try:
            exists = await conn.fetchval(ROLE_EXISTS, role.name)
            statement = await conn.fetchval(ALTER_ROLE if exists else CREATE_ROLE,
                                            role.name, role.password)
            await conn.execute(statement)
            return
        except _RACES as exc:
            if attempt == ATTEMPTS - 1 or (isinstance(exc, asyncpg.InternalServerError)
                                           and "concurrently" not in str(exc)):
                raise
            await asyncio.sleep(random.uniform(0.01, 0.1))


async def grant(conn: asyncpg.Connection, name: str) -> None:
    """The runtime role's grants in this database (the caller's transaction)."""
    for row in await conn.fetch(GRANTS, name):
        await conn.execute(row[0])


async def unprotected_because(conn: asyncpg.Connection) -> str | None:
    """Why the connected role could change run_events; None when it cannot."""
    return await conn.fetchval(UNPROTECTED_BECAUSE)


async def can_migrate(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval(CAN_MIGRATE)
