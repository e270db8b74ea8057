"""Webhook signature verification: known-answer vectors from the providers' own libraries.

Expected signatures come from stripe, slack_sdk and standardwebhooks, or (GitHub, Shopify,
generic HMAC) from ``hmac``/``hashlib`` following the providers' documentation; never from
Patchbay's own ``sign``, which is only checked by round-trips and against those libraries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.signature import Clock, SignatureVerifier
from standardwebhooks import Webhook

from patchbay.errors import ConfigError, MalformedSignature, PatchbayError, SignatureRejected
from patchbay.webhooks.verify import PROVIDERS, REASONS, Provider, Scheme, sign, verify

NOW = 1_700_000_000
BODY = b'{"id":"evt_1","type":"invoice.paid","data":{"amount":4200}}'
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WHSEC_NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
WHSEC_OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()
PLAIN = "It's a Secret to Everybody"
PLAIN_NEW = "a-rotated-secret"
PLAIN_OTHER = "somebody-else"
HMAC_PROVIDERS: tuple[Provider, ...] = (
    "github",
    "standard",
    "svix",
    "stripe",
    "slack",
    "shopify",
    "hmac",
)


def secrets_for(provider: str) -> tuple[str, str, str]:
    """An old, a new and an unrelated secret in the provider's format."""
    if provider in ("standard", "svix"):
        return WHSEC, WHSEC_NEW, WHSEC_OTHER
    return PLAIN, PLAIN_NEW, PLAIN_OTHER


def hex_hmac(secret: str, message: bytes, digest: str = "sha256") -> str:
    return hmac.new(secret.encode(), message, digest).hexdigest()


def b64_hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def reference_headers(
    provider: str, secret: str, body: bytes, ts: int = NOW, msg_id: str = "msg_1"
) -> dict[str, str]:
    """The headers a provider would send, computed by its own library or its documentation."""
    if provider == "github":
        return {"x-hub-signature-256": "sha256=" + hex_hmac(secret, body)}
    if provider == "stripe":
        header = stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret, timestamp=ts
        )
        return {"stripe-signature": header}
    if provider == "slack":
        signature = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
        assert signature is not None
        return {"x-slack-request-timestamp": str(ts), "x-slack-signature": signature}
    if provider in ("standard", "svix"):
        prefix = "webhook" if provider == "standard" else "svix"
        when = datetime.fromtimestamp(ts, tz=UTC)
        return {
            f"{prefix}-id": msg_id,
            f"{prefix}-timestamp": str(ts),
            f"{prefix}-signature": Webhook(secret).sign(msg_id, when, body.decode()),
        }
    if provider == "shopify":
        return {"x-shopify-hmac-sha256": b64_hmac(secret, body)}
    if provider == "hmac":
        return {"x-signature": hex_hmac(secret, body)}
    raise AssertionError(provider)


@contextmanager
def rejected(reason: str) -> Iterator[None]:
    """Expect a SignatureRejected with exactly this reason."""
    with pytest.raises(SignatureRejected) as caught:
        yield
    assert caught.value.reason == reason


def attempt(call: Callable[[], object]) -> PatchbayError | None:
    """Run ``call``; return the PatchbayError it raised, letting any other exception fail."""
    try:
        call()
    except PatchbayError as exc:
        return exc
    return None


def tamper_body(body: bytes) -> bytes:
    """Flip one bit of one byte in the middle: still ASCII, so still UTF-8."""
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 1]) + body[middle + 1 :]


def tamper_signature(headers: Mapping[str, str], name: str, marker: str) -> dict[str, str]:
    """Change one character of the last signature in a header, keeping it valid hex or base64."""
    value = headers[name]
    at = value.rfind(marker) + len(marker) + 2 if marker else 2
    changed = "1" if value[at] != "1" else "2"
    return {**headers, name: value[:at] + changed + value[at + 1 :]}


# --- published and library-generated vectors ------------------------------------------------


