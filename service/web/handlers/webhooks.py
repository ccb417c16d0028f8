"""Webhook subscriptions: CRUD, secret rotation, the deliveries audit, redeliver, ping."""
from __future__ import annotations

from aiohttp import web

from service.app import webhooks as app
from service.app.webhook_http import PINGS_PER_ENTERPRISE
from service.web import schemas as s
from service.web.envelope import envelope
from service.web.handlers.common import body, connection, operation, page, path, principal, query
from service.web.keys import CONFIG, DISPATCHER, WEBHOOK_SENDER

SCOPE = "webhooks:manage"
TAG = "Webhooks"


def _poke(request: web.Request) -> None:
    """This process's dispatcher, idle while no subscription was active, passes from now."""
    dispatcher = request.app.get(DISPATCHER)
    if dispatcher is not None:
        dispatcher.poke()


def _targets(request: web.Request):
    return request.app[WEBHOOK_SENDER].targets


@operation(scope=SCOPE, tag=TAG, summary="List the enterprise's webhook subscriptions",
           query=s.PageQuery, response=s.WebhookListEnvelope)
async def list_webhooks(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        total, items = await app.page(conn, principal(request).enterprise_id, q["limit"],
                                      q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope=SCOPE, tag=TAG, summary="Subscribe a URL to the enterprise's events",
           description="Deliveries start with the events after this moment. The answer "
                       "carries the signing `secret`, shown only here. The URL must reach "
                       "a global unicast address (or one in WEBHOOK_ALLOWED_NETWORKS): "
                       "400 names why not. An enterprise has at most "
                       "WEBHOOK_MAX_PER_ENTERPRISE subscriptions (default 20).",
           body=s.WebhookBody, response=s.WebhookSecretEnvelope, errors=(409,),
           error_docs={409: "The enterprise has WEBHOOK_MAX_PER_ENTERPRISE subscriptions "
                            "already (content.limit): delete one first"})
async def create_webhook(request: web.Request) -> web.Response:
    who, fields = principal(request), body(request)
    await app.check_target(_targets(request), fields)  # DNS: before taking a connection
    async with connection(request) as conn:
        hook = await app.create(conn, who.enterprise_id, fields, who.token_id,
                                request.app[CONFIG].webhook_max_per_enterprise)
    _poke(request)
    return envelope(hook, message="webhook created")


@operation(scope=SCOPE, tag=TAG, summary="A webhook subscription (never its secret)",
           path=s.WebhookPath, response=s.WebhookEnvelope)
async def get_webhook(request: web.Request) -> web.Response:
    async with connection(request) as conn:
        hook = await app.get(conn, principal(request).enterprise_id, path(request)["webhook_id"])
    return envelope(hook)


@operation(scope=SCOPE, tag=TAG, summary="Replace a subscription's settings",
           description="is_active=true re-enables a disabled subscription: it resumes from "
                       "where it stopped, failed deliveries included; nothing is skipped.",
           path=s.WebhookPath, body=s.WebhookBody, response=s.WebhookEnvelope)
async def put_webhook(request: web.Request) -> web.Response:
    fields = body(request)
    await app.check_target(_targets(request), fields)  # DNS: before taking a connection
    async with connection(request) as conn:
        hook = await app.replace(conn, principal(request).enterprise_id,
                                 path(request)["webhook_id"], fields)
    _poke(request)
    return envelope(hook, message="webhook updated")


@operation(scope=SCOPE, tag=TAG, summary="Delete a subscription and its delivery records",
           path=s.WebhookPath, response=s.WebhookEnvelope)
async def delete_webhook(request: web.Request) -> web.Response:
    async with connection(request) as conn:
        hook = await app.delete(conn, principal(request).enterprise_id,
                                path(request)["webhook_id"])
    return envelope(hook, message="webhook deleted")


@operation(scope=SCOPE, tag=TAG, summary="Issue a new signing secret (shown once)",
           path=s.WebhookPath, response=s.WebhookSecretEnvelope)
async def rotate_secret(request: web.Request) -> web.Response:
    async with connection(request) as conn:
        hook = await app.rotate_secret(conn, principal(request).enterprise_id,
                                       path(request)["webhook_id"])
    return envelope(hook, message="secret rotated")


@operation(scope=SCOPE, tag=TAG, summary="Delivery attempts, newest first",
           path=s.WebhookPath, query=s.PageQuery, response=s.WebhookAttemptListEnvelope)
async def deliveries(request: web.Request) -> web.Response:
    q = query(request)
    async with connection(request) as conn:
        total, items = await app.attempts(conn, principal(request).enterprise_id,
                                          path(request)["webhook_id"], q["limit"], q["offset"])
    return page(request, total, items, q["limit"], q["offset"])


@operation(scope=SCOPE, tag=TAG, summary="Deliver an event again",
           description="Queues the event's delivery now with a fresh retry schedule; 404 "
                       "when this subscription never had that event.",
           path=s.WebhookEventPath, response=s.RedeliveryEnvelope)
async def redeliver(request: web.Request) -> web.Response:
    p = path(request)
    async with connection(request) as conn:
        result = await app.redeliver(conn, principal(request).enterprise_id, p["webhook_id"],
                                     p["event_id"])
    _poke(request)
    return envelope(result, message="redelivery queued")


@operation(scope=SCOPE, tag=TAG, summary="Send a signed webhook.ping now",
           description="Answers how the endpoint answered; recorded among the deliveries. "
                       "Changes nothing else (a 410 here does not disable). An enterprise "
                       f"has at most {PINGS_PER_ENTERPRISE} pings out at once.",
           path=s.WebhookPath, response=s.PingEnvelope,
           error_docs={429: "Over this token's rate limit, or the enterprise already has "
                            f"{PINGS_PER_ENTERPRISE} pings out: retry after Retry-After seconds"})
async def ping(request: web.Request) -> web.Response:
    enterprise_id, webhook_id = principal(request).enterprise_id, path(request)["webhook_id"]
    async with connection(request) as conn:
        target = await app.ping_target(conn, enterprise_id, webhook_id)
    result = await app.send_ping(request.app[WEBHOOK_SENDER], target, enterprise_id,
                                 webhook_id)
    async with connection(request) as conn:
        await app.record_ping(conn, enterprise_id, webhook_id, result)
    return envelope(result)


routes = [
    ("GET", "/webhooks/", list_webhooks),
    ("POST", "/webhooks/", create_webhook),
    ("GET", "/webhooks/{webhook_id}/", get_webhook),
    ("PUT", "/webhooks/{webhook_id}/", put_webhook),
    ("DELETE", "/webhooks/{webhook_id}/", delete_webhook),
    ("POST", "/webhooks/{webhook_id}/rotate-secret/", rotate_secret),
    ("GET", "/webhooks/{webhook_id}/deliveries/", deliveries),
    ("POST", "/webhooks/{webhook_id}/deliveries/{event_id}/redeliver/", redeliver),
    ("POST", "/webhooks/{webhook_id}/ping/", ping),
]
