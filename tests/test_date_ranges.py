"""Date ranges on the run lists (created/updated, half-open, RFC 3339), read range-first or by
segments with the same order as the undated list; capped counts; documented in OpenAPI."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from service.store import run_lists
from service.web.schemas import ENTERPRISE_RUN_ORDERINGS, PIPELINE_RUN_ORDERINGS
from tests.helpers import FILTERS, cursor_walk, cursor_world, expected_order, iso, matches_filter
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("plan", ["range first", "segments"])
async def test_date_ranges_page_exactly_in_every_ordering_both_ways(api, monkeypatch, plan):
    # A dated list is read range-first when its range is narrow, by the ordering's segments
    # when wide: both must give exactly the order (and cursor walk) of the undated list.
    monkeypatch.setattr(run_lists, "RANGE_CAP", 10**6 if plan == "range first" else -1)
    world = await cursor_world(api)
    runs = world["runs"]
    since = min(datetime.fromisoformat(r["created_at"]) for r in runs)
    dated = f"created_after={iso(since)}&updated_before=9999-01-01T00:00:00Z"
    for ordering in [None, *ENTERPRISE_RUN_ORDERINGS]:
        for filters in FILTERS:
            query = "&".join(q for q in (filters, dated, f"ordering={ordering}" if ordering
                                         else "") if q)
            expected = expected_order([r for r in runs if matches_filter(r, filters)], ordering)
            page = await api.get(f"/runs/?{query}&limit=1000")
            assert [r["id"] for r in page["results"]] == expected, (ordering, filters)
            assert (page["count"], page["count_exact"]) == (len(expected), True)
            for limit in (1, 3):
                walked = await cursor_walk(api, f"/runs/?{query}", limit)
                assert walked == expected, (ordering, filters, limit)
    alpha = world["alpha"]["id"]
    for ordering in [None, *PIPELINE_RUN_ORDERINGS]:
        query = dated + (f"&ordering={ordering}" if ordering else "")
        expected = expected_order([r for r in runs if r["pipeline_id"] == alpha], ordering)
        assert await cursor_walk(api, f"/pipelines/{alpha}/runs/?{query}", 2) == expected


async def test_date_ranges_filter_both_lists_half_open(api):
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(6)]
    moved = await api.move(runs[1], "running")
    created = [datetime.fromisoformat(r["created_at"]) for r in runs]

    async def ids(query: str, path: str = "/runs/") -> tuple[int, list[str]]:
        page = await api.get(f"{path}?limit=1000&{query}")
        assert page["count_exact"] is True
        return page["count"], sorted(r["id"] for r in page["results"])

    count, got = await ids(f"created_after={iso(created[2])}&created_before={iso(created[4])}")
    assert (count, got) == (2, sorted(r["id"] for r in runs[2:4]))
    count, got = await ids(f"created_after={iso(created[5])}",
                           f"/pipelines/{pipeline['id']}/runs/")
    assert (count, got) == (1, [runs[5]["id"]])
    count, got = await ids(f"created_before={iso(created[0])}")
    assert count == 0 and got == []
    updated = datetime.fromisoformat(moved["updated_at"])
    count, got = await ids(f"updated_after={iso(updated)}")
    assert (count, got) == (1, [runs[1]["id"]])
    count, got = await ids(f"updated_before={iso(updated)}&status=pending")
    assert (count, got) == (5, sorted(r["id"] for r in runs if r["id"] != runs[1]["id"]))
    # In another offset: the same instant.
    other = created[2].astimezone(timezone(timedelta(hours=-5)))
    assert (await ids(f"created_after={iso(other)}"))[0] == 4
    # With a cursor, every ordering.
    for ordering in ENTERPRISE_RUN_ORDERINGS:
        walked = await cursor_walk(
            api, f"/runs/?ordering={ordering}&created_after={iso(created[1])}", 2)
        assert sorted(walked) == sorted(r["id"] for r in runs[1:]), ordering


@pytest.mark.parametrize("value", ["yesterday", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z"])
@pytest.mark.parametrize("field", ["created_after", "created_before", "updated_after",
                                   "updated_before"])
async def test_date_ranges_need_rfc3339_instants(api, field, value):
    content = await api.get(f"/runs/?{field}={quote(value)}", status=400)
    assert list(content["errors"]) == [field]


async def test_date_filtered_counts_stop_at_the_cap(api, monkeypatch):
    monkeypatch.setattr(run_lists, "COUNT_CAP", 3)
    pipeline = await api.pipeline()
    for _ in range(5):
        await api.run(pipeline["id"])
    page = await api.get("/runs/?created_after=2000-01-01T00:00:00Z&limit=2")
    assert (page["count"], page["count_exact"]) == (3, False)
    assert page["next"] is not None  # links follow the rows, not the capped count
    walked = await cursor_walk(api, "/runs/?created_after=2000-01-01T00:00:00Z", 2)
    assert len(walked) == 5
    page = await api.get("/runs/?limit=2")
    assert (page["count"], page["count_exact"]) == (5, True)


async def test_openapi_documents_cursor_dates_and_the_page(client):
    spec = await (await client.get("/api/docs/swagger.json")).json()
    for path in ("/pipelines/v0/runs/", "/pipelines/v0/pipelines/{pipeline_id}/runs/"):
        names = {p["name"] for p in spec["paths"][path]["get"]["parameters"]}
        assert {"cursor", "created_after", "created_before", "updated_after",
                "updated_before", "limit", "offset"} <= names, path
    page = spec["components"]["schemas"]["PipelineRunPage"]["properties"]
    assert {"count", "count_exact", "next", "previous", "next_cursor", "results"} <= set(page)
