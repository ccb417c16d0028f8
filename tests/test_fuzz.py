"""A schemathesis pass over the service's own OpenAPI document (examples, coverage, fuzzing)."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

from service.app import create_app

CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = os.environ.get("FUZZ_MAX_EXAMPLES", "8")  # raise it for a deeper local run
# What the service answers: no 5xx, and every status, content type, header and body
# conforms to the document.
RESPONSE_CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
                   "response_schema_conformance,response_headers_conformance")


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def _schemathesis(config, api, port: int, checks: str) -> tuple[int, str]:
    # Some real data, so ids in examples can hit existing pipelines, runs and stage runs.
    pipeline = await api.pipeline(stages=("build", "test"))
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG_FILE), "run",
            f"http://127.0.0.1:{port}/api/docs/swagger.json",
            "--header", f"Authorization: Bearer {api.token}",
            "--phases", "examples,coverage,fuzzing", "--checks", checks,
            "--max-examples", MAX_EXAMPLES, "--seed", "20261129", "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks",
                 "PYTHONPATH": str(Path(__file__).parent)})
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    finally:
        await runner.cleanup()
    return proc.returncode, output.decode()


async def test_responses_conform_and_never_5xx(config, api, unused_tcp_port):
    code, text = await _schemathesis(config, api, unused_tcp_port, RESPONSE_CHECKS)
    assert code == 0, text[-20000:]


@pytest.mark.xfail(strict=False, reason=(
    "schemathesis's request-classification checks still report false positives here: it "
    "reuses one Idempotency-Key for different bodies in its coverage phase (rightly a 422) "
    "and composes bodies with response-envelope fields; see the closing note of issue 5"))
async def test_all_checks(config, api, unused_tcp_port):
    code, text = await _schemathesis(config, api, unused_tcp_port, "all")
    assert code == 0, text[-20000:]
