"""The Insights page (/ui/insights): charts and table render, escaped; the CSV neutralises
formulas; bad filters are a 400 page; it sits behind the session like every page."""
from __future__ import annotations

import csv
import io

from markupsafe import escape

from tests.helpers import sign_in

EVIL = "<script>alert('x')</script>"


async def _get(client, path: str, status: int = 200):
    resp = await client.get(path, allow_redirects=False)
    text = await resp.text()
    assert resp.status == status, text
    assert "Traceback" not in text
    return resp, text


async def _world(api) -> None:
    evil = await api.pipeline(name=EVIL)
    formula = await api.pipeline(name="=HYPERLINK(\"http://x\")")
    for pipeline, target in ((evil, ("running", "cancelled")), (formula, ("cancelled",))):
        run = await api.run(pipeline["id"])
        await api.move(run, *target)


async def test_the_page_draws_charts_and_a_table_per_pipeline(client, api, token):
    await _world(api)
    resp, _ = await _get(client, "/ui/insights", 303)
    assert resp.headers["Location"].startswith("/ui/login")
    await sign_in(client, token)
    _, text = await _get(client, "/ui/insights?days=7&granularity=hour")
    assert text.count("<svg") >= 5  # three charts and a sparkline per pipeline
    assert EVIL not in text and str(escape(EVIL)) in text
    assert 'class="st-cancelled"' in text and "polyline" in text
    assert text.count('href="/ui/runs?pipeline_name=') == 2
    _, runs = await _get(client, "/ui/runs")
    assert 'href="/ui/insights"' in runs


async def test_the_csv_is_the_table_with_formulas_neutralised(client, api, token):
    await _world(api)
    await sign_in(client, token)
    resp, text = await _get(client, "/ui/insights/export?days=30&granularity=day")
    assert resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(text)))
    names = {r["pipeline_name"]: r for r in rows}
    assert set(names) == {EVIL, "'=HYPERLINK(\"http://x\")"}
    assert names[EVIL]["cancelled"] == "1" and names[EVIL]["created"] == "1"


async def test_bad_filters_are_a_400_page(client, token):
    await sign_in(client, token)
    _, text = await _get(client, "/ui/insights?granularity=year", 400)
    assert "<h1>400" in text


async def test_too_many_rows_for_the_table_falls_back_to_a_coarser_granularity(client, api,
                                                                                token):
    # 14 pipelines by the hour over 30 days could be 14 × 720 = 10,080 rows, past what one
    # answer may hold: the charts stay hourly, the table's sparklines go by the day and say so.
    for n in range(14):
        pipeline = await api.pipeline(name=f"many-{n:02}")
        if n == 0:
            await api.move(await api.run(pipeline["id"]), "cancelled")
    await sign_in(client, token)
    _, text = await _get(client, "/ui/insights?days=30&granularity=hour")
    assert "Finished per day" in text and "(by day: by hour, this many pipelines" in text
    assert text.count('href="/ui/runs?pipeline_name=many-') == 1  # the one with a run
    resp, csv_text = await _get(client, "/ui/insights/export?days=30&granularity=hour")
    assert [r["pipeline_name"] for r in csv.DictReader(io.StringIO(csv_text))] == ["many-00"]
