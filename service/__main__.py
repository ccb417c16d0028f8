"""Command line: serve, dev, migrate, tokens, replay, verify, seed (`--help` describes each)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
import time
from typing import Iterator

import asyncpg

from service.app import database as schema
from service.app import devtoken
from service.app import tokens
from service.config import Config
from service.domain.ids import enterprise_id_problem
from service.infra import runtime
from service.infra.db import init_connection as _init
from service.infra.db import dsn_login, redact_dsn, with_login
from service.infra.embedded import DataDirBusy, claim_data_dir
from service.infra.logs import setup_logging
from service.web.app import create_app

log = logging.getLogger("service")

# Scopes a token may carry: what the handlers require (web/handlers, @operation scope=).
KNOWN_SCOPES = tokens.DEFAULT_SCOPES
# `dev` (make run) opens loopback to webhooks unless WEBHOOK_ALLOWED_NETWORKS is set.
DEV_WEBHOOK_NETWORKS = ("127.0.0.0/8", "::1/128")


# make run's embedded database: migrations as its superuser, the service as this role.
EMBEDDED_RUNTIME_ROLE = "pipeline_runs_app"


class CannotConnect(Exception):
    """The database cannot be reached: one line naming it (password hidden)."""


class CannotMigrate(Exception):
    """DATABASE_URL's role may not change the schema, and it needs changing: one line."""


@contextlib.contextmanager
def database(config: Config, replica: bool = False) -> Iterator[Config]:
    """The config with a database: DATABASE_URL, else an embedded PostgreSQL under data_dir
    (replica: with an embedded hot standby as READ_DATABASE_URLS too)."""
    with _database(config, replica) as (cfg, _):
        yield cfg


@contextlib.contextmanager
def _database(config: Config, replica: bool = False) -> Iterator[tuple[Config, str]]:
    """database(), plus the shell command that opens psql on it."""
    if config.database_url:
        yield config, f"psql '{redact_dsn(config.database_url)}'"
        return
    from service.infra.embedded import start_embedded

    embedded = start_embedded(config.data_dir)
    log.info("embedded PostgreSQL at %s", embedded.dsn)
    standby = None
    try:
        if replica:  # make run REPLICA=1: and a hot standby the reads go to
            from service.infra.embedded import start_embedded_standby

            standby = start_embedded_standby(embedded, config.data_dir)
            log.info("embedded standby at %s", standby.dsn)
            config = config.with_(read_database_urls=(*config.read_database_urls, standby.dsn))
        # The owner migrates; the service runs as a role that cannot change the event log.
        runtime = with_login(embedded.dsn, EMBEDDED_RUNTIME_ROLE)
        reads = tuple(with_login(url, EMBEDDED_RUNTIME_ROLE) if standby and url == standby.dsn
                      else url for url in config.read_database_urls)
        yield (config.with_(database_url=runtime, migrate_database_url=embedded.dsn,
                            read_database_urls=reads),
               f"{embedded.psql} '{embedded.dsn}'")
    finally:
        if standby is not None:
            standby.stop()
        embedded.stop()


async def _with_conn(cfg: Config, work, dsn: str | None = None):
    # A bounded connect: a database that accepts TCP but never answers fails the command.
    dsn = dsn or cfg.database_url
    try:
        conn = await asyncpg.connect(dsn, timeout=cfg.db_connect_timeout)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
            ValueError) as exc:  # refused, unknown host, timeout, bad password/db, bad DSN
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CannotConnect(f"cannot connect to the database at "
                            f"{redact_dsn(dsn)}: {reason}") from None
    try:
        return await work(conn)
    finally:
        await conn.close()


def _runtime_role(cfg: Config) -> schema.RuntimeRole | None:
    """DATABASE_URL's login, when migrations go through another one (MIGRATE_DATABASE_URL)."""
    if not cfg.migrate_database_url:
        return None
    user, password = dsn_login(cfg.database_url)
    if user is None or user == dsn_login(cfg.migrate_database_url)[0]:
        return None
    return schema.RuntimeRole(user, password)


async def _migrate(cfg: Config) -> list[str]:
    """migrate: the schema through MIGRATE_DATABASE_URL (else DATABASE_URL), and the runtime
    role's grants."""
    async def work(conn):
        try:
            return await schema.migrate(conn, runtime=_runtime_role(cfg))
        except asyncpg.InsufficientPrivilegeError as exc:
            raise CannotMigrate(f"cannot migrate as {await conn.fetchval('SELECT current_user')}"
                                f": {exc} (MIGRATE_DATABASE_URL names the owner)") from None

    return await _with_conn(cfg, work, cfg.migrate_database_url)


