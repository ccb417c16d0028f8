"""The CLI as a person meets it: --help describes everything, bad input and a database
that cannot be reached end in one line and an exit code, never a traceback."""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

import pytest

from service.__main__ import build_parser

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


def test_create_token_with_known_scopes(own_db):
    out = cli("create-token", "--enterprise", "acme", "--name", "ci", "--scopes",
              "runs:read, audit:read", DATABASE_URL=own_db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("pr_")
    assert "runs:read,audit:read" in out.stdout


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