def test_github_published_example() -> None:
    """GitHub's documented example signature checks out and verifies."""
    expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert hex_hmac(PLAIN, b"Hello, World!") == expected
    headers = {"x-hub-signature-256": "sha256=" + expected}
    verify(Scheme("github", (PLAIN,)), headers, b"Hello, World!", NOW)
    with rejected("bad_signature"):
        verify(Scheme("github", (PLAIN,)), headers, b"Hello, World?", NOW)


@dataclass(frozen=True)
class Vector:
    name: str
    scheme: Scheme
    headers: dict[str, str]
    body: bytes
    signature_header: str = ""
    marker: str = ""


SIGNATURE_AT = {
    "github": ("x-hub-signature-256", "sha256="),
    "stripe": ("stripe-signature", "v1="),
    "slack": ("x-slack-signature", "v0="),
    "standard": ("webhook-signature", "v1,"),
    "svix": ("svix-signature", "v1,"),
    "shopify": ("x-shopify-hmac-sha256", ""),
    "hmac": ("x-signature", ""),
}


def vectors() -> list[Vector]:
    """Known answers, one or more per scheme, all produced outside Patchbay."""
    found = [
        Vector(
            p,
            Scheme(p, (secrets_for(p)[0],)),
            reference_headers(p, secrets_for(p)[0], BODY),
            BODY,
            *SIGNATURE_AT[p],
        )
        for p in HMAC_PROVIDERS
    ]
    found.append(
        Vector(
            "github-sha1",
            Scheme("github", (PLAIN,), legacy_sha1=True),
            {"x-hub-signature": "sha1=" + hex_hmac(PLAIN, BODY, "sha1")},
            BODY,
            "x-hub-signature",
            "sha1=",
        )
    )
    found.append(
        Vector(
            "shopify-events",
            Scheme("shopify", (PLAIN,)),
            {"shopify-hmac-sha256": b64_hmac(PLAIN, BODY)},
            BODY,
            "shopify-hmac-sha256",
        )
    )
    # Standard Webhooks straight from the spec: HMAC-SHA256 keyed by the base64-decoded secret.
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    spec_sig = hmac.new(key, b"msg_spec.%d." % NOW + BODY, hashlib.sha256).digest()
    found.append(
        Vector(
            "standard-spec",
            Scheme("standard", (WHSEC,)),
            {
                "webhook-id": "msg_spec",
                "webhook-timestamp": str(NOW),
                "webhook-signature": "v1," + base64.b64encode(spec_sig).decode(),
            },
            BODY,
            "webhook-signature",
            "v1,",
        )
    )
    # django-webhook's outbound format: comma-separated hex over "{ts}:{body}", one per secret.
    found.append(
        Vector(
            "hmac-django-webhook",
            Scheme(
                "hmac",
                (PLAIN_NEW,),
                header="Django-Webhook-Signature-v1",
                template="{timestamp}:{body}",
                timestamp_header="Django-Webhook-Request-Timestamp",
            ),
            {
                "django-webhook-signature-v1": hex_hmac(PLAIN, b"%d:" % NOW + BODY)
                + ","
                + hex_hmac(PLAIN_NEW, b"%d:" % NOW + BODY),
                "django-webhook-request-timestamp": str(NOW),
            },
            BODY,
            "django-webhook-signature-v1",
            ",",
        )
    )
    found.append(
        Vector(
            "hmac-base64-prefixed-sha512-id",
            Scheme(
                "hmac",
                (PLAIN,),
                header="x-hook-sig",
                template="{id}.{body}",
                encoding="base64",
                prefix="sha512=",
                id_header="x-hook-id",
                algorithm="sha512",
            ),
            {
                "x-hook-sig": "sha512="
                + base64.b64encode(
                    hmac.new(PLAIN.encode(), b"d-1." + BODY, hashlib.sha512).digest()
                ).decode(),
                "x-hook-id": "d-1",
            },
            BODY,
            "x-hook-sig",
            "sha512=",
        )
    )
    return found


