"""A real webhook receiver on loopback for tests and the bench: answers by path.

    /ok       200
    /flaky    500 to a message's first attempt, 200 to the next
    /slow     answers after `slow_seconds` (longer than the sender waits)
    /gone     410
    /switch   500 while `failing` is set, else 200
    /moved    307 to /ok (a sender must not follow it)
    /secret   403 with a body a sender must never repeat (SECRET_BODY)
Every path verifies the signature with the standardwebhooks library when `secret` is set
and records (path, webhook-id, payload, verified).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


SECRET_BODY = "root:x:0:0 admin-console-only"


@dataclass
class Received:
    path: str
    message_id: str
    payload: dict
    verified: bool | None
    headers: dict
    body: bytes
    status: int
    at: float = field(default_factory=time.time)


class Receiver:
    def __init__(self, slow_seconds: float = 5.0):
        self.secret: str | None = None
        self.failing = False
        self.slow_seconds = slow_seconds
        self.received: list[Received] = []
        self.arrived = 0  # requests that reached the handler (answered or not yet)
        self._attempted: set[str] = set()
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{mode}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        mode = request.match_info["mode"]
        self.arrived += 1
        self.changed.set()
        body = await request.read()
        headers = dict(request.headers)
        verified = None
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        message_id = headers.get("webhook-id", "")
        first = (mode, message_id) not in self._attempted
        self._attempted.add((mode, message_id))
        status = 200
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        elif mode == "gone":
            status = 410
        elif mode == "flaky" and first or mode == "switch" and self.failing:
            status = 500
        elif mode == "moved":
            status = 307
        elif mode == "secret":
            status = 403
        self.received.append(Received(mode, message_id, json.loads(body), verified, headers,
                                      body, status))
        self.changed.set()
        headers = {"Location": "/ok"} if status == 307 else None
        text = {200: "thanks", 403: SECRET_BODY}.get(status, "nope")
        return web.Response(status=status, text=text,
                            headers=headers)

    def delivered(self, mode: str) -> list[Received]:
        """What `mode` answered 2xx to, in arrival order."""
        return [r for r in self.received if r.path == mode and r.status == 200]

    async def wait_for(self, predicate, seconds: float = 60) -> None:
        """Until predicate() holds (checked on every arrival), or fail after `seconds`."""
        deadline = time.monotonic() + seconds
        while not predicate():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"receiver: condition not met; got {len(self.received)}"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass
