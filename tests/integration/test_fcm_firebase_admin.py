"""The FCM emulator is faithful: the official firebase-admin SDK sends to it as to FCM.

firebase-admin has no setting for its endpoints, so it is pointed at the emulator the least
invasive way found in its source (7.7.0):

- the service-account JSON's ``token_uri`` is the emulator's ``/token`` (google-auth posts the
  JWT grant there; nothing of the SDK is touched for auth);
- the app's messaging service keeps its URLs in instance attributes set once at creation:
  ``_fcm_url`` (messages:send) and ``_fcm_topic_url`` (topicSubscriptions); the legacy topic
  calls read the class attribute ``_MessagingService.IID_URL``. Replacing those three strings
  leaves the SDK's transports, retry policies, auth flows and error mapping as they are, which
  is what these tests are about. (Mounting a requests adapter on ``https://fcm.googleapis.com``
  would only cover the synchronous client; the async client's httpx mounts are fixed.)

Every fault then reaches the caller as the SDK's own exception class, after the SDK's own
retries, which the tests count.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import firebase_admin  # type: ignore[import-untyped]
import pytest
from firebase_admin import credentials, exceptions, messaging

from patchbay.emulators.fcm import Fault, FcmEmulator
from patchbay.emulators.keys import service_account
from patchbay.emulators.serve import serve_in_thread

PROJECT = "demo-project"
HTTP_TIMEOUT = 2  # seconds: the SDK's per-request timeout, short so a slow answer times out


@dataclass
class Admin:
    """A firebase-admin app pointed at a served emulator."""

    emulator: FcmEmulator
    app: Any
    service: Any  # firebase_admin.messaging._MessagingService


def point_at_emulator(app: Any, url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make ``app``'s messaging service call the emulator at ``url``; return the service."""
    service = messaging._get_messaging_service(app)
    service._fcm_url = f"{url}/v1/projects/{PROJECT}/messages:send"
    service._fcm_topic_url = f"{url}/v1/projects/{PROJECT}/registrations"
    monkeypatch.setattr(messaging._MessagingService, "IID_URL", url)
    return service


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Admin]:
    """A served emulator that checks the app's key, and the app pointed at it."""
    account, public = service_account("http://placeholder/token", PROJECT)
    emulator = FcmEmulator(project_id=PROJECT, public_keys={account["private_key_id"]: public})
    with serve_in_thread(emulator) as url:
        account["token_uri"] = f"{url}/token"
        app = firebase_admin.initialize_app(
            credentials.Certificate(account),
            {"httpTimeout": HTTP_TIMEOUT},
            name=f"emulator-{uuid.uuid4().hex}",
        )
        service = point_at_emulator(app, url, monkeypatch)
        try:
            yield Admin(emulator, app, service)
        finally:
            service._client.session.close()  # delete_app closes only the async client
            firebase_admin.delete_app(app)


def test_send_and_dry_run(admin: Admin) -> None:
    """send() returns FCM's name and the ledger holds the SDK's encoding; dry_run stores nothing."""
    message = messaging.Message(
        fid="device-1",
        notification=messaging.Notification(title="Hi", body="There"),
        data={"order": "42"},
        android=messaging.AndroidConfig(priority="high", ttl=3600),
        apns=messaging.APNSConfig(headers={"apns-priority": "10"}),
    )
    name = messaging.send(message, app=admin.app)
    assert name.startswith(f"projects/{PROJECT}/messages/0:")
    [accepted] = admin.emulator.ledger
    assert accepted.name == name
    assert (accepted.target, accepted.kind) == ("device-1", "fid")
    assert accepted.message["android"] == {"priority": "high", "ttl": "3600s"}
    assert messaging.send(message, dry_run=True, app=admin.app).endswith("/fake_message_id")
    assert len(admin.emulator.ledger) == 1
    assert admin.emulator.token_requests == 1


def test_server_side_validation_reaches_the_sdk(admin: Admin) -> None:
    """What the SDK does not check locally (APNs data-only at priority 10) FCM refuses."""
    message = messaging.Message(
        fid="device-1", data={"a": "b"}, apns=messaging.APNSConfig(headers={"apns-priority": "10"})
    )
    with pytest.raises(exceptions.InvalidArgumentError, match="apns-priority 5"):
        messaging.send(message, app=admin.app)


