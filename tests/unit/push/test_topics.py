"""Topic management against the FCM emulator: the per-device API (default) and Instance ID."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
import pytest

from patchbay.emulators.fcm import FcmEmulator
from patchbay.push import InvalidMessage, Sender
from patchbay.push.client import TopicApi
from patchbay.settings import PushSettings
from tests.unit.push.conftest import PROJECT, Recording, SenderFactory, VirtualTime, settings

REGISTRATIONS = f"/v1/projects/{PROJECT}/registrations/"


@dataclass(frozen=True, slots=True)
class TopicRequest:
    """One per-device topic request, as the client sent it."""

    method: str
    token: str  # decoded from the path
    raw: str  # the path and query, still percent-encoded
    started: float
    status: int


class Traffic(httpx.AsyncBaseTransport):
    """The recording transport, plus scripted answers and an in-flight count for topic requests.

    ``script(token, answers)`` answers the next per-device requests for ``token`` itself (the
    emulator injects faults into sends only); ``hold`` keeps each topic request in flight for
    that many event-loop turns, so concurrent requests overlap as over a network.
    """

    def __init__(self, inner: Recording, clock: VirtualTime) -> None:
        self.inner = inner
        self.clock = clock
        self.hold = 0
        self.log: list[TopicRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered = 0
        self._scripts: dict[str, deque[httpx.Response]] = {}

    def script(self, token: str, answers: list[httpx.Response]) -> None:
        """Answer the next requests for ``token`` with ``answers``, then let the emulator."""
        self._scripts[token] = deque(answers)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Count, hold, answer from a script or the emulator, log."""
        raw = request.url.raw_path.decode()
        path = raw.split("?")[0]
        if not path.startswith(REGISTRATIONS):
            return await self.inner.handle_async_request(request)
        token = unquote(path[len(REGISTRATIONS) :].split("/")[0])
        started = self.clock()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(self.hold):
                await asyncio.sleep(0)
            script = self._scripts.get(token)
            if script:
                response = script.popleft()
            else:
                response = await self.inner.handle_async_request(request)
        finally:
            self.in_flight -= 1
            self.answered += 1
        self.log.append(TopicRequest(request.method, token, raw, started, response.status_code))
        return response

    def of(self, token: str) -> list[TopicRequest]:
        """The requests for ``token``, in order."""
        return [r for r in self.log if r.token == token]