async def _prepare(cfg: Config) -> None:
    """Before a command works on DATABASE_URL: migrate when it can; a runtime role without
    MIGRATE_DATABASE_URL changes nothing and only checks that no migration is pending."""
    if cfg.migrate_database_url:
        await _migrate(cfg)
        return

    async def work(conn):
        if missing := await schema.prepare(conn):
            raise CannotMigrate(f"the schema needs {', '.join(missing)} and "
                                f"{await conn.fetchval('SELECT current_user')} may not apply "
                                f"them: run migrate with MIGRATE_DATABASE_URL first")

    await _with_conn(cfg, work)


def cmd_migrate(config: Config, args) -> int:
    with database(config) as cfg:
        ran = asyncio.run(_migrate(cfg))
        for name in ran:
            print(f"migration {name} applied")
        print(f"schema applied to {redact_dsn(cfg.migrate_database_url or cfg.database_url)}")
        if (role := _runtime_role(cfg)) is not None:
            print(f"runtime role {role.name}: may read and append run_events, never change them")
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def cmd_create_token(config: Config, args) -> int:
    scopes = args.scopes
    with database(config) as cfg:
        async def work(conn):
            return await tokens.create(conn, args.enterprise, args.name, scopes,
                                       args.rate_limit)

        asyncio.run(_prepare(cfg))
        token_id, token = asyncio.run(_with_conn(cfg, work))
    limit = "" if args.rate_limit is None else f", {args.rate_limit} requests/s"
    print(f"token {token_id} for enterprise {args.enterprise} ({','.join(scopes)}{limit}):")
    print(token)
    return 0


def cmd_list_tokens(config: Config, args) -> int:
    with database(config) as cfg:
        rows = asyncio.run(_with_conn(cfg, tokens.list_all))
    print("id\tenterprise\tname\tscopes\tcreated_at\trevoked_at\trate_limit")
    for r in rows:
        rate = "default" if r["rate_limit"] is None else r["rate_limit"]
        print(f"{r['id']}\t{r['enterprise_id']}\t{r['name']}\t{','.join(r['scopes'])}\t"
              f"{r['created_at'].isoformat()}\t{r['revoked_at'].isoformat() if r['revoked_at'] else '-'}"
              f"\t{rate}")
    return 0


def cmd_revoke_token(config: Config, args) -> int:
    with database(config) as cfg:
        done = asyncio.run(_with_conn(
            cfg, lambda conn: tokens.revoke(conn, args.id)))
    if not done:  # an error: on stderr, as every command's
        print(f"python -m service revoke-token: token {args.id} not found or already revoked",
              file=sys.stderr)
        return 1
    print(f"token {args.id} revoked")
    return 0


def cmd_replay(config: Config, args) -> int:
    from service.app.replay import replay

    with database(config) as cfg:
        # The dsn lets a large scan be split across processes (service/app/scan_parts.py).
        report = asyncio.run(_migrated(cfg, lambda conn: replay(
            conn, cfg.database_url, cfg.replay_memory_mb)))
    print(f"replayed {report.events} events of {report.runs} runs in {report.seconds:.2f}s "
          f"({report.rate:,.0f} events/s); repaired {report.repaired} drifted rows and "
          f"{report.counters_repaired} counters, re-checked {report.caught_up} runs under the "
          f"write lock")
    if report.version_drifts:
        print(f"{report.version_drifts} runs have non-consecutive event versions: "
              f"see `.venv/bin/python -m service verify`")
    return 0


