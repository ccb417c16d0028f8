"""What a person sees on the pages (issue 22, items 9-13): status colours told apart (also
with a colour-vision deficiency) and final statuses marked by shape; a timeline with
visible short segments, readable ticks and a phone layout; the runs list paged both ways;
the as-of error kept on the run page; Activity naming stages and runs.

The colour checks read ui.css; the rest drive Chromium (see test_browser.py) over a seeded
enterprise, and save screenshots under tests/artifacts/ (docs/img/ holds chosen ones).
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest

from service.app.seed import seed
from service.domain import lifecycle
from service.web.pages import svg
from tests.test_browser import (  # noqa: F401
    ARTIFACTS, CHROMIUM, WAIT_MS, browser, chromium, server, shot,
)

CSS = (Path(svg.__file__).parent / "static" / "ui.css").read_text()
OPEN = [s for s in lifecycle.RUN_STATUSES if s not in lifecycle.TERMINAL]


# --- colours, read from the stylesheet ----------------------------------------------------

def _colour(status: str) -> str:
    return re.search(rf"--{status}: (#[0-9a-f]{{6}})", CSS).group(1)


def _linear(hex_colour: str) -> list[float]:
    out = []
    for i in (1, 3, 5):
        c = int(hex_colour[i:i + 2], 16) / 255
        out.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    return out


# Viénot, Brettel & Mollon (1999) dichromat simulations on linear RGB; tritanopia after
# Machado et al. (2009). A dichromat sees both colours of a pair as these.
SEEN_BY = {
    "normal vision": None,
    "protanopia": [[0.11238, 0.88762, 0], [0.11238, 0.88762, 0], [0.00401, -0.00401, 1]],
    "deuteranopia": [[0.29275, 0.70725, 0], [0.29275, 0.70725, 0], [-0.02234, 0.02234, 1]],
    "tritanopia": [[1, 0.1273, -0.1273], [0, 0.8739, 0.1261], [0, 0.8739, 0.1261]],
}


def _lab(rgb: list[float]) -> tuple[float, float, float]:
    r, g, b = (min(max(c, 0.0), 1.0) for c in rgb)
    x, y, z = (0.4124 * r + 0.3576 * g + 0.1805 * b, 0.2126 * r + 0.7152 * g + 0.0722 * b,
               0.0193 * r + 0.1192 * g + 0.9505 * b)

    def f(t):
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    fx, fy, fz = f(x / 0.9505), f(y), f(z / 1.089)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def _difference(a: str, b: str, matrix) -> float:
    """CIE76 ΔE between two statuses' colours as a viewer sees them (about 10: clearly)."""
    seen = [_linear(_colour(s)) for s in (a, b)]
    if matrix:
        seen = [[sum(m * c for m, c in zip(row, rgb)) for row in matrix] for rgb in seen]
    return math.dist(_lab(seen[0]), _lab(seen[1]))


@pytest.mark.parametrize("viewer", SEEN_BY)
def test_open_statuses_and_success_have_colours_told_apart(viewer):
    """complete and success were two near-identical greens (ΔE 4): every open status and
    success now differ clearly, as seen with each kind of dichromacy too."""
    close = [(a, b, round(_difference(a, b, SEEN_BY[viewer]), 1))
             for a, b in itertools.combinations([*OPEN, "success"], 2)
             if _difference(a, b, SEEN_BY[viewer]) < 10]
    if viewer == "tritanopia":  # rare; success's ✓ tells it from running there
        close = [c for c in close if "success" not in c[:2]]
    assert close == []


def test_final_statuses_carry_a_glyph_and_a_pattern_besides_their_colour():
    assert set(svg.GLYPHS) == set(lifecycle.TERMINAL)
    for status, glyph in svg.GLYPHS.items():
        assert re.search(rf'\.status\.st-{status}::before {{ content: "{re.escape(glyph)}',
                         CSS), status
    for status in svg.PATTERNS:  # success is the one solid green
        assert f".swatch.st-{status}" in CSS and f".bar .st-{status}" in CSS
    for a, b in itertools.combinations(sorted(lifecycle.TERMINAL), 2):
        assert _difference(a, b, None) >= 10, (a, b)


