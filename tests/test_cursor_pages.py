"""Keyset cursors on both run lists: every ordering and filter visits each run exactly once;
cursors combine with offsets, survive inserts, and malformed or foreign ones are 400."""
from __future__ import annotations

import base64
import json
import uuid
from urllib.parse import quote

import pytest

from service.store import run_lists
from service.web.schemas import ENTERPRISE_RUN_ORDERINGS, PIPELINE_RUN_ORDERINGS
from tests.helpers import (FILTERS, cursor_walk, cursor_world, expected_order, matches_filter,
                           run_in)
from tests.module_app import api, client, config, db, token  # noqa: F401 (one app per module)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_cursor_pages_visit_every_run_exactly_once_in_every_ordering(api):
    world = await cursor_world(api)
    runs = world["runs"]
    for ordering in [None, *ENTERPRISE_RUN_ORDERINGS]:
        for filters in FILTERS:
            query = "&".join(q for q in (filters, f"ordering={ordering}" if ordering else "") if q)
            path = "/runs/" + (f"?{query}" if query else "")
            selected = [r for r in runs if matches_filter(r, filters)]
            expected = expected_order(selected, ordering)
            full = (await api.get(path + ("&" if query else "?") + "limit=1000"))["results"]
            assert [r["id"] for r in full] == expected, (ordering, filters)
            for limit in (1, 3):
                assert await cursor_walk(api, path, limit) == expected, (ordering, filters, limit)
    alpha_runs = [r for r in runs if r["pipeline_id"] == world["alpha"]["id"]]
    for ordering in [None, *PIPELINE_RUN_ORDERINGS]:
        for filters in ("", "status=pending"):
            query = "&".join(q for q in (filters, f"ordering={ordering}" if ordering else "") if q)
            path = f"/pipelines/{world['alpha']['id']}/runs/" + (f"?{query}" if query else "")
            expected = expected_order([r for r in alpha_runs if matches_filter(r, filters)], ordering)
            assert await cursor_walk(api, path, 2) == expected, (ordering, filters)


async def _pages_forward(api, path: str, limit: int) -> list[dict]:
    """Every page from the first by next_cursor (cursor pages after the first)."""
    sep = "&" if "?" in path else "?"
    pages = [await api.get(f"{path}{sep}limit={limit}")]
    while pages[-1]["next_cursor"] is not None:
        pages.append(await api.get(f"{path}{sep}limit={limit}&cursor={pages[-1]['next_cursor']}"))
        assert len(pages) <= 100
    return pages


async def test_previous_links_walk_back_through_the_same_pages(api):
    """Forward by next_cursor, then back by `previous` from the last page: the same pages, in
    every ordering and filter (the dated filter reads a materialized range)."""
    world = await cursor_world(api)
    lists = [("/runs/", ordering, filters) for ordering in [None, *ENTERPRISE_RUN_ORDERINGS]
             for filters in [*FILTERS, "created_after=2000-01-01T00:00:00Z"]]
    lists += [(f"/pipelines/{world['alpha']['id']}/runs/", ordering, filters)
              for ordering in [None, *PIPELINE_RUN_ORDERINGS] for filters in ("", "status=pending")]
    for base, ordering, filters in lists:
        query = "&".join(q for q in (filters, f"ordering={ordering}" if ordering else "") if q)
        path = base + (f"?{query}" if query else "")
        forward = await _pages_forward(api, path, 3)
        assert forward[0]["previous"] is None and forward[0]["previous_cursor"] is None
        back = [forward[-1]]
        while back[-1]["previous"] is not None:
            assert "cursor=" in back[-1]["previous"] and "offset=" not in back[-1]["previous"]
            back.append(await api.get(back[-1]["previous"]))
            assert len(back) <= len(forward), (path, back[-1])
        assert [[r["id"] for r in p["results"]] for p in reversed(back)] == \
            [[r["id"] for r in p["results"]] for p in forward], path
        # the first page, reached backward, says it is the first; its next goes on
        assert back[-1]["previous_cursor"] is None
        if len(forward) > 1:
            again = await api.get(back[-1]["next"])
            assert again["results"] == forward[1]["results"], path


async def test_previous_links_of_a_wide_date_range_walk_back_too(api, monkeypatch):
    """A date range wider than RANGE_CAP reads its pages by segments, filtered by the dates."""
    monkeypatch.setattr(run_lists, "RANGE_CAP", 0)
    await cursor_world(api)
    for ordering in [None, *ENTERPRISE_RUN_ORDERINGS]:
        for filters in ("created_after=2000-01-01T00:00:00Z",
                        "created_after=2000-01-01T00:00:00Z&pipeline_name=beta"):
            path = f"/runs/?{filters}" + (f"&ordering={ordering}" if ordering else "")
            forward = await _pages_forward(api, path, 2)
            back = [forward[-1]]
            while back[-1]["previous"] is not None:
                back.append(await api.get(back[-1]["previous"]))
                assert len(back) <= len(forward), path
            assert [[r["id"] for r in p["results"]] for p in reversed(back)] == \
                [[r["id"] for r in p["results"]] for p in forward], path