def cmd_verify(config: Config, args) -> int:
    from service.app.replay import verify

    with database(config) as cfg:
        started = time.perf_counter()
        result = asyncio.run(_migrated(cfg, lambda conn: verify(
            conn, cfg.database_url, cfg.replay_memory_mb)))
        seconds = time.perf_counter() - started
        chained = _check_chains(cfg)
    for drift in result.drifts:
        enterprise_id, run_id = drift.run_key
        print(f"DRIFT run {run_id} (enterprise {enterprise_id}): {', '.join(drift.fields)}")
    for enterprise_id, run_id in result.version_drifts:
        print(f"DRIFT run {run_id} (enterprise {enterprise_id}): event versions not consecutive")
    for c in result.counter_drifts:
        enterprise_id, pipeline_id, status = c.key
        print(f"DRIFT run_counts {pipeline_id} {status} (enterprise {enterprise_id}): "
              f"{c.actual}, the events give {c.expected}")
    for i in result.insight_drifts:
        enterprise_id, hour, pipeline_id, metric, bin_ = i.key
        print(f"DRIFT run_insights {pipeline_id} {hour.isoformat()} {metric} {bin_} "
              f"(enterprise {enterprise_id}): {i.actual}, the events give {i.expected}")
    for d in result.total_drifts:
        enterprise_id, pipeline_id, at = d.key
        print(f"DRIFT run_insights_totals {pipeline_id} {at.isoformat()} "
              f"(enterprise {enterprise_id}): "
              + ("missing" if d.actual is None else "surplus" if d.expected is None
                 else ", ".join(d.fields) + " differ") + " (the events' running totals)")
    for c in result.closed_drifts:
        print(f"DRIFT run_insights_closed (enterprise {c.enterprise_id}): through "
              f"{c.through.isoformat()} is {c.why}")
    def recovery(v) -> str:  # (recovered_at, failed_at) or None
        return "none" if v is None else f"failed {v[1].isoformat()} recovered {v[0].isoformat()}"

    for r in result.recovery_drifts:
        enterprise_id, pipeline_id, run_id = r.key
        print(f"DRIFT run_recoveries {pipeline_id} {run_id} (enterprise {enterprise_id}): "
              f"{recovery(r.actual)}, the runs give {recovery(r.expected)}")
    print(f"verified {result.events} events of {result.runs} runs in {seconds:.2f}s: "
          f"{len(result.drifts)} drifted, {len(result.counter_drifts)} counters drifted, "
          f"{len(result.version_drifts)} with non-consecutive versions")
    chains_clean = _report_chains(*chained, result.events)
    return 0 if result.clean and chains_clean else 1


def _check_chains(cfg: Config) -> tuple:
    """The hash chains recomputed (app/chain.py): (chains, breaks, seconds)."""
    from service.app.chain import verify_chains

    def connect():
        return asyncpg.connect(cfg.database_url, timeout=cfg.db_connect_timeout)

    # One part a core: the database hashes, each backend on one core.
    parts = max(1, min(8, os.cpu_count() or 1))
    started = time.perf_counter()
    chains, breaks = asyncio.run(_with_conn(
        cfg, lambda conn: verify_chains(conn, connect, parts)))
    return chains, breaks, time.perf_counter() - started


def _report_chains(chains: int, breaks: list, seconds: float, events: int) -> bool:
    for b in breaks:
        event = f" (event {b.event_id})" if b.event_id else ""
        print(f"CHAIN BROKEN enterprise {b.enterprise_id} at position {b.position}{event}: "
              f"{b.reason}")
    print(f"verified the hash chains of {chains} enterprises ({events} events) in "
          f"{seconds:.2f}s: {len(breaks)} broken")
    return not breaks


def cmd_seed(config: Config, args) -> int:
    from service.app.seed import analyze_loaded, seed

    def progress(report) -> None:
        print(f"  {report.runs:,} runs, {report.events:,} events in {report.seconds:.1f}s "
              f"({report.rate:,.0f} runs/s)", flush=True)

    async def analyze() -> None:
        # As the tables' owner: DATABASE_URL's runtime role may not ANALYZE them (PostgreSQL
        # skips them with a warning, and the 1M seed's later batches ran on stale estimates).
        await _with_conn(cfg, analyze_loaded, cfg.migrate_database_url)

    async def work(conn):
        return await seed(conn, args.enterprise, args.pipelines, args.runs, days=args.days,
                          seed=args.seed, batch=args.batch, progress=progress,
                          analyze=analyze if cfg.migrate_database_url else None)

    with database(config) as cfg:
        report = asyncio.run(_migrated(cfg, work))
    print(f"seeded enterprise {report.enterprise_id}: {report.pipelines} pipelines, "
          f"{report.runs:,} runs ({report.live_runs:,} live, {report.stage_runs:,} stage runs), "
          f"{report.events:,} events in {report.seconds:.1f}s ({report.rate:,.0f} runs/s)")
    print("outcomes: " + ", ".join(f"{k} {v:,}" for k, v in report.outcomes.items()))
    return 0


