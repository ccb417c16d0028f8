"""Running the app: the event loop (uvloop when installed) and `serve --workers N`.

One worker: the app runs in this process. N workers: this process becomes a supervisor
that forks N workers, each serving the app on the same host:port with SO_REUSEPORT (the
kernel spreads connections over them), and
- forwards SIGTERM / SIGINT to every worker, then waits for them to finish their
  in-flight requests (the app's shutdown_timeout), killing any that outlive it;
- restarts a worker that dies on its own, unless workers keep dying right after start
  (then it stops them all and exits non-zero instead of spinning);
- takes its workers with it when it dies, even by SIGKILL (they drain and exit).
Every worker runs the whole app: its own pool (DB_POOL_MAX connections each), feed
listener and timeout sweeper (an advisory lock lets one sweep at a time). With
METRICS_PORT set, worker i serves /metrics on METRICS_PORT + i.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from typing import Callable

from aiohttp import web

from service.config import Config

log = logging.getLogger(__name__)

RESTART_WINDOW = 10.0  # a worker that dies sooner than this after starting "failed to start"
MAX_QUICK_DEATHS = 5  # that many in a row: stop restarting
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def new_event_loop(config: Config) -> asyncio.AbstractEventLoop:
    """uvloop for EVENT_LOOP=auto (when installed) or uvloop; else asyncio's own."""
    if config.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.event_loop == "uvloop":
                raise RuntimeError("EVENT_LOOP=uvloop, but uvloop is not installed "
                                   "(pip install '.[fast]')") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


AppFactory = Callable[[Config], web.Application]

# aiohttp's HTTP parser refuses a request line over 8190 bytes with a plain-text 400 before
# the app sees it. Raised, URLs up to 64 KiB reach the app, which answers those over its own
# limit (http/middleware.MAX_URL_BYTES) with a 414 envelope; beyond 64 KiB the parser's 400
# remains (the connection is not worth reading further).
PARSER_LIMITS = {"max_line_size": 65536}


class CannotListen(Exception):
    """The port cannot be taken (in use, or not ours to take): one line for the user."""


def check_port(host: str, port: int, from_flag: bool = False) -> None:
    """Raise CannotListen unless host:port can be listened on right now.

    Checked before a command touches anything (tokens, the database), so a second server
    started on a busy port leaves the first alone. A bind without SO_REUSEPORT: it fails
    even when the other listener set it. (The port may still be taken before we listen;
    then the server fails to start, harming no one.)
    """
    if port == 0:
        return
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        other = _free_port_near(host, port)
        fix = f"use --port {other}" if from_flag else f"set PORT={other}"
        raise CannotListen(f"port {port} is in use: stop the other server or {fix}") from None


def _free_port_near(host: str, port: int) -> int:
    """A port to suggest: port + 101 (8080 -> 8181), or the next free one after it."""
    for candidate in range(port + 101, min(port + 121, 65536)):
        try:
            socket.create_server((host, candidate)).close()
            return candidate
        except OSError:
            continue
    return port + 101


def run(factory: AppFactory, config: Config, *, reuse_port: bool = False,
        on_ready: Callable[[], None] | None = None) -> None:
    """Serve the app in this process until SIGTERM / SIGINT; on_ready once it listens."""
    loop = new_event_loop(config)
    log.info("serving on http://%s:%d (pid %d, %s)", config.host, config.port, os.getpid(),
             type(loop).__module__.split(".")[0])
    try:
        # run_app calls `print` once its sites listen: the moment to call on_ready.
        def ready(_banner: str) -> None:
            # What exists now (modules, the app, its pools) lives as long as the process:
            # out of the collector's sight, so a full collection walks only what requests
            # made since (each one over the ~70,000 start-up objects cost a request in
            # flight ~20 ms: the grouped insights answer's p95 twice its p50).
            gc.freeze()
            if on_ready is not None:
                on_ready()
        web.run_app(factory(config), host=config.host, port=config.port, print=ready,
                    access_log=None, shutdown_timeout=config.shutdown_timeout,
                    reuse_port=reuse_port or None, loop=loop, **PARSER_LIMITS)
    finally:
        # Access lines of the loop's last iteration may still be pending (logs.Handler), and
        # a forked worker ends with os._exit, which skips logging.shutdown's flush.
        for handler in logging.getLogger().handlers:
            handler.flush()


