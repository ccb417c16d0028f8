"""Real service processes for the tests: free ports, a process's children, readiness, and
`python -m service serve` / `dev` as subprocesses (Service, Dev)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from tests.helpers import as_runtime, wait_until

ROOT = Path(__file__).resolve().parent.parent
MOUNT = "/pipelines/v0"
TOKEN_LINE = re.compile(r"^\s*Dev token: (pr_\S+)\s*$", re.M)  # `dev`'s banner: one line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> set[int]:
    """The pids whose parent is `pid` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def listening(pids: set[int], port: int) -> set[int]:
    """Those of `pids` holding a listening IPv4 socket on `port` (from /proc): with
    SO_REUSEPORT a worker takes connections only once its own socket listens."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    found = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def ready(port: int) -> bool:
    """Whether the service on `port` answers /health/ready with a 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_for(predicate, timeout: float = 60.0) -> bool:
    """Poll a condition of another process (no event loop here): True once it holds, False
    after `timeout` s. Every caller asserts the result, with the process's log as message."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Service:
    """`python -m service serve` as a subprocess; stderr goes to a file for the asserts."""

    def __init__(self, dsn: str, log_dir: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dsn = dsn
        self.log = log_dir / f"service-{self.port}.log"
        self.env = {"DATABASE_URL": as_runtime(dsn), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text", **env}
        self.proc: subprocess.Popen | None = None

    async def start(self, seconds: float = 20) -> "Service":
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        async with aiohttp.ClientSession() as session:
            async def ready() -> bool:
                assert self.proc.poll() is None, self.stderr()
                try:
                    async with session.get(self.url + "/health/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(ready, seconds, what="the service to become ready")
        return self

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Dev:
    """One `python -m service dev` process; stdout and stderr kept in files."""

    def __init__(self, tmp: Path, data_dir: Path, port: int, name: str, **env: str):
        self.port, self.data_dir = port, data_dir
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        environ = {k: v for k, v in os.environ.items() if k not in ("LOG_FORMAT", "LOG_LEVEL")}
        if env.get("DATABASE_URL"):  # migrations as the owner, the service as the runtime role
            env = {**env, "MIGRATE_DATABASE_URL": env["DATABASE_URL"],
                   "DATABASE_URL": as_runtime(env["DATABASE_URL"])}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "dev"], cwd=ROOT, stdout=out, stderr=err,
                env={**environ, "PORT": str(port), "DATA_DIR": str(data_dir),
                     "SHUTDOWN_TIMEOUT": "2", **env})

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_ready(self, timeout: float = 90.0) -> str:
        """The token of the banner, once the banner is printed (the port listens then)."""
        ok = wait_for(lambda: TOKEN_LINE.search(self.stdout()) or self.proc.poll() is not None,
                   timeout)
        assert ok and self.proc.poll() is None, self.stdout() + self.stderr()
        return TOKEN_LINE.search(self.stdout()).group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