VECTORS = vectors()


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_verifies(vector: Vector) -> None:
    """Each known-answer vector passes verification."""
    verify(vector.scheme, vector.headers, vector.body, NOW)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_with_tampered_body_is_rejected(vector: Vector) -> None:
    """Changing one byte of the body breaks every vector."""
    with rejected("bad_signature"):
        verify(vector.scheme, vector.headers, tamper_body(vector.body), NOW)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_with_tampered_signature_is_rejected(vector: Vector) -> None:
    """Changing one byte of the signature breaks every vector."""
    headers = tamper_signature(vector.headers, vector.signature_header, vector.marker)
    assert headers != vector.headers
    with rejected("bad_signature"):
        verify(vector.scheme, headers, vector.body, NOW)


def test_github_sha1_needs_opt_in() -> None:
    """The legacy SHA-1 header is ignored unless the scheme allows it."""
    headers = {"x-hub-signature": "sha1=" + hex_hmac(PLAIN, BODY, "sha1")}
    with rejected("missing_signature"):
        verify(Scheme("github", (PLAIN,)), headers, BODY, NOW)


def test_github_prefers_sha256_when_both_are_sent() -> None:
    """With both headers, a wrong SHA-256 one is not rescued by a right SHA-1 one."""
    headers = {
        "x-hub-signature-256": "sha256=" + hex_hmac(PLAIN_OTHER, BODY),
        "x-hub-signature": "sha1=" + hex_hmac(PLAIN, BODY, "sha1"),
    }
    with rejected("bad_signature"):
        verify(Scheme("github", (PLAIN,), legacy_sha1=True), headers, BODY, NOW)


# --- rotation and multiple signatures ------------------------------------------------------------


@pytest.mark.parametrize("provider", HMAC_PROVIDERS)
def test_rotation_accepts_old_and_new_secret_only(provider: Provider) -> None:
    """With two configured secrets both verify, and a third secret is rejected."""
    old, new, other = secrets_for(provider)
    scheme = Scheme(provider, (old, new))
    verify(scheme, reference_headers(provider, old, BODY), BODY, NOW)
    verify(scheme, reference_headers(provider, new, BODY), BODY, NOW)
    with rejected("bad_signature"):
        verify(scheme, reference_headers(provider, other, BODY), BODY, NOW)


def test_zoho_rotation_accepts_both_tokens() -> None:
    """Zoho accepts any configured token and rejects another."""
    scheme = Scheme("zoho", ("old-token", "new-token"))
    verify(scheme, {}, b'{"token":"old-token"}', NOW)
    verify(scheme, {}, b'{"token":"new-token"}', NOW)
    with rejected("bad_token"):
        verify(scheme, {}, b'{"token":"third-token"}', NOW)


def test_stripe_rolling_secret_sends_two_v1() -> None:
    """A Stripe header with a v1 per secret passes if any v1 matches; v0 is ignored."""
    old = stripe.WebhookSignature._compute_signature(f"{NOW}.{BODY.decode()}", PLAIN)
    new = stripe.WebhookSignature._compute_signature(f"{NOW}.{BODY.decode()}", PLAIN_NEW)
    header = f"t={NOW},v1={old},v1={new},v0={'0' * 64}"
    verify(Scheme("stripe", (PLAIN_NEW,)), {"stripe-signature": header}, BODY, NOW)


def test_stripe_v0_alone_is_not_a_signature() -> None:
    """A Stripe header with only a v0 signature has nothing to check."""
    v0 = hex_hmac(PLAIN, f"{NOW}.".encode() + BODY)
    with rejected("missing_signature"):
        verify(Scheme("stripe", (PLAIN,)), {"stripe-signature": f"t={NOW},v0={v0}"}, BODY, NOW)


def test_standard_multiple_signatures_and_unknown_versions() -> None:
    """Standard Webhooks skips v1a/v2 entries and accepts any matching v1."""
    good = reference_headers("standard", WHSEC, BODY)
    wrong = reference_headers("standard", WHSEC_OTHER, BODY)["webhook-signature"]
    good["webhook-signature"] = f"v1a,AAAA v2,BBBB {wrong} {good['webhook-signature']}"
    verify(Scheme("standard", (WHSEC,)), good, BODY, NOW)


