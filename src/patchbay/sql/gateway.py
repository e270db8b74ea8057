"""A named database: its group of servers, their pools and health, and running a request on it.

``Database.execute`` picks a server with the balancer, borrows a pooled connection, runs the SQL
under the query timeout and reports the server's health back. A server that fails is marked down
and its idle connections are dropped; requests still running on it are stopped, reads move to
another server, writes fail (they may have been applied). A background probe brings a down
server back, and also checks up servers, so that one that stops answering without closing its
connections (a black hole) is found within ``probe_interval + connect_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

import structlog

from patchbay.errors import BackendUnavailable, PoolExhausted, QueryTimeout
from patchbay.settings import DatabaseSettings, PoolSettings, redact_url
from patchbay.sql import statements
from patchbay.sql.backends.base import Connection, Connector, ServerFailure
from patchbay.sql.balancer import Balancer, Policy, retry_allowed
from patchbay.sql.pipeline import Pipeline, PipelinedConnection
from patchbay.sql.pool import Pool
from patchbay.sql.results import Outcome
from patchbay.sql.statements import Shape
from patchbay.stats import Histogram

log = structlog.get_logger("patchbay.sql")


def make_connector(url: str, *, kind: str, strict: bool, settings: DatabaseSettings) -> Connector:
    """Build the connector for one backend URL."""
    timeout = settings.pool.connect_timeout
    if kind == "mysql":
        from patchbay.sql.backends.mysql import MySQLConnector

        return MySQLConnector(url, strict=strict, connect_timeout=timeout)
    if kind == "postgresql":
        from patchbay.sql.backends.postgres import PostgresConnector

        return PostgresConnector(url, strict=strict, connect_timeout=timeout)
    from patchbay.sql.backends.sqlite import SQLiteConnector

    return SQLiteConnector(url, strict=strict, threads=settings.pool.pool_size)


class Server:
    """One backend URL of a database: its connector, pool and the requests running on it."""

    def __init__(self, index: int, connector: Connector, settings: PoolSettings):
        self.index = index
        self.connector = connector
        self.name = redact_url(connector.url)
        self.pool: Pool[Connection] = Pool(
            connector.connect,
            _close,
            size=settings.pool_size,
            acquire_timeout=settings.acquire_timeout,
            alive=lambda conn: conn.alive(),
        )
        # Only MySQL's protocol lets several queries wait on one connection (see pipeline.py).
        self.pipeline = (
            Pipeline(cast(Pool[PipelinedConnection], self.pool), settings.pipeline_depth)
            if connector.kind == "mysql" and settings.pipeline_depth > 1
            else None
        )
        self.running: set[asyncio.Task[Any]] = set()
        self.generation = 0  # bumped each time the server is marked down
        self.evicted: set[asyncio.Task[Any]] = set()
        self.last_error = ""


async def _close(conn: Connection) -> None:
    await conn.close()


class Database:
    """One named database: what a request's ``SERVER`` selects."""

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        strict: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = settings.name
        self.kind = settings.kind
        self.settings = settings
        pool = settings.pool
        self.policy = Policy(
            strategy=pool.balance,
            writes=pool.writes,
            failures_to_down=pool.failures_to_down,
            probe_interval=pool.probe_interval,
            enabled=pool.failover,
        )
        self.balancer = Balancer(len(settings.urls), self.policy)
        self.servers = [
            Server(i, make_connector(url, kind=self.kind, strict=strict, settings=settings), pool)
            for i, url in enumerate(settings.urls)
        ]
        self._clock = clock
        self._health: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._loop_time = time.monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0
        self.failures = 0
        self.timeouts = 0
        self.retries = 0
        self.latency = Histogram()

    def start(self) -> None:
        """Start the background health probe and the query-timeout watchdog."""
        loop = self._loop = asyncio.get_running_loop()
        self._loop_time = loop.time
        if self._health is None:
            self._health = loop.create_task(self._probe_loop())
        if self._watchdog is None:
            self._watchdog = loop.create_task(self._watch())

    async def _watch(self) -> None:
        """Cancel queries past their deadline.

        One sweep per interval instead of a timer per request (``asyncio.timeout`` cost a few
        microseconds on every request); a query is cancelled at most one interval late.
        """
        timeout = self.settings.pool.query_timeout
        interval = min(0.25, max(0.01, timeout / 10))
        while True:
            await asyncio.sleep(interval)
            now = self._loop_time()
            for task, deadline in list(self._deadlines.items()):
                if now >= deadline and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def close(self) -> None:
        """Stop probing and close every connection."""
        for task in (self._health, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._health = self._watchdog = None
        for server in self.servers:
            if server.pipeline is not None:
                await server.pipeline.close()
            await server.pool.close()
            await server.connector.aclose()

    async def execute(self, sql: str, *, rollback_on_error: bool = False) -> Outcome:
        """Run a request's SQL on one server of the group; see the module docstring."""
        self.requests += 1
        began = time.perf_counter()
        try:
            return await self._execute(sql, rollback_on_error)
        finally:
            self.latency.record(time.perf_counter() - began)

    async def _execute(self, sql: str, rollback_on_error: bool) -> Outcome:
        shape = statements.shape(sql, self.kind)
        write = not shape.read
        tried: set[int] = set()
        while True:
            index = self.balancer.pick(write=write, exclude=tried)
            if index is None:
                raise self._unavailable()
            server = self.servers[index]
            try:
                return await self._run_on(server, sql, rollback_on_error, shape)
            except ServerFailure as failure:
                if not retry_allowed(sent=failure.sent, write=write, policy=self.policy):
                    detail = (
                        " (the statement may have been applied)" if failure.sent and write else ""
                    )
                    raise BackendUnavailable(
                        f"server {server.index} of {self.name} failed: {failure.message}{detail}",
                        database=self.name,
                    ) from None
            except PoolExhausted:
                # Nothing was sent: a read may wait its turn on another server of the group.
                if write or len(tried) + 1 >= len(self.servers):
                    raise
            tried.add(index)
            self.retries += 1

    async def _run_on(self, server: Server, sql: str, rollback: bool, shape: Shape) -> Outcome:
        pipeline = server.pipeline
        if (
            pipeline is not None
            and shape.read
            and shape.stateless
            and not rollback
            and pipeline.wanted(sql)
        ):
            return await self._run_piped(server, pipeline, sql)
        generation = server.generation
        try:
            conn = await server.pool.acquire()
        except ServerFailure as failure:
            self._server_failed(server, failure, generation)
            raise
        task = asyncio.current_task(self._loop)  # an explicit loop saves a getpid() on 3.11
        assert task is not None
        self.balancer.begin(server.index)
        server.running.add(task)
        self._deadlines[task] = self._loop_time() + self.settings.pool.query_timeout
        try:
            outcome = await conn.run(sql, rollback_on_error=rollback, shape=shape)
        except ServerFailure as failure:
            server.pool.discard(conn)
            self._server_failed(server, failure, generation)
            raise
        except asyncio.CancelledError:
            reason = self._given_up(task, server)
            if isinstance(reason, QueryTimeout):
                server.pool.forget(conn)
                await conn.abort()
            else:
                server.pool.discard(conn)
            if reason is None:
                raise
            raise reason from None
        finally:
            del self._deadlines[task]
            server.running.discard(task)
            self.balancer.end(server.index)
        server.pool.release(conn)
        if server.generation == generation:
            self.balancer.succeeded(server.index, self._clock())
        return outcome

    async def _run_piped(self, server: Server, pipeline: Pipeline, sql: str) -> Outcome:
        """Run a plain read through the server's pipeline (its pool is busy)."""
        generation = server.generation
        task = asyncio.current_task(self._loop)
        assert task is not None
        deadlines = self._deadlines
        timeout = self.settings.pool.query_timeout

        def started() -> None:  # the query timeout counts from here, as for a lone request
            deadlines[task] = self._loop_time() + timeout

        self.balancer.begin(server.index)
        server.running.add(task)
        try:
            outcome = await pipeline.run(sql, started)
        except ServerFailure as failure:
            self._server_failed(server, failure, generation)
            raise
        except asyncio.CancelledError:
            reason = self._given_up(task, server)  # the runner stops the query if it was running
            if reason is None:
                raise
            raise reason from None
        finally:
            deadlines.pop(task, None)
            server.running.discard(task)
            self.balancer.end(server.index)
        if server.generation == generation:
            self.balancer.succeeded(server.index, self._clock())
        return outcome

    def _given_up(
        self, task: asyncio.Task[Any], server: Server
    ) -> QueryTimeout | ServerFailure | None:
        """Why a request was cancelled: its query timeout, its server going down, or neither."""
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            self.timeouts += 1
            return QueryTimeout(
                f"the query ran past {self.settings.pool.query_timeout:g} s and was cancelled",
                database=self.name,
            )
        if task in server.evicted:
            # The server was marked down while this ran; that failure is counted already.
            server.evicted.discard(task)
            task.uncancel()
            return ServerFailure("the server went down during the request", sent=True)
        return None

    async def info(self, keys: list[str]) -> dict[str, Any]:
        """Answer DBSlayer's info flags from one connection of the group."""
        tried: set[int] = set()
        while True:
            index = self.balancer.pick(write=False, exclude=tried)
            if index is None:
                raise self._unavailable()
            server = self.servers[index]
            try:
                conn = await server.pool.acquire()
            except ServerFailure as failure:
                self._server_failed(server, failure)
                tried.add(index)
                continue
            try:
                answers: dict[str, Any] = {}
                for key in keys:
                    answers[key] = self.name if key == "SERVER_NAME" else await conn.info(key)
            except Exception as exc:
                server.pool.discard(conn)
                self._server_failed(server, ServerFailure(str(exc), sent=True))
                tried.add(index)
                continue
            server.pool.release(conn)
            return answers

    def _unavailable(self) -> BackendUnavailable:
        errors = "; ".join(f"{s.index}: {s.last_error}" for s in self.servers if s.last_error)
        return BackendUnavailable(
            f"no server of {self.name} is available ({errors or 'all down'})", database=self.name
        )

    def _server_failed(
        self, server: Server, failure: ServerFailure, generation: int | None = None
    ) -> None:
        """Count a failure, unless it belongs to a time before the server last went down."""
        if generation is not None and generation != server.generation:
            return
        self.failures += 1
        server.last_error = failure.message
        if self.balancer.failed(server.index, self._clock()):
            server.generation += 1
            log.warning(
                "server down", database=self.name, server=server.name, error=failure.message
            )
            self._evict(server)

    def _evict(self, server: Server) -> None:
        """Drop idle connections and stop the requests running on a server that went down."""
        task = asyncio.get_running_loop().create_task(server.pool.clear())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        server.pool.fail_waiters(lambda: ServerFailure("the server went down", sent=False))
        current = asyncio.current_task()
        for running in list(server.running):
            if running is not current and running not in server.evicted:
                server.evicted.add(running)
                running.cancel()

    async def _probe_loop(self) -> None:
        interval = self.policy.probe_interval
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            if not self.policy.enabled:
                continue
            due = set(self.balancer.probes_due(now))
            checks = [
                self._probe(server)
                for server in self.servers
                if server.index in due or self.balancer.is_up(server.index)
            ]
            if checks:
                await asyncio.gather(*checks)

    async def _probe(self, server: Server) -> None:
        timeout = self.settings.pool.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                conn = await server.connector.connect()
                try:
                    await conn.ping()
                finally:
                    await conn.close()
        except Exception as exc:  # any failure of a probe means the server failed
            message = exc.message if isinstance(exc, ServerFailure) else f"probe: {exc!r}"
            self._server_failed(server, ServerFailure(message, sent=False))
            return
        if not self.balancer.is_up(server.index):
            log.info("server up", database=self.name, server=server.name)
            await server.pool.clear()
        self.balancer.succeeded(server.index, self._clock())

    def stats(self) -> dict[str, Any]:
        """Counters and per-server state for ``/v1/stats``."""
        return {
            "kind": self.kind,
            "requests": self.requests,
            "server_failures": self.failures,
            "timeouts": self.timeouts,
            "retries": self.retries,
            "latency": self.latency.summary(),
            "servers": [
                {
                    "url": s.name,
                    "up": st.up,
                    "outstanding": st.outstanding,
                    "consecutive_failures": st.consecutive_failures,
                    "pool": {
                        "size": s.pool.size,
                        "open": s.pool.open,
                        "in_use": s.pool.in_use,
                        "waiting": s.pool.waiting,
                    },
                    "pipeline": None
                    if s.pipeline is None
                    else {
                        "depth": s.pipeline.depth,
                        "batches": s.pipeline.batches,
                        "reads": s.pipeline.reads,
                        "resent": s.pipeline.resent,
                        "waiting": len(s.pipeline.waiting),
                    },
                    "last_error": s.last_error,
                }
                for s, st in zip(self.servers, self.balancer.states(), strict=True)
            ],
        }


_BACKGROUND: set[asyncio.Task[Any]] = set()
