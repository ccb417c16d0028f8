"""Enterprise ids: the characters and length a tenant's id may have (one rule, one message)."""
from __future__ import annotations

import re

# Letters, digits, dot, underscore and hyphen, 1-64 of them: enough for Esper's UUIDs and
# for slugs ("acme", "ent-3f2a…", "dev"), and nothing a path, a URL, a CSV file or a log
# line would read as structure (no "/", spaces, quotes or control characters).
ENTERPRISE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENTERPRISE_ID_RULE = "1-64 of the letters A-Z a-z, digits 0-9, '.', '_' and '-'"


def enterprise_id_problem(text: str) -> str | None:
    """Why `text` is not an enterprise id (one sentence), or None when it is one."""
    if ENTERPRISE_ID.fullmatch(text) and text not in (".", ".."):  # not path steps either
        return None
    return f"{text[:80]!r} is not an enterprise id: use {ENTERPRISE_ID_RULE}"
