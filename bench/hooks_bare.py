#!/usr/bin/env python3
"""Bench-only launcher: ``patchbay serve`` exactly as shipped, with one part swapped.

    .venv/bin/python bench/hooks_bare.py --bare serve --config FILE -h HOST -p PORT --workers N
    .venv/bin/python bench/hooks_bare.py --batches DIR serve --config FILE ...

Everything after the launcher's own flag goes to Patchbay's CLI (``patchbay.cli.main``): the
same settings loading, handler imports, logging set-up and ``patchbay.server.serve`` (the same
httptools/uvloop server, supervisor and ``run_worker``). The only difference is the class
``run_worker`` builds its application from: ``patchbay.server.App`` is replaced, before the
server starts (and so before any worker is forked), by a subclass of ``patchbay.app.App`` that
changes one thing after the normal construction:

``--bare``
    The webhook receiver's durable put, ``app.hooks.receiver.inbox.accept``, becomes a
    coroutine that stores nothing and reports a new delivery with no handler runs
    (``Put(message_id=0, created=True), 0``). Everything before and after it runs unchanged:
    HTTP parsing, ``App.receive`` (with its ``/stats`` entry), ``Receiver.handle``, the size gate,
    the HMAC check (``verify``), ``open_envelope`` (the JSON parse), the hook counters and ack
    latency histogram, the per-delivery log line and the JSON answer. The job store is still
    opened and the dispatcher still polls it (it finds nothing). This is the denominator of
    ``bench/hooks.py``: what intake costs without the durable write.
``--batches DIR``
    Nothing is replaced. The job store's groups are counted and timed (PostgreSQL: its private
    ``_commit``, the batch's transaction; SQLite: its private ``_answered``, one answer of the
    writer process per group, timed from the previous answer), and ``claim``/``succeed`` are
    counted; each worker writes ``DIR/batches-<pid>.json`` when it stops gracefully (SIGTERM).
    Diagnostic only: ``bench/hooks.py --batches`` reports these runs apart from the measured
    ones.

Product code has no switch for any of this.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import patchbay.server
from patchbay.app import App
from patchbay.cli import main as patchbay_main
from patchbay.jobs.model import Put
from patchbay.jobs.sqlite import SqliteStore
from patchbay.settings import Settings
from patchbay.webhooks.envelope import Envelope
from patchbay.webhooks.inbox import Source


async def accept_nothing(
    source: Source, envelope: Envelope, headers: Mapping[str, str], body: bytes
) -> tuple[Put, int]:
    """``Inbox.accept`` without the store: a new delivery, no handler runs, nothing written."""
    return Put(message_id=0, created=True), 0


class BareApp(App):
    """``App`` whose webhook intake verifies, parses and answers but never stores."""

    def __init__(self, settings: Settings, *, shutdown: Callable[[], None] | None = None) -> None:
        super().__init__(settings, shutdown=shutdown)
        if self.hooks is None:
            raise SystemExit("hooks_bare.py --bare: the settings configure no webhook source")
        self.hooks.receiver.inbox.accept = accept_nothing  # type: ignore[method-assign]


class BatchCounter:
    """Puts per group commit, commit times, claims and successes of one worker's store."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sizes: Counter[int] = Counter()
        self.commit_seconds = 0.0
        self.calls: Counter[str] = Counter()
        self.claimed = 0

    def wrap(self, store: Any) -> None:
        """Count groups (SQLite: the writer's answers; PostgreSQL: ``_commit``) and job calls."""
        if isinstance(store, SqliteStore):
            # SQLite: the writer process answers each group once (puts, successes, claims and
            # the rest together). Counted on this side: the group's operations, and the time
            # since the previous answer (the writer's cycle while it is busy; idle time too).
            answered = store._answered
            last = [time.perf_counter()]

            def counted_answer(outcomes: list[Any], woken: Any) -> None:
                now = time.perf_counter()
                self.count(len(outcomes), now - last[0])
                last[0] = now
                answered(outcomes, woken)

            store._answered = counted_answer  # type: ignore[method-assign]
        else:
            commit = store._commit

            async def async_commit(batch: list[Any]) -> None:
                began = time.perf_counter()
                await commit(batch)
                self.count(len(batch), time.perf_counter() - began)

            store._commit = async_commit
        claim, succeed = store.claim, store.succeed

        async def counted_claim(*args: Any, **kwargs: Any) -> Any:
            claims = await claim(*args, **kwargs)
            self.calls["claim"] += 1
            self.claimed += len(claims)
            return claims

        async def counted_succeed(*args: Any, **kwargs: Any) -> Any:
            self.calls["succeed"] += 1
            return await succeed(*args, **kwargs)

        store.claim, store.succeed = counted_claim, counted_succeed

    def count(self, size: int, seconds: float) -> None:
        with self.lock:
            self.sizes[size] += 1
            self.commit_seconds += seconds

    def dump(self, directory: Path, store: str) -> None:
        with self.lock:
            commits = sum(self.sizes.values())
            puts = sum(size * n for size, n in self.sizes.items())
            doc = {
                "pid": os.getpid(),
                "store": store,
                "commits": commits,
                "puts": puts,
                "mean_batch": round(puts / commits, 2) if commits else None,
                "max_batch": max(self.sizes) if self.sizes else None,
                "mean_commit_ms": round(1e3 * self.commit_seconds / commits, 3)
                if commits
                else None,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "claims": self.calls["claim"],
                "claimed_jobs": self.claimed,
                "succeeds": self.calls["succeed"],
            }
        (directory / f"batches-{os.getpid()}.json").write_text(json.dumps(doc) + "\n")


def batch_app(directory: Path) -> type[App]:
    """An ``App`` class whose job store counts its group commits (see ``--batches``)."""

    class BatchApp(App):
        def __init__(
            self, settings: Settings, *, shutdown: Callable[[], None] | None = None
        ) -> None:
            super().__init__(settings, shutdown=shutdown)
            self.batches = BatchCounter()
            if self.store is not None:
                self.batches.wrap(self.store)

        async def stop(self) -> None:
            await super().stop()
            await asyncio.to_thread(self.batches.dump, directory, type(self.store).__name__)

    return BatchApp


def main(argv: list[str]) -> None:
    if len(argv) >= 1 and argv[0] == "--bare":
        patchbay.server.App = BareApp  # type: ignore[misc]
        rest = argv[1:]
    elif len(argv) >= 2 and argv[0] == "--batches":
        directory = Path(argv[1]).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        patchbay.server.App = batch_app(directory)  # type: ignore[misc]
        rest = argv[2:]
    else:
        sys.exit(__doc__)
    patchbay_main(args=rest, prog_name="patchbay")


if __name__ == "__main__":
    main(sys.argv[1:])