@pytest.mark.parametrize(
    ("state", "exception"),
    [
        ("unregistered", messaging.UnregisteredError),
        ("sender_mismatch", messaging.SenderIdMismatchError),
        ("invalid", exceptions.InvalidArgumentError),
        ("third_party_auth", messaging.ThirdPartyAuthError),
    ],
)
def test_token_states_raise_the_sdk_exceptions(
    admin: Admin, state: str, exception: type[Exception]
) -> None:
    """Each token state makes send() raise the SDK's exception for it."""
    admin.emulator.set_token_state("tok", state)
    with pytest.raises(exception):
        messaging.send(messaging.Message(fid="tok"), app=admin.app)


def test_expired_access_token_is_refreshed(admin: Admin) -> None:
    """After a 401 ACCESS_TOKEN_EXPIRED the SDK gets a new token and the send succeeds."""
    messaging.send(messaging.Message(topic="news"), app=admin.app)
    admin.emulator.expire_access_tokens()
    messaging.send(messaging.Message(topic="news"), app=admin.app)
    assert admin.emulator.token_requests == 2
    assert len(admin.emulator.sent_to("/topics/news")) == 2


@dataclass(frozen=True)
class Case:
    """One target's setup and what each SDK path does with it (exception, attempts)."""

    target: str
    state: str | None = None
    faults: tuple[Fault, ...] = ()
    sync: tuple[type[Exception] | None, int] = (None, 1)
    asynchronous: tuple[type[Exception] | None, int] = (None, 1)


FOREVER = 6  # more faults than the SDK has attempts: the fault is persistent
CASES = [
    Case("ok"),
    Case(
        "unregistered",
        state="unregistered",
        sync=(messaging.UnregisteredError, 1),
        asynchronous=(messaging.UnregisteredError, 1),
    ),
    Case(
        "mismatch",
        state="sender_mismatch",
        sync=(messaging.SenderIdMismatchError, 1),
        asynchronous=(messaging.SenderIdMismatchError, 1),
    ),
    Case(
        "invalid",
        state="invalid",
        sync=(exceptions.InvalidArgumentError, 1),
        asynchronous=(exceptions.InvalidArgumentError, 1),
    ),
    # A 401 makes both auth flows refresh the token and retry, twice.
    Case(
        "third-party-auth",
        state="third_party_auth",
        sync=(messaging.ThirdPartyAuthError, 3),
        asynchronous=(messaging.ThirdPartyAuthError, 3),
    ),
    Case(
        "device-quota",
        faults=(Fault.status(429),) * FOREVER,
        sync=(messaging.QuotaExceededError, 1),
        asynchronous=(messaging.QuotaExceededError, 1),
    ),
    # urllib3 retries a 429 that has Retry-After (and honours it); the async client does not.
    Case(
        "project-quota",
        faults=(Fault.quota(retry_after=1),) * FOREVER,
        sync=(messaging.QuotaExceededError, 5),
        asynchronous=(messaging.QuotaExceededError, 1),
    ),
    Case(
        "internal",
        faults=(Fault.status(500),) * FOREVER,
        sync=(exceptions.InternalError, 5),
        asynchronous=(exceptions.InternalError, 5),
    ),
    Case(
        "unavailable",
        faults=(Fault.status(503),) * FOREVER,
        sync=(exceptions.UnavailableError, 5),
        asynchronous=(exceptions.UnavailableError, 5),
    ),
    Case(
        "unavailable-twice", faults=(Fault.status(503),) * 2, sync=(None, 3), asynchronous=(None, 3)
    ),
    # A hang-up: requests/urllib3 retry it once and report "unavailable"; httpx does not retry.
    Case(
        "drop-before",
        faults=(Fault.drop_before(),) * FOREVER,
        sync=(exceptions.UnavailableError, 2),
        asynchronous=(exceptions.UnknownError, 1),
    ),
    Case(
        "drop-after",
        faults=(Fault.drop_after(),) * FOREVER,
        sync=(exceptions.UnavailableError, 2),
        asynchronous=(exceptions.UnknownError, 1),
    ),
    # Slower than httpTimeout: urllib3 retries the read timeout, then requests calls it a
    # connection error; httpx reports the timeout.
    Case(
        "slow",
        faults=(Fault.slow(HTTP_TIMEOUT + 1),) * FOREVER,
        sync=(exceptions.UnavailableError, 2),
        asynchronous=(exceptions.DeadlineExceededError, 1),
    ),
]


