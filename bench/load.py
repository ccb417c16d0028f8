"""Load generators for the benchmark: wrk (when installed) or a Python aiohttp fallback.

Both drive the same workload against loopback only, bounded in time (and the Python one
in request count too):

- GET: cycle through the runs' paths.
- PUT: toggle each run running <-> waiting. Every run is only ever asked to do one move at
  a time and always the legal one, so a correct server answers 2xx to every request:
  - Python: connection k owns runs k, k+C, k+2C, ... and toggles them in turn.
  - wrk: each thread owns its share of the runs and cycles through them; with at most C
    requests in flight and more runs than connections, a run's previous move has been
    answered before its next one is sent.
  Each run's first target comes from the state file (the run's current status, read from
  the database just before the phase), so phases can follow each other.

The state file has one run per line: `<path>\t<next target>[\t<token>]` (GET ignores the
target; a line's own token, when given, is used instead of the common one).
"""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

OTHER = {"running": "waiting", "waiting": "running"}


@dataclass
class LoadResult:
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    tool: str = ""
    raw: str = field(default="", repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _check_loopback(base_url: str) -> None:
    host = urlsplit(base_url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise ValueError(f"load is only ever sent to loopback, not {host!r}")


def read_state(path: Path) -> list[tuple[str, str, str]]:
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            p, target, token = (line.split("\t") + ["", ""])[:3]
            items.append((p, target, token))
    return items


def write_state(path: Path, items) -> None:
    path.write_text("".join("\t".join(item) + "\n" for item in items))


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


# --- wrk -----------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- args: method, state file, bearer token ("" for none); threads split the runs.
local threads, counter = {}, 0
function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local reqs, nexts, n, i = {}, {}, 0, 0
function init(args)
  local method, file, token = args[1], args[2], args[3]
  local nthreads = tonumber(args[4])
  local headers = {}
  if token ~= "" then headers["Authorization"] = "Bearer " .. token end
  local k = 0
  for line in io.lines(file) do
    local path, target, own = line:match("^([^\t]+)\t?([^\t]*)\t?([^\t]*)$")
    if k % nthreads == tid then
      n = n + 1
      if own ~= "" then headers["Authorization"] = "Bearer " .. own end
      if method == "PUT" then
        headers["Content-Type"] = "application/json"
        local w = wrk.format("PUT", path, headers, '{"status":"waiting"}')
        local r = wrk.format("PUT", path, headers, '{"status":"running"}')
        reqs[n] = {waiting = w, running = r}
        nexts[n] = target
      else
        reqs[n] = wrk.format("GET", path, headers)
      end
    end
    k = k + 1
  end
  mode = method
end

function request()
  i = i % n + 1
  if mode == "PUT" then
    local t = nexts[i]
    if t == "running" then nexts[i] = "waiting" else nexts[i] = "running" end
    return reqs[i][t]
  end
  return reqs[i]
end
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> LoadResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    requests, seconds = int(m.group(1)), _ms(m.group(2) + m.group(3)) / 1000
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    errors = sum(map(int, sock.groups())) if sock else 0
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    return LoadResult(requests, seconds, int(non_2xx.group(1)) if non_2xx else 0, errors,
                      _ms(p50.group(1)) if p50 else None, _ms(p99.group(1)) if p99 else None,
                      "wrk", out)


def run_wrk(base_url: str, method: str, state_file: Path, token: str, *, connections: int,
            seconds: float, threads: int = 1) -> LoadResult:
    _check_loopback(base_url)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
        script = f.name
    try:
        cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
               "--latency", "--timeout", "10s", "-s", script, base_url, "--",
               method, str(state_file), token, str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             timeout=seconds + 60).stdout
    finally:
        Path(script).unlink(missing_ok=True)
    return parse_wrk(out)


# --- Python fallback -------------------------------------------------------------------

async def _python_load(base_url: str, method: str, items: list[tuple[str, str, str]], token: str,
                       connections: int, seconds: float, max_requests: int) -> LoadResult:
    import aiohttp

    def headers_of(own: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {own or token}"} if own or token else {}

    latencies: list[float] = []
    counts = {"requests": 0, "non_2xx": 0, "errors": 0}
    deadline = time.perf_counter() + seconds

    async def worker(session, mine: list[list[str]]):
        i = 0
        while time.perf_counter() < deadline and counts["requests"] < max_requests:
            item = mine[i % len(mine)]
            i += 1
            counts["requests"] += 1
            started = time.perf_counter()
            try:
                if method == "PUT":
                    target = item[1]
                    item[1] = OTHER.get(target, "running")
                    resp = await session.put(base_url + item[0], json={"status": target},
                                             headers=item[2])
                else:
                    resp = await session.get(base_url + item[0], headers=item[2])
                async with resp:
                    await resp.read()
                    if not 200 <= resp.status < 300:
                        counts["non_2xx"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counts["errors"] += 1
            latencies.append((time.perf_counter() - started) * 1000)

    shares = [[[p, t, headers_of(own)] for p, t, own in items[k::connections]]
              for k in range(connections)]
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session, share) for share in shares if share))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return LoadResult(counts["requests"], elapsed, counts["non_2xx"], counts["errors"],
                      pct(0.50), pct(0.99), "python")


def run_python(base_url: str, method: str, state_file: Path, token: str, *, connections: int,
               seconds: float, max_requests: int = 2_000_000) -> LoadResult:
    _check_loopback(base_url)
    items = read_state(state_file)
    return asyncio.run(_python_load(base_url.rstrip("/"), method, items, token, connections,
                                    seconds, max_requests))


def run_load(tool: str, base_url: str, method: str, state_file: Path, token: str, *,
             connections: int, seconds: float) -> LoadResult:
    if tool == "wrk":
        return run_wrk(base_url, method, state_file, token, connections=connections,
                       seconds=seconds)
    return run_python(base_url, method, state_file, token, connections=connections,
                      seconds=seconds)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Drive GET/PUT load at a server (loopback only)")
    parser.add_argument("base_url")
    parser.add_argument("method", choices=["GET", "PUT"])
    parser.add_argument("state_file", type=Path)
    parser.add_argument("--token", default="")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tool", choices=["wrk", "python"],
                        default="wrk" if wrk_available() else "python")
    a = parser.parse_args()
    r = run_load(a.tool, a.base_url, a.method, a.state_file, a.token,
                 connections=a.connections, seconds=a.seconds)
    print(f"{r.tool}: {r.requests} requests in {r.seconds:.1f}s = {r.rps:,.0f} req/s; "
          f"non-2xx {r.non_2xx}, errors {r.errors}, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms")
