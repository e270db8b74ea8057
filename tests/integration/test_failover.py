"""Failover on real MariaDB and PostgreSQL servers, with network faults injected by a proxy.

Two ``FaultProxy`` instances stand in front of the same database server, so the gateway sees a
group of two servers, A and B. Several clients read through the gateway without pause while A
is cut (``reset``: every connection gets an RST and new ones too; ``blackhole``: nothing moves
and nothing is closed) and then healed. Where the proxies forward bytes shows where the gateway
sends its traffic; ``/v1/stats`` shows what the gateway believes. On a failure, the captured
output has the run's timeline, every distinct error and the gateway's warnings.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.conftest import Served, Start
from tests.integration.faultproxy import FaultProxy

CLIENTS = 8
"""Concurrent clients of the read load: at most this many requests are in flight at a cut."""
QUERY_TIMEOUT = 5.0
"""The gateway's query timeout: a read stuck in a black hole until then was not moved."""
MOVED = 50
"""Reads that must succeed after the cut, while A is still cut."""
CUT = 1.0
"""The shortest time A stays cut."""
RECOVERY = 2.0
"""A healed server must carry its share of the reads again within this many seconds."""
SHARE = 0.25
"""The part of B's traffic that A must carry, over one poll, to count as back in use."""
STAY = 1.0
"""How long both servers must then stay up, with A carrying its share."""

pytestmark = pytest.mark.services


