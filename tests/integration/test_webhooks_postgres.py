"""Two Patchbay instances sharing one PostgreSQL job store: one delivery, one run, wherever it lands."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from patchbay.webhooks.testing import signed_request
from tests.conftest import Start

SECRET = "shared"
HANDLERS = """
import json, os, pathlib
from patchbay.webhooks import Context, Router

router = Router()


@router.on("*")
def record(ctx: Context) -> None:
    with (pathlib.Path(__file__).parent / "runs.jsonl").open("a") as out:
        out.write(json.dumps({"key": ctx.delivery_key, "pid": os.getpid()}) + "\\n")
"""


@pytest.fixture
def job_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the job store, dropped afterwards."""
    name = f"patchbay_jobs_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(postgres_url)
    yield urlunsplit(parts._replace(path="/" + name))
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_two_instances_share_the_work(serve: Start, tmp_path: Path, job_database: str) -> None:
    """Deliveries to either instance, duplicates across both: each delivery runs exactly once."""
    (tmp_path / "shared_handlers.py").write_text(HANDLERS)
    config = tmp_path / "patchbay.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [jobs]
            store = "{job_database}"
            poll_interval = 0.2

            [webhooks.sources.gh]
            provider = "github"
            secrets = ["{SECRET}"]
            handlers = "shared_handlers:router"
            """
        )
    )
    first = serve(["--config", str(config), "--state-dir", str(tmp_path / "a")])
    second = serve(["--config", str(config), "--state-dir", str(tmp_path / "b")])
    keys = [f"k{n}" for n in range(60)]

    def send(job: tuple[str, str]) -> httpx.Response:
        url, key = job
        request = signed_request("github", SECRET, b'{"zen":"x"}', event="ping", delivery_id=key)
        return httpx.post(url + "/hooks/gh", content=request.body, headers=request.headers)

    jobs = [(server.url, key) for key in keys for server in (first, second)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    assert {a.status_code for a in answers} == {200}
    assert sum(not a.json()["duplicate"] for a in answers) == len(keys)

    def recorded() -> list[dict[str, object]]:
        path = tmp_path / "runs.jsonl"
        if not path.exists():
            return []
        # A handler may be halfway through its line: only whole lines count.
        whole = path.read_text().rpartition("\n")[0]
        return [json.loads(x) for x in whole.splitlines()]

    deadline = time.monotonic() + 20
    while len(recorded()) < len(keys) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    runs = recorded()
    assert sorted(str(r["key"]) for r in runs) == sorted(keys)
    assert len({r["pid"] for r in runs}) == 2, "both instances should have run handlers"
