"""`make bench`'s scripts still run against the code as it is now (tiny sizes, no timing
asserted: speed is measured by `make bench` itself). They import the service's use cases and
store, so a refactoring that breaks them shows here, not on the next benchmark day."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.dsn import REPO_ROOT


def _bench(admin_dsn: str, script: str, *args: str) -> str:
    env = {**os.environ, "BENCH_ADMIN_DSN": admin_dsn}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_service_against_the_reference_every_scenario(admin_dsn, tmp_path):
    out = _bench(admin_dsn, "run.py", "--runs", "40", "--seconds", "1", "--warmup", "0.2",
                 "--rounds", "1", "--tenants", "4", "--tenant-runs", "5", "--polls", "2",
                 "--results", str(tmp_path / "results.md"))
    report = (tmp_path / "results.md").read_text()
    for section in ("## One enterprise", "## Many enterprises (4)",
                    "## Mixed load, many enterprises", "## A noisy neighbour",
                    "## A noisy neighbour, limits sized to the machine"):
        assert section in report, out[-3000:]
    assert "| PUT status (running <-> waiting) |" in report
    assert "| GET a run |" in report


def test_the_service_at_scale_with_writers(admin_dsn, tmp_path):
    _bench(admin_dsn, "scale.py", "--runs", "300", "--pipelines", "3", "--requests", "2",
           "--writers", "2", "--write-rate", "20", "--out", str(tmp_path / "scale.md"))
    report = (tmp_path / "scale.md").read_text()
    assert "while 2 writers changed statuses" in report
    assert "worst p99 of the first pages" in report
    assert "verify:" in report and "clean" in report


def test_the_insights_write_ab_through_http_reads_its_target(admin_dsn):
    out = _bench(admin_dsn, "insights_ab.py", "--http", "--enterprises", "1", "--pipelines",
                 "2", "--clients", "2", "--seconds", "0.5", "--rounds", "2")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "with" in line]
    assert len(rows) == 4, out  # A and B in each of the 2 rounds
    assert all(line.rstrip(" |").endswith("| 0") for line in rows), out  # no change failed
    assert "paired per round (2): mean" in out
    assert "target within 5%: met" in out or "target within 5%: missed" in out
