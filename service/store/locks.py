"""Every advisory-lock id of the service and the feed's NOTIFY channel, in one place.

Ids are the first key of pg_advisory_*lock(int, int) / the key of pg_advisory_*lock(bigint);
each names one critical section, so a new one must not reuse a number listed here.
"""
from __future__ import annotations

# Per enterprise (second key: hashtext(enterprise_id)), transaction-scoped, taken by every
# append right before its events get their positions and held to commit: what makes the
# feed gap-safe (store/events.py) and the run_counts counters contention-free (counts.py).
FEED_LOCK_CLASS = 1701
MIGRATE_LOCK = 1702  # session lock: one migration at a time across processes (meta.py)
REPLAY_LOCK = 1703  # session lock: one replay at a time (replay.py)
SWEEP_LOCK = 1704  # session lock: one timeout sweeper at a time across processes (timeouts.py)

FEED_CHANNEL = "run_events"  # NOTIFY channel; the payload is the enterprise id
# Taken right before an event gets its position ($1 is always the enterprise id). The
# NOTIFY is delivered at commit and wakes long-polling feed readers.
FEED_LOCK = (f"pg_advisory_xact_lock({FEED_LOCK_CLASS}, hashtext($1)), "
             f"pg_notify('{FEED_CHANNEL}', $1)")
