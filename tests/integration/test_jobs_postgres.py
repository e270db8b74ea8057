"""The PostgreSQL job store: the shared contract, plus what only several instances need.

Every test gets its own schema, dropped afterwards, so tests never see each other's jobs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from patchbay.jobs.model import Message, NewJob, Status
from patchbay.jobs.postgres import PostgresStore
from patchbay.jobs.store import Store, StoreUnavailable
from tests.conftest import free_port
from tests.integration.faultproxy import FaultProxy
from tests.unit.jobs.contract import FakeClock, Opener, StoreContract, message

pytestmark = pytest.mark.services


@pytest.fixture
async def schema(postgres_url: str) -> AsyncIterator[str]:
    """A fresh schema name, the schema dropped after the test."""
    name = f"patchbay_test_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def instances(postgres_url: str, schema: str, clock: FakeClock) -> AsyncIterator[Opener]:
    """Opens stores ("Patchbay instances") on the test's schema; closes them after."""
    opened: list[PostgresStore] = []

    async def open_store() -> Store:
        store = PostgresStore(postgres_url, clock=clock, schema=schema)
        opened.append(store)
        await store.open()
        return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
def clock() -> FakeClock:
    """The clock every store of the test reads."""
    return FakeClock()


class TestPostgresContract(StoreContract):
    """The shared contract on one PostgreSQL schema."""

    @pytest.fixture
    def opener(self, instances: Opener) -> Opener:
        """Opens stores on the test's schema."""
        return instances


async def test_purge_looks_again_at_a_window_that_broke_the_foreign_key(
    instances: Opener, postgres_url: str, schema: str, clock: FakeClock
) -> None:
    """A window whose delete fails on the foreign key (a replay raced it) is purged again."""
    store = await instances()
    for i in range(3):
        await store.put(Message("s", f"k{i}", b"", {}, ()))
    conn = await asyncpg.connect(postgres_url)
    try:  # the first delete of a message fails as a raced replay would; the sequence remembers
        await conn.execute(f"""
            CREATE SEQUENCE "{schema}".failed;
            CREATE FUNCTION "{schema}".fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('"{schema}".failed') = 1 THEN
                    RAISE foreign_key_violation USING MESSAGE = 'raced';
                END IF;
                RETURN OLD;
            END $$;
            CREATE TRIGGER fail_once BEFORE DELETE ON "{schema}".messages
                FOR EACH ROW EXECUTE FUNCTION "{schema}".fail_once();
        """)
        clock.advance(1)
        assert await store.purge(clock.now) == 3
        assert await conn.fetchval(f'SELECT last_value FROM "{schema}".failed') > 1
    finally:
        await conn.close()


async def test_two_instances_claim_each_job_once(instances: Opener) -> None:
    """Two instances claiming the same queue at once get every job exactly once."""
    a, b = await instances(), await instances()
    await asyncio.gather(
        *(a.put(Message("s", f"k{i}", b"", {}, (NewJob("q", "t"),))) for i in range(200))
    )
    claimed: dict[str, list[int]] = {}

    async def claimer(store: Store, owner: str) -> None:
        mine = claimed.setdefault(owner, [])
        while claims := await store.claim("q", owner, limit=7, lease=300):
            for claim in claims:
                mine.append(claim.job.id)
                assert await store.succeed(claim.job.id, owner)

    await asyncio.gather(claimer(a, "a1"), claimer(a, "a2"), claimer(b, "b1"), claimer(b, "b2"))
    every = [job_id for ids in claimed.values() for job_id in ids]
    assert len(every) == len(set(every)) == 200
    assert sum(1 for ids in claimed.values() if ids) >= 2
    assert (await a.counts())[Status.SUCCEEDED] == 200