def test_standard_with_only_unknown_versions_is_missing() -> None:
    """A Standard Webhooks header with no v1 entry counts as no signature."""
    headers = reference_headers("standard", WHSEC, BODY)
    headers["webhook-signature"] = "v1a,AAAA"
    with rejected("missing_signature"):
        verify(Scheme("standard", (WHSEC,)), headers, BODY, NOW)


# --- timestamps ------------------------------------------------------------------------------------

TIMESTAMPED: tuple[Provider, ...] = ("stripe", "slack", "standard", "svix")


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_timestamp_at_tolerance_edges_passes(provider: Provider) -> None:
    """Exactly 300 s old or ahead is still inside the default window."""
    secret = secrets_for(provider)[0]
    scheme = Scheme(provider, (secret,))
    verify(scheme, reference_headers(provider, secret, BODY, NOW - 300), BODY, NOW)
    verify(scheme, reference_headers(provider, secret, BODY, NOW + 300), BODY, NOW)


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_future_timestamp_is_rejected(provider: Provider) -> None:
    """A timestamp 301 s ahead is rejected, in both directions unlike stripe-python."""
    secret = secrets_for(provider)[0]
    headers = reference_headers(provider, secret, BODY, NOW + 301)
    with rejected("timestamp_in_future"):
        verify(Scheme(provider, (secret,)), headers, BODY, NOW)


@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_old_timestamp_is_rejected(provider: Provider) -> None:
    """A timestamp 301 s old is rejected."""
    secret = secrets_for(provider)[0]
    headers = reference_headers(provider, secret, BODY, NOW - 301)
    with rejected("timestamp_too_old"):
        verify(Scheme(provider, (secret,)), headers, BODY, NOW)


@pytest.mark.parametrize("provider", ["stripe", "slack"])
def test_milliseconds_are_rejected(provider: Provider) -> None:
    """A timestamp in milliseconds reads as far in the future."""
    headers = reference_headers(provider, PLAIN, BODY, NOW * 1000)
    with rejected("timestamp_in_future"):
        verify(Scheme(provider, (PLAIN,)), headers, BODY, NOW)


def test_milliseconds_are_rejected_for_standard_webhooks() -> None:
    """Standard Webhooks milliseconds are rejected before any signing is attempted."""
    headers = reference_headers("standard", WHSEC, BODY)
    headers["webhook-timestamp"] = str(NOW * 1000)
    with rejected("timestamp_in_future"):
        verify(Scheme("standard", (WHSEC,)), headers, BODY, NOW)


def test_stripe_library_itself_accepts_future_timestamps() -> None:
    """stripe-python passes an hour-ahead timestamp that Patchbay rejects."""
    header = stripe.WebhookSignature.generate_signature_header(
        BODY.decode(), PLAIN, timestamp=int(time.time()) + 3600
    )
    assert stripe.WebhookSignature.verify_header(BODY, header, PLAIN, tolerance=300)
    with rejected("timestamp_in_future"):
        verify(Scheme("stripe", (PLAIN,)), {"stripe-signature": header}, BODY, time.time())


def test_tolerance_is_configurable_both_ways() -> None:
    """A narrower window rejects sooner and a wider one accepts past the library's 5 minutes."""
    headers = reference_headers("standard", WHSEC, BODY, NOW - 120)
    with rejected("timestamp_too_old"):
        verify(Scheme("standard", (WHSEC,), tolerance=60), headers, BODY, NOW)
    old = reference_headers("standard", WHSEC, BODY, NOW - 3000)
    verify(Scheme("standard", (WHSEC,), tolerance=3600), old, BODY, NOW)


def test_generic_hmac_timestamp_is_checked() -> None:
    """A generic scheme with a timestamp header enforces the window."""
    scheme = Scheme("hmac", (PLAIN,), template="{timestamp}.{body}", timestamp_header="x-timestamp")
    headers = {
        "x-signature": hex_hmac(PLAIN, b"%d." % (NOW - 400) + BODY),
        "x-timestamp": str(NOW - 400),
    }
    with rejected("timestamp_too_old"):
        verify(scheme, headers, BODY, NOW)
    with rejected("missing_timestamp"):
        verify(scheme, {"x-signature": headers["x-signature"]}, BODY, NOW)


