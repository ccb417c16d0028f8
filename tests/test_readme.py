"""README's API tour and Python client example, run as written against a fresh service.

The blocks between `<!-- tour -->` and `<!-- /tour -->` (and `<!-- client-example -->`)
are extracted and run by a real bash with curl and jq, from a directory laid out as the
repository root is after `make run` (`.data/dev-token`), against `python -m service dev`
on a fresh database: so README cannot drift from the product.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.processes import Dev, free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(marker: str, language: str) -> list[str]:
    """The fenced `language` blocks between <!-- marker --> and <!-- /marker -->."""
    region = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", README, re.S)
    assert region, f"README has no <!-- {marker} --> section"
    found = re.findall(rf"```{language}\n(.*?)```", region.group(1), re.S)
    assert found, f"no {language} blocks in <!-- {marker} -->"
    return found


@pytest.fixture
def service(own_db, tmp_path):
    """A fresh `make run` (dev) on its own database; tmp_path plays the repository root."""
    port = free_port()
    dev = Dev(tmp_path, tmp_path / ".data", port, "dev", DATABASE_URL=own_db)
    try:
        token = dev.wait_ready()
        yield port, token, tmp_path
    finally:
        if dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()


def _get(port: int, token: str, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/pipelines/v0{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)["content"]


def test_the_api_tour_runs_as_written(service):
    port, token, cwd = service
    for tool in ("bash", "curl", "jq"):
        assert shutil.which(tool), f"{tool} is missing (.ci/run installs jq)"
    # As pasted: block after block into one shell; -e -u -o pipefail so no step fails unseen.
    *first, last = blocks("tour", "sh")
    # The last block (long-poll and delete) is timed by bash itself.
    script = "\n".join(["set -euo pipefail", *first, "SECONDS=0", last,
                        'echo "LAST BLOCK $SECONDS s"', 'echo "TOUR P=$P R=$R"'])
    out = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "PORT": str(port)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == "", out.stderr
    text = out.stdout
    ids = dict(re.findall(r"(\w)=([0-9a-f-]{36})", text.splitlines()[-1]))
    pipeline_id, run_id = ids["P"], ids["R"]

    # The long-poll was woken by the delete, not by its 25 s timeout.
    seconds = int(re.search(r"^LAST BLOCK (\d+) s$", text, re.M).group(1))
    assert seconds < 24, f"the long-poll block took {seconds}s: did it wait out its 25 s?"
    # What the tour says each step answers, it answers.
    assert "Idempotent-Replayed: true" in text
    assert '"waiting"' in text
    listed = re.search(r'\{\s*"count": (\d+),\s*"runs": \[(.*?)\]\s*\}', text, re.S)
    assert listed and int(listed.group(1)) >= 1 and '"status": "waiting"' in listed.group(2)
    assert "build: success" in text and "test: success" in text
    # The answers jq prints alone on a line: the If-Match move, the derived outcome, as_of,
    # the delete (the long-poll's answer may come before or after that one).
    statuses = re.findall(r'^"([^"]+)"$', text, re.M)
    assert statuses == ["waiting", "success", "running", "Deleted Pipeline Run"], text
    assert '"type":"run.deleted"' in text  # the long-poll's answer
    assert re.search(r"^404$", text, re.M)

    # One run despite the retried POST, and its whole history kept after the delete.
    feed = _get(port, token, f"/events/?run_id={run_id}&limit=1000")["results"]
    assert [e["type"] for e in feed].count("run.created") == 1
    assert feed[-1]["type"] == "run.deleted"
    created = _get(port, token, f"/events/?pipeline_id={pipeline_id}&type=run.created")
    assert len(created["results"]) == 1


def test_the_python_client_example_runs_as_written(service):
    port, token, cwd = service
    (code,) = blocks("client-example", "python")
    (cwd / "example.py").write_text(code)
    out = subprocess.run([sys.executable, "example.py"], cwd=cwd, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PORT": str(port)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 deploy running" in out.stdout
    assert "history: ['run.created', 'run.status_changed']" in out.stdout
    assert "feed caught up at position" in out.stdout
