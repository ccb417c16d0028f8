"""The site's root: `/` leads a browser to the pages, `/favicon.ico` answers without a 404."""
from __future__ import annotations

from aiohttp import web
from aiohttp_apispec import docs

# Where a person who opens the bare address lands: the pages (they ask for a sign-in).
PAGES = "/ui/"


@docs(tags=["Site"], summary="Redirects to the pages (/ui/); the API is under /pipelines/v0/ "
      "and its document at /api/docs", security=[],
      responses={302: {"description": "Location: /ui/"}})
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound(PAGES)


@docs(tags=["Site"], summary="No icon: 204, so browsers stop asking for a while", security=[],
      responses={204: {"description": "No content (cached for a day)"}})
async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})


routes = [("GET", "/", index), ("GET", "/favicon.ico", favicon)]
PATHS = frozenset(path for _, path, _ in routes)