async def _migrated(cfg: Config, work):
    """work(conn) on DATABASE_URL, once the schema is current (_prepare)."""
    await _prepare(cfg)

    async def run(conn):
        await _init(conn)
        return await work(conn)

    return await _with_conn(cfg, run)


def _listen_config(config: Config, args) -> Config:
    """Where to listen: --host/--port/--workers over HOST/PORT/WORKERS; checked free."""
    cfg = config.with_(host=args.host or config.host,
                       port=config.port if args.port is None else args.port,
                       workers=args.workers or config.workers)
    runtime.check_port(cfg.host, cfg.port, from_flag=args.port is not None)
    return cfg


def _serve(cfg: Config, on_ready=None, command: str = "serve") -> int:
    asyncio.run(_prepare(cfg))
    if (reason := asyncio.run(_with_conn(cfg, schema.unprotected_because))) is not None:
        if cfg.require_protected_event_log:
            print(f"python -m service {command}: DATABASE_URL's role is {reason}: it could "
                  f"change the event log (REQUIRE_PROTECTED_EVENT_LOG=true)", file=sys.stderr)
            return 2
        log.warning("the event log is unprotected: DATABASE_URL's role is %s and could change "
                    "or delete events; serve as the runtime role (docs/security.md)", reason)
    # One access line per request comes from web/observe.py, not aiohttp's access logger.
    # runtime: uvloop when installed; with workers > 1, N processes on the one port.
    if cfg.session_secret is None:  # random per start, the same in every worker of it
        cfg = cfg.with_(session_secret=secrets.token_urlsafe(32))
    return runtime.serve(create_app, cfg, on_ready)


def cmd_serve(config: Config, args) -> int:
    config = _listen_config(config, args)
    if config.session_cookie_secure is None:  # TLS in front, or SESSION_COOKIE_SECURE=off
        config = config.with_(session_cookie_secure=True)
    with database(config) as cfg:
        return _serve(cfg)


def cmd_dev(config: Config, args) -> int:
    """make run: embedded PostgreSQL when needed, the dev token, then serve."""
    # Both checks come before anything is touched: a second `make run` leaves the first,
    # its database and its token alone.
    config = _listen_config(config, args)
    if config.session_cookie_secure is None:  # plain http on loopback: SESSION_COOKIE_SECURE
        config = config.with_(session_cookie_secure=False)
    opened = config.webhook_allowed_networks is None
    if opened:  # development: receivers on this machine
        config = config.with_(webhook_allowed_networks=DEV_WEBHOOK_NETWORKS)
    with claim_data_dir(config.data_dir), _database(config, args.replica) as (cfg, psql):
        async def work(conn):
            return await devtoken.dev_token(conn, devtoken.token_path(cfg.data_dir))

        asyncio.run(_prepare(cfg))
        token, reused = asyncio.run(_with_conn(cfg, work))
        path = devtoken.token_path(cfg.data_dir)
        if opened:  # said once the start is ours: a refused start stays one line
            log.warning("dev: webhooks may reach loopback (WEBHOOK_ALLOWED_NETWORKS=%s); "
                        "serve refuses it unless set", ",".join(DEV_WEBHOOK_NETWORKS))
        return _serve(cfg, lambda: _print_dev_banner(cfg, token, reused, path, psql), "dev")


def _print_dev_banner(cfg: Config, token: str, reused: bool, path, psql: str) -> None:
    """What `make run` is for, printed last (once the port listens) so it is easy to find."""
    base = f"http://{cfg.host}:{cfg.port}"
    kept = "kept from the last start" if reused else "new"
    # `Dev token: <token>` stays one line (issue 2's contract: scripts grep it); scripts
    # may as well read the token file.
    print(f"""
  pipeline-runs is listening on {base}   (Ctrl-C stops it)

  Dev token: {token}
      ({kept}; saved in {path}, rm it and restart to rotate)
  API:   {base}/api/pipelines/v0/
  Docs:  {base}/api/docs
  Pages: {base}/ui/   (sign in with the dev token)
  Try:   curl -s -H 'Authorization: Bearer {token}' {base}/api/pipelines/v0/runs/
  psql:  {psql}
  Webhooks reach global addresses{_opened(cfg)}
""", flush=True)


def _opened(cfg: Config) -> str:
    nets = ",".join(cfg.webhook_allowed_networks or ())
    return f" and {nets} (WEBHOOK_ALLOWED_NETWORKS)" if nets else ""


