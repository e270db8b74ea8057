#!/usr/bin/env python3
"""Per-layer cost of a Patchbay request, without HTTP: which layer adds how much CPU.

One Python process, uvloop, C concurrent tasks for D seconds per layer, against MariaDB (or
PostgreSQL / SQLite) with the items table. Each layer calls the one below it through Patchbay's
own code, so the difference between two lines is what that layer adds:

  inline    SQLite only: ``sqlite3`` on the event loop's thread (what the executor hop costs)
  driver    asyncmy ``conn.query(sql)`` (asyncpg ``prepare`` + ``fetch``; sqlite3 on a thread)
  backend   ``MySQLConnection.run``: + result reading, TYPES, value fixes (e.g. DECIMAL)
  database  ``Database.execute``: + statement shape, balancer, pool, query timeout
  dbslayer  ``DBSlayer.handle("/db", qs)``: + percent/JSON decode, flags, JSON encode
  asgi      ``App.__call__`` with a no-op ``send``: + ASGI messages, /stats bookkeeping

Prints requests/s (single process, so the database shares the machine) and the process's CPU
microseconds per request. Runs with the project venv's python (it imports patchbay), e.g.:

  .venv/bin/python bench/layers.py --query q2 --conc 16 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

SQL = {
    "q1": "SELECT 1",
    "q2": "SELECT id,name,price,created FROM items WHERE id={id}",
    "q3": "SELECT id,name,price,created FROM items WHERE id BETWEEN {lo} AND {hi} ORDER BY id",
}
BENCH = Path(__file__).resolve().parent


def make_sql(query: str, rng: random.Random) -> str:
    lo = rng.randint(1, 99_901)
    return SQL[query].format(id=rng.randint(1, 100_000), lo=lo, hi=lo + 99)


async def drive(name: str, call: Any, query: str, conc: int, duration: float) -> dict[str, Any]:
    # Requests are prepared up front (SQL and its /db query string), so that the harness adds
    # no more than a list index per request.
    rng = random.Random(1)
    prepared = []
    for _ in range(4096):
        sql = make_sql(query, rng)
        qs = urllib.parse.quote(json.dumps({"SQL": sql}), safe="").encode()
        prepared.append((sql, qs))
    count = 0
    stop = 0.0

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < stop:
            await call(*prepared[count & 4095])
            count += 1

    # warm-up
    stop = time.monotonic() + min(1.0, duration / 3)
    await asyncio.gather(*(worker() for _ in range(conc)))
    count = 0
    GC.reset()
    cpu0, t0 = time.process_time(), time.monotonic()
    stop = t0 + duration
    await asyncio.gather(*(worker() for _ in range(conc)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    return {
        "layer": name,
        "rps": round(count / wall),
        "cpu_us_per_req": round(cpu * 1e6 / count, 1),
        "gc_us_per_req": round(sum(GC.seconds) * 1e6 / count, 1),
        "gc_runs": GC.runs,
        "requests": count,
    }


class GcTimer:
    """Time spent in the cyclic garbage collector, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.reset()
        self._t = 0.0
        gc.callbacks.append(self)

    def reset(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            gen = info["generation"]
            self.seconds[gen] += time.perf_counter() - self._t
            self.runs[gen] += 1


GC = GcTimer()


async def main_async(a: argparse.Namespace) -> list[dict[str, Any]]:
    from patchbay import settings as settings_module
    from patchbay.app import App
    from patchbay.sql.gateway import make_connector
    from patchbay.sql.statements import Shape

    READ = Shape(read=True, stateless=True)  # what statements.shape answers for these SELECTs

    overrides: dict[str, Any] = {
        "databases": {"bench": [a.url]},
        "sql.pool_size": a.pool_size,
    }
    if a.compat:
        overrides["server.compat"] = a.compat
    settings = settings_module.load(None, env={}, overrides=overrides)
    db_settings = settings.databases[0]
    strict = settings.server.compat == "strict"
    kind = db_settings.kind
    results = []

    connector = make_connector(a.url, kind=kind, strict=strict, settings=db_settings)
    conns = [await connector.connect() for _ in range(min(a.conc, a.pool_size))]
    free = list(conns)
    waiters: list[asyncio.Future[Any]] = []

    async def borrow() -> Any:
        if free:
            return free.pop()
        f = asyncio.get_running_loop().create_future()
        waiters.append(f)
        return await f

    def give(c: Any) -> None:
        if waiters:
            waiters.pop(0).set_result(c)
        else:
            free.append(c)

    async def driver(sql: str, qs: bytes) -> None:
        c = await borrow()
        try:
            if kind == "mysql":
                await c._conn.query(sql)
                _ = c._conn._result.rows
            elif kind == "postgresql":
                stmt = await c._conn.prepare(sql)
                await stmt.fetch()
            else:
                await connector.call(lambda: c._conn.execute(sql).fetchall())
        finally:
            give(c)

    async def backend(sql: str, qs: bytes) -> None:
        c = await borrow()
        try:
            await c.run(sql, rollback_on_error=False, shape=READ)
        finally:
            give(c)

    async def inline(sql: str, qs: bytes) -> None:
        # SQLite only: the same query on the event loop's own thread, no executor hop.
        c = await borrow()
        try:
            c._conn.execute(sql).fetchall()
        finally:
            give(c)

    layers = [("driver", driver), ("backend", backend)]
    if kind == "sqlite":
        layers.insert(0, ("inline", inline))
    app = App(settings, shutdown=lambda: None)
    database = app.databases["bench"]

    async def db_layer(sql: str, qs: bytes) -> None:
        await database.execute(sql)

    async def dbslayer_layer(sql: str, qs: bytes) -> None:
        await app.dbslayer.handle("/db", qs, "127.0.0.1", "127.0.0.1")

    async def noop_send(message: Any) -> None:
        return None

    async def asgi_layer(sql: str, qs: bytes) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/db",
            "query_string": qs,
            "headers": [],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 9090),
        }
        await app(scope, None, noop_send)  # type: ignore[arg-type]

    layers += [("database", db_layer), ("dbslayer", dbslayer_layer), ("asgi", asgi_layer)]
    try:
        for name, call in layers:
            if a.layers and name not in a.layers:
                continue
            res = await drive(name, call, a.query, a.conc, a.duration)
            res.update(query=a.query, conc=a.conc, pool_size=a.pool_size, backend=kind)
            results.append(res)
            print(json.dumps(res), flush=True)
    finally:
        for c in conns:
            await c.close()
        await database.close()
        await connector.aclose()
    return results


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="mysql://bench:bench@127.0.0.1:3306/patchbay_bench")
    p.add_argument("--query", default="q2", choices=sorted(SQL))
    p.add_argument("--conc", type=int, default=16, help="concurrent tasks")
    p.add_argument("--pool-size", type=int, default=16)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--compat", choices=["default", "strict"])
    p.add_argument("--layers", nargs="*", help="only these layers")
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after start-up: what the collector costs without the import-time heap",
    )
    a = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if a.gc_freeze:
        import patchbay.app  # noqa: F401  (import everything first)

        gc.collect()
        gc.freeze()
    print(f"objects tracked by the collector: {len(gc.get_objects()):,}", flush=True)
    rows = asyncio.run(main_async(a))
    print()
    prev = None
    for r in rows:
        delta = "" if prev is None else f"  (+{r['cpu_us_per_req'] - prev:.1f})"
        print(
            f"{r['layer']:<9} {r['rps']:>8,} req/s  {r['cpu_us_per_req']:>7.1f} us CPU/req"
            f"{delta:<10}  of which gc {r['gc_us_per_req']:>5.1f}  (gc runs by generation "
            f"{r['gc_runs']})"
        )
        prev = r["cpu_us_per_req"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