# --- the timeline's geometry --------------------------------------------------------------

def test_short_segments_get_a_minimum_width_and_the_lane_keeps_its_length():
    natural = [400.0, 0.0, 0.01, 300.0, 0.5]
    sized = svg.widths(natural, 6.0)
    assert min(sized) >= 6.0 and math.isclose(sum(sized), sum(natural))
    assert sized[0] > sized[3] > 6.0  # the long ones gave in proportion


def test_axis_ticks_are_round_and_have_no_fractions():
    from datetime import datetime, timedelta, timezone
    start = datetime(2026, 12, 6, 14, 44, 1, 123456, tzinfo=timezone.utc)
    for span, most, form in ((timedelta(seconds=3.5), 6, r"\d\d:\d\d:\d\d"),
                             (timedelta(minutes=47), 6, r"\d\d:\d\d"),
                             (timedelta(hours=30), 3, r"\d\d-\d\d \d\d:\d\d"),
                             (timedelta(days=20), 6, r"\d\d-\d\d")):
        ticks = svg.ticks(start, start + span, most)
        assert 1 <= len(ticks) <= most, (span, ticks)
        for at, label in ticks:
            assert at.microsecond == 0 and re.fullmatch(form, label), (span, label)
            assert start <= at <= start + span


# --- in the browser ----------------------------------------------------------------------

async def _signed_in(browser, base: str, token: str, width: int):
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(base + "/ui/login")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/ui/runs")
    return context, page


async def _a_long_failed_run(api) -> dict:
    """A seeded failure with several stages: a cascade of instants (failed, the rest
    cancelled) beside intervals of minutes."""
    for run in (await api.get("/runs/?status=failure&limit=200"))["results"]:
        stages = (await api.get(f"/runs/{run['id']}/stageruns/"))["count"]
        if stages >= 3:
            return run
    pytest.fail("the seed made no failed run with three stages")