def serve(factory: AppFactory, config: Config,
          on_ready: Callable[[], None] | None = None) -> int:
    """`serve`: the app in this process, or config.workers worker processes.

    on_ready: called once the port listens (with workers, by the first worker).
    """
    if config.workers <= 1:
        run(factory, config, on_ready=on_ready)
        return 0
    return Supervisor(factory, config, on_ready).run()


def _worker_main(factory: AppFactory, config: Config, supervisor: int,
                 on_ready: Callable[[], None] | None = None) -> None:
    # A fresh process image as far as signals go: run_app installs its own handlers.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _end_with(supervisor)
    run(factory, config, reuse_port=True, on_ready=on_ready)


def _end_with(supervisor: int) -> None:
    """A worker drains and exits when its supervisor dies, even by SIGKILL (which it cannot
    pass on): otherwise orphaned workers would go on serving the port, unsupervised and
    beyond any restart or stop. Linux tells the worker (PR_SET_PDEATHSIG); elsewhere, they
    are left to the process manager."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    def __init__(self, factory: AppFactory, config: Config,
                 on_ready: Callable[[], None] | None = None):
        self.factory = factory
        self.on_ready = on_ready  # passed to the first start of worker 0 only
        self.config = config
        self.workers: dict[int, tuple[multiprocessing.Process, float]] = {}  # index -> (p, start)
        self.stopping = False
        self.quick_deaths = 0
        self._reserved: socket.socket | None = None
        self._ctx = multiprocessing.get_context("fork")

    def run(self) -> int:
        config = self.config
        if config.port == 0:  # one port for all: pick it here, hold it while we run
            self._reserved = _reserve_port(config.host)
            self.config = config = config.with_(port=self._reserved.getsockname()[1])
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("supervisor %d: %d workers on http://%s:%d", os.getpid(), config.workers,
                     config.host, config.port)
            for index in range(config.workers):
                self._start(index)
            failed = self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._reserved is not None:
                self._reserved.close()
        return 1 if failed else 0

    def _worker_config(self, index: int) -> Config:
        config = self.config.with_(workers=1)
        if config.metrics_port:
            config = config.with_(metrics_port=config.metrics_port + index)
        return config

    def _start(self, index: int) -> None:
        on_ready, self.on_ready = (self.on_ready, None) if index == 0 else (None, self.on_ready)
        process = self._ctx.Process(target=_worker_main, name=f"worker-{index}",
                                    args=(self.factory, self._worker_config(index),
                                          os.getpid(), on_ready),
                                    daemon=False)
        process.start()
        self.workers[index] = (process, time.monotonic())
        log.info("worker %d started (pid %d)", index, process.pid)

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info("supervisor: %s, stopping %d workers", signal.Signals(signum).name,
                     len(self.workers))
        self.stopping = True
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for process, _ in self.workers.values():
            if process.is_alive():
                try:
                    os.kill(process.pid, sig)
                except ProcessLookupError:
                    pass

    def _supervise(self) -> bool:
        """Until every worker is gone; True when the supervisor gave up on crashing workers."""
        failed = False
        deadline = None
        while self.workers:
            sentinels = {p.sentinel: i for i, (p, _) in self.workers.items()}
            ready = wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                index = sentinels[sentinel]
                process, started = self.workers.pop(index)
                process.join()
                if self.stopping:
                    continue
                lived = time.monotonic() - started
                log.error("worker %d (pid %d) exited with %s after %.1fs", index, process.pid,
                          process.exitcode, lived)
                self.quick_deaths = self.quick_deaths + 1 if lived < RESTART_WINDOW else 0
                if self.quick_deaths >= MAX_QUICK_DEATHS:
                    log.error("workers keep dying at start; stopping")
                    failed = True
                    self.stopping = True
                    self._signal_all(signal.SIGTERM)
                    continue
                self._start(index)
            if self.stopping and self.workers:
                if deadline is None:
                    deadline = time.monotonic() + self.config.shutdown_timeout + 5
                elif time.monotonic() > deadline:
                    log.error("workers still running after the shutdown timeout; killing them")
                    self._signal_all(signal.SIGKILL)
                    deadline = time.monotonic() + 5
        return failed


def _reserve_port(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))  # bound, never listening: it takes no connections, only the port
    return sock
