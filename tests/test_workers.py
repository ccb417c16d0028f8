"""`serve --workers N`: N processes on one port, supervised; SIGTERM stops them all."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT, children, free_port, ready, wait_for
from tests.helpers import as_runtime

from service.config import Config
from service.infra.runtime import new_event_loop



@pytest.fixture
def db_dsn(own_db):
    return own_db


def _two_workers(db_dsn: str, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`serve --workers 2` on a free port, once both workers run and it answers."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": as_runtime(db_dsn), "LOG_FORMAT": "text",
           "SHUTDOWN_TIMEOUT": "2"}
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    assert wait_for(lambda: len(children(proc.pid)) == 2 and ready(port)), \
        (tmp_path / "serve.log").read_text()
    return proc, port


def test_two_workers_share_the_port_restart_and_stop_on_sigterm(db_dsn, tmp_path):
    proc, port = _two_workers(db_dsn, tmp_path)
    try:
        workers = children(proc.pid)
        # Both workers listen on the port (SO_REUSEPORT): each one answers on its own too.
        for _ in range(20):
            assert ready(port)

        # A worker that dies is replaced.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: len(children(proc.pid) - {victim}) == 2), \
            (tmp_path / "serve.log").read_text()
        assert wait_for(lambda: ready(port))

        # SIGTERM to the supervisor stops every worker, and the supervisor exits 0.
        survivors = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
        assert wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in survivors), 10)
        assert not ready(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "serve.log").read_text()
    assert "2 workers" in text and "exited with" in text


def test_workers_end_with_a_supervisor_killed_by_sigkill(db_dsn, tmp_path):
    # SIGKILL cannot be passed on: each worker asked Linux for a SIGTERM when its parent
    # dies, so none goes on serving the port unsupervised.
    proc, port = _two_workers(db_dsn, tmp_path)
    try:
        workers = children(proc.pid)
        proc.kill()
        proc.wait()
        assert wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), 15), \
            (tmp_path / "serve.log").read_text()
        assert not ready(port)
    finally:
        for pid in children(proc.pid) if proc.poll() is None else ():
            os.kill(pid, signal.SIGKILL)


def test_event_loop_choice(missing_tool):
    import asyncio

    loop = new_event_loop(Config(event_loop="asyncio"))
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    try:
        import uvloop
    except ImportError:
        missing_tool("no uvloop: make install puts in the `fast` extra")
    for choice in ("auto", "uvloop"):
        loop = new_event_loop(Config(event_loop=choice))
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    assert isinstance(asyncio.get_event_loop_policy(), asyncio.AbstractEventLoopPolicy)


def test_every_answered_request_has_its_access_line_after_sigterm(db_dsn, tmp_path):
    # Access lines are written once per event-loop iteration (service/logs.py Handler) and
    # forked workers end with os._exit: none of them may be lost on the way out.
    port = free_port()
    path = tmp_path / "serve.log"
    env = {**os.environ, "DATABASE_URL": as_runtime(db_dsn), "LOG_FORMAT": "json",
           "LOG_LEVEL": "INFO",
           "SHUTDOWN_TIMEOUT": "2"}
    with path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        answered = 0
        try:
            assert wait_for(lambda: len(children(proc.pid)) == 2 and ready(port)), path.read_text()
            answered = 1 + sum(ready(port) for _ in range(50))  # the first ready() too
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("message") == "request"
              and line.get("route") == "/health/ready" and line.get("status") == 200]
    assert len(logged) == answered == 51  # earlier polls were refused or answered 503
