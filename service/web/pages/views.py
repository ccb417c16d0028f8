"""The auditors' pages under /ui/: sign in and out, runs, a run, activity, exports.

Read-only. Each page resolves its session's token exactly as the API resolves a bearer
token (web/auth.py: revoked tokens stop working within TOKEN_CACHE_SECONDS) and checks
its scope; no session: a redirect to the sign-in form.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import get_session, new_session
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from service.app import audit, chain
from service.domain import lifecycle
from service.domain.errors import DomainError, NotFound
from service.web import schemas as s
from service.web.auth import principal_for
from service.web.handlers import exports
from service.web.handlers.common import connection
from service.web.keys import CONFIG, FEED_WAITERS, PRINCIPAL, SIGNER
from service.web.pages import svg

READ, AUDIT = "runs:read", "audit:read"
PAGE_SIZE = 25
ACTIVITY_SIZE = 50
EVENT_TYPES = (*lifecycle.RUN_EVENT_TYPES, lifecycle.STAGE_RUN_STATUS_CHANGED)
LIVE_WAIT = 20.0  # seconds a live-update request of the Activity page waits for news
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")


def _instant_text(value: str) -> str:
    """Form input as an RFC 3339 instant: a date is its midnight UTC, a bare time is UTC."""
    value = value.strip()
    if _DATE.match(value):
        return value + "T00:00:00Z"
    if _NAIVE.match(value):
        return value.replace(" ", "T") + ("Z" if value.count(":") == 2 else ":00Z")
    return value


def _form(request: web.Request, instants: tuple[str, ...] = ()) -> dict[str, str]:
    """The query's non-empty fields, with date/time inputs made instants."""
    out = {k: v for k, v in request.query.items() if v.strip()}
    for name in instants:
        if name in out:
            out[name] = _instant_text(out[name])
    return out


def _render(request: web.Request, template: str, context: dict[str, Any],
            status: int = 200) -> web.Response:
    who = request.get(PRINCIPAL)
    base = {"who": who, "path": request.path, "can_audit": bool(who and AUDIT in who.scopes)}
    response = aiohttp_jinja2.render_template(template, request, {**base, **context},
                                              status=status)
    response.headers["Cache-Control"] = "no-store"  # audit data: not kept by the browser
    return response


def _error(request: web.Request, status: int, message: str, errors: Any = None) -> web.Response:
    return _render(request, "error.html", {"status": status, "message": message,
                                           "errors": errors}, status)


def page(scope: str = READ) -> Callable:
    """A page handler behind the session: signed in with a token that has `scope`."""

    def wrap(handler):
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            session = await get_session(request)
            token = session.get("token")
            who = await principal_for(request, token) if token else None
            if who is None:
                session.invalidate()
                raise web.HTTPSeeOther(f"/ui/login?next={quote(request.path_qs, safe='/')}")
            request[PRINCIPAL] = who
            if scope not in who.scopes:
                return _error(request, 403, f"This page needs a token with the scope {scope}.")
            try:
                return await handler(request)
            except DomainError as exc:
                return _error(request, exc.status, exc.message, (exc.content or {}).get("errors"))
            except ValidationError as exc:
                return _error(request, 400, "Invalid input", exc.messages)

        return run

    return wrap


# --- sign in / out ----------------------------------------------------------------------

def _next(value: str | None) -> str:
    # Only our own pages: never an open redirect to another site.
    ok = value and value.startswith("/ui/") and not value.startswith("//")
    return value if ok else "/ui/runs"


async def login_form(request: web.Request) -> web.Response:
    return _render(request, "login.html", {"next": _next(request.query.get("next"))})


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token, target = str(form.get("token", "")).strip(), _next(str(form.get("next", "")))
    who = await principal_for(request, token) if token else None
    if who is None or READ not in who.scopes:
        message = ("Unknown or revoked token." if who is None
                   else f"This token lacks the scope {READ}.")
        return _render(request, "login.html", {"next": target, "message": message}, 401)
    session = await new_session(request)  # a fresh session id: no fixation
    session["token"] = token
    raise web.HTTPSeeOther(target)


