"""The FCM emulator: token grants, send validation and answers, token rules, faults, topics."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from patchbay.emulators.commands import emulate
from patchbay.emulators.fcm import (
    BAD_REQUEST,
    ERROR_INFO,
    FCM_ERROR,
    JWT_BEARER,
    QUOTA_FAILURE,
    Fault,
    FcmEmulator,
    condition_topics,
    payload_size,
)
from patchbay.emulators.keys import public_keys, service_account
from patchbay.emulators.serve import ConnectionDropped

PROJECT = "demo-project"
SEND = f"/v1/projects/{PROJECT}/messages:send"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"


class Clock:
    """A clock that moves only when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def account() -> dict[str, str]:
    """A throwaway service account (key generation is slow-ish: once per module)."""
    info, _ = service_account("https://fcm.test/token", PROJECT)
    return info


@pytest.fixture(scope="module")
def stranger() -> dict[str, str]:
    """Another account, whose key the emulator does not know."""
    info, _ = service_account("https://fcm.test/token", PROJECT)
    return info


@pytest.fixture(scope="module")
def keys(account: dict[str, str]) -> dict[str, str]:
    """The account's public key by key id (deriving it is slow-ish too)."""
    return public_keys(account)


@pytest.fixture
def clock() -> Clock:
    """The emulator's clock."""
    return Clock()


@pytest.fixture
def emulator(keys: dict[str, str], clock: Clock) -> FcmEmulator:
    """An emulator that checks signatures against ``account``."""
    return FcmEmulator(project_id=PROJECT, public_keys=keys, clock=clock)


@pytest.fixture
async def http(emulator: FcmEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the emulator, in process."""
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="https://fcm.test") as client:
        yield client


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@functools.cache
def private_key(pem: str) -> rsa.RSAPrivateKey:
    """The loaded key of a PEM (loading checks the key, which takes a while)."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def assertion(
    account: dict[str, str], now: float, *, header: dict[str, Any] | None = None, **claims: Any
) -> str:
    """A JWT-bearer assertion signed with ``account``'s key, as google-auth builds it."""
    head = {"alg": "RS256", "typ": "JWT", "kid": account["private_key_id"], **(header or {})}
    body = {
        "iss": account["client_email"],
        "scope": FCM_SCOPE,
        "aud": GOOGLE_TOKEN_URL,
        "iat": int(now),
        "exp": int(now) + 3600,
        **claims,
    }
    signing_input = f"{b64(orjson.dumps(head))}.{b64(orjson.dumps(body))}"
    signature = private_key(account["private_key"]).sign(
        signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{signing_input}.{b64(signature)}"


async def grant(http: httpx.AsyncClient, jwt: str) -> httpx.Response:
    return await http.post("/token", data={"grant_type": JWT_BEARER, "assertion": jwt})


@pytest.fixture
async def bearer(http: httpx.AsyncClient, account: dict[str, str], clock: Clock) -> dict[str, str]:
    """Authorization headers with a fresh access token."""
    response = await grant(http, assertion(account, clock()))
    return {"authorization": f"Bearer {response.json()['access_token']}"}


Send = Callable[..., Any]


@pytest.fixture
def send(http: httpx.AsyncClient, bearer: dict[str, str]) -> Send:
    """POST a message (or a whole body with ``body=``) to messages:send."""

    async def post(message: Any = None, *, body: Any = None, **fields: Any) -> httpx.Response:
        payload = body if body is not None else {"message": message, **fields}
        return await http.post(SEND, json=payload, headers=bearer)

    return post


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    return error


def fcm_code(response: httpx.Response) -> str | None:
    """The FcmError errorCode in an answer's details, if any."""
    for detail in error_of(response).get("details", []):
        if detail["@type"] == FCM_ERROR:
            return str(detail["errorCode"])
    return None


def violation_field(response: httpx.Response) -> str | None:
    """The first google.rpc.BadRequest field violation's field, if any."""
    for detail in error_of(response).get("details", []):
        if detail["@type"] == BAD_REQUEST:
            field = detail["fieldViolations"][0].get("field")
            return None if field is None else str(field)
    return None


# -- token endpoint ----------------------------------------------------------------------------


async def test_grant_answers_an_access_token(
    http: httpx.AsyncClient, emulator: FcmEmulator, account: dict[str, str], clock: Clock
) -> None:
    """A well-signed assertion gets a bearer token that lives token_lifetime seconds."""
    response = await grant(http, assertion(account, clock()))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert emulator.token_requests == 1
    assert emulator.tokens_issued == 1


@pytest.mark.parametrize(
    ("change", "error", "description"),
    [
        ({"aud": "https://fcm.test/token"}, "invalid_grant", "Failed audience check"),
        ({"exp_in": -10_000}, "invalid_grant", "short-lived token"),
        ({"exp_in": 7200}, "invalid_grant", "short-lived token"),
        ({"iat_in": 3600}, "invalid_grant", "short-lived token"),
        ({"scope": ""}, "invalid_scope", "Empty or missing scope"),
        ({"iss": ""}, "invalid_grant", "account not found"),
        ({"kid": "unknown-key"}, "invalid_grant", "Invalid JWT Signature."),
        ({"alg": "HS256"}, "invalid_grant", "Invalid JWT Signature."),
    ],
)
async def test_grant_refusals(
    http: httpx.AsyncClient,
    account: dict[str, str],
    clock: Clock,
    change: dict[str, Any],
    error: str,
    description: str,
) -> None:
    """Wrong audience, times, scope, issuer, key id or algorithm: 400 with Google's OAuth error."""
    now = clock()
    claims: dict[str, Any] = {}
    header: dict[str, Any] = {}
    for key, value in change.items():
        if key == "exp_in":
            claims["exp"] = int(now) + value
            claims["iat"] = claims["exp"] - 3600 if value < 3600 else int(now)
        elif key == "iat_in":
            claims["iat"] = int(now) + value
            claims["exp"] = claims["iat"] + 3600
        elif key in ("kid", "alg"):
            header[key] = value
        else:
            claims[key] = value
    response = await grant(http, assertion(account, now, header=header, **claims))
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert description in response.json()["error_description"]


async def test_grant_checks_the_signature(
    http: httpx.AsyncClient, account: dict[str, str], stranger: dict[str, str], clock: Clock
) -> None:
    """An assertion signed by another key (even under the known kid) is refused."""
    forged = assertion(stranger, clock(), header={"kid": account["private_key_id"]})
    response = await grant(http, forged)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid JWT Signature.",
    }


