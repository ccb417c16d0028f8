"""README and docs/*.md stay true: every setting, CLI option, route and link they name
exists, every setting of `Config` is in docs/configuration.md, and README stays short."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from service.__main__ import build_parser
from service.config import Config
from service.web.app import MOUNTS, create_app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# Names in ALL_CAPS that the docs may use and that are neither our settings nor names in
# our code: the OpenTelemetry SDK's own variables, a socket option, CI's flag.
EXTERNAL = {"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_PROPAGATORS",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "SO_REUSEPORT",
            "PYTEST_SEED",  # the test run's random seed (tests/conftest.py)
            "YARDSTICK_WRK_S"}  # ../shared/bench's seconds per round
# The first path segments of what the service serves (anything else is a file path).
ROUTE_ROOTS = {"pipelines", "runs", "events", "webhooks", "health", "ui", "api", "v0",
               "metrics", "favicon.ico"}


def code_spans(path: Path) -> list[str]:
    """Inline `code` and the lines of fenced blocks: where names are written as names."""
    text = path.read_text()
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose) + [line for b in fenced for line in b.splitlines()]


def settings() -> set[str]:
    """The environment variables Config.from_env reads."""
    source = (ROOT / "service" / "config.py").read_text()
    names = set(re.findall(r'env(?:\.get)?\(\s*"([A-Z][A-Z0-9_]*)"', source))
    names |= set(re.findall(r'\(env,\s*"([A-Z][A-Z0-9_]*)"', source))
    assert len(names) >= 30 and "DATABASE_URL" in names, names  # the parse still works
    return names


def code_names() -> set[str]:
    """ALL_CAPS names assigned in the service, bench and test code, and Makefile variables."""
    names: set[str] = set()
    for folder in ("service", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*(?::[^=\n]*)?=", path.read_text(),
                                    re.M))
    makefile = (ROOT / "Makefile").read_text()
    names |= set(re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", makefile))
    return names


def commands() -> dict[str, set[str]]:
    """Each CLI command and its options."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in sub._actions for o in a.option_strings}
            for name, sub in action.choices.items()}


def test_every_setting_of_config_is_in_the_configuration_table():
    table = (ROOT / "docs" / "configuration.md").read_text()
    documented = {name for row in re.findall(r"^\| ([^|]+) \|", table, re.M)
                  for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row)}
    missing = sorted(settings() - documented)
    assert not missing, f"settings of Config not in docs/configuration.md's table: {missing}"
    unknown = sorted(documented - settings())
    assert not unknown, f"docs/configuration.md's table names what Config does not read: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_setting_and_constant_named_exists(page):
    known = settings() | code_names() | EXTERNAL
    named = {name for span in code_spans(page)
             for name in re.findall(r"(?<![\w/.])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?![\w.])", span)}
    unknown = sorted(named - known)
    assert not unknown, f"{page.name} names settings or constants that do not exist: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cli_command_and_option_named_exists(page):
    known = commands()
    wrong = []
    for span in code_spans(page):
        # `python -m service CMD --opt …` and `CMD --opt …` (e.g. `create-token --rate-limit N`)
        found = re.search(r"python -m service ([a-z][a-z-]*)(.*)", span)
        if found is None:
            found = re.match(r"([a-z][a-z-]*) (--.*)", span)
        if found is None or (found.group(1) not in known and "python -m" not in span):
            continue
        command, rest = found.group(1), found.group(2).split("#")[0]
        if command not in known:
            wrong.append(f"unknown command {command!r}")
            continue
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            if option not in known[command] | {"--help"}:
                wrong.append(f"{command} has no option {option}")
    assert not wrong, f"{page.name}: {wrong}"


def test_the_cli_list_names_every_option_of_every_command():
    block = re.search(r"```sh\n(\.venv/bin/python -m service --help\n.*?)```",
                      (ROOT / "docs" / "operations.md").read_text(), re.S).group(1)
    lines = {m.group(1): m.group(2).split("#")[0]
             for m in re.finditer(r"-m service ([a-z-]+)(.*)", block)}
    missing = {name: sorted({o for o in options if o.startswith("--")} - {"--help"}
                            - set(re.findall(r"--[a-z-]+", lines.get(name, ""))))
               for name, options in commands().items()}
    missing = {name: options for name, options in missing.items() if options}
    assert not missing, f"docs/operations.md's command list leaves out: {missing}"


def _route_pattern(path: str) -> re.Pattern:
    parts = re.split(r"\{[^}]*\}", path.rstrip("/"))
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + "/?")


@pytest.fixture(scope="module")
def served() -> list[re.Pattern]:
    # /metrics counts as served: by default on METRICS_PORT, its own listener.
    app = create_app(Config(database_url="postgresql://unused/x", metrics_on_api_port=True))
    return [_route_pattern(r.resource.canonical) for r in app.router.routes() if r.resource]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_route_named_is_served(page, served):
    unknown = []
    for span in code_spans(page):
        for path in re.findall(r"(?<![\w.:/$}…-])(/[A-Za-z0-9_{}./-]+)", span):
            if path.split("/")[1] not in ROUTE_ROOTS:
                continue
            if any(mount.startswith(path.rstrip("/")) for mount in MOUNTS):
                continue  # a mount (or `/api`), named as such
            candidates = [path] + [mount + path for mount in MOUNTS]
            # A placeholder in the docs matches a value in the route and vice versa.
            concrete = re.sub(r"\{[^}]*\}", "x", path.rstrip("/"))
            if not any(p.fullmatch(c) or p.fullmatch(re.sub(r"\{[^}]*\}", "x", c))
                       for p in served for c in (*candidates, concrete)):
                unknown.append(path)
    assert not unknown, f"{page.name} names routes the service does not serve: {unknown}"


def test_readme_is_the_door_and_links_every_doc():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "README is the door, not the manual: move it to docs/"
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)\)", text))
    missing = sorted({p.name for p in DOCS} - linked)
    assert not missing, f"docs not linked from README's table: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    links = re.findall(r"\]\((?!https?:)([^)#\s]+)", page.read_text())
    broken = [link for link in links if not (page.parent / link).exists()]
    assert not broken, f"{page.name} links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_make_target_named_exists(page):
    makefile = (ROOT / "Makefile").read_text()
    targets = {t for line in re.findall(r"^([\w .-]+):(?!=)", makefile, re.M) for t in line.split()}
    named = {m for span in code_spans(page) for m in re.findall(r"\bmake ([a-z][\w-]*)", span)}
    unknown = sorted(named - targets)
    assert not unknown, f"{page.name} names make targets the Makefile lacks: {unknown}"
