"""The webhook dispatcher: queue the feed's events per subscription, deliver, retry, disable.

Every process of `serve` runs one (WEBHOOKS=on). Their work is shared through PostgreSQL:
- fan-out: a subscription behind the feed is claimed FOR UPDATE SKIP LOCKED, its next
  events are queued as webhook_deliveries rows and its cursor moves past them, in one
  transaction (the feed is gap-safe, so `position > cursor` misses nothing);
- delivery: due rows are leased (claimed_until) with SKIP LOCKED, so each is sent by one
  worker at a time; a worker killed mid-send leaves a lease that runs out, and the row is
  sent again (at least once; the webhook-id is the event id, for deduplication).
Order: a delivery is due only when no earlier event of the same run for the same
subscription is undelivered, so each run's events arrive in version order, while other
runs' events (and other subscriptions) flow past a failing one.
Idle: every commit wakes the dispatcher, and a pass is four round trips and a pool
connection (~10 % of a status change's database CPU when nobody subscribes). So while no
subscription is active anywhere (as of its last look, at most TICK_SECONDS old), a
commit wakes no pass; a subscription made or re-enabled here pokes it at once (`poke`),
one made in another process is seen at the next look (its cursor starts at its creation:
nothing is missed, its first deliveries start up to a tick later).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import asyncpg

from service.app.outages import UNAVAILABLE
from service.app.webhook_http import Outcome, Sender, to_json
from service.domain import lifecycle
from service.infra.feedwait import ANY
from service.store import webhooks as store
from service.store.columns import answered_run

log = logging.getLogger(__name__)

FAN_OUT_BATCH = 500  # events queued per subscription per pass
TICK_SECONDS = 1.0  # retries fall due on the clock: look at least this often
LEASE_MARGIN = 5.0  # seconds a lease outlives the delivery's timeout


def retry_at(failures: int, schedule: tuple[float, ...], now: datetime) -> datetime | None:
    """When the attempt after `failures` failed ones is due (jittered), or None: no more."""
    if failures > len(schedule):
        return None
    return now + timedelta(seconds=schedule[failures - 1] * random.uniform(0.8, 1.2))


def payload(event: dict, history: list, pipeline_name: str | None) -> str:
    """The body: the event and the run as it was right after it (folded, not read now)."""
    run = lifecycle.fold(history)
    return to_json({"type": event["type"], "timestamp": event["occurred_at"],
                    "data": {"event": event,
                             "run": None if run is None else answered_run(run, pipeline_name)}})


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, sender: Sender, schedule: tuple[float, ...],
                 concurrency: int, metrics, waiters, share: int | None = None):
        self.pool = pool
        self.sender = sender
        self.schedule = schedule
        self.concurrency = concurrency
        # An enterprise's deliveries in flight at most (per process): its slow receivers
        # cost its own deliveries, and the rest of the slots stay for the others.
        self.share = max(1, min(share or concurrency, concurrency))
        self.busy: Counter[str] = Counter()  # enterprise -> deliveries in flight here
        self.metrics = metrics
        self.waiters = waiters
        self.lease = sender.timeout + LEASE_MARGIN
        self.inflight: set[asyncio.Task] = set()
        self.sending: set[asyncio.Task] = set()  # in the HTTP part: safe to cancel
        self.stopping = False
        self._kick: asyncio.Event | None = None
        self.watching = True  # an active subscription exists (as of the last look)
        self._next_look = 0.0  # loop time of the next look (ANY_ACTIVE)
        self._pokes = 0  # (a poke during a look outweighs what the look saw)
        self.passes = 0  # passes that queued and claimed (for tests)

    async def run_forever(self) -> None:
        with self.waiters.subscribe(ANY) as woken:
            self._kick = woken
            try:
                while not self.stopping:
                    woken.clear()
                    try:
                        if self._due():
                            await self.step()
                    except (asyncpg.PostgresError, *UNAVAILABLE) as exc:  # one line, no trace
                        log.warning("webhook dispatcher: %s; retrying", type(exc).__name__)
                    except Exception:
                        log.exception("webhook dispatcher pass failed; retrying")
                    await self._wait(woken)
            finally:
                await self._drain()

    def poke(self) -> None:
        """A subscription was made, re-enabled or given a delivery here: passes from now."""
        self.watching = True
        self._pokes += 1
        if self._kick is not None:
            self._kick.set()

    def _due(self) -> bool:
        """Whether this wake runs a pass: while subscriptions are active or deliveries in
        flight, every wake; else only a look every TICK_SECONDS."""
        if self.watching or self.inflight:
            return True
        return asyncio.get_running_loop().time() >= self._next_look

    async def stop(self) -> None:
        """Shutdown: no new pass; a send in flight is abandoned (its lease runs out), a
        database step is let finish (cancelling asyncpg mid-statement breaks the connection)."""
        self.stopping = True
        if self._kick is not None:
            self._kick.set()

    async def _wait(self, woken: asyncio.Event) -> None:
        if self.stopping:
            return
        if not self.waiters.closing:
            await self.waiters.wait(woken, TICK_SECONDS)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(woken.wait(), TICK_SECONDS)

    async def step(self) -> None:
        """One pass: queue new events, then start the due deliveries there is room for."""
        async with self.pool.acquire() as conn:
            now = asyncio.get_running_loop().time()
            if now >= self._next_look:  # (before the pass: a subscription made after it is
                self._next_look = now + TICK_SECONDS  # seen by the next look or a poke)
                pokes = self._pokes
                self.watching = await store.any_active(conn) or pokes != self._pokes
            if not self.watching and not self.inflight:
                return
            self.passes += 1
            await store.fan_out(conn, FAN_OUT_BATCH)
            room = self.concurrency - len(self.inflight)
            claimed = (await store.claim_due(conn, room, self.lease, self.share, +self.busy)
                       if room > 0 else [])
        for delivery in claimed:
            enterprise_id = delivery["enterprise_id"]
            self.busy[enterprise_id] += 1
            task = asyncio.create_task(self._deliver(delivery))
            self.inflight.add(task)
            task.add_done_callback(lambda t, e=enterprise_id: self._done(t, e))

    def _done(self, task: asyncio.Task, enterprise_id: str) -> None:
        self.inflight.discard(task)
        self.busy[enterprise_id] -= 1
        if self.busy[enterprise_id] <= 0:
            del self.busy[enterprise_id]

    async def _drain(self) -> None:
        for task in list(self.sending):
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)

    async def _deliver(self, d: asyncpg.Record) -> None:
        try:
            async with self.pool.acquire() as conn:
                event, history, name = await store.event_and_run(
                    conn, d["enterprise_id"], d["position"])
            if self.stopping:
                return
            body = payload(event, history, name)
            self.sending.add(asyncio.current_task())
            try:
                outcome = await self.sender.send(d["url"], d["secret"], str(d["event_id"]), body)
            finally:
                self.sending.discard(asyncio.current_task())
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    await self._record(conn, d, event["type"], outcome)
        except asyncio.CancelledError:
            raise
        except asyncpg.ForeignKeyViolationError:
            pass  # the subscription was deleted while its delivery was out
        except UNAVAILABLE as exc:  # an outage, not a defect: one line, and tried again
            log.warning("webhook delivery of event %s: database unavailable (%s); its lease "
                        "runs out and it is tried again", d["event_id"], type(exc).__name__)
        except Exception:  # the lease runs out and the delivery is tried again
            log.exception("webhook delivery of event %s failed unexpectedly", d["event_id"])
        finally:
            if self._kick is not None:
                self._kick.set()  # the run's next event may be due now

    async def _record(self, conn: asyncpg.Connection, d: asyncpg.Record, event_type: str,
                      outcome: Outcome) -> None:
        now = datetime.now(timezone.utc)
        next_at = None
        if outcome.ok:
            await store.delivered(conn, d)
            self.metrics.webhook_delivered((now - d["occurred_at"]).total_seconds())
        elif outcome.status_code == 410:
            await store.failed(conn, d, now)  # stays pending: re-enabling sends it again
            await self._disable(conn, d, f"the endpoint answered 410 Gone to event "
                                         f"{d['event_id']} at {now.isoformat()}", "gone")
        else:
            next_at = retry_at(d["failures"] + 1, self.schedule, now)
            # (no longer its claim: a redelivery was asked for meanwhile, which stands)
            if await store.failed(conn, d, next_at) and next_at is None:
                await self._disable(conn, d, f"all {d['failures'] + 1} attempts to deliver "
                                             f"event {d['event_id']} failed; the last: "
                                             f"{outcome.error}", "exhausted")
            else:
                self.metrics.webhook_outcome("retry")
        await store.record_attempt(conn, d["enterprise_id"], d["webhook_id"], {
            "event_id": d["event_id"], "event_type": event_type, "attempt": d["attempts"],
            "attempted_at": now, "status_code": outcome.status_code,
            "latency_ms": outcome.latency_ms, "error": outcome.error, "next_attempt_at": next_at})

    async def _disable(self, conn, d, reason: str, outcome: str) -> None:
        self.metrics.webhook_outcome(outcome)
        if await store.disable(conn, d["enterprise_id"], d["webhook_id"], reason):
            self.metrics.webhooks_disabled += 1
            log.warning("webhook %s disabled: %s", d["webhook_id"], reason)
