"""A schemathesis pass over the service's own OpenAPI document (examples, coverage, fuzzing)."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

from service.web.app import RESOURCE_ROUTES, create_app
from service.infra.runtime import PARSER_LIMITS

CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")
# Raise them for a deeper local run, e.g. FUZZ_MAX_EXAMPLES=100 FUZZ_SEED=1.
MAX_EXAMPLES = os.environ.get("FUZZ_MAX_EXAMPLES", "8")
SEED = os.environ.get("FUZZ_SEED", "20261129")
OPERATIONS = len(RESOURCE_ROUTES) + 4  # and the two health probes, `/` and `/favicon.ico`


@pytest.fixture
def db_dsn(own_db):
    return own_db


async def _schemathesis(config, api, port: int) -> tuple[int, str]:
    # Some real data, so ids in examples can hit existing pipelines, runs and stage runs.
    pipeline = await api.pipeline(stages=("build", "test"))
    run = await api.run(pipeline["id"])
    await api.move(run, "running")
    runner = web.AppRunner(create_app(config), **PARSER_LIMITS)  # as served (runtime.run)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG_FILE), "run",
            f"http://127.0.0.1:{port}/api/docs/swagger.json",
            "--header", f"Authorization: Bearer {api.token}",
            "--phases", "examples,coverage,fuzzing", "--checks", "all",
            "--max-examples", MAX_EXAMPLES, "--seed", SEED, "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
                 "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    finally:
        await runner.cleanup()
    return proc.returncode, output.decode()


async def test_every_check_passes(config, api, unused_tcp_port):
    """Every schemathesis check: no 5xx; statuses, content types, headers and bodies as
    documented; requests the document calls valid are accepted and invalid ones refused
    (4xx); unsupported methods 405; no token 401. One run keeps CI short."""
    code, text = await _schemathesis(config, api, unused_tcp_port)
    assert code == 0, text[-20000:]
    # It did run: every operation, and each phase (examples: those the document has).
    assert f"Tested: {OPERATIONS}\n" in text, text[-20000:]
    for phase in ("Examples", "Coverage", "Fuzzing"):
        assert f"✅ {phase}\n" in text, text[-20000:]
