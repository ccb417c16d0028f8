"""One settings object, built from the environment; nothing else reads os.environ."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from typing import Mapping
from urllib.parse import urlsplit


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return default if raw in (None, "") else int(raw)


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    return None if raw in (None, "") else int(raw)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).lower()
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _floats(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    values = tuple(float(v) for v in raw.split(",") if v.strip())
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{name} must be a comma-separated list of seconds >= 0")
    return values


def _words(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in (env.get(name) or "").split(",") if w.strip())


def _cidrs(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    if name not in env:
        return None
    cidrs = _words(env, name)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return cidrs


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return default if raw in (None, "") else float(raw)


def _public_url(raw: str | None) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"PUBLIC_URL must be http(s)://host[:port][/path], not {raw!r}")
    return raw.rstrip("/")


@dataclass(frozen=True)
class Config:
    database_url: str | None = None
    # The owner role's URL (docs/security.md): migrate (and serve/dev before serving) apply
    # the schema through it and make DATABASE_URL's user the runtime role. None: DATABASE_URL.
    migrate_database_url: str | None = None
    # serve/dev refuse to start (exit 2) when DATABASE_URL's role could change run_events.
    require_protected_event_log: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = ".data"
    log_level: str = "INFO"
    # "json": one object per line; "text": for humans; None: the command's own default
    # (json for serve, text for dev: setup_logging's `default_format`).
    log_format: str | None = None
    metrics_port: int | None = None  # /metrics on this port of metrics_host; None: not served
    metrics_host: str = "127.0.0.1"  # loopback: metrics show every tenant's traffic
    metrics_on_api_port: bool = False  # the old way: /metrics on the API port, to anyone
    # The service's address as its clients see it (https://runs.example.com): list links
    # and the pages' Origin check use it; None: the request's own Host header and scheme.
    public_url: str | None = None
    # The /ui/ cookie's Secure flag (sent over HTTPS only). None: the command's default:
    # serve on, dev off; an app built directly (tests): on when the request came over HTTPS.
    session_cookie_secure: bool | None = None
    pool_min: int = 2
    pool_max: int = 10
    pool_acquire_timeout: float = 5.0
    db_connect_timeout: float = 5.0  # asyncpg's own default is 60 s
    statement_timeout_ms: int = 5000
    # A connection idle inside a transaction this long is closed by the server: nothing can
    # pin one of the service's connections for ever (0: no limit).
    idle_in_transaction_timeout_ms: int = 60_000
    shutdown_timeout: float = 10.0  # SIGTERM: how long in-flight requests may finish
    token_cache_seconds: float = 2.0
    timeout_sweep_seconds: float = 60.0
    # Tables autovacuum does not analyze (it is off) are analyzed by the service when due,
    # checked this often (app/statistics.py); 0: never.
    analyze_check_seconds: float = 5.0
    # Long-polls re-query this often besides NOTIFY wake-ups (a lost one only delays them).
    feed_tick_seconds: float = 1.0
    max_body_bytes: int = 1024 * 1024
    event_loop: str = "auto"  # uvloop when installed (the `fast` extra); or uvloop / asyncio
    workers: int = 1  # serve: processes sharing the port (SO_REUSEPORT)
    group_commit: bool = True  # concurrent simple status changes share a commit (app/groupcommit.py)
    group_commit_depth: int = 2  # statements of one group-commit lane in flight at once
    stream_heartbeat_seconds: float = 15.0  # GET /events/stream: a comment line this often
    webhooks: bool = True  # the webhook dispatcher runs inside serve
    webhook_timeout_seconds: float = 10.0  # a delivery's 2xx must come within this
    # Seconds between a delivery's attempts; when all failed the subscription is disabled.
    webhook_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_allowed_hosts: tuple[str, ...] = ()  # host names or CIDRs; empty: any safe host
    webhook_concurrency: int = 16  # deliveries in flight per process
    # CIDRs webhooks may reach besides global unicast; None (unset): none, but `dev` loopback.
    webhook_allowed_networks: tuple[str, ...] | None = None
    webhook_concurrency_per_enterprise: int = 8  # of webhook_concurrency per enterprise; 0: all
    webhook_max_per_enterprise: int = 20  # subscriptions an enterprise may have; 0: no cap
    # OTLP/HTTP collector (e.g. http://collector:4318): set, requests and SQL are traced
    # (infra/tracing.py); unset, OpenTelemetry is not even imported.
    otel_endpoint: str | None = None
    otel_service_name: str = "pipeline-runs"
    # replay/verify: memory for the folds of all runs at once; less splits the scan into
    # more run-id ranges, each reading the whole log again (app/scan_parts.py).
    replay_memory_mb: int = 8192
    # Encrypts the /ui/ session cookie; None: a random key per start (sign-ins end on restart).
    session_secret: str | None = None
    # Fairness (web/limits.py): per token and per process; 0 turns a limit off.
    rate_limit_rps: int = 1000  # token bucket: sustained requests/s per token
    rate_limit_burst: int = 2000  # the bucket's size
    # Over the rate, a request waits up to this long for the bucket (0: a 429 at once).
    rate_limit_delay_ms: int = 0
    max_waits_per_token: int = 5  # long-polls, streams and exports open at once per token
    feed_scan_cap: int = 10_000  # filtered feed: events examined per request (then a cursor)
    read_database_urls: tuple[str, ...] = ()  # hot standbys of database_url (infra/replicas.py)
    replica_wait_ms: int = 200  # how long a read with a token waits for a standby to catch up
    replica_max_lag_seconds: float = 30.0  # a standby further behind leaves the rotation
    replica_probe_seconds: float = 1.0  # how often standbys are checked (and retried when down)
    # Ed25519 key (PEM, PKCS#8) that signs audit checkpoints; None: {data_dir}/audit-signing.key,
    # made when missing (infra/signing.py). Keep it: old checkpoints are checked against it.
    audit_key_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            migrate_database_url=env.get("MIGRATE_DATABASE_URL") or None,
            require_protected_event_log=_choice(env, "REQUIRE_PROTECTED_EVENT_LOG", "false",
                                                ("true", "false")) == "true",
            host=env.get("HOST") or "127.0.0.1",
            port=_int(env, "PORT", 8080),
            data_dir=env.get("DATA_DIR") or ".data",
            log_level=env.get("LOG_LEVEL") or "INFO",
            log_format=(_choice(env, "LOG_FORMAT", "json", ("json", "text"))
                        if env.get("LOG_FORMAT") else None),
            metrics_port=_optional_int(env, "METRICS_PORT"),
            metrics_host=env.get("METRICS_HOST") or "127.0.0.1",
            metrics_on_api_port=_choice(env, "METRICS_ON_API_PORT", "off", ("on", "off")) == "on",
            public_url=_public_url(env.get("PUBLIC_URL")),
            session_cookie_secure=(_choice(env, "SESSION_COOKIE_SECURE", "on", ("on", "off"))
                                   == "on" if env.get("SESSION_COOKIE_SECURE") else None),
            pool_min=_int(env, "DB_POOL_MIN", 2),
            pool_max=_int(env, "DB_POOL_MAX", 10),
            pool_acquire_timeout=_float(env, "DB_ACQUIRE_TIMEOUT", 5.0),
            db_connect_timeout=_float(env, "DB_CONNECT_TIMEOUT", 5.0),
            shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", 10.0),
            statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 5000),
            idle_in_transaction_timeout_ms=_int(env, "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                                                60_000),
            token_cache_seconds=_float(env, "TOKEN_CACHE_SECONDS", 2.0),
            timeout_sweep_seconds=_float(env, "TIMEOUT_SWEEP_SECONDS", 60.0),
            analyze_check_seconds=_float(env, "ANALYZE_CHECK_SECONDS", 5.0),
            feed_tick_seconds=_float(env, "FEED_TICK_SECONDS", 1.0),
            event_loop=_choice(env, "EVENT_LOOP", "auto", ("auto", "uvloop", "asyncio")),
            workers=_int(env, "WORKERS", 1),
            group_commit=_choice(env, "GROUP_COMMIT", "on", ("on", "off")) == "on",
            group_commit_depth=_int(env, "GROUP_COMMIT_DEPTH", 2),
            stream_heartbeat_seconds=_float(env, "STREAM_HEARTBEAT_SECONDS", 15.0),
            webhooks=_choice(env, "WEBHOOKS", "on", ("on", "off")) == "on",
            webhook_timeout_seconds=_float(env, "WEBHOOK_TIMEOUT_SECONDS", 10.0),
            webhook_retry_schedule=_floats(env, "WEBHOOK_RETRY_SCHEDULE",
                                           (5, 300, 1800, 7200, 18000, 36000, 36000)),
            webhook_allowed_hosts=_words(env, "WEBHOOK_ALLOWED_HOSTS"),
            webhook_concurrency=_int(env, "WEBHOOK_CONCURRENCY", 16),
            webhook_allowed_networks=_cidrs(env, "WEBHOOK_ALLOWED_NETWORKS"),
            webhook_concurrency_per_enterprise=_int(env, "WEBHOOK_CONCURRENCY_PER_ENTERPRISE", 8),
            webhook_max_per_enterprise=_int(env, "WEBHOOK_MAX_PER_ENTERPRISE", 20),
            otel_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            otel_service_name=env.get("OTEL_SERVICE_NAME") or "pipeline-runs",
            replay_memory_mb=_int(env, "REPLAY_MEMORY_MB", 8192),
            session_secret=env.get("SESSION_SECRET") or None,
            rate_limit_rps=_int(env, "RATE_LIMIT_RPS", 1000),
            rate_limit_burst=_int(env, "RATE_LIMIT_BURST", 2000),
            rate_limit_delay_ms=_int(env, "RATE_LIMIT_DELAY_MS", 0),
            max_waits_per_token=_int(env, "MAX_WAITS_PER_TOKEN", 5),
            feed_scan_cap=_int(env, "FEED_SCAN_CAP", 10_000),
            read_database_urls=tuple(url.strip() for url in
                                     (env.get("READ_DATABASE_URLS") or "").split(",")
                                     if url.strip()),
            replica_wait_ms=_int(env, "REPLICA_WAIT_MS", 200),
            replica_max_lag_seconds=_float(env, "REPLICA_MAX_LAG_SECONDS", 30.0),
            replica_probe_seconds=_float(env, "REPLICA_PROBE_SECONDS", 1.0),
            audit_key_file=env.get("AUDIT_KEY_FILE") or None,
        )

    @property
    def audit_key_path(self) -> str:
        return self.audit_key_file or f"{self.data_dir}/audit-signing.key"

    def with_(self, **changes) -> "Config":
        return replace(self, **changes)
