"""`make run` installs only what serving needs; `make test` adds the test tools (dry runs)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.processes import ROOT


def dry_run(target: str, *args: str) -> str:
    """The commands `make -B target` would run, run by nobody (-n)."""
    if shutil.which("make") is None:
        pytest.fail("make is missing")
    done = subprocess.run(["make", "-n", "-B", target, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_the_service_without_the_test_tools():
    out = dry_run("run")
    assert "pip install -q -e '.[fast]'" in out
    assert "[test" not in out, out  # no schemathesis, hypothesis or Playwright to serve
    assert "-m service dev" in out


def test_make_test_installs_the_test_extra_and_passes_pytest_args():
    out = dry_run("test", "PYTEST_ARGS=tests/test_docs.py")
    assert "pip install -q -e '.[test,fast]'" in out
    pytest_line = next(line for line in out.splitlines() if "-m pytest" in line)
    assert pytest_line.endswith(" tests/test_docs.py"), pytest_line
