"""The auditors' pages under /ui/: sign in and out, runs, a run, activity, exports.

Read-only. Each page resolves its server-side session (app/ui_sessions.py) to the token it
signed in with (ended at sign-out, expiry, or when the token is revoked) and checks its
scope; no live session: a redirect to the sign-in form.
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

from service.app import audit, chain, ui_sessions
from service.domain import lifecycle
from service.domain.errors import DomainError, NotFound, TooManyRequests
from service.web import schemas as s
from service.web.auth import charge, principal_for
from service.web.handlers import exports
from service.web.handlers.common import connection
from service.web.keys import CONFIG, FEED_WAITERS, PRINCIPAL, SIGNER, WAIT_CAP, Principal
from service.web.pages import reading, svg
from service.web.pages.session import COOKIE, MAX_AGE

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


def _too_many(request: web.Request, exc: TooManyRequests) -> web.Response:
    """The API's 429 as a page: the same headers (Retry-After, RateLimit), the wait in words."""
    retry = (exc.content or {}).get("retry_after", 1)
    response = _error(request, 429, f"Too many requests ({exc.message}). "
                                    f"Try again in {retry} s.")
    response.headers.update(exc.headers)
    return response


def page(scope: str = READ) -> Callable:
    """A page handler behind the session: signed in with a token that has `scope`."""

    def wrap(handler):
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            session = await get_session(request)
            who = await _signed_in(request, session.get("sid"))
            if who is None:
                # A cookie that no longer signs in (signed out, expired, token revoked, or a
                # restart without SESSION_SECRET): the sign-in page says so.
                ended = "&ended=1" if COOKIE in request.cookies else ""
                session.invalidate()
                raise web.HTTPSeeOther(
                    f"/ui/login?next={quote(request.path_qs, safe='/')}{ended}")
            request[PRINCIPAL] = who
            try:
                await charge(request, who)  # the token's rate, as its API requests spend it
            except TooManyRequests as exc:
                return _too_many(request, exc)
            if scope not in who.scopes:
                return _error(request, 403, f"This page needs a token with the scope {scope}.")
            try:
                return await handler(request)
            except TooManyRequests as exc:  # its cap of open waits (live updates, exports)
                return _too_many(request, exc)
            except DomainError as exc:
                return _error(request, exc.status, exc.message, (exc.content or {}).get("errors"))
            except ValidationError as exc:
                return _error(request, 400, "Invalid input", exc.messages)

        return run

    return wrap


# --- sign in / out ----------------------------------------------------------------------

ENDED = ("Your session ended (signed out, expired, its token revoked, or the service "
         "restarted): sign in again.")


async def _signed_in(request: web.Request, session_id: Any) -> Principal | None:
    """The principal of a live server-side session; None for none, ended or revoked."""
    if not isinstance(session_id, str):
        return None
    async with connection(request, read=False) as conn:
        row = await ui_sessions.resolve(conn, session_id)
    return None if row is None else Principal(row["id"], row["name"], row["enterprise_id"],
                                              frozenset(row["scopes"]), row["rate_limit"])


def _next(value: str | None) -> str:
    # Only our own pages: never an open redirect to another site.
    ok = value and value.startswith("/ui/") and not value.startswith("//")
    return value if ok else "/ui/runs"


async def login_form(request: web.Request) -> web.Response:
    ended = {"message": ENDED} if request.query.get("ended") else {}
    return _render(request, "login.html", {"next": _next(request.query.get("next")), **ended})


async def _login_form(request: web.Request):
    """The posted form, or None when its body cannot be read as one."""
    try:
        return await request.post()
    except (LookupError, UnicodeDecodeError, ValueError):
        # An unknown charset (LookupError), bytes its charset cannot decode, multipart
        # without a boundary (ValueError): not a form.
        return None


