"""The scripts that measure what a GET costs still run (tiny sizes, no timing asserted)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.dsn import REPO_ROOT
from tests.test_bench_smoke import _bench


def test_the_request_path_cost_runs():
    done = subprocess.run([sys.executable, "bench/request_cost.py", "--requests", "200"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "request through the app" in done.stdout and "the access line" in done.stdout
    assert not done.stderr  # no logging error, no warning


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_the_get_cost_runs(admin_dsn):
    out = _bench(admin_dsn, "get_cost.py", "--runs", "5", "--seconds", "1", "--rounds", "1",
                 "--connections", "2", "--after-puts", "0.5")
    assert "µs of service CPU per request" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_the_put_cost_runs_with_its_database_figures(admin_dsn):
    out = _bench(admin_dsn, "get_cost.py", "--put", "--functions", "--sql", "SELECT 1",
                 "--runs", "5", "--seconds", "1", "--rounds", "1", "--connections", "2")
    assert "PUT status:" in out and "µs of service CPU per request, database" in out
    assert "run_events_take_version" in out  # a trigger's time per request


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_the_reference_s_get_cost_runs(admin_dsn):
    if not any((base / "shared" / "bench" / "lean_app.py").exists()
               for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent)):
        pytest.skip("no ../shared/bench/lean_app.py beside the checkout")
    out = _bench(admin_dsn, "get_cost.py", "--reference", "--seconds", "1", "--rounds", "1",
                 "--connections", "2")
    assert "lean reference GET:" in out and "µs of process CPU per request, database" in out


def test_the_get_statement_s_database_cost_runs(admin_dsn):
    if not any((base / "shared" / "bench" / "lean_schema.sql").exists()
               for base in (REPO_ROOT.parent, REPO_ROOT.parent.parent)):
        pytest.skip("no ../shared/bench/lean_schema.sql beside the checkout")
    out = _bench(admin_dsn, "get_db_cost.py", "--runs", "5", "--executions", "20",
                 "--rounds", "1", "--explain")
    assert "SELECT_RUN (the service's)" in out and "lean reference: its GET + reset" in out
    assert "Execution Time" in out and " on pipeline_runs" in out  # the plan


def test_the_get_path_cost_runs_and_compares_two_checkouts(admin_dsn):
    out = _bench(admin_dsn, "get_path_cost.py", "--runs", "5", "--requests", "64",
                 "--repeats", "1", "--concurrency", "4")
    assert "GET run in process:" in out and "µs of CPU per request" in out
    out = _bench(admin_dsn, "get_path_ab.py", str(REPO_ROOT), "--pairs", "2",
                 "--requests", "64", "--together")
    assert "process CPU µs per GET: old median" in out and "new - old, paired" in out
