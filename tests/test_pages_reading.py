"""Pages people can read (issue 22, items 9-13), server side: the runs list pages both ways
and says where it is, as_of errors keep the run, an unencoded `+` is read as one, and the
Activity page names stages and runs."""
from __future__ import annotations

import html
import re
from urllib.parse import quote

from tests.helpers import sign_in
from tests.test_pages import page, run_url


def _link(text: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}">', text)
    return html.unescape(found.group(1)) if found else None


def _runs_shown(text: str) -> list[str]:
    return re.findall(r'<a href="/ui/pipelines/[^/]+/runs/([^"]+)">#', text)


async def test_the_runs_page_pages_both_ways_and_says_where_it_is(client, api, token):
    pipeline = await api.pipeline(name="deploy")
    made = [await api.run(pipeline["id"]) for _ in range(7)]
    newest = [r["id"] for r in reversed(made)]
    await sign_in(client, token)
    first = await page(client, "/ui/runs?limit=3")
    assert "Runs 1–3 of 7" in first and _link(first, "prev") is None
    second = await page(client, _link(first, "next"))
    assert "Runs 4–6 of 7" in second and _runs_shown(second) == newest[3:6]
    third = await page(client, _link(second, "next"))
    assert "Runs 7–7 of 7" in third and _runs_shown(third) == newest[6:]
    assert _link(third, "next") is None
    back = await page(client, _link(third, "prev"))
    assert "Runs 4–6 of 7" in back and _runs_shown(back) == newest[3:6]
    top = await page(client, _link(back, "prev"))
    assert "Runs 1–3 of 7" in top and _runs_shown(top) == newest[:3]
    assert _link(top, "prev") is None  # the first page, reached backward, knows it is


async def test_a_count_over_a_thousand_is_grouped(client, api, token):
    from service.web.pages import reading
    assert reading.position_text(40, 20, 1234, True) == "Runs 41–60 of 1,234"
    assert reading.position_text(0, 0, 0, True) == "No run matches."
    assert reading.position_text(10_000, 20, 10_000, False) == "Runs 10,001–10,020 of 10,000+"


async def test_a_bad_or_too_early_as_of_shows_the_run_with_the_error_above_the_form(
        client, api, token):
    pipeline = await api.pipeline(name="deploy", stages=("build",))
    run = await api.run(pipeline["id"])
    await sign_in(client, token)
    for query, status, says in (("yesterday", 400, "“yesterday” is not an instant"),
                                ("2000-01-01T00:00:00Z", 404, "did not exist at that time")):
        text = await page(client, run_url(run) + "?as_of=" + quote(query), status)
        alert = re.search(r'<p class="alert" role="alert"[^>]*>(.*?)</p>', text, re.S).group(1)
        assert says in html.unescape(alert), alert
        # the run's context stays: its heading, facts, timeline and history; the form keeps
        # what was typed, after the error
        assert "deploy" in text and f"#{run['run_number']}" in text
        assert '<g class="lane"' in text and 'data-version="1"' in text
        assert text.index('role="alert"') < text.index('class="asof"')
        assert f'value="{html.escape(query)}"' in text and 'aria-invalid="true"' in text
        assert "Past view" not in text


async def test_an_unencoded_plus_is_read_as_a_plus_on_the_page_and_in_the_api(
        client, api, token):
    pipeline = await api.pipeline(stages=("build",))
    run = await api.run(pipeline["id"])
    at = run["created_at"]
    assert at.endswith("Z") or at.endswith("+00:00")
    plus = at.replace("Z", "+00:00")
    spaced = plus.replace("+", " ")  # what form decoding makes of an unencoded +
    path = f"/pipelines/{pipeline['id']}/runs/{run['id']}/"
    then = await api.get(path, params={"as_of": spaced})  # sent encoded: %20
    assert then["id"] == run["id"] and then["version"] == 1
    then = await api.get(f"{path}?as_of={plus}")  # the raw URL, + unencoded as typed
    assert then["id"] == run["id"] and then["version"] == 1
    await sign_in(client, token)
    text = await page(client, f"{run_url(run)}?as_of={plus}")
    assert "Past view" in text and 'role="alert"' not in text
    # a space elsewhere is still refused
    await api.get(path, params={"as_of": "2026-12-06 14:44"}, status=400)


async def test_activity_names_the_stage_and_calls_the_run_by_pipeline_and_number(
        client, api, token):
    pipeline = await api.pipeline(name="deploy", stages=("build", "ship"))
    await api.run(pipeline["id"])
    run = await api.run(pipeline["id"])  # deploy #2
    stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
    ship = next(s for s in stage_runs if s["stage_meta"]["name"] == "ship")
    await api.put(f"/runs/{run['id']}/stageruns/{ship['id']}/", {"status": "running"})
    top = (await api.get("/events/?after=0&limit=1000"))["results"][-1]["position"]
    await sign_in(client, token)
    text = await page(client, "/ui/activity")
    rows = re.findall(r'<tr data-position="\d+">(.*?)</tr>', text, re.S)
    moved = next(r for r in rows if "stage_run.status_changed" in r)
    assert "stage ship" in moved and ">deploy #2</a>" in moved
    assert run["id"] not in re.sub(r'(href|title)="[^"]*"', "", moved)  # no uuid shown
    assert not re.search(r"\bv\d+</td>", moved)
    assert sum(">deploy #1</a>" in r for r in rows) == 1
    # the live rows say the same
    await api.put(f"/runs/{run['id']}/stageruns/{ship['id']}/", {"status": "complete"})
    rows = await page(client, f"/ui/activity/updates?after={top}")
    assert "stage ship" in rows and ">deploy #2</a>" in rows
    # a deleted run keeps its name
    await api.delete(f"/pipelines/{pipeline['id']}/runs/{run['id']}/")
    assert ">deploy #2</a>" in await page(client, "/ui/activity?type=run.deleted")
