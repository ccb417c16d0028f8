"""What the runs and run pages add for reading: where a page of runs is, its links both
ways, and an as-of instant's error shown on the run page instead of an error page."""
from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, Schema, ValidationError

from service.app import audit
from service.domain.errors import NotFound
from service.web import schemas as s
from service.web.handlers.common import connection
from service.web.keys import PRINCIPAL
from service.web.pages import svg


def position_text(start: int, shown: int, count: int, exact: bool) -> str:
    """Where a page of runs is: "Runs 41–60 of 1,234" (count+ when capped)."""
    if not shown:
        return "No run matches."
    return f"Runs {start + 1:,}–{start + shown:,} of {count:,}{'' if exact else '+'}"


def runs_links(request: web.Request, q: dict, found: audit.RunsPage) -> dict[str, Any]:
    """The runs page's position and its links: first, previous and next.

    A cursor has no position: the links carry it (`at`), counted from the first page. A
    page read backward with nothing before it is the top, whatever its link said.
    """
    got, url, cursor = found.page, request.rel_url, q.get("cursor")
    start = 0 if not cursor or (got.backward and not got.previous_cursor) else q["at"]
    return {
        "position": position_text(start, len(got.items), got.count, got.count_exact),
        "next": (str(url.update_query(cursor=got.next_cursor, at=start + len(got.items)))
                 if got.next_cursor else None),
        "previous": (str(url.update_query(cursor=got.previous_cursor,
                                          at=max(start - q["limit"], 0)))
                     if got.previous_cursor and cursor else None),
        "first": str(url.without_query_params("cursor", "at")) if cursor else None}


class RunPageQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    as_of = s.Instant()


async def run_as_of(request: web.Request, p: dict, raw: dict):
    """The run page's data as of the form's instant, the instant, and the form's error
    as (status, message), if any.

    A bad or too early instant shows the run as it is now with the error above the form
    (answered 400 or 404, as the API would), rather than an error page without the run.
    """
    problem = None
    try:
        as_of = RunPageQuery().load(raw).get("as_of")
    except ValidationError as exc:
        as_of, problem = None, (400, f"“{raw['as_of']}” is not an instant: "
                                     f"{'; '.join(exc.messages.get('as_of', []))} "
                                     "Write one as 2026-01-31T12:00:00Z (UTC) or with an "
                                     "offset, 2026-01-31T13:00:00+01:00.")
    enterprise_id = request[PRINCIPAL].enterprise_id
    async with connection(request) as conn:
        try:
            found = await audit.run_page(conn, enterprise_id, p["pipeline_id"],
                                         p["pipeline_run_id"], as_of)
        except NotFound as exc:
            if as_of is None:
                raise  # no such run: the error page
            found = await audit.run_page(conn, enterprise_id, p["pipeline_id"],
                                         p["pipeline_run_id"], None)
            problem = (404, f"{exc.message.capitalize()} ({svg.iso(as_of)}): it was "
                            f"created at {svg.iso(found.view.start)}.")
            as_of = None
    return found, as_of, problem
