"""The async sender against the FCM emulator: fan-out, retries, dead tokens, quota, tokens."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate

import httpx
import pytest

from patchbay.emulators.fcm import Fault, FcmEmulator
from patchbay.errors import ConfigError
from patchbay.push import (
    AccessToken,
    InvalidMessage,
    Message,
    Notification,
    PushAuthError,
    Result,
    Sender,
    parse_request,
)
from patchbay.push.auth import ServiceAccountTokens
from tests.unit.push.conftest import (
    PROJECT,
    Recording,
    SenderFactory,
    VirtualTime,
    settings,
)

ALERT = Message(notification=Notification(title="Sale", body="Everything must go"))


async def collect(results: AsyncIterator[Result]) -> list[Result]:
    """Every result of a stream."""
    return [result async for result in results]


# -- the fan-out -------------------------------------------------------------------------------


async def test_ten_thousand_tokens_with_faults_and_dead_tokens(
    emulator: FcmEmulator, recording: Recording, make_sender: SenderFactory
) -> None:
    """10,000 tokens, 1% dead, 5% 429/503: one message each, dead reported, limits kept."""
    tokens = [f"dead-{i}" if i % 100 == 0 else f"tok-{i}" for i in range(10_000)]
    dead = {t for t in tokens if t.startswith("dead-")}
    emulator.unregister_prefix("dead-")
    emulator.fault_rates(
        {Fault.status(429, retry_after=2): 0.025, Fault.status(503, retry_after=1): 0.025}
    )
    emulator.latency = 0.0005  # real time, so that requests overlap and in-flight is real
    reported: list[tuple[str, str]] = []
    concurrency = 50
    sender = make_sender(
        settings(concurrency=concurrency, deadline=10_000.0),
        on_dead_token=lambda token, reason: reported.append((token, reason)),
    )
    started = time.perf_counter()
    results = await collect(sender.send_multicast(ALERT, iter(tokens)))
    elapsed = time.perf_counter() - started

    assert len(results) == len(tokens)
    assert sorted(r.index for r in results) == list(range(len(tokens)))
    outcomes = Counter(r.outcome for r in results)
    assert outcomes == {"sent": 9_900, "dead_token": 100}
    # Exactly one accepted message per valid token: none missing, none duplicated.
    delivered = Counter(accepted.target for accepted in emulator.ledger)
    assert set(delivered) == set(tokens) - dead
    assert max(delivered.values()) == 1
    # Every dead token reported once, through the callback and its result.
    assert sorted(reported) == sorted((t, "UNREGISTERED") for t in dead)
    assert {r.target for r in results if r.outcome == "dead_token"} == dead
    # Faults happened and were retried, never before their Retry-After.
    retried = 0
    for target, exchanges in recording.by_target().items():
        for before, after in itertools.pairwise(exchanges):
            assert before.status in (429, 503), f"{target} was sent again after {before.status}"
            assert before.retry_after is not None
            assert after.started - before.started >= float(before.retry_after)
            retried += 1
        if target in dead:
            assert exchanges[-1].status == 404  # nothing after the report
    assert 300 < retried < 700
    assert sender.stats.retries == retried
    # Concurrency: bounded, and used.
    assert concurrency // 2 < emulator.max_in_flight <= concurrency
    assert emulator.token_requests == 1
    # ~3 s on an idle laptop-class machine; the bound only catches a pathological slowdown
    # (a timing assertion tight enough to measure would flake on a loaded CI box).
    assert elapsed < 45, f"{elapsed:.1f} s"


async def test_dead_tokens_are_not_requested_again(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """A second send to a token reported dead comes back dead_token without a request."""
    emulator.set_token_state("gone", "unregistered")
    emulator.set_token_state("other-app", "sender_mismatch")
    emulator.set_token_state("garbage", "invalid")
    reported: list[tuple[str, str]] = []

    async def report(token: str, reason: str) -> None:
        reported.append((token, reason))

    sender = make_sender(on_dead_token=report)
    tokens = ["ok", "gone", "other-app", "garbage"]
    first = {r.target: r for r in await collect(sender.send_multicast(ALERT, tokens))}
    assert {t: r.outcome for t, r in first.items()} == {
        "ok": "sent",
        "gone": "dead_token",
        "other-app": "dead_token",
        "garbage": "dead_token",
    }
    assert first["gone"].error_code == "UNREGISTERED" and first["gone"].http_status == 404
    assert first["other-app"].error_code == "SENDER_ID_MISMATCH"
    assert first["garbage"].error_code == "INVALID_ARGUMENT"
    assert sorted(reported) == [
        ("garbage", "INVALID_ARGUMENT"),
        ("gone", "UNREGISTERED"),
        ("other-app", "SENDER_ID_MISMATCH"),
    ]
    before = dict(emulator.requests_per_target)
    second = await collect(sender.send_many(ALERT.to(token=t) for t in tokens))
    again = {r.target: r for r in second}
    assert again["gone"].outcome == "dead_token" and again["gone"].attempts == 0
    assert emulator.requests_per_target["gone"] == before["gone"] == 1
    assert emulator.requests_per_target["ok"] == 2
    assert len(reported) == 3  # the callback fires once per token
    assert sender.is_dead("gone") and dict(sender.dead_tokens)["garbage"] == "INVALID_ARGUMENT"


async def test_failing_callback_does_not_lose_the_report(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """A callback that raises is logged; the result still says dead_token."""
    emulator.set_token_state("gone", "unregistered")

    def broken(token: str, reason: str) -> None:
        raise RuntimeError("database down")

    result = await make_sender(on_dead_token=broken).send(ALERT.to(token="gone"))
    assert result.outcome == "dead_token"


# -- retries -----------------------------------------------------------------------------------


async def test_retry_after_seconds_and_http_date_are_honoured(
    emulator: FcmEmulator, recording: Recording, clock: VirtualTime, make_sender: SenderFactory
) -> None:
    """503 Retry-After: 7, then 429 with an HTTP date 20 s ahead: waits at least that long."""
    # Rounded up: a date truncated to the second could be less than 19 s away by the time the
    # answer is read (the check below): the test failed when started late in a second.
    when = formatdate(math.ceil(time.time()) + 20, usegmt=True)
    emulator.script("t", [Fault.status(503, retry_after=7), Fault.status(429, retry_after=when)])
    result = await make_sender().send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts, result.http_status) == ("sent", 3, 200)
    first, second, third = recording.by_target()["t"]
    assert second.started - first.started >= 7
    assert third.started - second.started >= 19  # the date has one-second resolution


async def test_retry_after_is_capped(
    emulator: FcmEmulator, recording: Recording, make_sender: SenderFactory
) -> None:
    """A Retry-After beyond retry_after_cap waits only the cap (plus jitter up to 1 s)."""
    emulator.script("t", [Fault.status(503, retry_after=3600)])
    sender = make_sender(settings(retry_after_cap=30.0))
    assert (await sender.send(ALERT.to(token="t"))).outcome == "sent"
    first, second = recording.by_target()["t"]
    assert 30 <= second.started - first.started <= 31


async def test_permanent_errors_are_not_retried(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """THIRD_PARTY_AUTH_ERROR is an auth_error; FCM refusing the message is invalid_message."""
    emulator.set_token_state("ios", "third_party_auth")
    sender = make_sender()
    auth = await sender.send(ALERT.to(token="ios"))
    assert (auth.outcome, auth.error_code, auth.attempts) == (
        "auth_error",
        "THIRD_PARTY_AUTH_ERROR",
        1,
    )
    # A project the service account may not send for: 403 PERMISSION_DENIED.
    other = make_sender(settings(project_id="someone-elses"))
    refused = await other.send(ALERT.to(token="t"))
    assert (refused.outcome, refused.http_status, refused.attempts) == ("auth_error", 403, 1)
    assert emulator.requests_per_target["ios"] == 1


async def test_invalid_argument_from_fcm_is_invalid_message(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """A 400 that is not about the token ends as invalid_message after one request."""
    emulator.script("/topics/news", [Fault.status(400)])
    result = await make_sender().send(ALERT.to(topic="news"))
    assert (result.outcome, result.error_code, result.attempts) == (
        "invalid_message",
        "INVALID_ARGUMENT",
        1,
    )


async def test_max_attempts_then_failed(emulator: FcmEmulator, make_sender: SenderFactory) -> None:
    """Persistent 500s give up after max_attempts requests with outcome failed."""
    emulator.script("t", [Fault.status(500)] * 10)
    result = await make_sender(settings(max_attempts=4)).send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts, result.error_code) == ("failed", 4, "INTERNAL")
    assert "gave up after 4 attempts" in result.detail
    assert emulator.requests_per_target["t"] == 4


async def test_deadline_stops_retries(
    emulator: FcmEmulator, clock: VirtualTime, make_sender: SenderFactory
) -> None:
    """A retry that would start after the deadline is not made (no sleeping into it)."""
    emulator.script("t", [Fault.status(503, retry_after=50)] * 10)
    started = clock()
    result = await make_sender(settings(deadline=120.0)).send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts) == ("failed", 3)
    assert result.detail.startswith("deadline")
    assert clock() - started <= 120


async def test_transport_errors_and_502_are_retried(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """A dropped connection and a 502 HTML page are retried; drop-after duplicates show."""
    emulator.script("a", [Fault.drop_before(), Fault.status(502), Fault.status(504)])
    emulator.script("b", [Fault.drop_after()])
    sender = make_sender()
    a = await sender.send(ALERT.to(token="a"))
    b = await sender.send(ALERT.to(token="b"))
    assert (a.outcome, a.attempts) == ("sent", 4)
    assert (b.outcome, b.attempts) == ("sent", 2)
    assert len(emulator.sent_to("a")) == 1
    # FCM has no idempotency key: a connection lost after delivery duplicates (fcm.md 5.4).
    assert len(emulator.sent_to("b")) == 2


async def test_project_quota_pauses_every_send(
    emulator: FcmEmulator, recording: Recording, make_sender: SenderFactory
) -> None:
    """After a project QUOTA_EXCEEDED nothing is sent for quota_floor seconds."""
    emulator.script("t0", [Fault.quota(retry_after=1)])
    emulator.latency = 0.0005
    sender = make_sender(settings(quota_floor=5.0, concurrency=4))
    results = await collect(sender.send_multicast(ALERT, [f"t{i}" for i in range(40)]))
    assert Counter(r.outcome for r in results) == {"sent": 40}
    refused = next(e for e in recording.log if e.status == 429)
    answered_at = refused.started  # virtual time does not pass during a request
    during = [e for e in recording.log if answered_at < e.started < answered_at + 5.0]
    assert during == []
    assert sender.stats.quota_pauses == 1
    assert len(emulator.ledger) == 40


async def test_device_quota_does_not_pause_others(
    emulator: FcmEmulator, recording: Recording, make_sender: SenderFactory
) -> None:
    """A per-device 429 (QuotaFailure names the device) delays only that device."""
    emulator.script("t0", [Fault.status(429, retry_after=30)])
    sender = make_sender(settings(quota_floor=60.0, concurrency=1))
    results = await collect(sender.send_multicast(ALERT, ["t0", "t1", "t2"], ordered=True))
    assert [r.outcome for r in results] == ["sent"] * 3
    assert sender.stats.quota_pauses == 0
    # t1 and t2 went out while t0 waited out its Retry-After.
    assert [e.target for e in recording.log if e.target] == ["t0", "t1", "t2", "t0"]


# -- access tokens -----------------------------------------------------------------------------


async def test_burst_across_token_expiry_refreshes_once(
    emulator: FcmEmulator, clock: VirtualTime, make_sender: SenderFactory
) -> None:
    """With 60-second tokens, 1,000 concurrent sends after expiry cost one token request."""
    emulator.token_lifetime = 60.0
    emulator.latency = 0.0005
    sender = make_sender(settings(concurrency=100))
    assert (await sender.send(ALERT.to(token="warm"))).outcome == "sent"
    assert emulator.token_requests == 1
    clock.advance(61.0)
    results = await collect(sender.send_multicast(ALERT, [f"t{i}" for i in range(1000)]))
    assert Counter(r.outcome for r in results) == {"sent": 1000}
    assert emulator.token_requests == 2


async def test_token_renewed_before_it_expires(
    emulator: FcmEmulator, clock: VirtualTime, make_sender: SenderFactory
) -> None:
    """A 60-second token is renewed after 80% of its life, before FCM would refuse it."""
    emulator.token_lifetime = 60.0
    sender = make_sender()
    await sender.send(ALERT.to(token="a"))
    clock.advance(47.0)
    await sender.send(ALERT.to(token="b"))
    assert emulator.token_requests == 1
    clock.advance(2.0)  # 49 s: less than 20% left
    await sender.send(ALERT.to(token="c"))
    assert emulator.token_requests == 2
    assert emulator.send_requests == 3  # never a 401


async def test_token_expiring_mid_burst_refreshes_once(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """FCM dropping every token mid-burst (401): invalidated, one refresh, each sent once."""
    emulator.latency = 0.001
    sender = make_sender(settings(concurrency=50))
    await sender.send(ALERT.to(token="warm"))

    async def expire_soon() -> None:
        await asyncio.sleep(0.005)
        emulator.expire_access_tokens()

    expiring = asyncio.create_task(expire_soon())
    results = await collect(sender.send_multicast(ALERT, [f"t{i}" for i in range(500)]))
    await expiring
    assert Counter(r.outcome for r in results) == {"sent": 500}
    assert emulator.token_requests == 2
    assert len(emulator.ledger) == 501


async def test_persistent_401_is_an_auth_error(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """A 401 after the forced refresh is not retried again: auth_error after two attempts."""
    emulator.script("t", [Fault.status(401), Fault.status(401)])
    result = await make_sender().send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts, result.http_status) == ("auth_error", 2, 401)
    assert emulator.token_requests == 2


async def test_refused_service_account_is_tried_once(
    emulator: FcmEmulator, http: httpx.AsyncClient, clock: VirtualTime, make_sender: SenderFactory
) -> None:
    """A key the token endpoint refuses: every result auth_error, one token request, no send."""
    from patchbay.emulators.keys import service_account

    stranger, _ = service_account("http://fcm.test/token", PROJECT)
    tokens = ServiceAccountTokens.from_info(stranger, http, clock=clock)
    sender = make_sender(tokens=tokens)
    results = await collect(sender.send_multicast(ALERT, [f"t{i}" for i in range(200)]))
    assert Counter(r.outcome for r in results) == {"auth_error": 200}
    assert "invalid_grant" in results[0].detail
    assert emulator.token_requests == 1
    assert emulator.send_requests == 0
    with pytest.raises(PushAuthError):
        await tokens.token()


async def test_fake_token_sources_can_be_injected(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """Any TokenSource works; FCM refusing its token invalidates it once."""

    class Static:
        def __init__(self) -> None:
            self.invalidated: list[AccessToken] = []

        async def token(self) -> AccessToken:
            return AccessToken("not-issued-by-fcm", 0.0, float("inf"))

        def invalidate(self, token: AccessToken) -> None:
            self.invalidated.append(token)

    source = Static()
    result = await make_sender(tokens=source).send(ALERT.to(token="t"))
    assert (result.outcome, result.attempts) == ("auth_error", 2)
    assert len(source.invalidated) == 1


# -- messages, streaming -----------------------------------------------------------------------


async def test_bad_messages_fail_before_any_request(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """Two targets, a non-string data value, an oversize payload: clear errors, no request."""
    sender = make_sender()
    with pytest.raises(InvalidMessage, match=r"^message: exactly one target"):
        await sender.send(Message(token="a", topic="b"))
    with pytest.raises(InvalidMessage, match=r"^message\.data\.count: values must be strings"):
        await sender.send(Message(token="a", data={"count": 3}))  # type: ignore[dict-item]
    with pytest.raises(InvalidMessage, match=r"^message: payload is 5003 bytes; FCM allows 4096"):
        await sender.send(Message(token="a", data={"big": "x" * 5000}))
    with pytest.raises(InvalidMessage, match=r"^message\.data\.n: values must be strings"):
        parse_request({"message": {"token": "a", "data": {"n": 1}}})
    with pytest.raises(InvalidMessage, match=r"^message: needs a target"):
        await sender.send(ALERT)
    assert emulator.send_requests == 0


async def test_untargeted_and_malformed_items_do_not_end_a_stream(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """In send_many / send_multicast one bad item is an invalid_message result, no request."""
    sender = make_sender()
    many = await collect(sender.send_many([ALERT, ALERT.to(token="a")], ordered=True))
    assert [r.outcome for r in many] == ["invalid_message", "sent"]
    multi = await collect(sender.send_multicast(ALERT, ["", "has space", "b"], ordered=True))
    assert [r.outcome for r in multi] == ["invalid_message", "invalid_message", "sent"]
    assert emulator.send_requests == 2


async def test_validate_only_is_a_dry_run(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """validate_only: FCM checks the message and names a fake id; nothing is delivered."""
    result = await make_sender().send(ALERT.to(token="t"), validate_only=True)
    assert result.outcome == "sent"
    assert result.name == f"projects/{PROJECT}/messages/fake_message_id"
    assert emulator.ledger == []


async def test_what_fcm_receives_is_the_wire_json(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """The ledger holds exactly Message.payload(); the result names the FCM message."""
    message = Message(token="t", data={"k": "v"}, priority="high")
    result = await make_sender().send(message)
    (accepted,) = emulator.ledger
    assert accepted.message == message.payload()
    assert result.name == accepted.name


async def test_send_many_streams_with_a_bounded_window(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """The input is read lazily: never more than `window` items ahead of the results."""
    pulled = 0

    def messages() -> Iterator[Message]:
        nonlocal pulled
        for i in range(2000):
            pulled += 1
            yield ALERT.to(token=f"t{i}")

    sender = make_sender(settings(concurrency=8), window=32)
    seen = 0
    async for _ in sender.send_many(messages()):
        seen += 1
        assert pulled - seen <= 32
    assert seen == pulled == 2000


async def test_ordered_results_follow_the_input(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """ordered=True yields in input order even when early messages are retried."""
    emulator.script("t0", [Fault.status(503, retry_after=5)] * 2)

    async def tokens() -> AsyncIterator[str]:
        for i in range(50):
            yield f"t{i}"

    sender = make_sender(settings(concurrency=4))
    ordered = await collect(sender.send_multicast(ALERT, tokens(), ordered=True))
    assert [r.index for r in ordered] == list(range(50))
    assert ordered[0].attempts == 3
    unordered = await collect(sender.send_multicast(ALERT, [f"u{i}" for i in range(50)]))
    assert sorted(r.index for r in unordered) == list(range(50))


async def test_abandoned_stream_cancels_its_sends(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """Closing a stream early cancels the messages still in flight."""
    emulator.latency = 0.01
    sender = make_sender(settings(concurrency=10))
    stream = sender.send_multicast(ALERT, (f"t{i}" for i in range(10_000)))
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert first.outcome == "sent"
    assert emulator.send_requests < 200


# -- topics ------------------------------------------------------------------------------------


async def test_subscribe_in_batches_of_1000(
    emulator: FcmEmulator, make_sender: SenderFactory
) -> None:
    """api="iid", 2,500 tokens: three batchAdd calls; unknown tokens fail NOT_FOUND, reported."""
    emulator.unregister_prefix("dead-")
    reported: list[str] = []
    sender = make_sender(on_dead_token=lambda token, reason: reported.append(token))
    tokens = [f"dead-{i}" if i % 500 == 0 else f"t{i}" for i in range(2500)]
    report = await sender.subscribe("/topics/news", iter(tokens), api="iid")
    assert (report.topic, report.action, report.succeeded) == ("news", "subscribe", 2495)
    assert {f.error for f in report.failures} == {"NOT_FOUND"}
    assert emulator.topic_requests == 3
    assert emulator.topics["news"] == {t for t in tokens if t.startswith("t")}
    assert sorted(reported) == sorted(f.token for f in report.failures)
    removed = await sender.unsubscribe("news", [f"t{i}" for i in range(1, 500)], api="iid")
    assert removed.ok and removed.succeeded == 499
    assert len(emulator.topics["news"]) == 2495 - 499


# -- construction ------------------------------------------------------------------------------


async def test_from_settings_reads_the_service_account(
    emulator: FcmEmulator,
    account: tuple[dict[str, str], dict[str, str]],
    recording: Recording,
    tmp_path: object,
) -> None:
    """from_settings: the file's project and token_uri; HTTP clients of its own."""
    import json
    from pathlib import Path

    path = Path(str(tmp_path)) / "sa.json"
    path.write_text(json.dumps(account[0]))
    push = settings(service_account=str(path), project_id="")
    async with httpx.AsyncClient(transport=recording) as http:
        sender = Sender.from_settings(push, http=http)
        assert sender.project_id == PROJECT
        assert (await sender.send(ALERT.to(token="t"))).outcome == "sent"
        await sender.aclose()
    with pytest.raises(ConfigError, match=r"^push\.service_account: cannot read"):
        Sender.from_settings(settings(service_account=str(path) + ".missing"))
    with pytest.raises(ConfigError, match=r"^push\.service_account: required"):
        Sender.from_settings(settings())
    own = Sender.from_settings(push)  # makes (and closes) its own HTTP clients
    await own.aclose()