def rpc(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    """A google.rpc.Status error answer, as Google's front ends give them."""
    body = {"error": {"code": status, "message": code.lower(), "status": code}}
    headers = {"content-type": "application/json"}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return httpx.Response(status, headers=headers, content=orjson.dumps(body))


@pytest.fixture
def traffic(recording: Recording, clock: VirtualTime) -> Traffic:
    """The transport of the topic tests' sender."""
    return Traffic(recording, clock)


@pytest.fixture
async def make(make_sender: SenderFactory, traffic: Traffic) -> AsyncIterator[SenderFactory]:
    """Build a sender whose requests go through ``traffic`` to the emulator."""
    async with httpx.AsyncClient(transport=traffic) as client:

        def build(push: PushSettings | None = None, **kwargs: Any) -> Sender:
            kwargs.setdefault("http", client)
            return make_sender(push, **kwargs)

        yield build


# -- both APIs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("api", "requests"), [("registrations", 2500), ("iid", 3)])
async def test_subscribe_2500_tokens(
    api: TopicApi, requests: int, emulator: FcmEmulator, make: SenderFactory
) -> None:
    """2,500 tokens, five unregistered: the rest subscribed, the five fail NOT_FOUND and die."""
    emulator.unregister_prefix("dead-")
    reported: list[str] = []
    sender = make(on_dead_token=lambda token, reason: reported.append(token))
    tokens = [f"dead-{i}" if i % 500 == 0 else f"t{i}" for i in range(2500)]
    report = await sender.subscribe("/topics/news", iter(tokens), api=api)
    assert (report.topic, report.action, report.succeeded) == ("news", "subscribe", 2495)
    assert {f.error for f in report.failures} == {"NOT_FOUND"}
    assert emulator.topic_requests == requests
    assert emulator.topics["news"] == {t for t in tokens if t.startswith("t")}
    assert (
        sorted(reported) == sorted(f.token for f in report.failures) == sorted(sender.dead_tokens)
    )
    removed = await sender.unsubscribe("news", (f"t{i}" for i in range(1, 500)), api=api)
    assert (removed.action, removed.succeeded, removed.ok) == ("unsubscribe", 499, True)
    assert emulator.topics["news"] == {f"t{i}" for i in range(500, 2500) if i % 500}


async def test_the_per_device_api_is_the_default(
    emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """Without ``api``: a POST with topicName and a DELETE with allowMissing per token, no IID."""
    sender = make()
    assert (await sender.subscribe("news", ["a", "b"])).succeeded == 2
    assert (await sender.unsubscribe("news", ["a"])).succeeded == 1
    base = f"{REGISTRATIONS}%s/topicSubscriptions"
    assert sorted((r.method, r.raw) for r in traffic.log) == [
        ("DELETE", base % "a" + "/news?allowMissing=true"),
        ("POST", base % "a" + "?topicName=news"),
        ("POST", base % "b" + "?topicName=news"),
    ]
    assert emulator.topics == {"news": {"b"}}
    assert not any("/iid/" in e.path for e in traffic.inner.log)


async def test_tokens_and_topics_are_url_encoded(
    emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """A token with ':', '%' and '+' and a topic with '%' reach FCM intact."""
    token, topic = "fid:APA91b-x_y%z+w", "sale~50%off"
    sender = make()
    assert (await sender.subscribe(topic, [token])).ok
    assert emulator.topics == {topic: {token}}
    assert (await sender.unsubscribe(topic, [token])).ok
    assert emulator.topics == {}
    encoded = "fid%3AAPA91b-x_y%25z%2Bw/topicSubscriptions"
    assert [r.raw.removeprefix(REGISTRATIONS) for r in traffic.log] == [
        f"{encoded}?topicName=sale~50%25off",
        f"{encoded}/sale~50%25off?allowMissing=true",
    ]


# -- the per-device API ------------------------------------------------------------------------


async def test_already_subscribed_counts_as_success(
    emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """409 ALREADY_EXISTS for a token already subscribed is a success, not a failure."""
    sender = make()
    await sender.subscribe("news", ["a", "b"])
    report = await sender.subscribe("news", ["a", "b", "c"])
    assert (report.succeeded, report.failures) == (3, ())
    assert [r.status for r in traffic.of("a")] == [200, 409]
    assert emulator.topics["news"] == {"a", "b", "c"}
    assert not sender.dead_tokens


async def test_unsubscribe_allows_missing(
    emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """Unsubscribing a token that never was subscribed succeeds (allowMissing=true)."""
    sender = make()
    await sender.subscribe("news", ["a", "b"])
    report = await sender.unsubscribe("news", ["a", "never"])
    assert (report.succeeded, report.failures) == (2, ())
    assert [r.status for r in traffic.of("never")] == [200]
    assert emulator.topics["news"] == {"b"}


async def test_dead_and_malformed_tokens(
    emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """Refused tokens fail with the canonical status and are reported dead once each."""
    emulator.set_token_state("gone", "unregistered")
    emulator.set_token_state("moved", "sender_mismatch")
    emulator.set_token_state("junk", "invalid")
    reported: list[tuple[str, str]] = []
    sender = make(on_dead_token=lambda token, reason: reported.append((token, reason)))
    tokens = ["ok", "gone", "moved", "junk", "has space", "", "gone"]
    report = await sender.subscribe("news", tokens)
    assert report.succeeded == 1
    assert sorted((f.token, f.error) for f in report.failures) == [
        ("", "INVALID_ARGUMENT"),
        ("gone", "NOT_FOUND"),
        ("gone", "NOT_FOUND"),
        ("has space", "INVALID_ARGUMENT"),
        ("junk", "INVALID_ARGUMENT"),
        ("moved", "PERMISSION_DENIED"),
    ]
    assert sorted(reported) == [
        ("gone", "UNREGISTERED"),
        ("junk", "INVALID_ARGUMENT"),
        ("moved", "SENDER_ID_MISMATCH"),
    ]
    assert {r.token for r in traffic.log} == {"ok", "gone", "moved", "junk"}  # no URL for bad ones
    assert emulator.topics == {"news": {"ok"}}
    removed = await sender.unsubscribe("news", ["gone"])
    assert [(f.token, f.error) for f in removed.failures] == [("gone", "NOT_FOUND")]
    assert len(reported) == 3


async def test_only_a_json_not_found_means_a_dead_token(
    make: SenderFactory, traffic: Traffic
) -> None:
    """A google.rpc NOT_FOUND is a dead token; an HTML 404 (a wrong URL) only a failure."""
    traffic.script("bare", [rpc(404, "NOT_FOUND")])
    traffic.script("page", [httpx.Response(404, html="<html>Not Found</html>")])
    sender = make()
    report = await sender.subscribe("news", ["bare", "page"])
    assert sorted((f.token, f.error) for f in report.failures) == [
        ("bare", "NOT_FOUND"),
        ("page", "HTTP_404"),
    ]
    assert dict(sender.dead_tokens) == {"bare": "NOT_FOUND"}


async def test_in_flight_is_bounded_and_input_read_lazily(
    emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """Never more requests than ``concurrency`` in flight, nor tokens read than ``window`` ahead."""
    traffic.hold = 5
    read = 0
    ahead: list[int] = []

    def tokens() -> Iterator[str]:
        nonlocal read
        for i in range(1000):
            read += 1
            ahead.append(read - traffic.answered)
            yield f"t{i}"

    sender = make(settings(concurrency=8))
    report = await sender.subscribe("news", tokens())
    assert report.succeeded == 1000
    assert traffic.max_in_flight == sender.stats.max_in_flight == 8
    assert max(ahead) <= sender.window == 32
    assert len(emulator.topics["news"]) == 1000


async def test_retries_honour_retry_after(
    clock: VirtualTime, emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """503 Retry-After: 7, then 429 Retry-After: 3, then success; sends are not paused."""
    traffic.script("t", [rpc(503, "UNAVAILABLE", "7"), rpc(429, "RESOURCE_EXHAUSTED", "3")])
    sender = make()
    report = await sender.subscribe("news", ["t", "u"])
    assert (report.succeeded, report.failures) == (2, ())
    starts = [r.started for r in traffic.of("t")]
    assert [r.status for r in traffic.of("t")] == [503, 429, 200]
    assert starts[1] - starts[0] >= 7 and starts[2] - starts[1] >= 3
    assert sender.stats.retries == 2 and sender.stats.quota_pauses == 0
    assert emulator.topics["news"] == {"t", "u"}


async def test_persistent_5xx_fails_without_killing_the_token(
    make: SenderFactory, traffic: Traffic
) -> None:
    """503 on every attempt: ``max_attempts`` requests, then an UNAVAILABLE failure."""
    traffic.script("t", [rpc(503, "UNAVAILABLE")] * 10)
    sender = make(settings(max_attempts=3))
    report = await sender.unsubscribe("news", ["t"])
    assert [(f.token, f.error) for f in report.failures] == [("t", "UNAVAILABLE")]
    assert len(traffic.of("t")) == 3
    assert not sender.dead_tokens


async def test_async_input_and_bad_arguments(
    emulator: FcmEmulator, make: SenderFactory, traffic: Traffic
) -> None:
    """Async iterables work; a bad topic or api raises before any request."""

    async def tokens() -> AsyncIterator[str]:
        for token in ("a", "b"):
            yield token

    sender = make()
    assert (await sender.subscribe("news", tokens())).succeeded == 2
    traffic.log.clear()
    with pytest.raises(InvalidMessage, match="not a topic name"):
        await sender.subscribe("bad topic", ["a"])
    with pytest.raises(ValueError, match="api: 'gcm'"):
        await sender.unsubscribe("news", ["a"], api="gcm")  # type: ignore[arg-type]
    assert traffic.log == []
    assert emulator.topics == {"news": {"a", "b"}}