async def logout(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    session.invalidate()
    raise web.HTTPSeeOther("/ui/login")


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/runs")


# --- runs -------------------------------------------------------------------------------

class RunsQuery(s.RunListQuery):
    limit = fields.Integer(load_default=PAGE_SIZE, validate=validate.Range(1, 200))


@page()
async def runs(request: web.Request) -> web.Response:
    raw = _form(request, ("created_after", "created_before"))
    q = RunsQuery().load(raw)
    async with connection(request) as conn:
        found = await audit.runs_page(conn, request[PRINCIPAL].enterprise_id, q)
    following = (str(request.rel_url.update_query(cursor=found.page.next_cursor))
                 if found.page.next_cursor else None)
    total = sum(found.status_counts.values())
    return _render(request, "runs.html", {
        "q": q, "raw": raw, "page": found.page, "next": following, "counts": found.status_counts,
        "first": (str(request.rel_url.without_query_params("cursor"))
                  if raw.get("cursor") else None),
        "total": total, "pipelines": found.pipelines, "statuses": lifecycle.RUN_STATUSES,
        "orderings": s.ENTERPRISE_RUN_ORDERINGS})


# --- a run ------------------------------------------------------------------------------

class RunPageQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    as_of = s.Instant()


def _run_path(request: web.Request) -> dict:
    try:
        return s.RunPath().load({"pipeline_id": request.match_info["pipeline_id"],
                                 "pipeline_run_id": request.match_info["run_id"]})
    except ValidationError:
        raise NotFound("pipeline run not found") from None


@page(AUDIT)
async def run(request: web.Request) -> web.Response:
    p = _run_path(request)
    raw = _form(request, ("as_of",))
    as_of = RunPageQuery().load(raw).get("as_of")
    async with connection(request) as conn:
        found = await audit.run_page(conn, request[PRINCIPAL].enterprise_id, p["pipeline_id"],
                                     p["pipeline_run_id"], as_of)
        note = await chain.page_note(conn, request[PRINCIPAL].enterprise_id,
                                     [e["position"] for e in found.all_events])
    view = found.view
    api = f"/pipelines/v0/pipelines/{p['pipeline_id']}/runs/{p['pipeline_run_id']}"
    return _render(request, "run.html", {
        "run": view.state, "pipeline_name": found.pipeline_name, "deleted": view.deleted,
        "as_of": as_of, "as_of_text": raw.get("as_of", ""), "events": found.all_events,
        "shown": {e["version"] for e in view.events}, "stage_runs": audit.stage_run_rows(found),
        "timeline": svg.layout(view.lanes, view.start, view.end), "api": api,
        "legend": sorted({seg.status for lane in view.lanes for seg in lane.segments},
                         key=lifecycle.STATUS_RANK.get),
        "stage_names": {str(sr["id"]): sr["name"] for sr in audit.stage_run_rows(found)},
        "chain": note})


class ExportQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    format = fields.String(load_default="csv", validate=validate.OneOf(s.EXPORT_FORMATS))


@page(AUDIT)
async def run_export(request: web.Request) -> web.StreamResponse:
    p = _run_path(request)
    fmt = ExportQuery().load(_form(request))["format"]
    return await exports.run_history_of(request, request[PRINCIPAL].enterprise_id,
                                        p["pipeline_id"], p["pipeline_run_id"], fmt)


# --- activity ---------------------------------------------------------------------------

class ActivityQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    before = fields.Integer(validate=validate.Range(1, 2**63 - 1))
    after = fields.Integer(validate=validate.Range(0, 2**63 - 1))
    pipeline_id = fields.UUID()
    type = fields.String(validate=validate.OneOf(EVENT_TYPES))
    actor = s.Text(validate=validate.Length(max=255))
    since = s.Instant()
    until = s.Instant()


def _activity_filters(q: dict) -> dict:
    return {"pipeline_id": q.get("pipeline_id"), "type_": q.get("type"),
            "actor": q.get("actor"), "since": q.get("since"), "until": q.get("until")}


@page(AUDIT)
async def activity(request: web.Request) -> web.Response:
    raw = _form(request, ("since", "until"))
    q = ActivityQuery().load(raw)
    enterprise_id = request[PRINCIPAL].enterprise_id
    async with connection(request) as conn:
        items = await audit.activity(conn, enterprise_id, before=q.get("before"),
                                     limit=ACTIVITY_SIZE + 1, filters=_activity_filters(q))
        choices = await audit.pipeline_choices(conn, enterprise_id)
        note = await chain.page_note(conn, enterprise_id,
                                     [e["position"] for e in items[:ACTIVITY_SIZE]])
    older = (str(request.rel_url.update_query(before=items[ACTIVITY_SIZE - 1]["position"]))
             if len(items) > ACTIVITY_SIZE else None)
    items = items[:ACTIVITY_SIZE]
    live = q.get("before") is None  # the newest page follows what happens
    export = request.rel_url.with_path("/ui/activity/export").with_query(
        {k: v for k, v in raw.items() if k in ("since", "until")})
    return _render(request, "activity.html", {
        "items": items, "raw": raw, "older": older, "live": live, "pipelines": choices,
        "names": {c["id"]: c["name"] for c in choices}, "types": EVENT_TYPES,
        "top": items[0]["position"] if items else 0, "export": str(export), "chain": note})


@page(AUDIT)
async def activity_updates(request: web.Request) -> web.Response:
    """The Activity page's live updates: rows newer than `after`, waiting for them (long-poll)."""
    raw = _form(request, ("since", "until"))
    q = ActivityQuery().load(raw)
    enterprise_id = request[PRINCIPAL].enterprise_id
    items = (await audit.feed_wait(lambda: connection(request), request.app[FEED_WAITERS],
                                   enterprise_id, after=q.get("after", 0), wait=LIVE_WAIT,
                                   limit=ACTIVITY_SIZE,
                                   scan_cap=request.app[CONFIG].feed_scan_cap,
                                   **_activity_filters(q)))[::-1]
    async with connection(request) as conn:
        choices = await audit.pipeline_choices(conn, enterprise_id)
        note = await chain.page_note(conn, enterprise_id, [e["position"] for e in items])
    response = _render(request, "activity_rows.html", {
        "items": items, "names": {c["id"]: c["name"] for c in choices}, "chain": note})
    response.headers["X-Feed-Top"] = str(items[0]["position"] if items else q.get("after", 0))
    return response


@page(AUDIT)
async def activity_export(request: web.Request) -> web.StreamResponse:
    raw = _form(request, ("since", "until"))
    q = ActivityQuery().load(raw)
    fmt = ExportQuery().load(raw)["format"]
    return await exports.feed_of(request, request[PRINCIPAL].enterprise_id, q.get("since"),
                                 q.get("until"), fmt)


@page(AUDIT)
async def checkpoint(request: web.Request) -> web.Response:
    """The signed chain head as a JSON file to keep (the API's GET /audit/checkpoint/)."""
    async with connection(request) as conn:
        found = await chain.checkpoint(conn, request[PRINCIPAL].enterprise_id,
                                       request.app[SIGNER])
    name = f"checkpoint-{found['enterprise_id']}-{found['position']}.json"
    return web.json_response(found, headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "no-store"})


routes = [
    ("GET", "/ui/", home),
    ("GET", "/ui/login", login_form),
    ("POST", "/ui/login", login),
    ("POST", "/ui/logout", logout),
    ("GET", "/ui/runs", runs),
    ("GET", "/ui/pipelines/{pipeline_id}/runs/{run_id}", run),
    ("GET", "/ui/pipelines/{pipeline_id}/runs/{run_id}/export", run_export),
    ("GET", "/ui/activity", activity),
    ("GET", "/ui/activity/updates", activity_updates),
    ("GET", "/ui/activity/export", activity_export),
    ("GET", "/ui/audit/checkpoint.json", checkpoint),
]
