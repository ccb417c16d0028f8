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
# Per enterprise (second key: hashtext(enterprise_id)), transaction-scoped: one subscription
# created at a time per enterprise, so the count under the cap holds (webhooks.py).
WEBHOOKS_LOCK_CLASS = 1720

FEED_CHANNEL = "run_events"  # NOTIFY channel; the payload is the enterprise id
# Taken right before an event gets its position ($1 is always the enterprise id); held
# until commit, it makes position order commit order within an enterprise (store/events.py).
# No pg_notify here: a NOTIFY in the writing transaction makes its commit queue behind
# every other notifying commit of the cluster (one global lock). Long-polls are woken
# after the commit instead (infra/feedwait.py FeedWaiters.notify), outside the write.
_FEED_LOCK_OF = "pg_advisory_xact_lock(" + str(FEED_LOCK_CLASS) + ", hashtext({}))"
FEED_LOCK = _FEED_LOCK_OF.format("$1")
# The same for every enterprise a statement appends to (a group commit's statement may
# carry several): taken in one fixed order (by name), so two statements never wait for
# each other's; {enterprises} is a query of enterprise ids. One row, whatever it locked.
FEED_LOCKS = (f"SELECT count({_FEED_LOCK_OF.format('k.e')}) AS n "
              "FROM (SELECT DISTINCT e FROM ({enterprises}) AS d(e) ORDER BY 1) AS k")
# The same for the enterprises of $1::text[] (writers outside the one-statement paths:
# replay's patches and repairs, closing and rebuilding insights).
FEED_LOCKS_OF_ARRAY = FEED_LOCKS.format(enterprises="SELECT unnest($1::text[])")
# The wake-up, sent after commit by whoever committed: one statement for many enterprises.
# (Its transaction writes a commit record but nothing else, so its commit waits for no
# WAL flush: measured, docs/performance.md.)
NOTIFY_FEED = f"SELECT pg_notify('{FEED_CHANNEL}', e) FROM unnest($1::text[]) AS e"
# A group commit's wake-up and its position in one round trip, on its connection after
# its commit (app/groupcommit.py): the primary's insert position, read after that commit
# (the NOTIFY's own commit record comes later: the position is the group's, not past it).
ANNOUNCE_COMMIT = ("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8 FROM (SELECT "
                   f"count(pg_notify('{FEED_CHANNEL}', e)) FROM unnest($1::text[]) AS e) AS w")