async def test_what_a_person_sees(chromium, server, browser, api, db, enterprise,  # noqa: F811
                                  token):
    await seed(db, enterprise, pipelines=6, runs=1234, days=30, seed=22, batch=2000)
    total = f"{(await api.get('/runs/?limit=1'))['count']:,}"  # a few runs were deleted
    base = str(server.make_url("/"))[:-1]
    context, page = await _signed_in(browser, base, token, 1280)

    # Runs: both ways, and where we are.
    await page.goto(base + "/ui/runs?limit=20")
    assert await page.locator("#position").text_content() == f"Runs 1–20 of {total}"
    for _ in range(2):
        await page.get_by_role("link", name="Next page").click()
        await page.wait_for_url("**cursor=**")
    assert await page.locator("#position").text_content() == f"Runs 41–60 of {total}"
    third = await page.locator("table.runs tbody tr").all_text_contents()
    await shot(page, "runs")
    await page.get_by_role("link", name="Previous page").click()
    await page.wait_for_url("**at=20**")
    assert await page.locator("#position").text_content() == f"Runs 21–40 of {total}"
    await page.get_by_role("link", name="Next page").click()
    await page.wait_for_url("**at=40**")
    assert await page.locator("table.runs tbody tr").all_text_contents() == third

    # Badges: a distinct colour per status, a glyph before each final one.
    shown = await page.locator(".counts .legend .status").all_text_contents()
    assert {"success", "failure", "running"} <= set(shown)
    seen = await page.evaluate("""statuses => Object.fromEntries(statuses.map(s => {
        const el = document.createElement("span");  // the macro's badge, every status
        el.className = "status st-" + s; el.textContent = s;
        document.querySelector(".counts .legend").append(el);
        return [s, [getComputedStyle(el).backgroundColor,
                    getComputedStyle(el, "::before").content]];
    }))""", list(lifecycle.RUN_STATUSES))
    assert len({colour for colour, _ in seen.values()}) == len(seen)
    for status, (_, before) in seen.items():
        glyph = svg.GLYPHS.get(status)
        assert (glyph in before) if glyph else before in ("none", "normal"), (status, before)

    # A run: every segment visible and named on hover, the legend names every status
    # drawn, the axis has round ticks.
    run = await _a_long_failed_run(api)
    run_page = f"{base}/ui/pipelines/{run['pipeline_id']}/runs/{run['id']}"
    await page.goto(run_page)
    wide = page.locator(".tl-wide svg")
    assert await wide.is_visible() and not await page.locator(".tl-narrow svg").is_visible()
    boxes = await wide.locator("g.seg rect[class^=st-]").evaluate_all(
        "rects => rects.map(r => r.getBoundingClientRect().width)")
    assert boxes and min(boxes) >= 4, boxes  # px on screen: 6 units of 1000 at 1248 px
    titles = await wide.locator("g.seg > title").all_text_contents()
    assert len(titles) == len(boxes) and all(" from " in t and " to " in t for t in titles)
    drawn = set(await wide.locator("g.seg").evaluate_all("gs => gs.map(g => g.dataset.status)"))
    legend = await page.locator("figcaption .legend li").all_text_contents()
    assert {text.split()[-1] for text in legend} == drawn
    assert {"failure", "cancelled"} <= drawn
    ticks = await wide.locator("text.tick").evaluate_all(
        "ts => ts.map(t => t.firstChild.textContent)")
    assert 2 <= len(ticks) <= 6 and all(re.fullmatch(r"[\d:\- ]+", t) for t in ticks), ticks
    await shot(page, "run-page")

    # As of: a bad instant keeps the run, the error above the form.
    await page.get_by_label("As of (UTC, ISO 8601)").fill("yesterday")
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_url("**as_of=yesterday")
    alert = page.get_by_role("alert")
    assert "not an instant" in await alert.text_content()
    form_top = await page.locator("form.asof").evaluate("f => f.getBoundingClientRect().top")
    assert await alert.evaluate("a => a.getBoundingClientRect().bottom") <= form_top
    heading = await page.locator("h1").text_content()
    assert f"{run['pipeline_name']} #{run['run_number']}" in heading
    assert await page.locator("table.history tbody tr").count() >= 5
    await shot(page, "run-as-of-error")
    field = page.get_by_label("As of (UTC, ISO 8601)")
    fits = await field.evaluate("i => { i.value = '2026-12-06T14:44:01.123456+00:00';"
                                "return i.scrollWidth <= i.clientWidth; }")
    assert fits

    # A phone: the narrow layout, its text at a readable size, nothing wider than the screen.
    phone_context, phone = await _signed_in(browser, base, token, 375)
    await phone.goto(run_page)
    narrow = phone.locator(".tl-narrow svg")
    assert await narrow.is_visible() and not await phone.locator(".tl-wide svg").is_visible()
    sizes = await narrow.locator("text.lane-label, text.tick").evaluate_all(
        "ts => ts.map(t => t.getBoundingClientRect().height)")
    assert min(sizes) >= 11, sizes  # px on screen (the wide picture shrunk gave ~5)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 375
    await shot(phone, "run-page-375")
    await phone_context.close()

    # Activity: stage runs named, runs called by pipeline and number.
    await page.goto(base + "/ui/activity?type=stage_run.status_changed")
    row = page.locator("table.activity tbody tr").first
    assert re.search(r"stage \S", await row.locator("td").nth(2).text_content())
    assert re.fullmatch(r"\S+ #\d+", (await row.locator("td").nth(5).text_content()).strip())
    since = page.get_by_label("From (UTC)")
    assert await since.evaluate("i => { i.value = '2026-01-31T12:00:00Z';"
                                "return i.scrollWidth <= i.clientWidth; }")
    await since.fill("")
    await page.goto(base + "/ui/activity")
    await page.screenshot(path=str(ARTIFACTS / "activity.png"))  # the first screenful
    await context.close()
