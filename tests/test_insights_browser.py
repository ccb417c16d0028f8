"""The Insights page in Chromium (skipped without it): signed in, filtered through the
form, charts drawn; the screenshot lands in tests/artifacts/insights.png."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service.app.seed import seed
from service.web.app import create_app

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_MS = 30_000



@pytest.fixture(autouse=True)
def chromium(missing_tool):
    """Skipped without Chromium; in CI (CI=true) its absence fails the test."""
    if not (shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK)):
        missing_tool(f"no Chromium at {CHROMIUM}: .ci/run installs it")


@pytest.fixture
async def server(aiohttp_server, config):
    return await aiohttp_server(create_app(config))


async def test_an_auditor_reads_insights_over_90_days(server, db, enterprise, token):
    from playwright.async_api import async_playwright

    await seed(db, enterprise, pipelines=6, runs=600, days=90, seed=11, batch=200)
    base = str(server.make_url("/"))[:-1]
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=["--no-sandbox"])
        try:
            page = await (await browser.new_context(
                viewport={"width": 1280, "height": 900})).new_page()
            page.set_default_timeout(WAIT_MS)
            await page.goto(base + "/ui/runs")
            await page.get_by_label("Token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url("**/ui/runs")
            await page.get_by_role("link", name="Insights", exact=True).first.click()
            await page.wait_for_url("**/ui/insights")
            await page.get_by_label("Window").select_option("90")
            await page.get_by_label("Granularity").select_option("week")
            await page.get_by_role("button", name="Apply").click()
            await page.wait_for_url("**granularity=week**")
            assert await page.locator("figure.chart svg").count() == 3
            assert await page.locator("figure.chart rect").count() > 10
            assert await page.locator("table.runs tbody tr").count() == 6
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "insights.png"), full_page=True)
        finally:
            await browser.close()