async def test_grant_without_keys_accepts_any_rs256_assertion(
    stranger: dict[str, str], clock: Clock
) -> None:
    """Without public_keys any well-formed RS256 assertion passes; garbage and HS256 do not."""
    emulator = FcmEmulator(clock=clock)
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="https://fcm.test") as http:
        assert (await grant(http, assertion(stranger, clock()))).status_code == 200
        assert (await grant(http, "not.a.jwt")).status_code == 400
        hs256 = assertion(stranger, clock(), header={"alg": "HS256"})
        assert (await grant(http, hs256)).status_code == 400


async def test_grant_needs_the_jwt_bearer_grant_type(http: httpx.AsyncClient) -> None:
    """Another grant type, or no assertion, is an OAuth error."""
    response = await http.post("/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
    response = await http.post("/token", data={"grant_type": JWT_BEARER})
    assert response.json()["error"] == "invalid_request"


async def test_access_token_expires_with_the_clock(
    send: Send, clock: Clock, emulator: FcmEmulator
) -> None:
    """After token_lifetime the token is refused with 401 ACCESS_TOKEN_EXPIRED."""
    assert (await send({"token": "a"})).status_code == 200
    clock.now += 3600
    response = await send({"token": "a"})
    assert response.status_code == 401
    error = error_of(response)
    assert error["status"] == "UNAUTHENTICATED"
    assert error["details"][0]["@type"] == ERROR_INFO
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    assert "invalid_token" in response.headers["www-authenticate"]
    assert emulator.ledger[-1].target == "a" and len(emulator.ledger) == 1


async def test_send_without_or_with_an_unknown_bearer_is_401(
    http: httpx.AsyncClient, send: Send, emulator: FcmEmulator
) -> None:
    """No Authorization: CREDENTIALS_MISSING; an unknown or revoked token: ACCESS_TOKEN_EXPIRED."""
    response = await http.post(SEND, json={"message": {"token": "a"}})
    assert response.status_code == 401
    assert error_of(response)["details"][0]["reason"] == "CREDENTIALS_MISSING"
    response = await http.post(
        SEND, json={"message": {"token": "a"}}, headers={"authorization": "Bearer nope"}
    )
    assert error_of(response)["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    emulator.expire_access_tokens()
    assert (await send({"token": "a"})).status_code == 401


async def test_token_without_an_fcm_scope_is_403(
    http: httpx.AsyncClient, account: dict[str, str], clock: Clock
) -> None:
    """A token granted for other scopes may not send (insufficient scopes)."""
    jwt = assertion(account, clock(), scope="https://www.googleapis.com/auth/datastore")
    token = (await grant(http, jwt)).json()["access_token"]
    response = await http.post(
        SEND, json={"message": {"token": "a"}}, headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403
    assert error_of(response)["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"


async def test_another_project_is_permission_denied(
    http: httpx.AsyncClient, bearer: dict[str, str]
) -> None:
    """Sending to a project the emulator is not: 403 PERMISSION_DENIED from IAM."""
    response = await http.post(
        "/v1/projects/other/messages:send", json={"message": {"token": "a"}}, headers=bearer
    )
    assert response.status_code == 403
    error = error_of(response)
    assert error["status"] == "PERMISSION_DENIED"
    assert "cloudmessaging.messages.create" in error["message"]
    assert error["details"][0]["reason"] == "IAM_PERMISSION_DENIED"


# -- send --------------------------------------------------------------------------------------


async def test_send_accepts_and_records(send: Send, emulator: FcmEmulator, clock: Clock) -> None:
    """A valid message is named projects/P/messages/ID and kept in the ledger as received."""
    message = {
        "token": "device-1",
        "notification": {"title": "Hi", "body": "There"},
        "data": {"order": "42"},
        "android": {"priority": "high", "ttl": "3600s", "collapseKey": "orders"},
        "fcmOptions": {"analyticsLabel": "orders"},
    }
    response = await send(message)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    name = response.json()["name"]
    assert name.startswith(f"projects/{PROJECT}/messages/0:")
    [accepted] = emulator.ledger
    assert accepted.name == name
    assert accepted.message == message
    assert (accepted.target, accepted.kind, accepted.at) == ("device-1", "token", clock())
    assert emulator.requests_per_target["device-1"] == 1
    assert emulator.send_requests == 1
    second = (await send(message)).json()["name"]
    assert second != name
    assert [a.name for a in emulator.sent_to("device-1")] == [name, second]


@pytest.mark.parametrize(
    ("message", "target", "kind"),
    [
        ({"fid": "fid-1"}, "fid-1", "fid"),
        ({"topic": "news"}, "/topics/news", "topic"),
        ({"condition": "'a' in topics && ('b' in topics || !('c' in topics))"}, None, "condition"),
    ],
)
async def test_send_to_each_target_kind(
    send: Send, emulator: FcmEmulator, message: dict[str, str], target: str | None, kind: str
) -> None:
    """FIDs, topics and conditions are targets too; the ledger says which."""
    assert (await send(message)).status_code == 200
    [accepted] = emulator.ledger
    assert accepted.kind == kind
    assert accepted.target == (target if target is not None else message["condition"])


async def test_validate_only_is_not_recorded(send: Send, emulator: FcmEmulator) -> None:
    """validate_only (or validateOnly) answers a fake name and stores nothing."""
    for field_name in ("validate_only", "validateOnly"):
        response = await send({"token": "a"}, **{field_name: True})
        assert response.status_code == 200
        assert response.json() == {"name": f"projects/{PROJECT}/messages/fake_message_id"}
    assert emulator.ledger == []
    emulator.set_token_state("dead", "unregistered")
    assert (await send({"token": "dead"}, validate_only=True)).status_code == 404


BIG = "x" * 4095  # with the keys and the second pair: 4099 bytes


@pytest.mark.parametrize(
    ("message", "fcm", "field", "text"),
    [
        ({}, "INVALID_ARGUMENT", "message", "Recipient of the message is not set."),
        ({"data": {"a": "b"}}, "INVALID_ARGUMENT", "message", "Recipient of the message"),
        ({"token": "a", "topic": "b"}, None, "message", "oneof field 'target' is already set"),
        ({"token": "a", "data": {"a": "x", "b": 1}}, None, "message.data[1].value", "TYPE_STRING"),
        ({"token": "a", "data": {"from": "x"}}, "INVALID_ARGUMENT", "message.data", "reserved"),
        ({"token": "a", "data": {"gcm.n": "x"}}, "INVALID_ARGUMENT", "message.data", "reserved"),
        ({"token": "a", "data": {"google.c": "x"}}, "INVALID_ARGUMENT", "message.data", "reserved"),
        ({"token": "a", "data": {"message_type": "x"}}, "INVALID_ARGUMENT", "message.data", ""),
        ({"token": "a", "notifcation": {}}, None, "message", 'Unknown name "notifcation"'),
        ({"token": "a", "notification": "hi"}, None, "message.notification", "Notification"),
        ({"token": "a", "data": {"k": BIG, "j": "yy"}}, "INVALID_ARGUMENT", None, "too big"),
        ({"topic": "t", "data": {"k": "x" * 2048}}, "INVALID_ARGUMENT", None, "too big"),
        ({"token": "a", "android": {"ttl": "10"}}, None, "message.android.ttl", "Duration"),
        ({"token": "a", "android": {"ttl": "2419201s"}}, "INVALID_ARGUMENT", None, "TTL"),
        ({"token": "a", "android": {"ttl": "-1s"}}, "INVALID_ARGUMENT", None, "TTL"),
        ({"token": "a", "android": {"priority": "urgent"}}, None, None, "AndroidMessagePriority"),
        ({"token": "a", "android": {"direct_boot_ok": "yes"}}, None, None, "TYPE_BOOL"),
        (
            {"token": "a", "data": {"a": "b"}, "apns": {"headers": {"apns-priority": "10"}}},
            "INVALID_ARGUMENT",
            "message.apns.headers",
            "apns-priority 5",
        ),
        ({"token": "a", "fcm_options": {"analytics_label": "a b"}}, "INVALID_ARGUMENT", None, ""),
        ({"topic": "/topics/news"}, "INVALID_ARGUMENT", "message.topic", "topic"),
        (
            {"condition": " || ".join(f"'t{i}' in topics" for i in range(6))},
            "INVALID_ARGUMENT",
            "message.condition",
            "at most 5",
        ),
        ({"condition": "'a' in topics &&"}, "INVALID_ARGUMENT", "message.condition", ""),
        (
            {"token": "a", "webpush": {"fcm_options": {"link": "http://x.test"}}},
            "INVALID_ARGUMENT",
            "message.webpush.fcm_options.link",
            "HTTPS",
        ),
        ({"token": ""}, "INVALID_ARGUMENT", "message.token", "not a valid FCM registration"),
    ],
)
async def test_validation_errors(
    send: Send,
    emulator: FcmEmulator,
    message: dict[str, Any],
    fcm: str | None,
    field: str | None,
    text: str,
) -> None:
    """Each rule FCM enforces answers 400 INVALID_ARGUMENT with FCM's details; nothing is stored."""
    response = await send(message)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == 400
    assert error["status"] == "INVALID_ARGUMENT"
    assert text in error["message"]
    assert fcm_code(response) == fcm
    if field is not None:
        assert violation_field(response) == field
    assert emulator.ledger == []


async def test_validation_limits_are_inclusive(send: Send) -> None:
    """Exactly 4096 bytes (2048 to a topic), a 28-day TTL and apns-priority 10 with an alert pass."""
    assert (await send({"token": "a", "data": {"k": "x" * 4095}})).status_code == 200
    assert (await send({"topic": "t", "data": {"k": "x" * 2047}})).status_code == 200
    assert (await send({"token": "a", "android": {"ttl": "2419200s"}})).status_code == 200
    alert = {
        "token": "a",
        "data": {"a": "b"},
        "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {"alert": "hi"}}},
    }
    assert (await send(alert)).status_code == 200
    assert (await send({"token": "a", "android": {"priority": "NORMAL"}})).status_code == 200


async def test_request_level_errors(send: Send) -> None:
    """Invalid JSON, a non-object body and unknown top-level fields are transcoder errors."""
    response = await send(body=["x"])
    assert "Root element must be a message" in error_of(response)["message"]
    response = await send({"token": "a"}, dry_run=True)
    assert 'Unknown name "dry_run"' in error_of(response)["message"]
    assert fcm_code(response) is None
    response = await send({"token": "a"}, validate_only="yes")
    assert response.status_code == 400
    assert "TYPE_BOOL" in error_of(response)["message"]


async def test_invalid_json_is_400(http: httpx.AsyncClient, bearer: dict[str, str]) -> None:
    """A body that is not JSON is refused with the transcoder's message."""
    response = await http.post(SEND, content=b"{nope", headers=bearer)
    assert response.status_code == 400
    assert error_of(response)["message"].startswith("Invalid JSON payload received.")


# -- token rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status", "canonical", "code", "text"),
    [
        ("unregistered", 404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
        ("sender_mismatch", 403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
        (
            "invalid",
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
        ),
        ("malformed", 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "not a valid FCM"),
        ("third_party_auth", 401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "APNS"),
    ],
)
async def test_token_states(
    send: Send,
    emulator: FcmEmulator,
    state: str,
    status: int,
    canonical: str,
    code: str,
    text: str,
) -> None:
    """Each token state answers FCM's status, canonical code, FcmError and text; 'valid' heals."""
    emulator.set_token_state("tok", state)
    for target in ({"token": "tok"}, {"fid": "tok"}):
        response = await send(target)
        assert response.status_code == status
        assert error_of(response)["status"] == canonical
        assert fcm_code(response) == code
        assert text in error_of(response)["message"]
    assert emulator.ledger == []
    emulator.set_token_state("tok", "valid")
    assert (await send({"token": "tok"})).status_code == 200


def test_unknown_token_state_is_refused(emulator: FcmEmulator) -> None:
    """A misspelt state is an error at once, not a silent 'valid'."""
    with pytest.raises(ValueError, match="unknown token state"):
        emulator.set_token_state("tok", "expired")


async def test_prefix_and_rule_mark_many_tokens_cheaply(send: Send, emulator: FcmEmulator) -> None:
    """unregister_prefix and token_rule decide for tokens never named one by one."""
    emulator.unregister_prefix("dead-")
    # 1% of 10,000 tokens, as a load test would mark them: one function, no table.
    emulator.token_rule = lambda token: "invalid" if int(token[4:]) % 100 == 0 else "valid"
    states = Counter(emulator.token_state(f"tok-{i}") for i in range(10_000))
    assert states == {"valid": 9_900, "invalid": 100}
    assert emulator.token_state("dead-1") == "unregistered"
    assert (await send({"token": "dead-1"})).status_code == 404
    assert (await send({"token": "tok-100"})).status_code == 400
    emulator.set_token_state("tok-100", "valid")  # an explicit state wins over the rule
    assert (await send({"token": "tok-100"})).status_code == 200


# -- faults ------------------------------------------------------------------------------------


async def test_scripted_faults_then_normal(send: Send, emulator: FcmEmulator) -> None:
    """A script answers its faults in order, one per request to that target, then normally."""
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    emulator.script(
        "tok",
        [
            Fault.status(503, retry_after=1),
            Fault.status(500),
            Fault.status(429, retry_after=date),
            Fault.ok(),
            Fault.quota(retry_after=60),
        ],
    )
    assert (await send({"token": "other"})).status_code == 200  # others are not affected
    first = await send({"token": "tok"})
    assert (first.status_code, first.headers["retry-after"]) == (503, "1")
    assert (error_of(first)["status"], fcm_code(first)) == ("UNAVAILABLE", "UNAVAILABLE")
    second = await send({"token": "tok"})
    assert (second.status_code, fcm_code(second)) == (500, "INTERNAL")
    assert "retry-after" not in second.headers
    third = await send({"token": "tok"})
    assert (third.status_code, third.headers["retry-after"]) == (429, date)
    assert (error_of(third)["status"], fcm_code(third)) == ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
    assert any(d["@type"] == QUOTA_FAILURE for d in error_of(third)["details"])
    assert (await send({"token": "tok"})).status_code == 200
    fifth = await send({"token": "tok"})
    assert (fifth.status_code, fifth.headers["retry-after"], fcm_code(fifth)) == (
        429,
        "60",
        "QUOTA_EXCEEDED",
    )
    [quota] = [d for d in error_of(fifth)["details"] if d["@type"] == QUOTA_FAILURE]
    assert quota["violations"][0]["subject"] == f"project:{PROJECT}"
    assert (await send({"token": "tok"})).status_code == 200
    assert emulator.requests_per_target["tok"] == 6
    assert len(emulator.sent_to("tok")) == 2


async def test_status_401_and_502_faults(send: Send, emulator: FcmEmulator) -> None:
    """A 401 fault looks like an expired token; a 502 is the front end's HTML page."""
    emulator.script_any([Fault.status(401), Fault.status(502)])
    response = await send({"token": "a"})
    assert error_of(response)["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    response = await send({"token": "b"})
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert (await send({"token": "c"})).status_code == 200


async def test_drop_before_and_after(send: Send, emulator: FcmEmulator) -> None:
    """drop_before stores nothing, drop_after stores the message; the client sees a hang-up."""
    emulator.script("tok", [Fault.drop_before(), Fault.drop_after()])
    with pytest.raises(httpx.RemoteProtocolError) as before:
        await send({"token": "tok"})
    assert isinstance(before.value, ConnectionDropped)
    assert emulator.ledger == []
    with pytest.raises(httpx.RemoteProtocolError):
        await send({"token": "tok"})
    assert [a.target for a in emulator.ledger] == ["tok"]
    assert emulator.in_flight == 0


async def test_slow_fault_and_latency(
    send: Send, emulator: FcmEmulator, http: httpx.AsyncClient, bearer: dict[str, str]
) -> None:
    """Slow faults add their delay; latency applies to every send; in_flight counts them."""
    emulator.script("slow", [Fault.slow(0.2)])
    started = time.monotonic()
    assert (await send({"token": "slow"})).status_code == 200
    assert time.monotonic() - started >= 0.2
    emulator.latency = 0.05
    bodies = [{"message": {"token": f"t{i}"}} for i in range(20)]
    responses = await asyncio.gather(*(http.post(SEND, json=b, headers=bearer) for b in bodies))
    assert all(r.status_code == 200 for r in responses)
    assert emulator.max_in_flight == 20
    assert emulator.in_flight == 0


async def test_fault_rates_are_seeded(
    account: dict[str, str], keys: dict[str, str], clock: Clock
) -> None:
    """The same seed gives the same faults to the same sequence of requests."""
    outcomes = []
    for _ in range(2):
        emulator = FcmEmulator(public_keys=keys, clock=clock, seed=7)
        emulator.fault_rates({Fault.status(503): 0.3, Fault.drop_before(): 0.0})
        transport = httpx.ASGITransport(app=emulator)
        async with httpx.AsyncClient(transport=transport, base_url="https://fcm.test") as http:
            token = (await grant(http, assertion(account, clock()))).json()["access_token"]
            headers = {"authorization": f"Bearer {token}"}
            statuses = [
                (
                    await http.post(SEND, json={"message": {"token": "a"}}, headers=headers)
                ).status_code
                for _ in range(50)
            ]
        outcomes.append(statuses)
    assert outcomes[0] == outcomes[1]
    assert 5 < outcomes[0].count(503) < 30
    with pytest.raises(ValueError, match="probability"):
        FcmEmulator().fault_rates({Fault.status(500): 2.0})


async def test_project_quota_per_minute(send: Send, emulator: FcmEmulator, clock: Clock) -> None:
    """set_quota refuses sends beyond the limit until the minute is over."""
    emulator.set_quota(3)
    assert [(await send({"token": "a"})).status_code for _ in range(3)] == [200] * 3
    clock.now += 20
    refused = await send({"token": "a"})
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "40")
    assert fcm_code(refused) == "QUOTA_EXCEEDED"
    clock.now += 40
    assert (await send({"token": "a"})).status_code == 200


def test_fault_status_must_be_an_error() -> None:
    """Fault.status(200) is a mistake, not a fault."""
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Fault.status(200)


# -- topics ------------------------------------------------------------------------------------


async def test_iid_batch_add_and_remove(
    http: httpx.AsyncClient, bearer: dict[str, str], emulator: FcmEmulator
) -> None:
    """batchAdd/batchRemove answer per-index results and change the subscriptions."""
    emulator.set_token_state("gone", "unregistered")
    emulator.set_token_state("bad", "invalid")
    headers = {**bearer, "access_token_auth": "true"}
    body = {"to": "/topics/news", "registration_tokens": ["a", "gone", "b", "bad"]}
    response = await http.post("/iid/v1:batchAdd", json=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {
        "results": [{}, {"error": "NOT_FOUND"}, {}, {"error": "INVALID_ARGUMENT"}]
    }
    assert emulator.topics == {"news": {"a", "b"}}
    body = {"to": "/topics/news", "registration_tokens": ["a", "b"]}
    response = await http.post("/iid/v1:batchRemove", json=body, headers=headers)
    assert response.json() == {"results": [{}, {}]}
    assert emulator.topics == {}


async def test_iid_refusals(http: httpx.AsyncClient, bearer: dict[str, str]) -> None:
    """Without access_token_auth: 401; more than 1000 tokens or a bad topic: 400."""
    body = {"to": "/topics/news", "registration_tokens": ["a"]}
    assert (await http.post("/iid/v1:batchAdd", json=body, headers=bearer)).status_code == 401
    headers = {**bearer, "access_token_auth": "true"}
    many = {"to": "/topics/news", "registration_tokens": [f"t{i}" for i in range(1001)]}
    response = await http.post("/iid/v1:batchAdd", json=many, headers=headers)
    assert (response.status_code, response.json()) == (400, {"error": "INVALID_ARGUMENT"})
    bad = {"to": "news", "registration_tokens": ["a"]}
    assert (await http.post("/iid/v1:batchAdd", json=bad, headers=headers)).status_code == 400


async def test_too_many_topics_per_instance(
    http: httpx.AsyncClient, bearer: dict[str, str]
) -> None:
    """An app instance holds at most 2000 topics: the next is TOO_MANY_TOPICS."""
    headers = {**bearer, "access_token_auth": "true"}
    for i in range(2000):
        body = {"to": f"/topics/t{i}", "registration_tokens": ["a"]}
        await http.post("/iid/v1:batchAdd", json=body, headers=headers)
    body = {"to": "/topics/one-more", "registration_tokens": ["a", "b"]}
    response = await http.post("/iid/v1:batchAdd", json=body, headers=headers)
    assert response.json() == {"results": [{"error": "TOO_MANY_TOPICS"}, {}]}


async def test_topic_subscriptions_resource(
    http: httpx.AsyncClient, bearer: dict[str, str], emulator: FcmEmulator
) -> None:
    """Create (409 when present), get, list, delete (404 unless allowMissing) a subscription."""
    base = f"/v1/projects/{PROJECT}/registrations/tok-1/topicSubscriptions"
    created = await http.post(f"{base}?topicName=news", json={}, headers=bearer)
    assert created.status_code == 200
    assert created.json() == {
        "name": f"projects/{PROJECT}/registrations/tok-1/topicSubscriptions/news"
    }
    again = await http.post(f"{base}?topic_name=news", json={}, headers=bearer)
    assert (again.status_code, error_of(again)["status"]) == (409, "ALREADY_EXISTS")
    assert (await http.get(f"{base}/news", headers=bearer)).status_code == 200
    listed = (await http.get(base, headers=bearer)).json()
    assert [s["name"].rsplit("/", 1)[1] for s in listed["topicSubscriptions"]] == ["news"]
    assert emulator.topics == {"news": {"tok-1"}}
    assert (await http.delete(f"{base}/news", headers=bearer)).status_code == 200
    assert emulator.topics == {}
    assert (await http.delete(f"{base}/news", headers=bearer)).status_code == 404
    missing = await http.delete(f"{base}/news?allow_missing=true", headers=bearer)
    assert missing.status_code == 200
    assert (await http.get(base, headers=bearer)).json() == {}


async def test_topic_subscription_refusals(
    http: httpx.AsyncClient, bearer: dict[str, str], emulator: FcmEmulator
) -> None:
    """Unregistered tokens, missing or bad topic names and no bearer are refused."""
    emulator.set_token_state("gone", "unregistered")
    base = f"/v1/projects/{PROJECT}/registrations"
    response = await http.post(f"{base}/gone/topicSubscriptions?topicName=n", headers=bearer)
    assert (response.status_code, fcm_code(response)) == (404, "UNREGISTERED")
    response = await http.post(f"{base}/a/topicSubscriptions", headers=bearer)
    assert response.status_code == 400
    response = await http.post(f"{base}/a/topicSubscriptions?topicName=a%20b", headers=bearer)
    assert response.status_code == 400
    response = await http.post(f"{base}/a/topicSubscriptions?topicName=n")
    assert response.status_code == 401


async def test_unknown_urls_and_methods(http: httpx.AsyncClient) -> None:
    """Unknown URLs get Google's HTML 404; a known URL with a wrong method a JSON 404."""
    response = await http.get("/v2/whatever")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    response = await http.get(SEND)
    assert (response.status_code, error_of(response)["message"]) == (404, "Method not found.")


async def test_lifespan_is_answered(emulator: FcmEmulator) -> None:
    """The app completes the ASGI lifespan protocol (servers may send it)."""
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send_message(message: Any) -> None:
        sent.append(message["type"])

    await emulator({"type": "lifespan"}, receive, send_message)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "topics"),
    [
        ("'a' in topics", ["a"]),
        ("\"a\" in topics && !('b' in topics || 'c' in topics)", ["a", "b", "c"]),
    ],
)
def test_condition_topics(condition: str, topics: list[str]) -> None:
    """Valid conditions name their topics in order."""
    assert condition_topics(condition) == topics


@pytest.mark.parametrize("condition", ["", "'a' in topics ||", "('a' in topics", "a in topics"])
def test_condition_syntax_errors(condition: str) -> None:
    """Malformed conditions are refused."""
    with pytest.raises(ValueError, match=r"unexpected|unbalanced|trailing|invalid"):
        condition_topics(condition)


def test_payload_size_counts_data_and_notification_text() -> None:
    """Keys and values of data (or android.data, the larger) and the title and body count."""
    message = {
        "data": {"ab": "cd"},
        "android": {"data": {"a": "b"}},
        "notification": {"title": "xy", "body": "é"},
    }
    assert payload_size(message) == 4 + 2 + 2


def test_service_account_and_public_keys() -> None:
    """A generated account has Google's fields; public_keys derives its key by key id."""
    info, public = service_account("http://127.0.0.1:9/token", "p1")
    assert info["type"] == "service_account"
    assert info["project_id"] == "p1"
    assert info["token_uri"] == "http://127.0.0.1:9/token"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert info["client_email"].endswith("@p1.iam.gserviceaccount.com")
    assert public_keys(info) == {info["private_key_id"]: public}
    with pytest.raises(ValueError, match="private_key_id"):
        public_keys({"private_key": info["private_key"]})


def test_emulate_command_options(tmp_path: Path) -> None:
    """The command documents its options and refuses both service-account options at once."""
    runner = CliRunner()
    result = runner.invoke(emulate, ["fcm", "--help"])
    assert result.exit_code == 0
    assert "--write-service-account" in result.output
    account_file = tmp_path / "sa.json"
    account_file.write_text(json.dumps({"type": "service_account"}))
    result = runner.invoke(
        emulate,
        [
            "fcm",
            "-p",
            "0",
            "--service-account",
            str(account_file),
            "--write-service-account",
            str(tmp_path / "new.json"),
        ],
    )
    assert result.exit_code == 2
    assert "not both" in result.output
    result = runner.invoke(emulate, ["fcm", "-p", "0", "--service-account", str(account_file)])
    assert result.exit_code == 2
    assert "private_key_id" in result.output
