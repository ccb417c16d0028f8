"""The auditors' pages in a real browser: Playwright driving Debian's Chromium.

.ci/run installs chromium when it is missing; these tests are skipped only when it is not
there, and fail then in CI (CI=true). Screenshots of every page are saved under
tests/artifacts/ (not committed).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from service.web.app import create_app

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_MS = 30_000  # a shared, loaded machine: generous ceilings, never sleeps



@pytest.fixture(autouse=True)
def chromium(missing_tool):
    """Skipped without Chromium; in CI (CI=true) its absence fails the test."""
    if not (shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK)):
        missing_tool(f"no Chromium at {CHROMIUM}: .ci/run installs it "
                     "(apt-get install chromium) when run as root")


@pytest.fixture
async def server(aiohttp_server, config):
    return await aiohttp_server(create_app(config))


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def expected_segments(history: list[dict]) -> dict[str, int]:
    """Status intervals per lane ("run" or a stage run id) that a history implies."""
    count = Counter()
    stage_ids = [s["id"] for s in history[0]["data"]["stage_runs"]]
    for event in history:
        if event["type"] == "run.created":
            count["run"] += 1
            count.update(stage_ids)
        elif event["type"] == "run.status_changed":
            count["run"] += 1
        elif event["type"] == "stage_run.status_changed":
            count[event["data"]["stage_run_id"]] += 1
    return dict(count)


async def drawn_segments(page) -> dict[str, int]:
    return await page.eval_on_selector_all(
        "g.lane", "lanes => Object.fromEntries(lanes.map("
                  "l => [l.dataset.lane, l.querySelectorAll('g.seg').length]))")


async def setup_runs(api):
    deploy = await api.pipeline(name="deploy", stages=("build", "test", "ship"))
    other = await api.pipeline(name="other", stages=("only",))
    await api.run(other["id"])
    run = await api.run(deploy["id"])
    stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
    moves = [(0, "running"), (0, "complete"), (0, "success"), (1, "running")]
    for n, status in moves:
        await api.put(f"/runs/{run['id']}/stageruns/{stage_runs[n]['id']}/", {"status": status})
    path = f"/pipelines/{deploy['id']}/runs/{run['id']}/events/?limit=1000"
    return run, (await api.get(path))["results"]


async def test_an_auditor_signs_in_finds_a_run_and_downloads_its_history(
        server, browser, api, token, tmp_path):
    run, history = await setup_runs(api)
    base = str(server.make_url("/"))[:-1]
    context = await browser.new_context(viewport={"width": 1280, "height": 900},
                                        accept_downloads=True, timezone_id="Europe/Paris")
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    # The pages' Content-Security-Policy must block nothing of their own.
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text)
            if "Content Security Policy" in m.text else None)

    # Sign in: any page sends you to the form, and back.
    await page.goto(base + "/ui/runs")
    assert "/ui/login" in page.url
    await shot(page, "login")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/ui/runs")
    assert await page.locator("table.runs tbody tr").count() == 2
    await shot(page, "runs")

    # Filter by pipeline.
    await page.get_by_label("Pipeline").select_option("deploy")
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_url("**pipeline_name=deploy**")
    rows = page.locator("table.runs tbody tr")
    assert await rows.count() == 1

    # Open the run: one lane per stage run (and the run's), one segment per interval.
    await rows.first.get_by_role("link").click()
    await page.wait_for_url(f"**/runs/{run['id']}")
    assert await page.locator("g.lane").count() == 1 + 3
    assert await drawn_segments(page) == expected_segments(history)
    assert await page.locator("circle.marker").count() == len(history)
    title = await page.locator("g.seg title").first.text_content()
    assert "pending" in title and "tester" in title
    await shot(page, "run")

    # As of the second event (and those of its transaction, at the same instant): fewer
    # intervals, the later stage runs back to pending.
    at = history[1]["occurred_at"]
    then = [e for e in history if datetime.fromisoformat(e["occurred_at"])
            <= datetime.fromisoformat(at)]
    assert 1 < len(then) < len(history)
    await page.get_by_label("As of (UTC, ISO 8601)").fill(at)
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_url("**as_of=**")
    assert await page.locator(".past").is_visible()
    assert await drawn_segments(page) == expected_segments(then)
    statuses = await page.locator("table.stage-runs .status").all_text_contents()
    assert statuses == ["running", "pending", "pending"]
    assert await page.locator("table.history tbody tr").count() == len(then)
    await shot(page, "run-as-of")
    await page.get_by_role("link", name="Back to now").click()
    assert not await page.locator(".past").count()

    # Both exports: they parse and equal the API's history.
    for fmt in ("csv", "ndjson"):
        async with page.expect_download() as info:
            await page.get_by_role("link", name=fmt.upper(), exact=True).click()
        saved = tmp_path / f"history.{fmt}"
        await (await info.value).save_as(saved)
        text = saved.read_text()
        if fmt == "ndjson":
            assert [json.loads(line) for line in text.splitlines()] == history
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
            assert [(int(r["version"]), r["type"], r["to_status"], r["occurred_at"], r["actor"])
                    for r in rows] == [(e["version"], e["type"], e["to_status"] or "",
                                        e["occurred_at"], e["actor"]) for e in history]

    # Local time on hover (the script adds it to each UTC time's title).
    hover = await page.locator("table.history time").first.get_attribute("title")
    assert "UTC" in hover and "local:" in hover

    # Activity: newest first, and live: a new event appears without a reload.
    await page.get_by_role("link", name="Activity").click()
    await page.wait_for_url("**/ui/activity")
    before = await page.locator("table.activity tbody tr").count()
    top = int(await page.locator("table.activity tbody tr").first.get_attribute("data-position"))
    stage_runs = (await api.get(f"/runs/{run['id']}/stageruns/"))["results"]
    await api.put(f"/runs/{run['id']}/stageruns/{stage_runs[1]['id']}/", {"status": "complete"})
    (new,) = (await api.get(f"/events/?after={top}"))["results"]
    row = page.locator(f'table.activity tbody tr[data-position="{new["position"]}"]')
    await row.wait_for()
    assert "running → complete" in await row.text_content()
    assert await page.locator("table.activity tbody tr").count() == before + 1
    await shot(page, "activity")

    # Narrow screens: the run page still fits its text, the picture scrolls.
    phone = await context.new_page()
    await phone.set_viewport_size({"width": 375, "height": 800})
    await phone.goto(base + f"/ui/pipelines/{run['pipeline_id']}/runs/{run['id']}")
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    await shot(phone, "run-375px")

    # Sign out: the pages ask for the token again.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/ui/login")
    await page.goto(base + "/ui/runs")
    assert "/ui/login" in page.url
    assert blocked == []
    await context.close()