@pytest.fixture(params=["mariadb", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a real database server, of each kind in turn."""
    url: str = request.getfixturevalue(
        "mysql_url" if request.param == "mariadb" else "postgres_url"
    )
    return url


@pytest.fixture
def proxies(db_url: str) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    """Two started proxies, A and B, in front of the same database server.

    Tests list it before ``serve``, so that the gateway stops before its servers vanish.
    """
    parts = urlsplit(db_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 0
    with FaultProxy(host, port) as a, FaultProxy(host, port) as b:
        yield a, b


def via(url: str, proxy: FaultProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    credentials, at, _ = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{credentials}{at}127.0.0.1:{proxy.port}").geturl()


def start_gateway(
    serve: Start,
    tmp_path: Path,
    db_url: str,
    proxies: tuple[FaultProxy, FaultProxy],
    *,
    failover: bool,
) -> Served:
    """``patchbay serve`` with one database ``db`` on A then B, and fast failover settings."""
    urls = ", ".join(json.dumps(via(db_url, proxy)) for proxy in proxies)
    config = tmp_path / "patchbay.toml"
    config.write_text(
        f"""
[sql]
pool_size = 4
connect_timeout = 0.5
acquire_timeout = 3
query_timeout = {QUERY_TIMEOUT}
probe_interval = 0.2
failures_to_down = 1
failover = {str(failover).lower()}

[databases.db]
urls = [{urls}]
""",
        encoding="utf-8",
    )
    return serve(["--config", str(config)])


def servers_up(gateway: Served) -> list[bool]:
    """Whether each server of database ``db`` is up, according to ``/v1/stats``."""
    response = httpx.get(gateway.url + "/v1/stats", timeout=5)
    assert response.status_code == 200
    return [server["up"] for server in response.json()["databases"]["db"]["servers"]]


@dataclass(frozen=True, slots=True)
class Read:
    """One request of the read load."""

    started: float
    ended: float
    error: str | None
    """``None`` when the answer had the right row, else what went wrong."""


class Load:
    """``CLIENTS`` clients each reading ``SELECT <n>`` through the gateway without pause.

    The clients are asyncio tasks on one thread: client threads would fight the proxies'
    threads for the GIL and slow every byte the proxies forward.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._reads: list[Read] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        """Start the clients."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the clients after their current request."""
        self._stop.set()
        self._thread.join(QUERY_TIMEOUT * 3)

    def _run(self) -> None:
        """Run the clients until stopped, on the load's own thread and event loop."""
        asyncio.run(self._clients())

    async def _clients(self) -> None:
        """Run the clients until stopped."""
        await asyncio.gather(*(self._client(n) for n in range(CLIENTS)))

    async def _client(self, n: int) -> None:
        """Read on one keep-alive connection with a fresh number each time; record outcomes."""
        i = n * 10_000_000
        async with httpx.AsyncClient(base_url=self.url, timeout=QUERY_TIMEOUT * 2) as client:
            while not self._stop.is_set():
                i += 1
                started = time.monotonic()
                try:
                    query = quote(json.dumps({"SQL": f"SELECT {i} AS v"}))
                    error = wrong(await client.get("/db?" + query), i)
                except Exception as exc:  # every failure is an outcome to report
                    error = repr(exc)
                with self._lock:
                    self._reads.append(Read(started, time.monotonic(), error))

    def reads(self) -> list[Read]:
        """The reads finished so far."""
        with self._lock:
            return list(self._reads)

    def succeeded_since(self, since: float) -> int:
        """How many reads started after ``since`` have succeeded."""
        return sum(r.started > since and r.error is None for r in self.reads())


def wrong(response: httpx.Response, i: int) -> str | None:
    """What is wrong with the answer to ``SELECT i``, if anything."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}, not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}, not an object: {body!r}"
    if "ERROR" in body:
        return f"HTTP {response.status_code} ERROR: {body['ERROR']}"
    if body.get("RESULT", {}).get("ROWS") != [[i]]:
        return f"HTTP {response.status_code}, not [[{i}]]: {body!r}"
    return None


def poll(condition: Callable[[], bool], timeout: float) -> float | None:
    """Poll ``condition`` every 50 ms; return the time it held, or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return time.monotonic()


def share_returns(a: FaultProxy, b: FaultProxy) -> Callable[[], bool]:
    """A condition: since the last poll, A forwarded at least ``SHARE`` of what B did."""
    last = [a.counters().bytes, b.counters().bytes]

    def check() -> bool:
        now = [a.counters().bytes, b.counters().bytes]
        grew_a, grew_b = now[0] - last[0], now[1] - last[1]
        last[:] = now
        return grew_a > 0 and grew_a >= SHARE * grew_b

    return check


@dataclass
class Run:
    """What one cut-and-heal run observed; times are ``time.monotonic()``."""

    began: float = 0.0
    """When the load began."""
    cut: float = 0.0
    """When the cut began (the fault call was made)."""
    cut_done: float = 0.0
    """When the cut was complete (the fault call returned)."""
    moved: float | None = None
    """When ``MOVED`` reads started after the cut had succeeded (None: they never did)."""
    heal: float = 0.0
    back: float | None = None
    """When A carried its share of the reads again (None: not within ``RECOVERY``)."""
    flaps: list[tuple[float, list[bool]]] = field(default_factory=list)
    """Times in the ``STAY`` s after ``back`` when ``/v1/stats`` did not show both servers up."""
    a_share: float = 0.0
    """A's bytes over B's in the ``STAY`` s after ``back``."""
    a_bytes: tuple[int, int] = (0, 0)
    """A's forwarded bytes at the cut and at the heal."""
    b_bytes: tuple[int, int] = (0, 0)
    """B's forwarded bytes at the cut and at the heal."""
    up_while_cut: list[bool] = field(default_factory=list)
    """``/v1/stats``'s ``up`` of A and B just before the heal."""
    reads: list[Read] = field(default_factory=list)

    def errors(self) -> list[Read]:
        """The reads that failed."""
        return [r for r in self.reads if r.error is not None]

    def since(self, at: float | None) -> str:
        """A time relative to the cut."""
        return "never" if at is None else f"{at - self.cut:+.3f} s"

    def report(self, gateway: Served) -> str:
        """The timeline, every distinct error with its count and times, the gateway's warnings."""
        errors = self.errors()
        lines = [
            f"reads: {len(self.reads)}, errors: {len(errors)}, slowest: "
            f"{max((r.ended - r.started for r in self.reads), default=0):.3f} s",
            f"load began at {self.since(self.began)}, cut at 0 .. {self.since(self.cut_done)}, "
            f"{MOVED} reads moved at {self.since(self.moved)}, "
            f"heal at {self.since(self.heal)}, A back at {self.since(self.back)}",
            f"A bytes {self.a_bytes}, B bytes {self.b_bytes}, up while cut {self.up_while_cut}",
            f"then A's share {self.a_share:.2f}, not both up at "
            f"{[(self.since(at), up) for at, up in self.flaps]}",
        ]
        kinds: dict[str, list[Read]] = collections.defaultdict(list)
        for read in errors:
            kinds[str(read.error)].append(read)
        for text, reads in kinds.items():
            lines.append(
                f"{len(reads)} x started {self.since(min(r.started for r in reads))} .. "
                f"{self.since(max(r.started for r in reads))}, up to "
                f"{max(r.ended - r.started for r in reads):.3f} s: {text}"
            )
        lines.append(f"gateway log {gateway.log}, its warnings and errors:")
        seen = collections.Counter(
            line
            for line in gateway.log.read_text(errors="replace").splitlines()
            if any(w in line for w in ("server down", "server up", "Error", "ERROR", "Warning"))
        )
        lines += [f"  {count} x {line}" for line, count in seen.items()]
        return "\n".join(lines)


def cut_and_heal(gateway: Served, a: FaultProxy, b: FaultProxy, fault: Callable[[], None]) -> Run:
    """Read without pause while A is cut by ``fault``, then healed; record what happened."""
    run = Run(began=time.monotonic())
    with Load(gateway.url) as load:
        started = poll(
            lambda: (
                a.counters().bytes_up > 0
                and b.counters().bytes_up > 0
                and load.succeeded_since(0) >= MOVED
            ),
            5,
        )
        assert started is not None, "the reads did not get going on both servers"
        run.cut = time.monotonic()
        fault()
        run.cut_done = time.monotonic()
        a_cut, b_cut = a.counters().bytes, b.counters().bytes
        # A stays cut for CUT seconds, and until MOVED reads started after the cut succeeded.
        run.moved = poll(lambda: load.succeeded_since(run.cut_done) >= MOVED, QUERY_TIMEOUT + 3)
        time.sleep(max(0.0, run.cut + CUT - time.monotonic()))
        run.up_while_cut = servers_up(gateway)
        run.a_bytes = (a_cut, a.counters().bytes)
        run.b_bytes = (b_cut, b.counters().bytes)
        a.heal()
        run.heal = time.monotonic()
        run.back = poll(share_returns(a, b), RECOVERY)
        if run.back is not None:
            a_back, b_back = a.counters().bytes, b.counters().bytes
            while time.monotonic() < run.back + STAY:
                up = servers_up(gateway)
                if up != [True, True]:
                    run.flaps.append((time.monotonic(), up))
                time.sleep(0.1)
            grew_b = b.counters().bytes - b_back
            run.a_share = (a.counters().bytes - a_back) / max(grew_b, 1)
    run.reads = load.reads()
    print(run.report(gateway))
    return run


def check_traffic(run: Run) -> None:
    """Reads kept succeeding on B while A was cut, and A carried its share after the heal."""
    assert run.moved is not None, f"fewer than {MOVED} reads succeeded after the cut"
    assert run.a_bytes[1] == run.a_bytes[0], "A forwarded bytes while cut"
    assert run.b_bytes[1] > run.b_bytes[0], "B carried nothing while A was cut"
    assert run.back is not None, f"A did not carry its share within {RECOVERY:g} s of the heal"
    assert not run.flaps, f"a server went down again within {STAY:g} s of A's return"
    assert run.a_share >= SHARE, f"A did not keep its share for {STAY:g} s after its return"


def check_no_read_failed(run: Run) -> None:
    """With failover, a cut fails no read: not the ones after it, nor the ones in flight."""
    errors = run.errors()
    late = [r for r in errors if r.started > run.cut_done]
    assert not late, f"{len(late)} reads started after the cut failed (see the output)"
    assert len(errors) <= CLIENTS, "more reads failed than were in flight at the cut"
    assert not errors, f"{len(errors)} reads in flight at the cut failed (see the output)"


@pytest.mark.parametrize("failover", [True, False], ids=["failover", "no-failover"])
def test_reset_moves_reads_unless_failover_is_off(
    proxies: tuple[FaultProxy, FaultProxy],
    serve: Start,
    tmp_path: Path,
    db_url: str,
    failover: bool,
) -> None:
    """An RST on A: with failover no read fails; without it, reads sent to A fail."""
    a, b = proxies
    gateway = start_gateway(serve, tmp_path, db_url, proxies, failover=failover)
    run = cut_and_heal(gateway, a, b, a.reset)
    if failover:
        check_no_read_failed(run)
        assert run.up_while_cut == [False, True]
    else:
        errors = run.errors()
        assert errors, "without failover, reads sent to A while it was cut must fail"
        odd = [r for r in errors if not run.cut < r.ended < run.heal + RECOVERY]
        assert not odd, f"{len(odd)} reads failed outside the cut (see the output)"
        odd = [r for r in errors if not str(r.error).startswith("HTTP 200 ERROR: backend_")]
        assert not odd, f"{len(odd)} reads failed without a backend ERROR answer (see the output)"
        assert run.up_while_cut == [True, True]
    check_traffic(run)


def test_blackhole_moves_reads(
    proxies: tuple[FaultProxy, FaultProxy],
    serve: Start,
    tmp_path: Path,
    db_url: str,
) -> None:
    """A black hole on A is found by the probe, and its reads move to B without an error."""
    a, b = proxies
    gateway = start_gateway(serve, tmp_path, db_url, proxies, failover=True)
    run = cut_and_heal(gateway, a, b, a.blackhole)
    check_no_read_failed(run)
    assert run.up_while_cut == [False, True]
    slowest = max(r.ended - r.started for r in run.reads)
    assert slowest < QUERY_TIMEOUT, "a read waited in the black hole for the query timeout"
    check_traffic(run)
