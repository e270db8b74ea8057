#!/usr/bin/env python3
"""The job store alone, without HTTP: the ceiling under webhook intake, and where a commit goes.

``put`` mode (default): ``--conc`` asyncio tasks each store messages shaped like
``Inbox.accept``'s (stream ``hooks/gh``, a unique key, the GitHub push body of
``bench/hooks.py``, the same meta with redacted headers, one job or none) through the real store
(``patchbay.jobs.store.connect``: SQLite with its group-committing writer process, or
PostgreSQL with its batching task) for ``--duration`` seconds after a 1 s warm-up; prints
puts/s, put latency and this process's CPU per put (with the SQLite store's writer process),
and how many puts each commit carried on average (SQLite: each group its writer answered).

``micro`` mode: microseconds per call (best of 5, ``timeit``) of the pieces every delivery runs
on the event loop: ``verify`` (HMAC), ``open_envelope`` (JSON parse), ``redact``, the probe
``Context`` ``Inbox.accept`` builds, one structured log line (to /dev/null), ``Stats.record``,
and ``hmac.new(...).digest()`` against the one-shot ``hmac.digest``.

``dispatch`` mode: the webhook dispatcher alone. ``--messages`` deliveries (the same push body,
meta and one job each, stored through ``Inbox.accept``) are put first; then the real
``Dispatcher`` (concurrency 16) runs them through one no-op ``async`` handler for
``--duration`` seconds: jobs per second, this process's CPU per job and (PostgreSQL) the
server's CPU per job. The ceiling of the dispatcher when it has the machine to itself.

``commit`` mode: plain ``sqlite3`` on the SQLite store's schema (``patchbay.jobs.sqlite.SCHEMA``),
``--batch`` messages (and one job each) per ``BEGIN IMMEDIATE ... COMMIT``, with
``synchronous`` FULL, NORMAL and OFF and with the real body or an empty one: milliseconds per
commit, i.e. how much of a group commit is the fsync and how much the bytes.

    .venv/bin/python bench/hooks_store.py --store sqlite --conc 64 --duration 5
    .venv/bin/python bench/hooks_store.py --store postgresql --conc 64 --duration 5
    .venv/bin/python bench/hooks_store.py --mode dispatch --store sqlite --messages 40000
    .venv/bin/python bench/hooks_store.py --mode commit --batch 64
    .venv/bin/python bench/hooks_store.py --mode micro

Run with the project venv (imports patchbay). PostgreSQL: a database ``--pg-db`` is created and
dropped (``bench/hooks.py``'s helpers, trust auth as postgres on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hooks import fresh_pg_database, pg_store_url, psql, push_payload

from patchbay.jobs.model import Message, NewJob
from patchbay.jobs.sqlite import SCHEMA, SqliteStore
from patchbay.jobs.store import connect
from patchbay.webhooks.envelope import redact

HEADERS = {
    "host": "127.0.0.1:9090",
    "content-type": "application/json",
    "x-github-event": "push",
    "x-hub-signature-256": "sha256=" + "0" * 64,
    "content-length": "8762",
}


def message(body: bytes, key: str, jobs: int) -> Message:
    """What ``Inbox.accept`` stores for one delivery."""
    return Message(
        stream="hooks/gh",
        key=key,
        body=body,
        meta={
            "source": "gh",
            "event": "push",
            "content_type": "application/json",
            "headers": redact(dict(HEADERS, **{"x-github-delivery": key})),
            "received_at": time.time(),
        },
        jobs=tuple(NewJob(queue="hooks", task="bench_handlers:noop") for _ in range(jobs)),
    )


async def put_mode(a: argparse.Namespace, url: str) -> dict[str, Any]:
    store = connect(url)
    await store.open()
    body = push_payload()
    commits = [0]
    writer_pid: int | None = None
    if isinstance(store, SqliteStore):
        # SQLite: one answer from the writer process per group it committed.
        answered = store._answered
        process = store._process
        writer_pid = process.pid if process is not None else None

        def counted_answer(*args: Any) -> Any:
            commits[0] += 1
            return answered(*args)

        store._answered = counted_answer  # type: ignore[method-assign,assignment]
    else:
        commit = store._commit  # type: ignore[attr-defined]

        async def counted(*args: Any) -> Any:
            commits[0] += 1
            return await commit(*args)

        store._commit = counted  # type: ignore[attr-defined]
    latencies: list[float] = []
    measuring = False
    stop_at = 0.0

    async def client(n: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            began = time.perf_counter()
            put = await store.put(message(body, f"{n}-{i}-{time.monotonic_ns()}", a.jobs))
            if not put.created:
                raise RuntimeError("a unique key came back as a duplicate")
            if measuring:
                latencies.append(time.perf_counter() - began)

    stop_at = time.monotonic() + 1.0  # warm-up
    await asyncio.gather(*(client(n) for n in range(a.conc)))
    measuring = True
    commits[0] = 0
    from run import proc_cpu

    writer0 = proc_cpu(writer_pid) if writer_pid is not None else None
    cpu0, t0 = os.times(), time.monotonic()
    stop_at = t0 + a.duration
    await asyncio.gather(*(client(n) for n in range(a.conc)))
    elapsed = time.monotonic() - t0
    cpu1 = os.times()
    writer1 = proc_cpu(writer_pid) if writer_pid is not None else None
    await store.close()
    n = len(latencies)
    latencies.sort()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    if writer0 is not None and writer1 is not None:
        cpu += writer1 - writer0  # the SQLite store's writer process
    return {
        "mode": "put",
        "store": url.partition(":")[0],
        "conc": a.conc,
        "jobs_per_message": a.jobs,
        "body_bytes": len(body),
        "puts": n,
        "puts_per_s": round(n / elapsed),
        "p50_ms": round(1e3 * latencies[n // 2], 2) if n else None,
        "p99_ms": round(1e3 * latencies[int(n * 0.99)], 2) if n else None,
        "cpu_us_per_put": round(1e6 * cpu / n, 1) if n else None,
        "commits": commits[0],
        "puts_per_commit": round(n / commits[0], 1) if commits[0] else None,
    }


async def dispatch_mode(a: argparse.Namespace, url: str) -> dict[str, Any]:
    from run import by_name, cpu_of

    from patchbay import logs
    from patchbay.jobs.model import Schedule
    from patchbay.webhooks.dispatcher import Dispatcher
    from patchbay.webhooks.envelope import open_envelope
    from patchbay.webhooks.inbox import Inbox, Source
    from patchbay.webhooks.router import Context, Router
    from patchbay.webhooks.verify import Scheme

    logs.configure("warning")  # the per-job debug lines stay out of the figures
    router = Router()

    @router.on("push")
    async def noop(context: Context) -> None:
        return None

    store = connect(url)
    await store.open()
    body = push_payload()
    source = Source("gh", Scheme(provider="github", secrets=("s",)), router, 1 << 20, Schedule())
    inbox = Inbox(store, time.time)

    async def deliver(n: int) -> None:
        headers = dict(HEADERS, **{"x-github-delivery": f"d-{n}"})
        await inbox.accept(source, open_envelope(source.scheme, headers, body), headers, body)

    for start in range(0, a.messages, 256):
        await asyncio.gather(*(deliver(n) for n in range(start, min(a.messages, start + 256))))
    done = [0]

    def finished(claim: Any, outcome: str, seconds: float) -> None:
        done[0] += 1

    dispatcher = Dispatcher(
        store,
        {"gh": source},
        concurrency=16,
        timeout=30.0,
        lease=60.0,
        poll_interval=0.5,
        on_outcome=finished,
    )
    db = by_name(("postgres",)) if url.startswith("postgresql") else []
    cpu0, db0, t0 = os.times(), sum(cpu_of(db).values()), time.monotonic()
    dispatcher.start()
    await asyncio.sleep(a.duration)
    cpu1, db1, elapsed = os.times(), sum(cpu_of(db).values()), time.monotonic() - t0
    n = done[0]
    await dispatcher.stop()
    await store.close()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "mode": "dispatch",
        "store": url.partition(":")[0],
        "messages": a.messages,
        "jobs": n,
        "jobs_per_s": round(n / elapsed),
        "exhausted": n >= a.messages,
        "cpu_us_per_job": round(1e6 * cpu / n, 1) if n else None,
        "db_cpu_us_per_job": round(1e6 * (db1 - db0) / n, 1) if n and db else None,
    }


def commit_mode(a: argparse.Namespace) -> list[dict[str, Any]]:
    body = push_payload()
    meta = json.dumps(message(body, "k", 1).meta)
    out = []
    for sync in ("FULL", "NORMAL", "OFF"):
        for label, payload in (("real body", body), ("empty body", b"")):
            with tempfile.TemporaryDirectory(prefix="patchbay-commit-") as tmp:
                conn = sqlite3.connect(Path(tmp) / "jobs.db", isolation_level=None)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {sync}")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                times = []
                key = 0
                for _ in range(a.commits):
                    began = time.perf_counter()
                    conn.execute("BEGIN IMMEDIATE")
                    for _ in range(a.batch):
                        key += 1
                        (mid,) = conn.execute(
                            "INSERT INTO messages (stream, key, body, meta, created_at)"
                            " VALUES (?, ?, ?, ?, ?) RETURNING id",
                            ("hooks/gh", str(key), payload, meta, time.time()),
                        ).fetchone()
                        conn.execute(
                            "INSERT INTO jobs (message_id, queue, task, status, run_at,"
                            " created_at, updated_at) VALUES (?, 'hooks', 't', 'pending', ?, ?, ?)",
                            (mid, time.time(), time.time(), time.time()),
                        )
                    conn.execute("COMMIT")
                    times.append(time.perf_counter() - began)
                conn.close()
            out.append(
                {
                    "mode": "commit",
                    "synchronous": sync,
                    "body": label,
                    "batch": a.batch,
                    "commits": a.commits,
                    "ms_per_commit_median": round(1e3 * statistics.median(times), 3),
                    "us_per_message": round(1e6 * statistics.median(times) / a.batch, 1),
                }
            )
    return out


def micro_mode() -> list[dict[str, Any]]:
    import hashlib
    import hmac
    import timeit

    import structlog

    from patchbay import logs
    from patchbay.stats import Stats
    from patchbay.webhooks.envelope import open_envelope
    from patchbay.webhooks.router import Context
    from patchbay.webhooks.verify import Scheme, verify

    body = push_payload()
    secret = "bench-s3cret"
    scheme = Scheme(provider="github", secrets=(secret,))
    headers = dict(
        HEADERS,
        **{
            "x-github-delivery": "m-0-1",
            "x-hub-signature-256": "sha256="
            + hmac.new(secret.encode(), body, "sha256").hexdigest(),
        },
    )
    envelope = open_envelope(scheme, headers, body)
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the log line's write() goes to /dev/null, as cheap as a write gets
    try:
        logs.configure("info")
        log = structlog.get_logger("patchbay.webhooks")
        stats = Stats(None)

        def context() -> Context:
            return Context(
                source="gh",
                event=envelope.event,
                delivery_key=envelope.delivery_key,
                payload=envelope.payload,
                body=body,
                headers=headers,
                attempt=0,
                received_at=0.0,
            )

        pieces = {
            "verify (github, 1 secret)": lambda: verify(scheme, headers, body, 0.0),
            "hmac.new(key, body, 'sha256').digest()": lambda: hmac.new(
                secret.encode(), body, "sha256"
            ).digest(),
            "hmac.digest(key, body, 'sha256')": lambda: hmac.digest(
                secret.encode(), body, hashlib.sha256
            ),
            "open_envelope (JSON parse)": lambda: open_envelope(scheme, headers, body),
            "redact(headers)": lambda: redact(headers),
            "Context(...) probe in Inbox.accept (binds a logger)": context,
            "log.info('delivery stored', ...) line": lambda: log.info(
                "delivery stored", source="gh", hook="push", delivery="m-0-1", runs=1
            ),
            "Stats.record": lambda: stats.record(
                client_ip="127.0.0.1",
                request="POST /hooks/gh HTTP/1.1",
                status=200,
                bytes_sent=48,
                micros=100,
                error=None,
            ),
        }
        out = []
        for name, fn in pieces.items():
            n = 2000
            best = min(timeit.repeat(fn, number=n, repeat=5)) / n
            out.append({"mode": "micro", "piece": name, "us": round(best * 1e6, 2)})
        stats.close()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=["put", "dispatch", "commit", "micro"], default="put")
    p.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--conc", type=int, default=64, help="concurrent puts (put mode)")
    p.add_argument("--jobs", type=int, default=0, help="jobs per message (put mode)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (put, dispatch)")
    p.add_argument("--messages", type=int, default=40000, help="deliveries put (dispatch mode)")
    p.add_argument("--batch", type=int, default=64, help="messages per commit (commit mode)")
    p.add_argument("--commits", type=int, default=100, help="commits per variant (commit mode)")
    p.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--pg-db", default="patchbay_hooks_bench")
    a = p.parse_args()
    if a.mode in ("commit", "micro"):
        for row in commit_mode(a) if a.mode == "commit" else micro_mode():
            print(json.dumps(row))
        return 0
    run = dispatch_mode if a.mode == "dispatch" else put_mode
    if a.store == "postgresql":
        fresh_pg_database(a)
        try:
            print(json.dumps(asyncio.run(run(a, pg_store_url(a)))))
        finally:
            psql(a.pg_admin_url, f'DROP DATABASE IF EXISTS "{a.pg_db}" WITH (FORCE)')
        return 0
    with tempfile.TemporaryDirectory(prefix="patchbay-store-") as tmp:
        print(json.dumps(asyncio.run(run(a, f"sqlite:///{Path(tmp) / 'jobs.db'}"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
