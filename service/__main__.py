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

from service.app import devtoken
from service.config import Config
from service.infra import runtime
from service.infra.db import init_connection as _init
from service.infra.db import redact_dsn
from service.infra.embedded import DataDirBusy, claim_data_dir
from service.infra.logs import setup_logging
from service.store import meta
from service.store import tokens as token_store
from service.web.app import create_app

log = logging.getLogger("service")

# Scopes a token may carry: what the handlers require (web/handlers, @operation scope=).
KNOWN_SCOPES = token_store.DEFAULT_SCOPES


class CannotConnect(Exception):
    """The database cannot be reached: one line naming it (password hidden)."""


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
        yield config.with_(database_url=embedded.dsn), f"{embedded.psql} '{embedded.dsn}'"
    finally:
        if standby is not None:
            standby.stop()
        embedded.stop()


async def _with_conn(cfg: Config, work):
    # A bounded connect: a database that accepts TCP but never answers fails the command.
    try:
        conn = await asyncpg.connect(cfg.database_url, timeout=cfg.db_connect_timeout)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
            ValueError) as exc:  # refused, unknown host, timeout, bad password/db, bad DSN
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CannotConnect(f"cannot connect to the database at "
                            f"{redact_dsn(cfg.database_url)}: {reason}") from None
    try:
        return await work(conn)
    finally:
        await conn.close()


def cmd_migrate(config: Config, args) -> int:
    with database(config) as cfg:
        ran = asyncio.run(_with_conn(cfg, meta.migrate))
        for name in ran:
            print(f"migration {name} applied")
        print(f"schema applied to {redact_dsn(cfg.database_url)}")
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
            await meta.migrate(conn)
            return await token_store.create_token(conn, args.enterprise, args.name, scopes,
                                                  args.rate_limit)

        token_id, token = asyncio.run(_with_conn(cfg, work))
    limit = "" if args.rate_limit is None else f", {args.rate_limit} requests/s"
    print(f"token {token_id} for enterprise {args.enterprise} ({','.join(scopes)}{limit}):")
    print(token)
    return 0


def cmd_list_tokens(config: Config, args) -> int:
    with database(config) as cfg:
        rows = asyncio.run(_with_conn(cfg, token_store.list_tokens))
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
            cfg, lambda conn: token_store.revoke_token(conn, args.id)))
    print(f"token {args.id} revoked" if done else f"token {args.id} not found or already revoked")
    return 0 if done else 1


def cmd_replay(config: Config, args) -> int:
    from service.app.replay import replay

    with database(config) as cfg:
        # The dsn lets a large scan be split across processes (service/app/scan_parts.py).
        report = asyncio.run(_with_conn(cfg, _migrated(
            lambda conn: replay(conn, cfg.database_url, cfg.replay_memory_mb))))
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
        result = asyncio.run(_with_conn(cfg, _migrated(
            lambda conn: verify(conn, cfg.database_url, cfg.replay_memory_mb))))
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
    from service.app.seed import seed

    def progress(report) -> None:
        print(f"  {report.runs:,} runs, {report.events:,} events in {report.seconds:.1f}s "
              f"({report.rate:,.0f} runs/s)", flush=True)

    async def work(conn):
        return await seed(conn, args.enterprise, args.pipelines, args.runs, days=args.days,
                          seed=args.seed, batch=args.batch, progress=progress)

    with database(config) as cfg:
        report = asyncio.run(_with_conn(cfg, _migrated(work)))
    print(f"seeded enterprise {report.enterprise_id}: {report.pipelines} pipelines, "
          f"{report.runs:,} runs ({report.live_runs:,} live, {report.stage_runs:,} stage runs), "
          f"{report.events:,} events in {report.seconds:.1f}s ({report.rate:,.0f} runs/s)")
    print("outcomes: " + ", ".join(f"{k} {v:,}" for k, v in report.outcomes.items()))
    return 0


def _migrated(work):
    async def run(conn):
        await meta.migrate(conn)
        await _init(conn)
        return await work(conn)

    return run


def _listen_config(config: Config, args) -> Config:
    """Where to listen: --host/--port/--workers over HOST/PORT/WORKERS; checked free."""
    cfg = config.with_(host=args.host or config.host,
                       port=config.port if args.port is None else args.port,
                       workers=args.workers or config.workers)
    runtime.check_port(cfg.host, cfg.port, from_flag=args.port is not None)
    return cfg


def _serve(cfg: Config, on_ready=None) -> int:
    asyncio.run(_with_conn(cfg, meta.migrate))
    # One access line per request comes from web/observe.py, not aiohttp's access logger.
    # runtime: uvloop when installed; with workers > 1, N processes on the one port.
    if cfg.session_secret is None:  # random per start, the same in every worker of it
        cfg = cfg.with_(session_secret=secrets.token_urlsafe(32))
    return runtime.serve(create_app, cfg, on_ready)


def cmd_serve(config: Config, args) -> int:
    config = _listen_config(config, args)
    with database(config) as cfg:
        return _serve(cfg)


def cmd_dev(config: Config, args) -> int:
    """make run: embedded PostgreSQL when needed, the dev token, then serve."""
    # Both checks come before anything is touched: a second `make run` leaves the first,
    # its database and its token alone.
    config = _listen_config(config, args)
    with claim_data_dir(config.data_dir), _database(config, args.replica) as (cfg, psql):
        async def work(conn):
            await meta.migrate(conn)
            return await devtoken.dev_token(conn, devtoken.token_path(cfg.data_dir))

        token, reused = asyncio.run(_with_conn(cfg, work))
        path = devtoken.token_path(cfg.data_dir)
        return _serve(cfg, lambda: _print_dev_banner(cfg, token, reused, path, psql))


def _print_dev_banner(cfg: Config, token: str, reused: bool, path, psql: str) -> None:
    """What `make run` is for, printed last (once the port listens) so it is easy to find."""
    base = f"http://{cfg.host}:{cfg.port}"
    kept = "kept from the last start" if reused else "new"
    print(f"""
  pipeline-runs is listening on {base}   (Ctrl-C stops it)

  Dev token ({kept}; saved in {path}, rm it and restart to rotate):
      {token}
  Try:   curl -s -H 'Authorization: Bearer {token}' {base}/api/pipelines/v0/runs/
  Docs:  {base}/api/docs
  psql:  {psql}
""", flush=True)


EPILOG = """\
The database: DATABASE_URL (postgresql://user:password@host:port/db) when set; unset,
every command starts (or attaches to, when `make run` already runs it) an embedded
PostgreSQL with its data under DATA_DIR (default .data). Other settings (PORT, LOG_FORMAT,
...) are in README's configuration table. `python -m service COMMAND --help` describes
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
    p.add_argument("--enterprise", required=True, type=_non_empty,
                   help="the enterprise whose data the token reaches")
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
    p.add_argument("--enterprise", required=True, type=_non_empty,
                   help="the enterprise to seed")
    p.add_argument("--pipelines", type=int, default=10, help="new pipelines to create")
    p.add_argument("--runs", type=int, default=1000, help="runs spread over them")
    p.add_argument("--days", type=float, default=30.0, help="runs start over the last DAYS")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    p.add_argument("--batch", type=int, default=5000, help="runs per COPY transaction")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
    except ValueError as exc:  # e.g. LOG_FORMAT=xml, PORT=abc
        print(f"python -m service: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config, default_format="text" if args.command == "dev" else "json")
    try:
        return args.func(config, args)
    except (CannotConnect, runtime.CannotListen, DataDirBusy) as exc:
        print(f"python -m service {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
