"""Where a replay's (or verify's) time goes: wall per phase in each process, CPU and peak RSS of
the processes, CPU of their database backends; optionally a cProfile of each process.

Phases: each part's fold (reading the log), its comparison with the projection rows, the
merge of the other processes' results, the serial tail (_scan_rest and what it calls), and
for replay the patches and the catch-up. Times are printed from the start of the scan, each
line with its process, so the phases of both processes can be read side by side.

    .venv/bin/python bench/replay_phases.py --db NAME [--verify] [--profile DIR] [--one]

--one: the scan in this process alone (no dsn: no split), e.g. for a profile of it all.
--db names a database on DATABASE_URL's server (default: 127.0.0.1:5432 as postgres).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from service.app import replay  # noqa: E402
from service.infra.db import init_connection  # noqa: E402

_LOG = Path(os.environ.get("REPLAY_PHASES_LOG", tempfile.gettempdir() + "/replay_phases.jsonl"))
_TICKS = os.sysconf("SC_CLK_TCK")
_backends: set[int] = set()


def _note(phase: str, started: float, ended: float, **extra) -> None:
    with _LOG.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "phase": phase, "start": started,
                            "end": ended, **extra}) + "\n")


def _backend_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _timed(name: str, fn):
    """fn (async) wrapped to note its wall time; the first argument, when a connection,
    has its backend's CPU noted too."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        started, cpu = time.time(), time.process_time()
        conn = args[0] if args and isinstance(args[0], asyncpg.Connection) else None
        if conn is not None:
            _backends.add(conn.get_server_pid())
        try:
            return await fn(*args, **kwargs)
        finally:
            extra = {"cpu": time.process_time() - cpu}
            if conn is not None:
                extra["backend_cpu"] = _backend_cpu(conn.get_server_pid())
            _note(name, started, time.time(), **extra)
    return wrapper


def _timed_sync(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started, cpu = time.time(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _note(name, started, time.time(), cpu=time.process_time() - cpu)
    return wrapper


def install() -> None:
    """The wrappers, in this process (the parts' processes install their own)."""
    for name in ("scan", "_scan_part", "_compare_part", "_scan_rest", "_stored", "_catch_up",
                 "_refold_irregular"):
        if hasattr(replay, name):
            setattr(replay, name, _timed(name, getattr(replay, name)))
    for name in ("_merge", "_compare_table"):
        if hasattr(replay, name):
            setattr(replay, name, _timed_sync(name, getattr(replay, name)))
    if hasattr(replay.sql, "patch_runs"):
        replay.sql.patch_runs = _timed("patch_runs", replay.sql.patch_runs)


_original_part_alone = replay.scan_part_alone


def part_alone(dsn, snapshot, ranges):
    """scan_part_alone in a part's process: timed, profiled when asked, its CPU noted."""
    install()
    profile_dir = os.environ.get("REPLAY_PHASES_PROFILE")
    profile = cProfile.Profile() if profile_dir else None
    started = time.time()
    if profile:
        profile.enable()
    try:
        return _original_part_alone(dsn, snapshot, ranges)
    finally:
        if profile:
            profile.disable()
            profile.dump_stats(f"{profile_dir}/part-{os.getpid()}.prof")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _note("process", started, time.time(), cpu=usage.ru_utime + usage.ru_stime,
              maxrss_mb=usage.ru_maxrss / 1024,
              backend_cpu=sum(_backend_cpu(p) for p in _backends))


async def main(args) -> None:
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    dsn = base.rsplit("/", 1)[0] + "/" + args.db
    if _LOG.exists():
        _LOG.unlink()
    install()
    replay.scan_part_alone = part_alone
    if args.profile:
        os.environ["REPLAY_PHASES_PROFILE"] = args.profile
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    backend = conn.get_server_pid()
    backend_before = _backend_cpu(backend)
    profile = cProfile.Profile() if args.profile else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()
    if profile:
        profile.enable()
    split = None if args.one else dsn
    if args.verify:
        result = await replay.verify(conn, split)
        events, runs, what = result.events, result.runs, (
            f"verify clean={result.clean} drifts={len(result.drifts)} "
            f"insight_drifts={len(result.insight_drifts)}")
    else:
        report = await replay.replay(conn, split)
        events, runs, what = report.events, report.runs, (
            f"replay repaired={report.repaired} counters={report.counters_repaired} "
            f"insights={report.insights_repaired} caught_up={report.caught_up}")
    wall = time.time() - started
    if profile:
        profile.disable()
        profile.dump_stats(f"{args.profile}/main-{os.getpid()}.prof")
    after = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    main_backend = _backend_cpu(backend) - backend_before
    await conn.close()
    notes = [json.loads(line) for line in _LOG.read_text().splitlines()]
    others = [n for n in notes if n["phase"] == "process"]
    other_cpu = sum(n["cpu"] for n in others)
    # A part's backend is gone when its process ends: its CPU as last noted by _scan_part.
    other_backend = sum(max((n.get("backend_cpu", 0) for n in notes
                             if n["pid"] == o["pid"] and n["phase"] == "_scan_part"), default=0)
                        for o in others)
    other_backend += sum(n.get("backend_cpu", 0) for n in notes if n["phase"] == "_stored")
    print(f"{what}")
    print(f"{events:,} events of {runs:,} runs in {wall:.1f} s = {events / wall:,.0f} events/s "
          f"(load {os.getloadavg()[0]:.1f})")
    print(f"CPU: main process {main_cpu:.1f} s, other processes {other_cpu:.1f} s "
          f"({(main_cpu + other_cpu) / events * 1e6:.1f} us an event); their backends "
          f"{main_backend:.1f} + {other_backend:.1f} s "
          f"({(main_backend + other_backend) / events * 1e6:.1f} us an event)")
    print(f"peak RSS: main {after.ru_maxrss / 1024:,.0f} MB, others "
          + ", ".join(f"{n['maxrss_mb']:,.0f} MB" for n in others))
    pids = {os.getpid(): "main"}
    for n in notes:
        pids.setdefault(n["pid"], f"p{len(pids)}")
    for n in sorted(notes, key=lambda n: n["start"]):
        if n["phase"] == "process":
            continue
        print(f"  {pids[n['pid']]:>5} {n['phase']:<18} {n['start'] - started:7.1f} → "
              f"{n['end'] - started:7.1f}  ({n['end'] - n['start']:6.1f} s, "
              f"CPU {n.get('cpu', 0):6.1f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--verify", action="store_true", help="verify (no writes), not replay")
    parser.add_argument("--profile", help="a directory for each process's cProfile stats")
    parser.add_argument("--one", action="store_true", help="the scan in this process alone")
    asyncio.run(main(parser.parse_args()))
