"""The layers of docs/architecture.md hold without exceptions: every import of every module
of `service` is read (ast) and none goes upward or around a layer."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "service"

# What each layer may import of ours (itself included). web → app → store → domain; infra
# and config are the ground: anyone but the domain may import them, they import nothing
# above them. The CLI is a caller as the web is; the client imports nothing of the server.
ALLOWED = {
    "cli": {"web", "app", "domain", "infra", "config"},
    "web": {"web", "app", "domain", "infra", "config"},
    "app": {"app", "store", "domain", "infra", "config"},
    "store": {"store", "domain", "infra", "config"},
    "domain": {"domain"},
    "infra": {"infra", "config"},
    "config": {"config"},
    "client": {"client"},
    "package": set(),  # service/__init__.py
}
LAYER_OF_FILE = {"__main__": "cli", "config": "config", "client": "client",
                 "__init__": "package"}


def layer(module: str) -> str:
    """service.web.handlers.runs → web; service.__main__ → cli; service → package."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return LAYER_OF_FILE.get(parts[1], parts[1])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, source: str, is_package: bool) -> list[tuple[str, str]]:
    """(statement, imported module) for every import of ours, function-local ones included."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from service import web` names a module too: take each name as one.
            names = [f"{base}.{alias.name}" for alias in node.names] if base in (
                "service",) else [base]
            found += [(node, name) for name in names]
    return [(f"line {node.lineno}: {ast.unparse(node)}", name) for node, name in found
            if name == "service" or name.startswith("service.")]


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    own = layer(module)
    return [f"{module} ({statement}) imports {name}: {own} may import only "
            f"{', '.join(sorted(ALLOWED[own])) or 'nothing of ours'}"
            for statement, name in imports_of(module, source, is_package)
            if layer(name) not in ALLOWED[own]]


def test_no_import_goes_upward_or_around():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += violations(module_name(path), path.read_text(), path.name == "__init__.py")
    assert not found, "layering violations:\n" + "\n".join(found)


def test_every_module_has_a_known_layer():
    layers = {layer(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


@pytest.mark.parametrize("module, source, expected", [
    ("service.web.auth", "from service.store import tokens", "imports service.store:"),
    ("service.web.handlers.health", "from ...store.meta import ping",
     "(line 1: from ...store.meta import ping) imports service.store.meta:"),
    ("service.__main__", "import service.store.roles", "service.store.roles"),
    ("service.store.seed", "from service.app import seed", "imports service.app:"),
    ("service.store.runs", "from ..web import keys", "imports service.web:"),
    ("service.infra.feedwait", "from service.store.locks import X", "service.store.locks"),
    ("service.infra.db", "from service.domain.errors import Unavailable", "service.domain.errors"),
    ("service.domain.lifecycle", "from service.infra import db", "imports service.infra:"),
    ("service.domain.ids", "from service.config import Config", "service.config"),
    ("service.client", "from service.web import keys", "imports service.web:"),
    ("service.store.runs", "def f():\n    from service.web.keys import POOL\n",
     "service.web.keys"),
])
def test_the_check_names_the_module_and_the_import(module, source, expected):
    """The check itself can fail: each upward or around import is reported, by name."""
    found = violations(module, source)
    assert len(found) == 1 and found[0].startswith(f"{module} (line ") and expected in found[0]


@pytest.mark.parametrize("module, source", [
    ("service.web.auth", "from service.app import tokens"),
    ("service.app.positions", "from service.store import replication"),
    ("service.store.seed", "from service.infra.db import init_connection"),
    ("service.infra.replicas", "from service.config import Config"),
    ("service.domain.lifecycle", "from .errors import Conflict"),
    ("service.web.app", "from service.web.handlers import runs"),
    ("service.store.runs", "import asyncpg\nfrom typing import Any"),
])
def test_the_check_lets_downward_imports_pass(module, source):
    assert violations(module, source) == []