EPILOG = """\
The database: DATABASE_URL (postgresql://user:password@host:port/db) when set; unset,
every command starts (or attaches to, when `make run` already runs it) an embedded
PostgreSQL with its data under DATA_DIR (default .data). MIGRATE_DATABASE_URL, when set,
is the tables' owner: migrations go through it, and DATABASE_URL's user becomes the
runtime role that cannot change the event log (docs/security.md). Other settings
(PORT, LOG_FORMAT, ...) are in docs/configuration.md. `python -m service COMMAND --help` describes
a command's options.
"""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _scopes(raw: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    if not scopes:
        raise argparse.ArgumentTypeError("at least one scope is required")
    unknown = [s for s in scopes if s not in KNOWN_SCOPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scope {', '.join(map(repr, unknown))} "
                                         f"(known: {', '.join(KNOWN_SCOPES)})")
    return scopes


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return raw.strip()


def _enterprise(raw: str) -> str:
    text = _non_empty(raw)
    problem = enterprise_id_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m service", epilog=EPILOG,
                    description="pipeline-runs: the Pipeline Runs API service and its tools.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_ + ".", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    for name, func, help_ in (
            ("serve", cmd_serve, "apply the schema, then serve the API (JSON log lines)"),
            ("dev", cmd_dev, "what `make run` runs: serve for development, with readable log "
                             "lines and a dev token (kept in DATA_DIR/dev-token) printed last")):
        p = command(name, func, help_)
        p.add_argument("--host", help="address to listen on (default HOST or 127.0.0.1)")
        p.add_argument("--port", type=int, help="port to listen on (default PORT or 8080)")
        p.add_argument("--workers", type=int,
                       help="processes serving the port (SO_REUSEPORT); default WORKERS or 1")
        if name == "dev":
            p.add_argument("--replica", action="store_true",
                           help="embedded PostgreSQL: also a hot standby the reads go to")
    command("migrate", cmd_migrate, "apply pending migrations/, then schema.sql")
    p = command("create-token", cmd_create_token,
                "create an API token; its secret is printed once, as the last line")
    p.add_argument("--enterprise", required=True, type=_enterprise,
                   help="the enterprise whose data the token reaches (A-Z a-z 0-9 . _ -, "
                        "at most 64)")
    p.add_argument("--name", required=True, type=_non_empty,
                   help="a label for the token (shown by list-tokens)")
    p.add_argument("--scopes", type=_scopes, default=KNOWN_SCOPES,
                   help=f"comma-separated, of {', '.join(KNOWN_SCOPES)} (default: all)")
    p.add_argument("--rate-limit", type=_non_negative, metavar="N",
                   help="this token's requests/s (default RATE_LIMIT_RPS; 0: not limited)")
    command("list-tokens", cmd_list_tokens, "list tokens (never their secret)")
    p = command("revoke-token", cmd_revoke_token, "revoke a token by id (see list-tokens)")
    p.add_argument("id", type=int, help="the token's id")
    command("replay", cmd_replay, "rebuild the projections from run_events")
    command("verify", cmd_verify,
            "check the projections against run_events (exit 1 when they drift)")
    p = command("seed", cmd_seed, "bulk-generate runs with full event histories (COPY)")
    p.add_argument("--enterprise", required=True, type=_enterprise,
                   help="the enterprise to seed (A-Z a-z 0-9 . _ -, at most 64)")
    p.add_argument("--pipelines", type=_positive, default=10,
                   help="new pipelines to create (default: %(default)s)")
    p.add_argument("--runs", type=_non_negative, default=1000,
                   help="runs spread over them (default: %(default)s)")
    p.add_argument("--days", type=_positive_float, default=90.0,
                   help="runs are created over the last DAYS (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: same seed, same data (default: %(default)s)")
    p.add_argument("--batch", type=_positive, default=5000,
                   help="runs per COPY transaction (default: %(default)s)")
    return parser


def _log_format(command: str) -> str:
    """LOG_FORMAT's default: text for `dev` and for a tool run in a terminal; JSON for
    `serve` (log collectors read it) and for a tool whose stderr goes to a file or a pipe."""
    if command == "dev" or (command != "serve" and sys.stderr.isatty()):
        return "text"
    return "json"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
    except ValueError as exc:  # e.g. LOG_FORMAT=xml, PORT=abc
        print(f"python -m service: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config, default_format=_log_format(args.command))
    try:
        return args.func(config, args)
    except (CannotConnect, CannotMigrate, runtime.CannotListen, DataDirBusy) as exc:
        print(f"python -m service {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
