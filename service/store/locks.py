"""The per-enterprise feed lock every append takes (see store/events.py for why)."""
from __future__ import annotations

FEED_LOCK_CLASS = 1701  # advisory-lock namespace of the per-enterprise feed lock
FEED_CHANNEL = "run_events"  # NOTIFY channel; the payload is the enterprise id
# Taken right before an event gets its position ($1 is always the enterprise id). The
# NOTIFY is delivered at commit and wakes long-polling feed readers.
FEED_LOCK = (f"pg_advisory_xact_lock({FEED_LOCK_CLASS}, hashtext($1)), "
             f"pg_notify('{FEED_CHANNEL}', $1)")
