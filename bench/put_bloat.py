"""Backend CPU per group statement under sustained flips, by blocks of 100 statements.

A scratch database; 64 running runs of one enterprise; 600 statements of 16 flips
(running <-> waiting, store/moves.py, as group commit sends them). Shows the growth from
dead row versions where autovacuum is off (VAC=1: a VACUUM after each block), and, with
triggers named as table:trigger (comma-separated, one configuration per argument), what
they add. docs/performance.md (the yardstick section) has the figures.

    .venv/bin/python bench/put_bloat.py "" "run_events:run_events_chain"
    VAC=1 .venv/bin/python bench/put_bloat.py ""
"""
import asyncio, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import asyncpg
from service.domain import lifecycle
from service.infra.db import init_connection
from service.store import meta, moves, pipelines, runs
TICKS = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICKS
async def main(disable):
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1/postgres")
    name = f"put_bloat_{os.getpid()}"
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1/{name}")
    await meta.migrate(conn); await init_connection(conn)
    for t in disable:
        tab, trg = t.split(":")
        await conn.execute(f"ALTER TABLE {tab} DISABLE TRIGGER {trg}")
    p = await pipelines.create_pipeline(conn, "e", 1, {"name": "x"})
    ids = []
    for _ in range(64):
        run, _ = await runs.create_run(conn, "e", p["id"], "running", "b", None, lifecycle.RUN_CREATED, {}, 3600, 3600)
        ids.append(run["id"])
    await conn.execute("ANALYZE")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    state = {i: "running" for i in ids}
    out = []
    for block in range(6):
        c0 = cpu(pid)
        for k in range(100):
            chosen = ids[(k * 16) % 64:(k * 16) % 64 + 16]
            ch = []
            for r in chosen:
                t = "waiting" if state[r] == "running" else "running"; state[r] = t
                ch.append(moves.StatusChange("e", p["id"], r, t, "b", None, {}))
            await moves.change_statuses(conn, ch)
        out.append(f"{1e6*(cpu(pid)-c0)/100:.0f}")
        if os.environ.get("VAC"): await conn.execute("VACUUM")
    print(disable or "all on", " ".join(out), "us/statement per 100")
    await conn.close(); await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
for d in sys.argv[1:] or [""]:
    asyncio.run(main([x for x in d.split(",") if x]))