async def test_a_previous_cursor_from_an_offset_page_and_across_new_runs(api):
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(7)]
    newest = [r["id"] for r in reversed(runs)]
    page = await api.get("/runs/?limit=2&offset=3")
    assert [r["id"] for r in page["results"]] == newest[3:5]
    assert "offset=1" in page["previous"] and page["previous_cursor"]  # the old link kept
    before = await api.get(f"/runs/?limit=2&cursor={page['previous_cursor']}")
    assert [r["id"] for r in before["results"]] == newest[1:3]
    assert before["previous_cursor"] and before["next_cursor"]
    added = await api.run(pipeline["id"])  # newer: before every page, found going back
    first = await api.get(before["previous"])
    assert [r["id"] for r in first["results"]] == [added["id"], newest[0]]
    assert first["previous"] is None and first["previous_cursor"] is None  # the top
    assert "cursor=" in first["next"]


async def test_cursor_and_offset_combine_and_offset_pages_carry_a_cursor(api):
    world = await cursor_world(api)
    expected = expected_order(world["runs"], "run_number")
    page = await api.get("/runs/?ordering=run_number&limit=4&offset=4")
    assert [r["id"] for r in page["results"]] == expected[4:8]
    assert "offset=8" in page["next"] and page["next_cursor"]
    after = await api.get(f"/runs/?ordering=run_number&limit=4&cursor={page['next_cursor']}")
    assert [r["id"] for r in after["results"]] == expected[8:12]
    skipped = await api.get(
        f"/runs/?ordering=run_number&limit=2&offset=3&cursor={page['next_cursor']}")
    assert [r["id"] for r in skipped["results"]] == expected[11:13]


async def test_cursor_pages_stay_exact_while_runs_are_added(api):
    pipeline = await api.pipeline()
    runs = [await api.run(pipeline["id"]) for _ in range(5)]
    page = await api.get("/runs/?limit=2")
    for _ in range(3):  # newer runs sort before the cursor: never seen, nothing repeated
        await api.run(pipeline["id"])
    rest = await api.get(f"/runs/?limit=10&cursor={page['next_cursor']}")
    seen = [r["id"] for r in page["results"] + rest["results"]]
    assert seen == [r["id"] for r in reversed(runs)]
    assert rest["count"] == 8 and rest["next_cursor"] is None


def _b64(value) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Fixed, not uuid4(): xdist's workers must collect the same parameters.
ANY_ID = "1862bb2e-3747-489c-b945-9bad500aa59e"


@pytest.mark.parametrize("cursor", [
    "not base64 !", _b64(b"\xff\xfe"), _b64(b"[1, 2]"), _b64({"o": "", "k": []}),
    _b64({"o": "", "k": ["yesterday", ANY_ID]}),
    _b64({"o": "", "k": ["2024-01-01T00:00:00", ANY_ID]}),  # no offset
    _b64({"o": "", "k": ["2024-01-01T00:00:00+00:00", "nope"]}),
    _b64({"o": "", "k": ["2024-01-01T00:00:00+00:00", ANY_ID], "x": 1}),
    _b64({"o": "", "k": ["2024-01-01T00:00:00+00:00", ANY_ID], "d": "f"}),
    _b64({"o": "run_number", "k": [1, "2024-01-01T00:00:00+00:00", ANY_ID]}),
    "x" * 5000,
])
async def test_a_malformed_or_foreign_cursor_is_a_400_envelope(api, cursor):
    for path in ("/runs/", f"/pipelines/{uuid.uuid4()}/runs/"):
        content = await api.get(f"{path}?cursor={quote(cursor)}", status=400)
        assert list(content["errors"]) == ["cursor"]


@pytest.mark.parametrize("ordering,key", [
    ("status", ["paused", "2024-01-01T00:00:00+00:00", ANY_ID]),
    ("run_number", [-1, "2024-01-01T00:00:00+00:00", ANY_ID]),
    ("run_number", [True, "2024-01-01T00:00:00+00:00", ANY_ID]),
    ("pipeline__name", [7, 1, ANY_ID]),
    ("-started_at", [None, None]),
])
async def test_cursor_keys_are_typed_per_ordering(api, ordering, key):
    cursor = _b64({"o": ordering, "k": key})
    content = await api.get(f"/runs/?ordering={ordering}&cursor={cursor}", status=400)
    assert list(content["errors"]) == ["cursor"]


async def test_a_null_key_cursor_resumes_in_the_null_part(api):
    pipeline = await api.pipeline()
    started = [await run_in(api, pipeline, "running") for _ in range(2)]
    never = [await api.run(pipeline["id"]) for _ in range(3)]
    expected = expected_order(started + never, "-started_at")
    assert await cursor_walk(api, "/runs/?ordering=-started_at", 1) == expected
    tail = [r for r in never if r["id"] != min(r["id"] for r in never)]
    cursor = _b64({"o": "started_at", "k": [None, min(r["id"] for r in never)]})
    page = await api.get(f"/runs/?ordering=started_at&cursor={cursor}")
    assert [r["id"] for r in page["results"]] == sorted(r["id"] for r in tail)
