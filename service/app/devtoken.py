"""The dev token of `make run`: kept in a 0600 file beside the data, reused while valid."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import asyncpg

from service.store import tokens as token_store

DEV_ENTERPRISE = "dev"
DEV_TOKEN_NAME = "dev"
TOKEN_FILE = "dev-token"


def token_path(data_dir: str) -> Path:
    return Path(data_dir).expanduser() / TOKEN_FILE


async def dev_token(conn: asyncpg.Connection, path: Path) -> tuple[str, bool]:
    """The token in `path` while the database still accepts it, else a new one (saved).

    Returns (token, reused). The database keeps only the token's hash, as for every token;
    the secret itself lives only in the file, readable by its owner alone. A file others
    may read is not trusted to have kept the secret: the token is replaced.
    """
    saved = _read(path)
    if saved is not None:
        row = await token_store.find_token(conn, saved)
        if row is not None and (row["enterprise_id"], row["name"]) == (DEV_ENTERPRISE,
                                                                      DEV_TOKEN_NAME):
            return saved, True
    _, token = await token_store.rotate_token(conn, DEV_ENTERPRISE, DEV_TOKEN_NAME)
    _write(path, token)
    return token, False


def _read(path: Path) -> str | None:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or info.st_uid != os.getuid():
            return None
        return path.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def _write(path: Path, token: str) -> None:
    # Created 0600 from the start (never briefly readable), then renamed over the old one.
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(temp, path)
