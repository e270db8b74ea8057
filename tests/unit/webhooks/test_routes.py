"""The intake endpoint in process: gates, verification, handshakes, storage, duplicates."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from patchbay.errors import StoreUnavailable
from patchbay.http import Request
from patchbay.jobs.model import Message, Put, Selection
from patchbay.jobs.sqlite import SqliteStore
from patchbay.settings import SourceSettings
from patchbay.webhooks.inbox import Inbox
from patchbay.webhooks.routes import Receiver
from patchbay.webhooks.service import build_source
from patchbay.webhooks.stats import HookStats
from patchbay.webhooks.testing import signed_request

GH = SourceSettings(name="gh", provider="github", secrets=("s3cret",), max_body_bytes=1000)
SLACK = SourceSettings(name="sl", provider="slack", secrets=("slack-secret",))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A fresh SQLite job store."""
    opened = SqliteStore(tmp_path / "jobs.db")
    await opened.open()
    yield opened
    await opened.close()


def receiver(store: object, *sources: SourceSettings) -> Receiver:
    """A receiver over the given sources, without handlers."""
    built = {s.name: build_source(s, (1.0,), 0.0) for s in sources or (GH,)}
    return Receiver(built, Inbox(store, time.time), HookStats(), time.time)  # type: ignore[arg-type]


def post(path: str, headers: dict[str, str], body: bytes, method: str = "POST") -> Request:
    """A whole request as the server hands it over."""
    return Request(method, path, b"", {k.lower(): v for k, v in headers.items()}, body, "127.0.0.1")


async def test_a_good_delivery_is_stored_before_the_answer(store: SqliteStore) -> None:
    """200 comes back only with the delivery in the store, its headers' secrets redacted."""
    signed = signed_request("github", "s3cret", b'{"action":"opened"}', event="issues")
    reply = await receiver(store).handle(post("/hooks/gh", signed.headers, signed.body))
    assert reply.status == 200
    delivery = json.loads(reply.body)["delivery"]
    [stored] = [await store.message(1)]
    assert stored is not None
    assert (stored.stream, stored.key, stored.body) == ("hooks/gh", delivery, signed.body)
    assert stored.meta["event"] == "issues.opened"
    assert stored.meta["headers"]["x-hub-signature-256"] == "[redacted]"


async def test_headers_are_redacted_per_delivery_whatever_came_before(store: SqliteStore) -> None:
    """Each delivery's own headers decide what is redacted, also when names repeat or change."""
    hooks = receiver(store)
    plain = signed_request("github", "s3cret", b"{}", event="ping")
    extra = dict(plain.headers, **{"X-Api-Key": "k", "X-Trace": "t"})
    for headers in (plain.headers, extra, plain.headers):
        again = signed_request("github", "s3cret", b"{}", event="ping")
        headers = {**headers, **{k: v for k, v in again.headers.items() if "delivery" in k.lower()}}
        assert (await hooks.handle(post("/hooks/gh", headers, again.body))).status == 200
    stored = [await store.message(i) for i in (1, 2, 3)]
    metas = [m.meta["headers"] for m in stored if m is not None]
    assert len(metas) == 3
    for meta in metas:
        assert meta["x-hub-signature-256"] == "[redacted]"
        assert meta["x-github-event"] == "ping"
    assert (metas[1]["x-api-key"], metas[1]["x-trace"]) == ("[redacted]", "t")
    assert "x-api-key" not in metas[0] and "x-api-key" not in metas[2]


async def test_refusals(store: SqliteStore) -> None:
    """Unknown source 404, wrong method 405 with Allow, oversize 413, bad signature 401."""
    hooks = receiver(store)
    signed = signed_request("github", "s3cret", b"{}", event="ping")
    assert (await hooks.handle(post("/hooks/zz", signed.headers, signed.body))).status == 404
    wrong = await hooks.handle(post("/hooks/gh", signed.headers, signed.body, method="PUT"))
    assert (wrong.status, wrong.headers) == (405, ((b"allow", b"POST"),))
    big = signed_request("github", "s3cret", b'{"x":"' + b"y" * 2000 + b'"}', event="ping")
    assert (await hooks.handle(post("/hooks/gh", big.headers, big.body))).status == 413
    forged = signed_request("github", "other", b"{}", event="ping")
    rejected = await hooks.handle(post("/hooks/gh", forged.headers, forged.body))
    assert rejected.status == 401
    assert json.loads(rejected.body)["error"]["detail"] == {"reason": "bad_signature"}
    assert await store.jobs(Selection()) == []
    assert hooks.stats.rejections[("gh", "bad_signature")] == 1


async def test_slack_handshake_is_answered_and_not_stored(store: SqliteStore) -> None:
    """Slack's url_verification gets its challenge back at once; nothing is stored."""
    body = json.dumps({"type": "url_verification", "challenge": "abc123"}).encode()
    signed = signed_request("slack", "slack-secret", body)
    reply = await receiver(store, SLACK).handle(post("/hooks/sl", signed.headers, signed.body))
    assert reply.status == 200
    assert json.loads(reply.body) == {"challenge": "abc123"}
    assert await store.message(1) is None


async def test_slack_rejections_ask_slack_not_to_retry(store: SqliteStore) -> None:
    """A forged Slack request gets 401 with ``X-Slack-No-Retry: 1``."""
    signed = signed_request("slack", "wrong", b'{"type":"event_callback","event_id":"E1"}')
    reply = await receiver(store, SLACK).handle(post("/hooks/sl", signed.headers, signed.body))
    assert reply.status == 401
    assert (b"x-slack-no-retry", b"1") in reply.headers


async def test_store_down_answers_503_with_retry_after() -> None:
    """A store that cannot commit gives 503 and Retry-After, so the provider resends."""

    class Down:
        async def put(self, message: Message) -> Put:
            raise StoreUnavailable("disk I/O error")

    signed = signed_request("github", "s3cret", b'{"zen":"x"}', event="ping")
    reply = await receiver(Down()).handle(post("/hooks/gh", signed.headers, signed.body))
    assert reply.status == 503
    assert (b"retry-after", b"5") in reply.headers
    assert json.loads(reply.body)["error"]["code"] == "store_unavailable"
