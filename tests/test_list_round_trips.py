"""A run list's page is one statement: rows, count and the Consistency-Token's position come
back together (store/run_lists.py), so a page costs one round trip to PostgreSQL."""
from __future__ import annotations

from urllib.parse import quote

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.infra.replicas import parse_token
from tests.test_tracing import spans, traced  # noqa: F401 (fixtures)

TOKEN = "Consistency-Token"
INSERT_LSN = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8"


def _statements(spans: InMemorySpanExporter) -> list[str]:
    return [s.attributes.get("db.statement", "") for s in spans.get_finished_spans()
            if s.kind == SpanKind.CLIENT and s.attributes.get("db.system") == "postgresql"]


async def test_a_list_page_is_one_statement_and_its_token_covers_the_writes_before(
        traced, spans, db):
    pipeline = await traced.pipeline()
    runs = [await traced.run(pipeline["id"]) for _ in range(3)]
    await traced.move(runs[0], "running")
    written = parse_token(traced.last.headers[TOKEN])
    first = await traced.get("/runs/?limit=2")
    pages = ["/runs/?limit=2", f"/pipelines/{pipeline['id']}/runs/?status=pending",
             "/runs/?ordering=pipeline__name", "/runs/?ordering=-started_at",
             f"/runs/?limit=2&cursor={first['next_cursor']}"]
    for path in pages:
        spans.clear()
        await traced.get(path)
        statements = _statements(spans)
        assert len(statements) == 1, (path, statements)
        assert "pg_current_wal_insert_lsn" in statements[0]  # the position, in the page's
        token = parse_token(traced.last.headers[TOKEN])
        assert written <= token <= await db.fetchval(INSERT_LSN), path
    # A date range counts first (the count picks the plan): two statements, still no third.
    spans.clear()
    page = await traced.get(f"/runs/?created_after={quote(runs[0]['created_at'])}")
    assert page["count"] == 3
    assert len(_statements(spans)) == 2