def test_nan_clock_fails_closed() -> None:
    """A NaN ``now`` can never satisfy the window."""
    headers = reference_headers("slack", PLAIN, BODY)
    with pytest.raises(SignatureRejected):
        verify(Scheme("slack", (PLAIN,)), headers, BODY, float("nan"))


# --- malformed and missing headers -------------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    ["17e8", "1700000000.5", "abc", "+1700000000", " ", "\u0661\u0667\u0660\u0660", "1" * 16],
)
@pytest.mark.parametrize("provider", TIMESTAMPED)
def test_non_integer_timestamp_is_malformed(provider: Provider, stamp: str) -> None:
    """A timestamp that is not plain ASCII digits is a 400, not a 401."""
    secret = secrets_for(provider)[0]
    headers = reference_headers(provider, secret, BODY)
    if provider == "stripe":
        headers["stripe-signature"] = headers["stripe-signature"].replace(f"t={NOW}", f"t={stamp}")
    else:
        name = {"slack": "x-slack-request-timestamp", "standard": "webhook-timestamp"}.get(
            provider, "svix-timestamp"
        )
        headers[name] = stamp
    # A blank header is an absent one; a blank t= inside Stripe's header is unparseable.
    blank = not stamp.strip() and provider != "stripe"
    expected = SignatureRejected if blank else MalformedSignature
    with pytest.raises(expected):
        verify(Scheme(provider, (secret,)), headers, BODY, NOW)


@pytest.mark.parametrize(
    ("provider", "name", "value"),
    [
        ("standard", "webhook-signature", "v1" + "A" * 44),  # no comma
        ("standard", "webhook-signature", "v1,!!not-base64!!"),
        ("svix", "svix-signature", "v1,abc"),  # bad padding
        ("standard", "webhook-signature", " ".join(["v1,AAAA"] * 11)),
        ("stripe", "stripe-signature", "v1=" + "0" * 64),  # no t=
        ("stripe", "stripe-signature", f"t={NOW},v1"),
        ("stripe", "stripe-signature", f"t={NOW},t={NOW},v1=" + "0" * 64),
        ("stripe", "stripe-signature", f"t={NOW}," + ",".join(["v1=" + "0" * 64] * 11)),
        ("stripe", "stripe-signature", f"t={NOW},v1=xyz"),
        ("github", "x-hub-signature-256", "sha1=" + "0" * 40),
        ("github", "x-hub-signature-256", "sha256=" + "g" * 64),
        ("github", "x-hub-signature-256", "sha256=" + "0" * 63),
        ("slack", "x-slack-signature", "v1=" + "0" * 64),
        ("shopify", "x-shopify-hmac-sha256", "not base64 at all"),
        ("shopify", "x-shopify-hmac-sha256", "ÄÖÜ"),
        ("hmac", "x-signature", ",".join(["00"] * 11)),
        ("hmac", "x-signature", "zz"),
    ],
)
def test_malformed_headers(provider: Provider, name: str, value: str) -> None:
    """Unparseable signature headers raise MalformedSignature (400)."""
    secret = secrets_for(provider)[0]
    headers = reference_headers(provider, secret, BODY)
    headers[name] = value
    with pytest.raises(MalformedSignature):
        verify(Scheme(provider, (secret,)), headers, BODY, NOW)


def test_signature_bound_is_configurable() -> None:
    """Exactly max_signatures candidates are allowed; one more is malformed."""
    stripe_sig = stripe.WebhookSignature._compute_signature(f"{NOW}.{BODY.decode()}", PLAIN)
    header = f"t={NOW}," + ",".join(["v1=" + "0" * 64] * 2 + ["v1=" + stripe_sig])
    verify(Scheme("stripe", (PLAIN,), max_signatures=3), {"stripe-signature": header}, BODY, NOW)
    with pytest.raises(MalformedSignature):
        verify(
            Scheme("stripe", (PLAIN,), max_signatures=2), {"stripe-signature": header}, BODY, NOW
        )


