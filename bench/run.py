"""`make bench`: the service against a lean reference, under the same load, alternately.

1. A scratch database (dropped at the end): the service schema plus the reference's own
   two tables; N runs for each, all `running`.
2. The service (`python -m service serve`) and the reference (bench/reference.py), each a
   process of its own on its own port, loaded alternately, A B A B, with the same load:
   PUT status (legal moves only: running <-> waiting) and GET of a run, C connections.
   The service does everything it always does: auth, validation, the transition check
   and the event append under the feed lock; the reference does BEGIN / UPDATE / INSERT /
   COMMIT and nothing else.
3. The service's RSS is sampled under load; with --workers 1,2 the service is also
   measured at each worker count.
4. A table on stdout; the same results in bench/RESULTS.md.

    .venv/bin/python bench/run.py [--runs 1000] [--seconds 10] [--rounds 2] [--workers 1,2]

The database: BENCH_ADMIN_DSN or DATABASE_URL (used to CREATE DATABASE), else PostgreSQL
at 127.0.0.1:5432 as postgres, else an embedded PostgreSQL under .data/bench.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402

import scratchdb  # noqa: E402

import load  # noqa: E402
import mixed  # noqa: E402
import noisy  # noqa: E402
import reference  # noqa: E402
from service.infra.db import init_connection  # noqa: E402
from service.store import meta  # noqa: E402
from service.store import pipelines as pipeline_store  # noqa: E402
from service.app import runs as run_cases  # noqa: E402
from service.app.context import Actor, OnConnection  # noqa: E402
from service.store import tokens as token_store  # noqa: E402

ENTERPRISE = "bench"
MOUNT = "/pipelines/v0"
RSS_TARGET_MB = 150
TARGETS = {"PUT": 1.2, "GET": 0.9}
OTHER = load.OTHER
BENCH_RATE_LIMIT = 1_000_000  # requests/s per token
# The noisy scenario again with the per-token limit sized to this machine (a token may
# take about a tenth of what the service answers) and over-the-rate requests delayed
# rather than refused (docs/rate-limits.md).
SIZED = {"RATE_LIMIT_RPS": "100", "RATE_LIMIT_BURST": "100", "RATE_LIMIT_DELAY_MS": "1000"}


# --- database ----------------------------------------------------------------------------

_dsn_for, _can_connect, admin_dsn, _admin = (
    scratchdb.dsn_for, scratchdb.can_connect, scratchdb.admin_dsn, scratchdb.admin)


@dataclass
class Seeded:
    token: str
    service_runs: list[tuple[str, str, str]]  # (pipeline_id, run_id, the token of its enterprise)
    reference_runs: list[str]


async def seed(dsn: str, n: int, enterprises: int = 1, prefix: str = "") -> Seeded:
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        await meta.migrate(conn)
        await reference.create_tables(conn)
        tenants = []
        for k in range(enterprises):
            enterprise = (f"{ENTERPRISE}-{prefix}-{k}" if prefix else
                          ENTERPRISE if enterprises == 1 else f"{ENTERPRISE}-{k}")
            # Limited, as every token is (the limiter and its headers cost what they
            # cost), but far above what the load asks: the bench measures the service.
            token_id, token = await token_store.create_token(
                conn, enterprise, "bench", rate_limit=BENCH_RATE_LIMIT)
            pipeline = await pipeline_store.create_pipeline(
                conn, enterprise, token_id,
                {"name": "bench", "stages": [{"name": "build"}, {"name": "test"}]})
            tenants.append((enterprise, token_id, token, pipeline["id"]))
        service_runs = []
        for i in range(n):
            enterprise, token_id, token, pipeline_id = tenants[i % enterprises]
            actor, on_conn = Actor(enterprise, "bench", token_id), OnConnection(conn)
            run = await run_cases.create(on_conn, actor, pipeline_id)
            await run_cases.change_status(on_conn, actor, pipeline_id, run["id"], "running")
            service_runs.append((str(pipeline_id), str(run["id"]), token))
        reference_runs = [str(uuid.uuid4()) for _ in range(n)]
        pid = uuid.uuid4()
        await conn.executemany(
            "INSERT INTO ref_runs (id, pipeline_id, run_number, status) VALUES ($1, $2, $3, 'running')",
            [(rid, pid, i + 1) for i, rid in enumerate(reference_runs)])
        await conn.execute("VACUUM ANALYZE")
        return Seeded(tenants[0][2], service_runs, reference_runs)
    finally:
        await conn.close()


async def _statuses(dsn: str, sql: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        # Between phases: the tables of both sides get the same maintenance.
        await conn.execute("VACUUM ANALYZE pipeline_runs, stage_runs, ref_runs")
        return {str(r[0]): r[1] for r in await conn.fetch(sql)}
    finally:
        await conn.close()


# --- processes -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The process and its children (the workers of `serve --workers N`)."""
        pids = [self.proc.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_ready(server: Server, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.base + path, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout}s")


def start_service(dsn: str, workdir: Path, workers: int = 1,
                  extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = workdir / f"service-{port}.log"
    env = {**os.environ, **scratchdb.service_env(dsn), **(extra_env or {})}
    cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(f"service x{workers}", proc, port, log)
    _wait_ready(server, "/health/ready")
    if workers > 1:
        time.sleep(1.0)  # let every worker bind before measuring
    return server


def start_reference(dsn: str, workdir: Path, use_uvloop: bool = False) -> Server:
    port = free_port()
    log = workdir / f"reference-{port}.log"
    cmd = [sys.executable, str(ROOT / "bench" / "reference.py"), "--dsn", dsn, "--port", str(port)]
    if use_uvloop:
        cmd.append("--uvloop")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server("reference", proc, port, log)
    _wait_ready(server, f"/runs/{uuid.uuid4()}")
    return server


async def _backend_pids(dsn: str, side: str) -> list[int]:
    """The PostgreSQL backends serving one side (the service names its connections)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("""
            SELECT pid, application_name FROM pg_stat_activity
            WHERE datname = current_database() AND backend_type = 'client backend'
              AND pid <> pg_backend_pid() AND query NOT ILIKE 'LISTEN%'""")
    finally:
        await conn.close()
    mine = "pipeline-runs" if side == "service" else reference.APPLICATION_NAME
    return [r["pid"] for r in rows if r["application_name"] == mine]


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU time of each process (those still there)."""
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return times


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings, by the processes present at both."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


class RssSampler:
    """Peak VmRSS (MB) of a server's processes while a load runs: per process and summed."""

    def __init__(self, server: Server, interval: float = 0.25):
        self.server, self.interval = server, interval
        self.peak_process = 0.0
        self.peak_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss_mb(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        pids = self.server.pids()
        while not self._stop.wait(self.interval):
            sizes = [self._rss_mb(p) for p in pids]
            # A supervisor is not a worker: per-process peak counts the workers only.
            workers = sizes[1:] if len(sizes) > 1 else sizes
            self.peak_process = max(self.peak_process, *workers, 0.0)
            self.peak_total = max(self.peak_total, sum(sizes))

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- the measurement ---------------------------------------------------------------------------

@dataclass
class Phase:
    side: str
    method: str
    rounds: list[load.LoadResult] = field(default_factory=list)
    rss_process: float = 0.0
    rss_total: float = 0.0
    cpu_us: list[float] = field(default_factory=list)  # server CPU time per request, per round
    db_cpu_us: list[float] = field(default_factory=list)  # its PostgreSQL backends' CPU time

    @property
    def rps(self) -> float:
        return statistics.mean(r.rps for r in self.rounds) if self.rounds else 0.0

    @property
    def non_2xx(self) -> int:
        return sum(r.non_2xx for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    def pct(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.rounds if getattr(r, attr) is not None]
        return statistics.mean(values) if values else None


class Bench:
    def __init__(self, args, dsn: str, seeded: Seeded, workdir: Path):
        self.args, self.dsn, self.seeded, self.workdir = args, dsn, seeded, workdir
        self.tool = args.load

    def state_file(self, side: str) -> Path:
        path = self.workdir / f"{side}.tsv"
        if side == "service":
            statuses = asyncio.run(_statuses(
                self.dsn, f"SELECT id, status FROM pipeline_runs WHERE enterprise_id LIKE '{ENTERPRISE}%'"))
            items = [(f"{MOUNT}/pipelines/{p}/runs/{r}/", OTHER.get(statuses[r], "running"), token)
                     for p, r, token in self.seeded.service_runs]
        else:
            statuses = asyncio.run(_statuses(self.dsn, "SELECT id, status FROM ref_runs"))
            items = [(f"/runs/{r}", OTHER.get(statuses[r], "running"))
                     for r in self.seeded.reference_runs]
        load.write_state(path, items)
        return path

    def measure(self, server: Server, side: str, method: str, phase: Phase) -> load.LoadResult:
        token = self.seeded.token if side == "service" else ""
        if self.args.warmup > 0:
            load.run_load(self.tool, server.base, method, self.state_file(side), token,
                          connections=self.args.connections, seconds=self.args.warmup)
            time.sleep(0.3)  # requests cut off by the end of a load finish before the next
        state = self.state_file(side)
        pids = server.pids()
        backends = asyncio.run(_backend_pids(self.dsn, side))  # the pool is warm by now
        cpu_before, db_before = _cpu_seconds(pids), _cpu_seconds(backends)
        with RssSampler(server) as rss:
            result = load.run_load(self.tool, server.base, method, state, token,
                                   connections=self.args.connections, seconds=self.args.seconds)
        cpu = _cpu_used(cpu_before, _cpu_seconds(pids))
        db_cpu = _cpu_used(db_before, _cpu_seconds(backends))
        time.sleep(0.3)
        phase.rounds.append(result)
        phase.cpu_us.append(cpu * 1e6 / result.requests if result.requests else 0.0)
        phase.db_cpu_us.append(db_cpu * 1e6 / result.requests if result.requests else 0.0)
        phase.rss_process = max(phase.rss_process, rss.peak_process)
        phase.rss_total = max(phase.rss_total, rss.peak_total)
        print(f"  {side:<10} {method:<4} {result.rps:>9,.0f} req/s  "
              f"CPU {phase.cpu_us[-1]:,.0f} us/req (+ database {phase.db_cpu_us[-1]:,.0f})  "
              f"p50 {_f(result.p50_ms)} ms  p99 {_f(result.p99_ms)} ms  "
              f"non-2xx {result.non_2xx}  errors {result.errors}  RSS {rss.peak_total:.0f} MB",
              flush=True)
        return result

    def compare(self) -> dict[str, dict[str, Phase]]:
        phases = {m: {s: Phase(s, m) for s in ("service", "reference")} for m in ("PUT", "GET")}
        service = start_service(self.dsn, self.workdir)
        reference_ = start_reference(self.dsn, self.workdir, self.args.reference_uvloop)
        try:
            for n in range(1, self.args.rounds + 1):
                print(f"round {n}/{self.args.rounds}", flush=True)
                for method in ("PUT", "GET"):
                    for side, server in (("service", service), ("reference", reference_)):
                        self.measure(server, side, method, phases[method][side])
        finally:
            service.stop()
            reference_.stop()
        return phases

    def workers(self, counts: list[int]) -> dict[int, dict[str, Phase]]:
        out: dict[int, dict[str, Phase]] = {}
        for count in counts:
            print(f"service with {count} worker(s)", flush=True)
            server = start_service(self.dsn, self.workdir, count)
            try:
                out[count] = {}
                for method in ("PUT", "GET"):
                    phase = Phase(f"x{count}", method)
                    for _ in range(self.args.rounds):
                        self.measure(server, "service", method, phase)
                    out[count][method] = phase
            finally:
                server.stop()
        return out


    def mixed_runs(self, side: str) -> list[mixed.Run]:
        if side == "reference":
            return [mixed.Run(f"/runs/{r}", "waiting") for r in self.seeded.reference_runs]
        stages = asyncio.run(_stage_runs(self.dsn))
        return [mixed.Run(f"{MOUNT}/pipelines/{p}/runs/{r}/", "waiting", token,
                          f"{MOUNT}/pipelines/{p}/runs/",
                          [f"{MOUNT}/runs/{r}/stageruns/{s}/" for s in stages.get(r, [])])
                for p, r, token in self.seeded.service_runs]

    def measure_mixed(self, server: Server, side: str, phase: "MixedPhase") -> None:
        runs = self.mixed_runs(side)
        head = asyncio.run(_feed_head(self.dsn))
        pids = server.pids()
        backends = asyncio.run(_backend_pids(self.dsn, side))
        cpu_before, db_before = _cpu_seconds(pids), _cpu_seconds(backends)
        result = mixed.run_mixed(server.base, side, runs, connections=self.args.connections,
                                 seconds=self.args.seconds, polls=self.args.polls, head=head,
                                 seed=len(phase.rounds))
        cpu = _cpu_used(cpu_before, _cpu_seconds(pids))
        db_cpu = _cpu_used(db_before, _cpu_seconds(backends))
        time.sleep(0.3)
        phase.rounds.append(result)
        phase.cpu_us.append(cpu * 1e6 / result.requests if result.requests else 0.0)
        phase.db_cpu_us.append(db_cpu * 1e6 / result.requests if result.requests else 0.0)
        print(f"  {side:<10} mixed {result.rps:>9,.0f} req/s  CPU {phase.cpu_us[-1]:,.0f} us/req "
              f"(+ database {phase.db_cpu_us[-1]:,.0f})  p50 {_f(result.pct(0.5))} ms  "
              f"p99 {_f(result.pct(0.99))} ms  non-2xx {result.non_2xx}  errors {result.errors}"
              f"  long-polls answered {result.polls}", flush=True)

    def compare_mixed(self) -> dict[str, "MixedPhase"]:
        phases = {side: MixedPhase(side) for side in ("service", "reference")}
        service = start_service(self.dsn, self.workdir)
        reference_ = start_reference(self.dsn, self.workdir, self.args.reference_uvloop)
        try:
            for n in range(1, self.args.rounds + 1):
                print(f"mixed round {n}/{self.args.rounds}", flush=True)
                for side, server in (("service", service), ("reference", reference_)):
                    self.measure_mixed(server, side, phases[side])
        finally:
            service.stop()
            reference_.stop()
        return phases


    def noisy(self, env: dict[str, str] | None = None) -> list[noisy.NoisyResult]:
        """The noisy enterprise is the first of the seeded ones, the quiet one the second;
        env: the service's settings for this run (e.g. limits sized to the machine)."""
        runs = self.seeded.service_runs
        tokens = sorted({token for _, _, token in runs}, key=[t for _, _, t in runs].index)
        paths = [(f"{MOUNT}/pipelines/{p}/runs/{r}/", token) for p, r, token in runs]
        # The noisy enterprise's writes and long-polls use tokens with the service's
        # default limits (RATE_LIMIT_RPS), as a tenant's would; the quiet one keeps its own.
        writer_token, *poll_tokens = asyncio.run(
            _more_tokens(self.dsn, f"{ENTERPRISE}-tenant-0", 5))
        loud = [(path, writer_token) for path, token in paths if token == tokens[0]]
        quiet = [x for x in paths if x[1] == tokens[1]]
        server = start_service(self.dsn, self.workdir, extra_env=env)
        results = []
        try:
            for n in range(1, self.args.rounds + 1):
                head = asyncio.run(_feed_head(self.dsn))
                result = noisy.run_noisy(server.base, loud, poll_tokens, quiet,
                                         seconds=self.args.seconds, head=head)
                results.append(result)
                print(f"  noisy round {n}: quiet tenant p50 {_f(result.pct(0.5))} ms  "
                      f"p99 {_f(result.pct(0.99))} ms  ({result.quiet_requests} requests, "
                      f"{result.quiet_not_200} not 200); noise {result.noise}", flush=True)
        finally:
            server.stop()
        return results


async def _more_tokens(dsn: str, enterprise: str, n: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [(await token_store.create_token(conn, enterprise, f"poller-{k}"))[1]
                for k in range(n)]
    finally:
        await conn.close()


@dataclass
class MixedPhase:
    side: str
    rounds: list[mixed.MixedResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    db_cpu_us: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.mean(r.rps for r in self.rounds) if self.rounds else 0.0

    def pct(self, q: float, op: str | None = None) -> float | None:
        values = [r.pct(q, op) for r in self.rounds if r.pct(q, op) is not None]
        return statistics.mean(values) if values else None

    @property
    def bad(self) -> int:
        return sum(r.non_2xx + r.errors for r in self.rounds)


async def _stage_runs(dsn: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT run_id, id FROM stage_runs WHERE enterprise_id LIKE $1",
                                f"{ENTERPRISE}%")
    finally:
        await conn.close()
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(str(row["run_id"]), []).append(str(row["id"]))
    return out


async def _feed_head(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT coalesce(max(position), 0) FROM run_events")
    finally:
        await conn.close()


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else 0.0


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- report ----------------------------------------------------------------------------------

def report(args, phases, workers, started: dt.datetime, tool_version: str) -> str:
    lines = []
    rss = max(phases[m]["service"].rss_process for m in phases)
    lines += [
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} cores, "
        f"{_mem_gb():.0f} GB, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; PostgreSQL {args.pg_version} (local, fsync on).",
        f"Load: {tool_version}, {args.connections} connections, {args.seconds:g} s per "
        f"measurement after {args.warmup:g} s warm-up, {args.rounds} rounds alternating "
        f"service / reference (A B A B); {args.runs} runs per side, the service's in "
        f"{args.enterprises} enterprise{'s' if args.enterprises > 1 else ''}.",
        f"Command: `{args.command}`",
        f"Machine load (1-minute load average) at start / end: {args.load_start} / "
        f"{_loadavg()}; anything well above 1 means other work shared the 2 cores.",
        f"Service config (from the environment): {_service_config()}; reference: "
        f"{'uvloop' if args.reference_uvloop else 'asyncio'} loop, no log.",
        "",
        "| operation | service req/s | reference req/s | ratio | target | service p50 / p99 ms "
        "| reference p50 / p99 ms | CPU us/req, app + database (service / reference) "
        "| non-2xx (service / reference) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, label in (("PUT", "PUT status (running <-> waiting)"), ("GET", "GET a run")):
        s, r = phases[method]["service"], phases[method]["reference"]
        ratio = s.rps / r.rps if r.rps else float("nan")
        ok = "ok" if ratio >= TARGETS[method] else "MISSED"
        lines.append(
            f"| {label} | {s.rps:,.0f} | {r.rps:,.0f} | {ratio:.2f}x | >= {TARGETS[method]}x {ok} "
            f"| {_f(s.pct('p50_ms'))} / {_f(s.pct('p99_ms'))} "
            f"| {_f(r.pct('p50_ms'))} / {_f(r.pct('p99_ms'))} "
            f"| {_mean(s.cpu_us):,.0f} + {_mean(s.db_cpu_us):,.0f} / "
            f"{_mean(r.cpu_us):,.0f} + {_mean(r.db_cpu_us):,.0f} "
            f"| {s.non_2xx + s.errors} / {r.non_2xx + r.errors} |")
    lines += ["", "Per round (req/s): " + "; ".join(
        f"{m} service {', '.join(f'{x.rps:,.0f}' for x in phases[m]['service'].rounds)} vs "
        f"reference {', '.join(f'{x.rps:,.0f}' for x in phases[m]['reference'].rounds)}"
        for m in ("PUT", "GET"))]
    lines += ["", "Reading it: req/s moves with whatever else shares the 2 cores (see the load "
                  "average above); CPU time per request (the server's process, then its "
                  "PostgreSQL backends) moves much less, so it is the figure to compare "
                  "between runs. PUT is one legal status change with its event appended "
                  "(service: auth, validation, transition check, feed lock, counters; "
                  "reference: BEGIN / UPDATE / INSERT / COMMIT)."]
    lines += ["", f"Service RSS under load (peak VmRSS): {rss:.0f} MB "
                  f"(target < {RSS_TARGET_MB} MB: {'ok' if rss < RSS_TARGET_MB else 'MISSED'})."]
    if workers:
        lines += ["", "| service workers | PUT req/s | GET req/s | CPU us/req PUT / GET "
                      "| peak RSS per worker / all MB | non-2xx |", "|---:|---:|---:|---:|---:|---:|"]
        for count, ph in workers.items():
            lines.append(
                f"| {count} | {ph['PUT'].rps:,.0f} | {ph['GET'].rps:,.0f} "
                f"| {_mean(ph['PUT'].cpu_us):,.0f} / {_mean(ph['GET'].cpu_us):,.0f} "
                f"| {max(p.rss_process for p in ph.values()):.0f} / "
                f"{max(p.rss_total for p in ph.values()):.0f} "
                f"| {sum(p.non_2xx + p.errors for p in ph.values())} |")
    return "\n".join(lines)


def report_mixed(args, phases: dict[str, MixedPhase]) -> str:
    s, r = phases["service"], phases["reference"]
    ratio = s.rps / r.rps if r.rps else float("nan")
    weights = ", ".join(f"{op} {w}%" for op, w in mixed.WEIGHTS.items())
    lines = [
        f"Mixed load ({weights}; {args.polls} long-polls open throughout), "
        f"{args.connections} connections, Python load generator, {args.rounds} rounds A B A B, "
        f"over {args.enterprises} enterprises x {args.runs // max(args.enterprises, 1)} runs. "
        "The reference answers reads with its GET and every write with its PUT.",
        "",
        "| side | req/s | ratio | p50 / p99 ms | CPU us/req, app + database | non-2xx |",
        "|---|---:|---:|---:|---:|---:|",
        f"| service | {s.rps:,.0f} | {ratio:.2f}x | {_f(s.pct(0.5))} / {_f(s.pct(0.99))} "
        f"| {_mean(s.cpu_us):,.0f} + {_mean(s.db_cpu_us):,.0f} | {s.bad} |",
        f"| reference | {r.rps:,.0f} | 1.00x | {_f(r.pct(0.5))} / {_f(r.pct(0.99))} "
        f"| {_mean(r.cpu_us):,.0f} + {_mean(r.db_cpu_us):,.0f} | {r.bad} |",
        "",
        "Service p50 / p99 ms by operation: " + "; ".join(
            f"{op} {_f(s.pct(0.5, op))} / {_f(s.pct(0.99, op))}" for op in mixed.WEIGHTS) + ".",
    ]
    return "\n".join(lines)


def report_noisy(args, results: list[noisy.NoisyResult], env: dict | None = None) -> str:
    p99 = statistics.mean(r.pct(0.99) or 0.0 for r in results)
    p50 = statistics.mean(r.pct(0.5) or 0.0 for r in results)
    bad = sum(r.quiet_not_200 for r in results)
    noise = {k: sum(r.noise[k] for r in results) for k in results[0].noise}
    return "\n".join([
        f"A noisy enterprise ({noisy.WRITERS} connections of status changes, {noisy.POLLS} "
        f"long-polls, {noisy.FLOODERS} connections of unknown tokens) beside a quiet one "
        f"(one connection, GET and PUT of its runs), {args.seconds:g} s x {args.rounds} "
        "rounds, Python load generator, 1 worker; service settings: "
        + (", ".join(f"{k}={v}" for k, v in env.items()) if env else "the defaults") + ".",
        "",
        "| quiet tenant p50 ms | p99 ms | target p99 | requests | not 200 | noise (total) |",
        "|---:|---:|---:|---:|---:|---|",
        f"| {p50:.1f} | {p99:.1f} | <= 50 ms {'ok' if p99 <= 50 else 'MISSED'} "
        f"| {sum(r.quiet_requests for r in results)} | {bad} | {noise} |",
    ])


def _service_config() -> str:
    from service.config import Config

    config = Config.from_env()
    try:
        import uvloop  # noqa: F401
        loop = "uvloop" if config.event_loop != "asyncio" else "asyncio"
    except ImportError:
        loop = "asyncio"
    return (f"{loop} loop, group commit {'on' if config.group_commit else 'off'}, "
            f"log level {config.log_level} ({config.log_format}, one access line per request "
            f"at INFO), pool {config.pool_max}")


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _mem_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _tool_version(tool: str) -> str:
    if tool == "wrk":
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        first = (out.stdout or out.stderr).splitlines()[0]
        return " ".join(first.split()[:2])
    return "bench/load.py (Python aiohttp client)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--enterprises", type=int, default=1,
                        help="spread the service's runs over this many enterprises (tokens)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="",
                        help="also measure the service at these worker counts, e.g. 1,2")
    parser.add_argument("--load", choices=["wrk", "python"],
                        default="wrk" if load.wrk_available() else "python")
    parser.add_argument("--reference-uvloop", action="store_true",
                        help="run the reference on uvloop too")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md",
                        help="where to save the results ('-' for nowhere)")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--scenarios", default="basic,tenants,mixed,noisy",
                        help="which to run: basic (PUT/GET, --enterprises), tenants (PUT/GET "
                             "spread over --tenants enterprises), mixed (creates, status and "
                             "stage-run changes, reads, --polls long-polls), noisy (a quiet "
                             "tenant's latency beside a noisy one)")
    parser.add_argument("--tenants", type=int, default=100,
                        help="enterprises of the tenants and mixed scenarios")
    parser.add_argument("--tenant-runs", type=int, default=20, help="runs per enterprise there")
    parser.add_argument("--polls", type=int, default=10,
                        help="long-polls open during the mixed scenario")
    args = parser.parse_args(argv)
    args.command = "bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.command = args.command.strip()
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.load == "python":
        print("wrk not found: the Python load generator drives the load (it takes a core of "
              "its own; `apt-get install wrk` for a lighter one)", flush=True)
    started = dt.datetime.now(dt.timezone.utc)
    args.load_start = _loadavg()
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    sections: list[tuple[str, str]] = []
    bad = 0
    with admin_dsn() as admin, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        name = f"pr_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
        dsn = _dsn_for(admin, name)
        try:
            args.pg_version = asyncio.run(_pg_version(dsn))
            tool = _tool_version(args.load)
            if "basic" in scenarios:
                print(f"seeding {args.runs} runs per side into {name} ...", flush=True)
                seeded = asyncio.run(seed(dsn, args.runs, args.enterprises))
                bench = Bench(args, dsn, seeded, Path(tmp))
                phases = bench.compare()
                workers = bench.workers(worker_counts) if worker_counts else {}
                bad += _bad(phases)
                sections.append(("One enterprise", report(args, phases, workers, started, tool)))
            many = copy.copy(args)
            many.enterprises, many.runs = args.tenants, args.tenants * args.tenant_runs
            if {"tenants", "mixed", "noisy"} & set(scenarios):
                print(f"seeding {many.enterprises} enterprises x {args.tenant_runs} runs ...",
                      flush=True)
                seeded = asyncio.run(seed(dsn, many.runs, many.enterprises, prefix="tenant"))
                bench = Bench(many, dsn, seeded, Path(tmp))
            if "tenants" in scenarios:
                phases = bench.compare()
                bad += _bad(phases)
                sections.append((f"Many enterprises ({many.enterprises})",
                                 report(many, phases, {}, started, tool)))
            if "mixed" in scenarios:
                mixed_phases = bench.compare_mixed()
                bad += sum(p.bad for p in mixed_phases.values())
                sections.append(("Mixed load, many enterprises", report_mixed(many, mixed_phases)))
            if "noisy" in scenarios:
                for title, env in (("A noisy neighbour", None),
                                   ("A noisy neighbour, limits sized to the machine", SIZED)):
                    results = bench.noisy(env)
                    bad += sum(r.quiet_not_200 for r in results)
                    sections.append((title, report_noisy(many, results, env)))
        finally:
            if not args.keep_db:
                asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    text = "\n\n".join(f"## {title}\n\n{body}" for title, body in sections)
    print()
    print(text)
    if str(args.results) != "-":
        args.results.write_text("# Benchmark results\n\nWritten by `make bench` "
                                "(bench/run.py); the last run is kept here.\n\n" + text + "\n")
        print(f"\nsaved to {args.results}")
    return 1 if bad else 0


def _bad(phases) -> int:
    return sum(p.non_2xx + p.errors for m in phases.values() for p in m.values())


async def _pg_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return (await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
