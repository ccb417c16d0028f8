"""Command line: serve, dev, migrate, create-token, list-tokens, revoke-token."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Iterator

import asyncpg

from service.infra import runtime
from service.web.app import create_app
from service.config import Config
from service.infra.db import init_connection as _init
from service.infra.db import redact_dsn
from service.infra.logs import setup_logging
from service.store import meta
from service.store import tokens as token_store

log = logging.getLogger("service")

DEV_ENTERPRISE = "dev"
DEV_TOKEN_NAME = "dev"


@contextlib.contextmanager
def database(config: Config) -> Iterator[Config]:
    """The config with a database: DATABASE_URL, else an embedded PostgreSQL under data_dir."""
    if config.database_url:
        yield config
        return
    from service.infra.embedded import start_embedded  # imported lazily: only dev machines need it

    embedded = start_embedded(config.data_dir)
    log.info("embedded PostgreSQL at %s", embedded.dsn)
    try:
        yield config.with_(database_url=embedded.dsn)
    finally:
        embedded.stop()


async def _with_conn(cfg: Config, work):
    # A bounded connect: a database that accepts TCP but never answers fails the command.
    conn = await asyncpg.connect(cfg.database_url, timeout=cfg.db_connect_timeout)
    try:
        return await work(conn)
    finally:
        await conn.close()


def cmd_migrate(config: Config, args) -> int:
    with database(config) as cfg:
        asyncio.run(_with_conn(cfg, meta.migrate))
        print(f"schema applied to {redact_dsn(cfg.database_url)}")
    return 0


def cmd_create_token(config: Config, args) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    with database(config) as cfg:
        async def work(conn):
            await meta.migrate(conn)
            return await token_store.create_token(conn, args.enterprise, args.name, scopes)

        token_id, token = asyncio.run(_with_conn(cfg, work))
    print(f"token {token_id} for enterprise {args.enterprise} ({','.join(scopes)}):")
    print(token)
    return 0


def cmd_list_tokens(config: Config, args) -> int:
    with database(config) as cfg:
        rows = asyncio.run(_with_conn(cfg, token_store.list_tokens))
    print("id\tenterprise\tname\tscopes\tcreated_at\trevoked_at")
    for r in rows:
        print(f"{r['id']}\t{r['enterprise_id']}\t{r['name']}\t{','.join(r['scopes'])}\t"
              f"{r['created_at'].isoformat()}\t{r['revoked_at'].isoformat() if r['revoked_at'] else '-'}")
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
            lambda conn: replay(conn, cfg.database_url))))
    print(f"replayed {report.events} events of {report.runs} runs in {report.seconds:.2f}s "
          f"({report.rate:,.0f} events/s); repaired {report.repaired} drifted rows and "
          f"{report.counters_repaired} counters, re-checked {report.caught_up} runs under the "
          f"write lock")
    if report.version_drifts:
        print(f"{report.version_drifts} runs have non-consecutive event versions: "
              f"see `python -m service verify`")
    return 0


def cmd_verify(config: Config, args) -> int:
    from service.app.replay import verify

    with database(config) as cfg:
        started = time.perf_counter()
        result = asyncio.run(_with_conn(cfg, _migrated(
            lambda conn: verify(conn, cfg.database_url))))
        seconds = time.perf_counter() - started
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
    return 0 if result.clean else 1


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


def _serve(cfg: Config, host: str, port: int, workers: int | None = None) -> int:
    asyncio.run(_with_conn(cfg, meta.migrate))
    # One access line per request comes from web/observe.py, not aiohttp's access logger.
    # runtime: uvloop when installed; with workers > 1, N processes on the one port.
    cfg = cfg.with_(host=host, port=port, workers=workers or cfg.workers)
    return runtime.serve(create_app, cfg)


def cmd_serve(config: Config, args) -> int:
    with database(config) as cfg:
        port = cfg.port if args.port is None else args.port
        return _serve(cfg, args.host or cfg.host, port, args.workers)


def cmd_dev(config: Config, args) -> int:
    """make run: embedded PostgreSQL when needed, a fresh dev token, then serve."""
    with database(config) as cfg:
        async def work(conn):
            await meta.migrate(conn)
            # Tokens are stored only as hashes, so the dev token is rotated on each start.
            return await token_store.rotate_token(conn, DEV_ENTERPRISE, DEV_TOKEN_NAME)

        _, token = asyncio.run(_with_conn(cfg, work))
        host, port = args.host or cfg.host, args.port or cfg.port
        base = f"http://{host}:{port}/api/pipelines/v0"
        print(f"Dev token: {token}", flush=True)
        print(f"Try: curl -s -H 'Authorization: Bearer {token}' {base}/runs/", flush=True)
        print(f"API docs: http://{host}:{port}/api/docs", flush=True)
        return _serve(cfg, host, port, args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (("serve", cmd_serve, "serve the API"),
                              ("dev", cmd_dev, "serve for development (make run)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--workers", type=int,
                       help="processes serving the port (SO_REUSEPORT); default WORKERS or 1")
        p.set_defaults(func=func)
    sub.add_parser("migrate", help="apply schema.sql").set_defaults(func=cmd_migrate)
    p = sub.add_parser("create-token", help="create an API token (printed as the last line)")
    p.add_argument("--enterprise", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", default=",".join(token_store.DEFAULT_SCOPES))
    p.set_defaults(func=cmd_create_token)
    sub.add_parser("list-tokens", help="list tokens (never their secret)").set_defaults(
        func=cmd_list_tokens)
    sub.add_parser("replay", help="rebuild the projection from run_events").set_defaults(
        func=cmd_replay)
    sub.add_parser("verify", help="check the projection against run_events").set_defaults(
        func=cmd_verify)
    p = sub.add_parser("seed", help="bulk-generate runs with full event histories (COPY)")
    p.add_argument("--enterprise", required=True)
    p.add_argument("--pipelines", type=int, default=10, help="new pipelines to create")
    p.add_argument("--runs", type=int, default=1000, help="runs spread over them")
    p.add_argument("--days", type=float, default=30.0, help="runs start over the last DAYS")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    p.add_argument("--batch", type=int, default=5000, help="runs per COPY transaction")
    p.set_defaults(func=cmd_seed)
    p = sub.add_parser("revoke-token", help="revoke a token by id")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_revoke_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = Config.from_env()
    setup_logging(config)
    return args.func(config, args)


if __name__ == "__main__":
    sys.exit(main())
