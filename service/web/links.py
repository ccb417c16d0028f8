"""Absolute links in answers (a list's next/previous): built from PUBLIC_URL when it is set.

Unset, a link is built from the request (its Host header and scheme), so it points wherever
the caller addressed the service; that is only sound when nothing in front of the service
caches answers across callers. Behind a proxy or a cache, set PUBLIC_URL.
"""
from __future__ import annotations

from aiohttp import web
from yarl import URL

from service.web.keys import CONFIG


def here(request: web.Request) -> URL:
    """The request's absolute URL as clients should see it (path and query kept)."""
    public = request.app[CONFIG].public_url
    if public is None:
        return request.url
    return URL(public + str(request.rel_url), encoded=True)