@pytest.mark.parametrize(
    ("provider", "drop", "reason"),
    [
        ("github", "x-hub-signature-256", "missing_signature"),
        ("stripe", "stripe-signature", "missing_signature"),
        ("slack", "x-slack-signature", "missing_signature"),
        ("slack", "x-slack-request-timestamp", "missing_timestamp"),
        ("standard", "webhook-signature", "missing_signature"),
        ("standard", "webhook-id", "missing_id"),
        ("standard", "webhook-timestamp", "missing_timestamp"),
        ("svix", "svix-id", "missing_id"),
        ("shopify", "x-shopify-hmac-sha256", "missing_signature"),
        ("hmac", "x-signature", "missing_signature"),
    ],
)
def test_missing_headers_are_rejected(provider: Provider, drop: str, reason: str) -> None:
    """A missing signature, id or timestamp header is a 401 with its reason."""
    secret = secrets_for(provider)[0]
    headers = reference_headers(provider, secret, BODY)
    del headers[drop]
    with rejected(reason):
        verify(Scheme(provider, (secret,)), headers, BODY, NOW)


def test_empty_header_counts_as_missing() -> None:
    """A blank signature header is treated as absent."""
    with rejected("missing_signature"):
        verify(Scheme("github", (PLAIN,)), {"x-hub-signature-256": "  "}, BODY, NOW)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_secret_fails_closed(provider: Provider) -> None:
    """A source without secrets rejects everything, even a request with no signature."""
    with rejected("no_secret"):
        verify(Scheme(provider, ()), {}, b'{"token":""}', NOW)


def test_standard_non_utf8_body_is_unverifiable() -> None:
    """The standardwebhooks library signs text, so a non-UTF-8 body is rejected, not crashed on."""
    headers = reference_headers("standard", WHSEC, BODY)
    with rejected("unverifiable_body"):
        verify(Scheme("standard", (WHSEC,)), headers, b"\xff\xfe" + BODY, NOW)


def test_standard_id_with_lone_surrogate_is_malformed() -> None:
    """A message id that cannot be encoded is a 400, not an exception from the library."""
    headers = reference_headers("standard", WHSEC, BODY)
    headers["webhook-id"] = "msg_\ud800"
    with pytest.raises(MalformedSignature):
        verify(Scheme("standard", (WHSEC,)), headers, BODY, NOW)


# --- Zoho shared token ---------------------------------------------------------------------------


def test_zoho_token_and_channel() -> None:
    """Zoho passes with the right token and, when channels are configured, a known channel."""
    body = b'{"module":"Leads","operation":"insert","channel_id":1000000068001,"token":"tok"}'
    verify(Scheme("zoho", ("tok",)), {}, body, NOW)
    verify(Scheme("zoho", ("tok",), channels=("1000000068001", "7")), {}, body, NOW)
    with rejected("unknown_channel"):
        verify(Scheme("zoho", ("tok",), channels=("7",)), {}, body, NOW)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"token":"tok!","channel_id":7}', "bad_token"),
        (b'{"token":"to","channel_id":7}', "bad_token"),
        (b'{"channel_id":7}', "missing_token"),
        (b'{"token":7,"channel_id":7}', "missing_token"),
        (b'{"token":"","channel_id":7}', "missing_token"),
        (b"not json", "missing_token"),
        (b'["tok"]', "missing_token"),
        (b"\xff\xfe", "missing_token"),
        (b'{"token":"tok"}', "unknown_channel"),
        (b'{"token":"tok","channel_id":true}', "unknown_channel"),
        (b'{"token":"tok","channel_id":[7]}', "unknown_channel"),
    ],
)
def test_zoho_rejections(body: bytes, reason: str) -> None:
    """Zoho's token and channel checks give stable reasons."""
    with rejected(reason):
        verify(Scheme("zoho", ("tok",), channels=("7",)), {}, body, NOW)


def test_zoho_string_channel_id_matches() -> None:
    """A channel id sent as a string matches the same configured id."""
    verify(Scheme("zoho", ("tok",), channels=(7,)), {}, b'{"token":"tok","channel_id":"7"}', NOW)  # type: ignore[arg-type]


# --- sign round-trips and cross-checks ------------------------------------------------------------

