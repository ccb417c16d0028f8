"""The service with the insights upkeep left out of its write statements: the B side of
`bench/insights_ab.py --http` only, never a way to run the service.

The write statements are made at import (store/moves.py, runs.py, changes.py): with
append.statement told no writer names `run_states`, their `run_states` CTE is never read,
so PostgreSQL does not run it, and run_insights, its running totals and the recoveries are
left as they were. Everything else is the service as `python -m service` runs it.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.store import append  # noqa: E402

_statement = append.statement


def _without_insights(ctes: str, select: str, *, run_states: bool = False) -> str:
    return _statement(ctes, select)


def statement_pairs() -> dict:
    """{(module, name): (with, without)} of every write statement that keeps the insights,
    for an A/B inside one process (bench/insights_ab.py): assign either to the module's
    attribute (its functions read it at call time)."""
    import importlib

    from service.store import changes, moves, runs
    modules = (moves, runs, changes)
    with_ = {m: {k: v for k, v in vars(m).items() if isinstance(v, str)} for m in modules}
    append.statement = _without_insights
    try:
        for m in modules:
            importlib.reload(m)
        without = {m: {k: v for k, v in vars(m).items() if isinstance(v, str)}
                   for m in modules}
    finally:
        append.statement = _statement
        for m in modules:
            importlib.reload(m)
    return {(m, k): (v, without[m][k]) for m in modules for k, v in with_[m].items()
            if without[m][k] != v}


if __name__ == "__main__":
    append.statement = _without_insights
    from service.__main__ import main
    sys.exit(main())
