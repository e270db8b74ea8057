"""Classifying FCM answers and reading Retry-After (pure functions, FCM's documented shapes)."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import orjson
import pytest

from patchbay.push.client import classify, retry_after

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def error(code: int, status: str, *details: dict[str, Any], message: str = "x") -> bytes:
    """A google.rpc.Status body."""
    return orjson.dumps(
        {"error": {"code": code, "status": status, "message": message, "details": list(details)}}
    )


def fcm(code: str) -> dict[str, str]:
    """The FcmError detail."""
    return {"@type": FCM_ERROR, "errorCode": code}


def quota(subject: str) -> dict[str, Any]:
    """A google.rpc.QuotaFailure detail."""
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"subject": subject, "description": "rate exceeded"}],
    }


@pytest.mark.parametrize(
    ("status", "body", "verdict", "code"),
    [
        (200, b'{"name": "projects/p/messages/1"}', "sent", None),
        (404, error(404, "NOT_FOUND", fcm("UNREGISTERED")), "dead", "UNREGISTERED"),
        (
            403,
            error(403, "PERMISSION_DENIED", fcm("SENDER_ID_MISMATCH")),
            "dead",
            "SENDER_ID_MISMATCH",
        ),
        (
            401,
            error(401, "UNAUTHENTICATED", fcm("THIRD_PARTY_AUTH_ERROR")),
            "auth",
            "THIRD_PARTY_AUTH_ERROR",
        ),
        (401, error(401, "UNAUTHENTICATED", fcm("APNS_AUTH_ERROR")), "auth", "APNS_AUTH_ERROR"),
        (401, error(401, "UNAUTHENTICATED"), "unauthenticated", "UNAUTHENTICATED"),
        (403, error(403, "PERMISSION_DENIED"), "auth", "PERMISSION_DENIED"),
        (429, error(429, "RESOURCE_EXHAUSTED", fcm("QUOTA_EXCEEDED")), "retry", "QUOTA_EXCEEDED"),
        (503, error(503, "UNAVAILABLE", fcm("UNAVAILABLE")), "retry", "UNAVAILABLE"),
        (500, error(500, "INTERNAL", fcm("INTERNAL")), "retry", "INTERNAL"),
        (502, b"<html>Error 502</html>", "retry", "HTTP_502"),
        (504, b"", "retry", "HTTP_504"),
        (
            400,
            error(400, "INVALID_ARGUMENT", fcm("INVALID_ARGUMENT")),
            "invalid",
            "INVALID_ARGUMENT",
        ),
        (
            400,
            error(
                400,
                "INVALID_ARGUMENT",
                fcm("INVALID_ARGUMENT"),
                message="The registration token is not a valid FCM registration token",
            ),
            "dead",
            "INVALID_ARGUMENT",
        ),
        (404, error(404, "NOT_FOUND"), "failed", "NOT_FOUND"),
        (409, b"{}", "failed", "HTTP_409"),
    ],
)
def test_fcm_error_table(status: int, body: bytes, verdict: str, code: str | None) -> None:
    """FcmError.errorCode first, then the canonical status, then HTTP (fcm.md 1.5)."""
    answer = classify(status, {}, body)
    assert (answer.verdict, answer.error_code, answer.http_status) == (verdict, code, status)


def test_success_carries_the_message_name() -> None:
    """The name FCM gives a message ends up in the answer."""
    assert classify(200, {}, b'{"name": "projects/p/messages/7"}').name == "projects/p/messages/7"


@pytest.mark.parametrize(
    ("details", "project"),
    [
        ((), True),  # FCM did not say which quota: assume the project's
        ((quota("project:demo"),), True),
        ((quota("device:abc"),), False),
        ((quota("topic:news"),), False),
    ],
)
def test_which_quota(details: tuple[dict[str, Any], ...], project: bool) -> None:
    """Only a project quota (or an unnamed one) pauses every send."""
    body = error(429, "RESOURCE_EXHAUSTED", fcm("QUOTA_EXCEEDED"), *details)
    assert classify(429, {}, body).project_quota is project


def test_retry_after_forms() -> None:
    """Delta seconds, fractions, HTTP dates (read against Date), junk and negatives."""
    now = 1_800_000_000.0
    assert retry_after({"retry-after": "120"}) == 120
    assert retry_after({"retry-after": "0.5"}) == 0.5
    assert retry_after({"retry-after": "-3"}) == 0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({"retry-after": "inf"}) is None
    assert retry_after({}) is None
    later = formatdate(now + 90, usegmt=True)
    assert retry_after({"retry-after": later}, now=now) == 90
    # With the server's own Date, our clock does not matter.
    date = formatdate(now - 1000, usegmt=True)
    assert retry_after({"retry-after": later, "date": date}, now=0.0) == 1090
    assert retry_after({"retry-after": formatdate(now - 5, usegmt=True)}, now=now) == 0


def test_classify_reads_retry_after() -> None:
    """The answer carries the Retry-After it came with, uncapped."""
    body = error(503, "UNAVAILABLE", fcm("UNAVAILABLE"))
    assert classify(503, {"retry-after": "3600"}, body).retry_after == 3600