ROUND_TRIP_SCHEMES = [
    *(Scheme(p, (secrets_for(p)[0], secrets_for(p)[1])) for p in PROVIDERS),
    Scheme("github", (PLAIN,), legacy_sha1=True),
    Scheme(
        "hmac",
        (PLAIN,),
        header="X-Sig",
        template="{id}:{timestamp}:{body}",
        encoding="base64",
        prefix="v1=",
        timestamp_header="X-Ts",
        id_header="X-Id",
        algorithm="sha1",
    ),
]


@pytest.mark.parametrize("scheme", ROUND_TRIP_SCHEMES, ids=lambda s: s.provider)
def test_sign_round_trips(scheme: Scheme) -> None:
    """What ``sign`` produces, ``verify`` accepts, for every provider."""
    body = b'{"token":"%s","type":"a.b"}' % scheme.secrets[0].encode()
    headers = sign(scheme, body, now=NOW + 0.9, delivery_id="d-1")
    verify(scheme, headers, body, NOW)
    if scheme.provider != "zoho":
        with rejected("bad_signature"):
            verify(scheme, headers, tamper_body(body), NOW)


def test_sign_with_legacy_sha1_sends_both_headers() -> None:
    """GitHub signing with legacy_sha1 sends the SHA-1 header as GitHub does."""
    headers = sign(Scheme("github", (PLAIN,), legacy_sha1=True), BODY, now=NOW, delivery_id="x")
    assert headers["x-hub-signature"] == "sha1=" + hex_hmac(PLAIN, BODY, "sha1")
    assert headers["x-hub-signature-256"] == "sha256=" + hex_hmac(PLAIN, BODY)


def test_sign_matches_stripe_library() -> None:
    """stripe-python accepts the header Patchbay signs."""
    headers = sign(Scheme("stripe", (PLAIN,)), BODY, now=time.time(), delivery_id="x")
    assert stripe.WebhookSignature.verify_header(BODY, headers["stripe-signature"], PLAIN, 300)


def test_sign_matches_slack_sdk() -> None:
    """slack_sdk's verifier accepts the headers Patchbay signs."""

    class Frozen(Clock):
        def now(self) -> float:
            return NOW

    headers = sign(Scheme("slack", (PLAIN,)), BODY, now=NOW, delivery_id="x")
    assert SignatureVerifier(PLAIN, Frozen()).is_valid_request(BODY, headers)


@pytest.mark.parametrize("provider", ["standard", "svix"])
def test_sign_matches_standardwebhooks_verify(provider: Provider) -> None:
    """The standardwebhooks library's own verify (wall clock) accepts the headers Patchbay signs."""
    headers = sign(Scheme(provider, (WHSEC,)), BODY, now=time.time(), delivery_id="msg_x")
    generic = {k.replace("svix-", "webhook-"): v for k, v in headers.items()}
    assert Webhook(WHSEC).verify(BODY, generic) == {
        "id": "evt_1",
        "type": "invoice.paid",
        "data": {"amount": 4200},
    }


def test_sign_zoho_is_empty() -> None:
    """Zoho's token lives in the body, so there are no headers to sign."""
    assert sign(Scheme("zoho", ("tok",)), b"{}", now=NOW, delivery_id="x") == {}


def test_sign_without_secret_is_a_config_error() -> None:
    """Signing needs a secret."""
    with pytest.raises(ConfigError):
        sign(Scheme("github", ()), BODY, now=NOW, delivery_id="x")


# --- scheme validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"provider": "gitlab", "secrets": ("x",)},
        {"provider": "standard", "secrets": ("whsec_",)},
        {"provider": "standard", "secrets": ("whsec_a",)},
        {"provider": "github", "secrets": ("",)},
        {"provider": "github", "secrets": ("\ud800",)},
        {"provider": "github", "secrets": ("x",), "tolerance": -1},
        {"provider": "github", "secrets": ("x",), "tolerance": float("nan")},
        {"provider": "github", "secrets": ("x",), "max_signatures": 0},
        {"provider": "hmac", "secrets": ("x",), "encoding": "base32"},
        {"provider": "hmac", "secrets": ("x",), "algorithm": "md5"},
        {"provider": "hmac", "secrets": ("x",), "header": ""},
        {"provider": "hmac", "secrets": ("x",), "template": "{timestamp}"},
        {"provider": "hmac", "secrets": ("x",), "template": "{timestamp}.{body}"},
        {"provider": "hmac", "secrets": ("x",), "timestamp_header": "x-ts"},
        {"provider": "hmac", "secrets": ("x",), "template": "{id}.{body}"},
    ],
)
def test_invalid_schemes_are_config_errors(options: dict[str, object]) -> None:
    """Impossible or unsafe scheme settings fail when the scheme is built."""
    with pytest.raises(ConfigError):
        Scheme(**options)  # type: ignore[arg-type]