async def login(request: web.Request) -> web.StreamResponse:
    form = await _login_form(request)
    if form is None:
        return _render(request, "login.html", {
            "next": "/ui/runs", "message": "The form could not be read: send it again."}, 400)
    token, target = str(form.get("token", "")).strip(), _next(str(form.get("next", "")))
    who = await principal_for(request, token) if token else None
    if who is None or READ not in who.scopes:
        message = ("Unknown or revoked token." if who is None
                   else f"This token lacks the scope {READ}.")
        return _render(request, "login.html", {"next": target, "message": message}, 401)
    previous = (await get_session(request)).get("sid")
    async with connection(request, read=False) as conn:
        if isinstance(previous, str):  # signing in again ends the session it replaces
            await ui_sessions.end(conn, previous)
        session_id = await ui_sessions.start(conn, who.enterprise_id, who.token_id, MAX_AGE)
    session = await new_session(request)  # a fresh session id: no fixation
    session["sid"] = session_id  # the token itself stays on the server
    raise web.HTTPSeeOther(target)


async def logout(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    if isinstance(session.get("sid"), str):  # ended on the server: a copied cookie dies too
        async with connection(request, read=False) as conn:
            await ui_sessions.end(conn, session["sid"])
    session.invalidate()
    raise web.HTTPSeeOther("/ui/login")


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/runs")


# --- runs -------------------------------------------------------------------------------

class RunsQuery(s.RunListQuery):
    limit = fields.Integer(load_default=PAGE_SIZE, validate=validate.Range(1, 200))
    # Where the page starts, counted by the links that led here (a cursor has no position):
    # only what the page says ("runs 41-60"), never what it reads.
    at = fields.Integer(load_default=0, validate=validate.Range(0, 10**9))


@page()
async def runs(request: web.Request) -> web.Response:
    raw = _form(request, ("created_after", "created_before"))
    q = RunsQuery().load(raw)
    async with connection(request) as conn:
        found = await audit.runs_page(conn, request[PRINCIPAL].enterprise_id, q)
    total = sum(found.status_counts.values())
    return _render(request, "runs.html", {
        **reading.runs_links(request, q, found),
        "q": q, "raw": raw, "page": found.page, "counts": found.status_counts,
        "total": total, "pipelines": found.pipelines, "statuses": lifecycle.RUN_STATUSES,
        "orderings": s.ENTERPRISE_RUN_ORDERINGS})


# --- a run ------------------------------------------------------------------------------

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
    found, as_of, problem = await reading.run_as_of(request, p, raw)
    async with connection(request) as conn:
        note = await chain.page_note(conn, request[PRINCIPAL].enterprise_id,
                                     [e["position"] for e in found.all_events])
    view = found.view
    api = f"/pipelines/v0/pipelines/{p['pipeline_id']}/runs/{p['pipeline_run_id']}"
    return _render(request, "run.html", {
        "as_of_error": problem[1] if problem else None,
        "as_of_text": svg.iso(as_of) if as_of else raw.get("as_of", ""),
        "run": view.state, "pipeline_name": found.pipeline_name, "deleted": view.deleted,
        "as_of": as_of, "events": found.all_events,
        "shown": {e["version"] for e in view.events}, "stage_runs": audit.stage_run_rows(found),
        "timelines": [svg.layout(view.lanes, view.start, view.end, variant)
                      for variant in (svg.WIDE, svg.NARROW)],
        "glyphs": svg.GLYPHS, "api": api,
        "legend": sorted({seg.status for lane in view.lanes for seg in lane.segments},
                         key=lifecycle.STATUS_RANK.get),
        "stage_names": {str(sr["id"]): sr["name"] for sr in audit.stage_run_rows(found)},
        "chain": note},
        problem[0] if problem else 200)


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
        items = await audit.labelled(conn, enterprise_id, items)
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
    with request.app[WAIT_CAP].hold(request[PRINCIPAL].token_id):  # as GET /events/?wait=
        items = (await audit.feed_wait(lambda: connection(request), request.app[FEED_WAITERS],
                                       enterprise_id, after=q.get("after", 0), wait=LIVE_WAIT,
                                       limit=ACTIVITY_SIZE,
                                       scan_cap=request.app[CONFIG].feed_scan_cap,
                                       **_activity_filters(q)))[::-1]
    async with connection(request) as conn:
        items = await audit.labelled(conn, enterprise_id, items)
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
