"""The CLI as a person meets it: --help describes everything, bad input and a database
that cannot be reached end in one line and an exit code, never a traceback."""
from __future__ import annotations

import argparse
import asyncio
import os
import pty
import re
import socket
import subprocess
import sys
import uuid

import pytest

from service.__main__ import build_parser

from tests.helpers import admin, dsn_for
from tests.processes import ROOT, free_port


def cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_describes_every_command_and_mentions_database_url():
    out = cli("--help")
    assert out.returncode == 0
    assert "DATABASE_URL" in out.stdout and "embedded" in out.stdout
    for name in _subparsers(build_parser()):
        assert name in out.stdout
    for name, parser in _subparsers(build_parser()).items():
        assert parser.description, name
        for action in parser._actions:
            # every option and argument says what it is
            assert action.help, f"{name} {action.option_strings or action.dest}"
        text = cli(name, "--help").stdout
        assert "DATABASE_URL" in text, name


@pytest.mark.parametrize("args, says", [
    (["--scopes", "runs:admin"], "unknown scope 'runs:admin'"),
    (["--scopes", "runs:read,runs:admin"], "unknown scope 'runs:admin'"),
    (["--scopes", ""], "at least one scope"),
    (["--scopes", " , "], "at least one scope"),
    (["--enterprise", ""], "must not be empty"),
    (["--enterprise", "  "], "must not be empty"),
    (["--name", ""], "must not be empty"),
])
def test_create_token_refuses_bad_input_in_one_line(args, says, own_db):
    base = {"--enterprise": "acme", "--name": "ci", "--scopes": "runs:read"}
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    out = cli("create-token", *flat, DATABASE_URL=own_db)
    assert out.returncode == 2, out
    assert says in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""
    # nothing was created
    listed = cli("list-tokens", DATABASE_URL=own_db)
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize("enterprise", ["ACME CORP/../x", "a/b", "..", "x" * 65, "é", "a b"])
@pytest.mark.parametrize("command", ["create-token", "seed"])
def test_an_enterprise_id_outside_the_rule_is_refused_in_one_line(command, enterprise):
    args = ["--name", "ci"] if command == "create-token" else []
    out = cli(command, "--enterprise", enterprise, *args, DATABASE_URL="postgresql://unused/x")
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert "is not an enterprise id: use 1-64 of the letters A-Z a-z, digits 0-9, '.', '_' " \
           "and '-'" in line, line


@pytest.mark.parametrize("args, says", [
    (["--pipelines", "0"], "--pipelines: must be 1 or more"),
    (["--runs", "-1"], "--runs: must be 0 or more"),
    (["--days", "0"], "--days: must be more than 0"),
    (["--batch", "0"], "--batch: must be 1 or more"),
    (["--pipelines", "many"], "--pipelines"),
])
def test_seed_refuses_bad_input_in_one_line(args, says):
    out = cli("seed", "--enterprise", "acme", *args, DATABASE_URL="postgresql://unused/x")
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert says in line and out.stdout == ""


def test_seed_help_shows_the_defaults():
    text = cli("seed", "--help").stdout
    for option, default in (("pipelines", "10"), ("runs", "1000"), ("days", "90.0"),
                            ("seed", "0"), ("batch", "5000")):
        assert f"(default: {default})" in text.split(f"--{option} ", 2)[-1].split("--")[0], option


def test_revoking_an_unknown_token_says_so_on_stderr(own_db):
    out = cli("revoke-token", "9999", DATABASE_URL=own_db)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == ("python -m service revoke-token: token 9999 not found or "
                                  "already revoked")


def test_log_lines_are_text_on_a_terminal_and_json_in_a_pipe(own_db):
    # asyncio logs its selector at DEBUG: a log line every command writes.
    env = {**os.environ, "DATABASE_URL": own_db, "LOG_LEVEL": "DEBUG"}
    env.pop("LOG_FORMAT", None)
    piped = subprocess.run([sys.executable, "-m", "service", "list-tokens"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr.startswith('{"timestamp"'), piped.stderr
    primary, secondary = pty.openpty()  # stderr a terminal, as in a shell
    try:
        done = subprocess.run([sys.executable, "-m", "service", "list-tokens"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=secondary, timeout=60)
        os.close(secondary)
        text = _read_all(primary)
    finally:
        os.close(primary)
    assert done.returncode == 0
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG asyncio \[-\] Using selector", text), text
    assert "{" not in text.splitlines()[0]


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_create_token_with_known_scopes(own_db):
    out = cli("create-token", "--enterprise", "acme", "--name", "ci", "--scopes",
              "runs:read, audit:read", DATABASE_URL=own_db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("pr_")
    assert "runs:read,audit:read" in out.stdout


@pytest.fixture
def empty_db(admin_dsn):
    """A database with nothing in it: what a first `serve` or `make run` meets."""
    name = f"pr_empty_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    yield dsn_for(admin_dsn, name)
    asyncio.run(admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_a_first_command_on_an_empty_database_applies_the_schema(empty_db):
    # One URL that may create tables: the command migrates before its work (a ::regclass
    # cast of a table not made yet once failed here, with a traceback).
    out = cli("create-token", "--enterprise", "acme", "--name", "first", DATABASE_URL=empty_db)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    listed = cli("list-tokens", DATABASE_URL=empty_db)
    assert listed.returncode == 0 and "first" in listed.stdout, listed.stderr


UNREACHABLE = "postgresql://alice:s3cret-pw@127.0.0.1:{port}/nowhere"


@pytest.mark.parametrize("command", [
    ["migrate"], ["create-token", "--enterprise", "acme", "--name", "ci"], ["list-tokens"],
    ["revoke-token", "1"], ["replay"], ["verify"], ["seed", "--enterprise", "acme"],
    ["serve", "--port", "0"], ["dev", "--port", "0"],
])
def test_unreachable_database_is_one_line_and_exit_1(command, tmp_path):
    dead = free_port()  # nothing listens there
    out = cli(*command, DATABASE_URL=UNREACHABLE.format(port=dead), DATA_DIR=str(tmp_path))
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"127.0.0.1:{dead}" in lines[0] and "cannot connect" in lines[0]
    assert "s3cret-pw" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    if command[0] == "dev":  # no token was made or saved
        assert not (tmp_path / "dev-token").exists()


def test_wrong_password_is_one_line(own_db):
    # A database that answers but refuses: the same one line (the DSN's db does not exist).
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(own_db)
    wrong = urlunsplit(parts._replace(path="/no_such_database_here"))
    out = cli("list-tokens", DATABASE_URL=wrong)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no_such_database_here" in out.stderr and "Traceback" not in out.stderr


def test_serve_on_a_busy_port_is_one_line(own_db):
    with socket.create_server(("127.0.0.1", 0)) as busy:  # listening: the port is taken
        port = busy.getsockname()[1]
        out = cli("serve", "--port", str(port), DATABASE_URL=own_db)
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    prefix = f"python -m service serve: port {port} is in use: stop the other server or use --port "
    assert line.startswith(prefix), line
    assert int(line.removeprefix(prefix)) != port


def test_a_bad_setting_is_one_line_and_exit_2():
    out = cli("list-tokens", LOG_FORMAT="xml")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "python -m service: error: LOG_FORMAT must be one of json, text, not 'xml'"]