def test_scheme_normalises_lists_and_header_names() -> None:
    """Lists become tuples and header names lower case, so settings files can be loose."""
    scheme = Scheme("hmac", ["a", "b"], header="X-Sig", channels=[1])  # type: ignore[arg-type]
    assert scheme.secrets == ("a", "b")
    assert scheme.header == "x-sig"
    assert scheme.channels == ("1",)


# --- never another exception ------------------------------------------------------------------

FUZZ_SCHEMES = [
    *(Scheme(p, (secrets_for(p)[0], secrets_for(p)[1])) for p in PROVIDERS),
    Scheme("github", (PLAIN,), legacy_sha1=True, max_signatures=2),
    Scheme("zoho", ("tok",), channels=("7",)),
    Scheme("svix", ()),
    ROUND_TRIP_SCHEMES[-1],
]
HEADER_NAMES = [
    "x-hub-signature-256",
    "x-hub-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "stripe-signature",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-shopify-hmac-sha256",
    "shopify-hmac-sha256",
    "x-signature",
    "x-sig",
    "x-ts",
    "x-id",
    "content-type",
]
TRICKY = [
    "",
    " ",
    ",",
    "=",
    "v1,",
    "v1,====",
    "v0=",
    "sha256=",
    "sha1=00",
    "t=,v1=",
    f"t={NOW},v1=" + "0" * 64,
    str(NOW),
    str(NOW * 1000),
    "9" * 15,
    "-1",
    "1e3",
    "msg_\ud800",
    "v1,AAAA " * 12,
    "\x00\xff\u2028",
]
TEXT = st.text(st.characters(categories=["Cs", "Nd", "Po", "Ll", "Zs", "Cc", "Lo"]), max_size=40)
BODIES = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([BODY, b'{"token":"tok","channel_id":7}', b'{"token":"tok"}', b"\xff", b""]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(FUZZ_SCHEMES),
    headers=st.dictionaries(
        st.sampled_from(HEADER_NAMES), st.one_of(TEXT, st.sampled_from(TRICKY)), max_size=6
    ),
    body=BODIES,
    now=st.one_of(st.just(float(NOW)), st.floats()),
)
def test_verify_raises_only_patchbay_errors(
    scheme: Scheme, headers: dict[str, str], body: bytes, now: float
) -> None:
    """Arbitrary headers and bodies give a PatchbayError at worst, with a known reason."""
    error = attempt(lambda: verify(scheme, headers, body, now))
    assert not isinstance(error, SignatureRejected) or error.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from([s for s in FUZZ_SCHEMES if s.secrets]),
    overrides=st.dictionaries(
        st.sampled_from(HEADER_NAMES), st.one_of(TEXT, st.sampled_from(TRICKY)), max_size=2
    ),
    drop=st.sets(st.sampled_from(HEADER_NAMES), max_size=2),
    body=BODIES,
)
def test_mutated_valid_requests_raise_only_patchbay_errors(
    scheme: Scheme, overrides: dict[str, str], drop: set[str], body: bytes
) -> None:
    """Valid requests with a header replaced or dropped never raise anything else."""
    headers = sign(scheme, BODY, now=NOW, delivery_id="msg_1")
    headers.update(overrides)
    for name in drop:
        headers.pop(name, None)
    error = attempt(lambda: verify(scheme, headers, body, NOW))
    assert not isinstance(error, SignatureRejected) or error.reason in REASONS
