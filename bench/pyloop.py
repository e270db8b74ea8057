#!/usr/bin/env python3
"""Direct-driver loops: what one Python process can do without HTTP.

  asyncpg (PostgreSQL): N concurrent asyncio tasks sharing a pool of N connections.
  sqlite3 (SQLite):     one synchronous loop (concurrency is meaningless under the GIL).

Workloads (same as the HTTP gateway runs):
  q1  SELECT 1
  q2  point lookup by random primary key (bound parameter)
  q3  100-row primary-key range scan (bound parameters)

Prints one JSON line per run: {"driver","query","concurrency","seconds","requests","rps","p50_ms","p99_ms"}.

Usage:
  python3 pyloop.py asyncpg --dsn postgresql://bench:bench@127.0.0.1:5432/bench -c 16 -d 10 q1 q2 q3
  python3 pyloop.py sqlite3 --path items.db -d 10 q1 q2 q3
"""

import argparse
import asyncio
import json
import random
import sqlite3
import time

N = 100_000
SQL_PG = {
    "q1": "SELECT 1",
    "q2": "SELECT id, name, price, created FROM items WHERE id = $1",
    "q3": "SELECT id, name, price, created FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id",
}
SQL_LITE = {k: v.replace("$1", "?").replace("$2", "?") for k, v in SQL_PG.items()}


def args_for(q):
    if q == "q1":
        return ()
    if q == "q2":
        return (random.randint(1, N),)
    lo = random.randint(1, N - 99)
    return (lo, lo + 99)


def pct(sorted_lat, p):
    if not sorted_lat:
        return None
    i = min(len(sorted_lat) - 1, round(p / 100.0 * (len(sorted_lat) - 1)))
    return round(sorted_lat[i] * 1000, 3)


def report(driver, q, conc, secs, lat):
    lat.sort()
    print(
        json.dumps(
            {
                "driver": driver,
                "query": q,
                "concurrency": conc,
                "seconds": round(secs, 2),
                "requests": len(lat),
                "rps": round(len(lat) / secs, 1),
                "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99),
            }
        ),
        flush=True,
    )


async def run_asyncpg(dsn, q, conc, dur):
    import asyncpg

    pool = await asyncpg.create_pool(dsn=dsn, min_size=conc, max_size=conc)
    sql = SQL_PG[q]

    # warm the per-connection statement caches
    async def warm():
        async with pool.acquire() as con:
            await con.fetch(sql, *args_for(q))

    await asyncio.gather(*[warm() for _ in range(conc)])
    lat = []
    stop = time.perf_counter() + dur

    async def worker():
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                return
            async with pool.acquire() as con:
                await con.fetch(sql, *args_for(q))
            lat.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(conc)])
    secs = time.perf_counter() - t_start
    await pool.close()
    report("asyncpg", q, conc, secs, lat)


def run_sqlite(path, q, dur):
    con = sqlite3.connect(path)
    sql = SQL_LITE[q]
    con.execute(sql, args_for(q)).fetchall()
    lat = []
    t_start = time.perf_counter()
    stop = t_start + dur
    while True:
        t0 = time.perf_counter()
        if t0 >= stop:
            break
        con.execute(sql, args_for(q)).fetchall()
        lat.append(time.perf_counter() - t0)
    report("sqlite3", q, 1, time.perf_counter() - t_start, lat)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("driver", choices=["asyncpg", "sqlite3"])
    p.add_argument("queries", nargs="+", choices=["q1", "q2", "q3"])
    p.add_argument("--dsn", default="postgresql://bench:bench@127.0.0.1:5432/bench")
    p.add_argument("--path", default="items.db")
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    a = p.parse_args()
    for q in a.queries:
        if a.driver == "asyncpg":
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            asyncio.run(run_asyncpg(a.dsn, q, a.concurrency, a.duration))
        else:
            run_sqlite(a.path, q, a.duration)


if __name__ == "__main__":
    main()
