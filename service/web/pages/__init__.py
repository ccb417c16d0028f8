"""Read-only pages for auditors under /ui/ (server-rendered; see docs/pages.md)."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from service.web.pages import insights, session, svg, views

HERE = Path(__file__).parent
STATIC_PREFIX = "/ui/static/"


def _duration(start: datetime | None, end: datetime | None) -> str:
    """A duration as 1h02m03s (empty when either end is missing)."""
    if start is None or end is None:
        return ""
    seconds = int((end - start) / timedelta(seconds=1))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h{minutes:02d}m{secs:02d}s" if hours
            else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def setup(app: web.Application) -> None:
    """Templates, static assets (no CDN: all served from here) and the pages' routes."""
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        trim_blocks=True, lstrip_blocks=True)
    env.filters["iso"] = lambda at: svg.iso(at) if at else ""
    env.filters["iso_s"] = lambda at: svg.iso(at.replace(microsecond=0)) if at else ""
    env.filters["duration"] = _duration
    env.globals["static"] = STATIC_PREFIX
    for method, path, handler in (*views.routes, *insights.routes):
        app.router.add_route(method, path, handler)
    app.router.add_static(STATIC_PREFIX, HERE / "static", append_version=False)