def prepare(emulator: FcmEmulator) -> list[Any]:
    """Set every case up on the emulator; one message per case, in order."""
    for case in CASES:
        if case.state is not None:
            emulator.set_token_state(case.target, case.state)
        if case.faults:
            emulator.script(case.target, case.faults)
    return [messaging.Message(fid=case.target, data={"case": case.target}) for case in CASES]


def check(
    emulator: FcmEmulator, batch: Any, expected: list[tuple[type[Exception] | None, int]]
) -> None:
    """Each response is the expected exception (or a name), after the expected attempts."""
    for case, response, (exception, attempts) in zip(CASES, batch.responses, expected, strict=True):
        if exception is None:
            assert response.success, (case.target, response.exception)
        else:
            assert type(response.exception) is exception, (case.target, response.exception)
        assert emulator.requests_per_target[case.target] == attempts, case.target


def test_send_each_raises_the_sdk_exception_per_fault(admin: Admin) -> None:
    """The synchronous path (requests + urllib3 retries): each fault's class and attempts."""
    batch = messaging.send_each(prepare(admin.emulator), app=admin.app)
    check(admin.emulator, batch, [case.sync for case in CASES])
    # Dropped after being stored, then retried: stored twice (FCM has no idempotency key).
    assert len(admin.emulator.sent_to("drop-after")) == 2


def test_send_each_async_raises_the_sdk_exception_per_fault(admin: Admin) -> None:
    """The async path (httpx over HTTP/2 + HttpxRetry): each fault's class and attempts."""

    async def send_all() -> Any:
        try:
            return await messaging.send_each_async(prepare(admin.emulator), app=admin.app)
        finally:
            # Close on this loop: delete_app() would close it on a new one with asyncio.run().
            await admin.service._async_client.aclose()

    batch = asyncio.run(send_all())
    check(admin.emulator, batch, [case.asynchronous for case in CASES])
    assert len(admin.emulator.sent_to("drop-after")) == 1


def test_topic_subscriptions(admin: Admin) -> None:
    """subscribe/unsubscribe (topicSubscriptions API): per-token results; 409 counts as success."""
    admin.emulator.set_token_state("gone", "unregistered")
    response = messaging.subscribe_to_topic(["a", "gone", "b"], "news", app=admin.app)
    assert (response.success_count, response.failure_count) == (2, 1)
    assert [(e.index, e.reason) for e in response.errors] == [(1, "UNREGISTERED")]
    again = messaging.subscribe_to_topic(["a"], "/topics/news", app=admin.app)
    assert again.success_count == 1  # ALREADY_EXISTS is success to the SDK
    assert admin.emulator.topics == {"news": {"a", "b"}}
    response = messaging.unsubscribe_from_topic(["a", "b", "never"], "news", app=admin.app)
    assert response.success_count == 3  # allow_missing: never subscribed is fine
    assert admin.emulator.topics == {}


# The legacy calls are deprecated in 7.7.0 and warn; they are called on purpose, to show the
# emulator's Instance ID API is what the SDK expects.
@pytest.mark.filterwarnings("ignore:.*_legacy is deprecated:DeprecationWarning")
def test_legacy_iid_topic_management(admin: Admin) -> None:
    """subscribe/unsubscribe_legacy (IID batchAdd/batchRemove): per-index results."""
    admin.emulator.set_token_state("gone", "unregistered")
    response = messaging.subscribe_to_topic_legacy(["a", "gone"], "news", app=admin.app)
    assert [(e.index, e.reason) for e in response.errors] == [(1, "NOT_FOUND")]
    assert admin.emulator.topics == {"news": {"a"}}
    response = messaging.unsubscribe_from_topic_legacy(["a"], "news", app=admin.app)
    assert response.success_count == 1
    assert admin.emulator.topics == {}
