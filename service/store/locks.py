"""The per-enterprise feed lock every append takes, and the feed's wake-up channel."""
from __future__ import annotations

FEED_LOCK_CLASS = 1701  # advisory-lock namespace of the per-enterprise feed lock
FEED_CHANNEL = "run_events"  # NOTIFY channel; the payload is the enterprise id
# Taken right before an event gets its position ($1 is always the enterprise id); held
# until commit, it makes position order commit order within an enterprise (store/events.py).
# No pg_notify here: a NOTIFY in the writing transaction makes its commit queue behind
# every other notifying commit of the cluster (one global lock). Long-polls are woken
# after the commit instead (infra/feedwait.py FeedWaiters.notify), outside the write.
FEED_LOCK = f"pg_advisory_xact_lock({FEED_LOCK_CLASS}, hashtext($1))"
# The wake-up, sent after commit by whoever committed: one statement for many enterprises.
NOTIFY_FEED = f"SELECT pg_notify('{FEED_CHANNEL}', e) FROM unnest($1::text[]) AS e"