async def test_duplicates_racing_from_two_instances_store_one_row(instances: Opener) -> None:
    """Two instances putting the same keys at once store each key once, with no error."""
    a, b = await instances(), await instances()
    keys = [f"k{i}" for i in range(100)]
    first, second = await asyncio.gather(
        asyncio.gather(*(a.put(message(k)) for k in keys)),
        asyncio.gather(*(b.put(message(k)) for k in reversed(keys))),
    )
    for put_a, put_b in zip(first, reversed(second), strict=True):
        assert put_a.message_id == put_b.message_id
        assert put_a.created != put_b.created
    assert (await a.counts())[Status.PENDING] == 100


async def test_a_put_on_one_instance_wakes_another(instances: Opener) -> None:
    """A put in instance A wakes a waiter of instance B through NOTIFY."""
    a, b = await instances(), await instances()
    waiter = asyncio.create_task(b.wait("q", 30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await a.put(message("a"))
    async with asyncio.timeout(5):
        await waiter


async def test_take_prunes_calls_that_left_the_window(
    instances: Opener, clock: FakeClock, postgres_url: str, schema: str
) -> None:
    """Calls older than the window are deleted as calls are taken, so the table stays small."""
    store = await instances()
    for _ in range(50):
        await store.take("zoho", 3, 10)
        await store.take("other", 3, 10)
        clock.advance(1)
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".calls') == 6
    finally:
        await conn.close()


async def test_a_text_the_server_rejects_fails_alone(instances: Opener) -> None:
    """A key PostgreSQL cannot store (a NUL) fails its own put, not its batch's others."""
    store = await instances()
    bad, good = await asyncio.gather(
        store.put(message("nul\x00")), store.put(message("good")), return_exceptions=True
    )
    assert isinstance(bad, asyncpg.PostgresError)
    assert not isinstance(good, BaseException)
    assert good.created


async def test_a_closed_port_is_unavailable() -> None:
    """Opening a store on a port nobody listens on raises StoreUnavailable, promptly."""
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    async with asyncio.timeout(10):
        with pytest.raises(StoreUnavailable):
            await store.open()
    with pytest.raises(StoreUnavailable):
        await store.put(message("a"))
    with pytest.raises(StoreUnavailable):
        await store.take("zoho", 60, 60)


async def test_a_cut_or_silent_server_is_unavailable_then_recovers(
    postgres_url: str, schema: str
) -> None:
    """A reset link and a silent one raise StoreUnavailable within the timeouts, then recover."""
    parts = urlsplit(postgres_url)
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        store = PostgresStore(url, schema=schema, connect_timeout=0.5, command_timeout=0.5)
        await store.open()
        try:
            await store.put(message("a"))
            for cut in (proxy.reset, proxy.blackhole):
                cut()
                async with asyncio.timeout(10):
                    with pytest.raises(StoreUnavailable):
                        await store.counts()
                    with pytest.raises(StoreUnavailable):
                        await store.put(message("b"))
                    with pytest.raises(StoreUnavailable):
                        await store.take("zoho", 60, 60)
                proxy.heal()
                async with asyncio.timeout(20):
                    while True:  # a black-holed connection may still fail once or twice
                        try:
                            counts = await store.counts()
                            break
                        except StoreUnavailable:
                            pass
                assert counts[Status.PENDING] == 1
        finally:
            async with asyncio.timeout(10):
                await store.close()


async def test_a_restarted_listener_still_wakes_waiters(
    instances: Opener, postgres_url: str
) -> None:
    """When the server ends the listening session, the next wait listens again."""
    a, b = await instances(), await instances()
    assert isinstance(b, PostgresStore)
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            f"patchbay-jobs:{b.schema}",
        )
    finally:
        await admin.close()
    await asyncio.sleep(0.2)
    await b.wait("q", 0.5)  # finds its listener gone and opens another
    waiter = asyncio.create_task(b.wait("q", 30))
    await asyncio.sleep(0.05)
    await a.put(message("b"))
    async with asyncio.timeout(5):
        await waiter
