"""One settings object, built from the environment; nothing else reads os.environ."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Mapping


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return default if raw in (None, "") else int(raw)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return default if raw in (None, "") else float(raw)


@dataclass(frozen=True)
class Config:
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = ".data"
    log_level: str = "INFO"
    pool_min: int = 2
    pool_max: int = 10
    pool_acquire_timeout: float = 5.0
    statement_timeout_ms: int = 5000
    token_cache_seconds: float = 2.0
    timeout_sweep_seconds: float = 60.0
    max_body_bytes: int = 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            host=env.get("HOST") or "127.0.0.1",
            port=_int(env, "PORT", 8080),
            data_dir=env.get("DATA_DIR") or ".data",
            log_level=env.get("LOG_LEVEL") or "INFO",
            pool_min=_int(env, "DB_POOL_MIN", 2),
            pool_max=_int(env, "DB_POOL_MAX", 10),
            pool_acquire_timeout=_float(env, "DB_ACQUIRE_TIMEOUT", 5.0),
            statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 5000),
            token_cache_seconds=_float(env, "TOKEN_CACHE_SECONDS", 2.0),
            timeout_sweep_seconds=_float(env, "TIMEOUT_SWEEP_SECONDS", 60.0),
        )

    def with_(self, **changes) -> "Config":
        return replace(self, **changes)
