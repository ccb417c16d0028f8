"""Two checkouts' GET path CPU compared batch for batch: bench/get_path_cost.py of each,
run side by side, batches alternated A B B A, and the paired differences' median.

On a machine shared with other work, CPU per request moves ±15 % within minutes; two
batches a second apart see nearly the same machine, so the difference of a pair is far
steadier than either figure. --together runs a pair's batches at the same time (each
process then competes with the other as with the machine's other work, alike).

    .venv/bin/python bench/get_path_ab.py OLD_CHECKOUT [NEW_CHECKOUT (this one)]
        [--pairs 20] [--requests 3000] [--together]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _start(checkout: Path, requests: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(checkout / "bench" / "get_path_cost.py"), "--repeats", "0",
         "--requests", str(requests)], cwd=checkout, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    while (line := proc.stdout.readline()) and line.strip() != "ready":
        pass
    if not line:
        sys.exit(f"{checkout}: get_path_cost.py did not start")
    return proc


def _go(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _result(proc: subprocess.Popen) -> tuple[float, float]:
    cost, db_cost = proc.stdout.readline().split()
    return float(cost), float(db_cost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=ROOT)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--together", action="store_true",
                        help="run each pair's two batches at the same time, not in turn")
    args = parser.parse_args()
    old, new = _start(args.old, args.requests), _start(args.new, args.requests)
    try:
        pairs = []
        for k in range(args.pairs):
            first, second = (old, new) if k % 2 == 0 else (new, old)  # A B, then B A
            if args.together:  # both batches at once: the same moment of the machine
                _go(first), _go(second)
                results = {first: _result(first), second: _result(second)}
            else:
                _go(first)
                results = {first: _result(first)}
                _go(second)
                results[second] = _result(second)
            pairs.append((results[old], results[new]))
    finally:
        for proc in (old, new):
            proc.stdin.close()
            proc.wait()
    for label, index in (("process", 0), ("database", 1)):
        a = [p[0][index] for p in pairs]
        b = [p[1][index] for p in pairs]
        diffs = sorted(y - x for x, y in zip(a, b))
        print(f"{label} CPU µs per GET: old median {statistics.median(a):.1f} (min {min(a):.1f}), "
              f"new median {statistics.median(b):.1f} (min {min(b):.1f}); new - old, paired: "
              f"median {statistics.median(diffs):+.1f}, middle half "
              f"{diffs[len(diffs) // 4]:+.1f} .. {diffs[3 * len(diffs) // 4]:+.1f}")


if __name__ == "__main__":
    main()
