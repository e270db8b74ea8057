"""Opening a verified delivery: content types, event names, delivery keys, handshakes, redaction."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchbay.errors import PatchbayError, RequestError, UnsupportedMedia
from patchbay.webhooks.envelope import (
    MAX_NAME_LENGTH,
    REDACTED,
    Envelope,
    Handshake,
    open_envelope,
    redact,
)
from patchbay.webhooks.verify import PROVIDERS, Provider, Scheme

JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


def scheme(provider: Provider, **options: Any) -> Scheme:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" if provider in ("standard", "svix") else "s"
    return Scheme(provider, (secret,), **options)


def opened(provider: Provider, headers: dict[str, str], body: Any, **options: Any) -> Envelope:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return open_envelope(scheme(provider, **options), {**JSON, **headers}, raw)


def body_key(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- content types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        'Application/JSON;charset="UTF-8"',
        "application/vnd.github+json",
        "application/cloudevents+json; charset=us-ascii",
    ],
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    """JSON, +json suffixes and UTF-8 or ASCII charsets are accepted."""
    envelope = open_envelope(scheme("stripe"), {"content-type": content_type}, b'{"id":"evt_1"}')
    assert envelope.payload == {"id": "evt_1"}
    assert envelope.content_type == content_type.partition(";")[0].strip().lower()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": ""},
        {"content-type": "text/plain"},
        {"content-type": "application/xml"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"content-type": "text/json+json"},
        {"content-type": "application/json; charset=latin-1"},
        {"content-type": "application/jsonx"},
    ],
)
def test_other_content_types_are_unsupported(headers: dict[str, str]) -> None:
    """Anything but JSON or a form is a 415."""
    with pytest.raises(UnsupportedMedia):
        open_envelope(scheme("stripe"), headers, b"{}")


@pytest.mark.parametrize("provider", ["stripe", "standard", "svix", "shopify", "zoho"])
def test_forms_only_for_providers_that_send_them(provider: Provider) -> None:
    """A form body for a JSON-only provider is a 415."""
    with pytest.raises(UnsupportedMedia):
        open_envelope(scheme(provider), FORM, b"a=1")


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (JSON, b"{"),
        (JSON, b""),
        (JSON, b"\xff\xfe{}"),
        (JSON, b'{"a": NaN}'),
        (JSON, b"[" * 2000 + b"]" * 2000),
        (FORM, b"payload=%ff"),
        (FORM, b"\xff=1"),
        (FORM, b"payload=%7Bnot-json"),
        (FORM, b"a=1"),  # GitHub's form needs a payload field
        (FORM, b"&".join([b"a=1"] * 1001)),
    ],
)
def test_malformed_bodies_are_bad_requests(headers: dict[str, str], body: bytes) -> None:
    """Bodies that do not parse are a 400, not a 415 and never a crash."""
    with pytest.raises(RequestError) as caught:
        open_envelope(scheme("github"), {**headers, "x-github-event": "push"}, body)
    assert not isinstance(caught.value, UnsupportedMedia)


# --- event names and delivery keys per provider ----------------------------------------------------


def test_github_event_with_action() -> None:
    """GitHub events are the header plus the payload's action."""
    envelope = opened(
        "github",
        {"x-github-event": "pull_request", "x-github-delivery": "72d3162e-cc78-11e3-81ab"},
        {"action": "opened", "number": 1},
    )
    assert envelope.event == "pull_request.opened"
    assert envelope.delivery_key == "72d3162e-cc78-11e3-81ab"
    assert envelope.handshake is None


@pytest.mark.parametrize(("name", "payload"), [("push", {"ref": "x"}), ("ping", {"zen": "z"})])
def test_github_event_without_action(name: str, payload: dict[str, str]) -> None:
    """GitHub events without an action are the header alone."""
    assert opened("github", {"x-github-event": name}, payload).event == name


def test_github_missing_headers_fall_back() -> None:
    """Without X-GitHub-Event or X-GitHub-Delivery the event is 'webhook' and the key a hash."""
    body = b'{"action":"opened"}'
    envelope = opened("github", {}, body)
    assert envelope.event == "webhook"
    assert envelope.delivery_key == body_key(body)


def test_github_form_payload_is_parsed() -> None:
    """GitHub's form-encoded delivery yields the JSON in its payload field."""
    body = urlencode({"payload": '{"action":"created","zen":"ok"}'}).encode()
    envelope = open_envelope(scheme("github"), {**FORM, "x-github-event": "issue_comment"}, body)
    assert envelope.payload == {"action": "created", "zen": "ok"}
    assert envelope.event == "issue_comment.created"
    assert envelope.content_type == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("provider", "id_header"), [("standard", "webhook-id"), ("svix", "svix-id")]
)
def test_standard_and_svix_use_type_and_id_header(provider: Provider, id_header: str) -> None:
    """Standard Webhooks and Svix take the body's type and the id header."""
    envelope = opened(provider, {id_header: "msg_2Lk"}, {"type": "user.created", "data": {}})
    assert (envelope.event, envelope.delivery_key) == ("user.created", "msg_2Lk")


def test_stripe_uses_type_and_body_id() -> None:
    """Stripe's event is the body's type and its key the body's id."""
    envelope = opened("stripe", {}, {"id": "evt_1NG8", "type": "invoice.paid"})
    assert (envelope.event, envelope.delivery_key) == ("invoice.paid", "evt_1NG8")


def test_stripe_without_id_or_type_falls_back() -> None:
    """A Stripe body without id or type gets 'webhook' and the body hash."""
    body = b'{"type": 7}'
    envelope = opened("stripe", {}, body)
    assert (envelope.event, envelope.delivery_key) == ("webhook", body_key(body))


@pytest.mark.parametrize("prefix", ["x-shopify-", "shopify-"])
def test_shopify_topic_and_webhook_id(prefix: str) -> None:
    """Shopify's topic has '/' turned into '.', and its webhook id is the key."""
    headers = {f"{prefix}topic": "orders/create", f"{prefix}webhook-id": "b54557e4"}
    envelope = opened("shopify", headers, {"id": 820982911946154508})
    assert (envelope.event, envelope.delivery_key) == ("orders.create", "b54557e4")


def test_slack_event_callback_uses_inner_type_and_event_id() -> None:
    """Slack's event_callback is named after the inner event and keyed by event_id."""
    body = {"type": "event_callback", "event_id": "Ev08", "event": {"type": "app_mention"}}
    envelope = opened("slack", {}, body)
    assert (envelope.event, envelope.delivery_key) == ("app_mention", "Ev08")


def test_slack_event_callback_without_inner_type() -> None:
    """An event_callback without an inner type keeps its envelope type and hashes its body."""
    body = b'{"type":"event_callback","event":[]}'
    envelope = opened("slack", {}, body)
    assert (envelope.event, envelope.delivery_key) == ("event_callback", body_key(body))


def test_slack_other_envelopes_use_their_type() -> None:
    """Slack envelopes other than event_callback use their own type."""
    assert opened("slack", {}, {"type": "app_rate_limited"}).event == "app_rate_limited"


def test_slack_url_verification_is_a_handshake() -> None:
    """Slack's url_verification carries the challenge reply, as JSON."""
    body = {"type": "url_verification", "token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY"}
    envelope = opened("slack", {}, body)
    assert envelope.event == "url_verification"
    assert envelope.handshake == Handshake(
        200, "application/json", b'{"challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY"}'
    )


def test_slack_url_verification_without_challenge() -> None:
    """A url_verification without a string challenge is a bad request."""
    with pytest.raises(RequestError):
        opened("slack", {}, {"type": "url_verification", "challenge": 5})


def test_slack_slash_command_form() -> None:
    """A slash command is named command.<name> and its form fields are the payload."""
    body = urlencode({"command": "/deploy", "text": "prod", "team_id": "T1"}).encode()
    envelope = open_envelope(scheme("slack"), FORM, body)
    assert envelope.event == "command.deploy"
    assert envelope.payload == {"command": "/deploy", "text": "prod", "team_id": "T1"}
    assert envelope.delivery_key == body_key(body)


def test_slack_interactivity_form_parses_payload() -> None:
    """Interactivity posts have their payload field parsed and are named by its type."""
    inner = {"type": "block_actions", "actions": [{"action_id": "a"}]}
    body = urlencode({"payload": orjson.dumps(inner).decode()}).encode()
    envelope = open_envelope(scheme("slack"), FORM, body)
    assert envelope.event == "block_actions"
    assert envelope.payload == {"payload": inner}


def test_slack_form_without_type_or_command() -> None:
    """A Slack form with neither payload type nor command is a plain 'webhook'."""
    assert open_envelope(scheme("slack"), FORM, b"command=/&x=1").event == "webhook"


def test_zoho_module_operation_and_body_hash() -> None:
    """Zoho is named {module}.{operation} and keyed by the body hash."""
    body = b'{"module":"Leads","operation":"insert","ids":["1"],"token":"t","channel_id":7}'
    envelope = opened("zoho", {}, body)
    assert (envelope.event, envelope.delivery_key) == ("Leads.insert", body_key(body))


@pytest.mark.parametrize(
    ("body", "event"),
    [
        ({"type": "a.b", "event": "c"}, "a.b"),
        ({"event": "c"}, "c"),
        ({"type": 1, "event": ["c"]}, "webhook"),
        ([1, 2], "webhook"),
        ("text", "webhook"),
    ],
)
def test_hmac_event_names(body: Any, event: str) -> None:
    """Generic events are the body's type, else its event, else 'webhook'."""
    assert opened("hmac", {}, body).event == event


@pytest.mark.parametrize(
    ("headers", "body", "key"),
    [
        ({"x-id": "h-1"}, {"id": "b-1"}, "h-1"),
        ({}, {"id": "b-1"}, "b-1"),
        ({}, {"id": 42}, "42"),
        ({}, {"id": True}, None),
        ({"x-id": " "}, {"id": None}, None),
    ],
)
def test_hmac_delivery_keys(headers: dict[str, str], body: Any, key: str | None) -> None:
    """Generic keys are the id header, else the body's id, else the body hash."""
    envelope = opened("hmac", headers, body, id_header="X-Id")
    assert envelope.delivery_key == (key or body_key(orjson.dumps(body)))


def test_hmac_form_is_fields() -> None:
    """A generic form body becomes a dict of its fields."""
    envelope = open_envelope(scheme("hmac"), FORM, b"event=ping&id=9")
    assert (envelope.event, envelope.delivery_key, envelope.payload) == (
        "ping",
        "9",
        {"event": "ping", "id": "9"},
    )


@pytest.mark.parametrize(
    ("provider", "make"),
    [
        ("github", lambda n: ({"x-github-event": "e" * n}, {})),
        ("github", lambda n: ({"x-github-event": "e", "x-github-delivery": "d" * n}, {})),
        ("stripe", lambda n: ({}, {"type": "t" * n})),
        ("stripe", lambda n: ({}, {"id": "i" * n})),
        ("standard", lambda n: ({"webhook-id": "i" * n}, {})),
        ("shopify", lambda n: ({"x-shopify-topic": "t" * n}, {})),
        ("slack", lambda n: ({}, {"event_id": "i" * n})),
    ],
)
def test_names_and_keys_are_bounded(
    provider: Provider, make: Callable[[int], tuple[dict[str, str], Any]]
) -> None:
    """Event names and delivery keys up to the limit pass; one more character is a 400."""
    opened(provider, *make(MAX_NAME_LENGTH))
    with pytest.raises(RequestError):
        opened(provider, *make(MAX_NAME_LENGTH + 1))


# --- redaction ------------------------------------------------------------------------------------


def test_redact_hides_credentials_and_keeps_the_rest() -> None:
    """Signature, auth, cookie and secret-ish headers are redacted; others are kept."""
    headers = {
        "x-hub-signature-256": "sha256=abc",
        "x-hub-signature": "sha1=abc",
        "Stripe-Signature": "t=1,v1=x",
        "webhook-signature": "v1,x",
        "x-shopify-hmac-sha256": "x",
        "authorization": "Bearer x",
        "cookie": "a=b",
        "x-zoho-token": "x",
        "x-client-secret": "x",
        "x-my-hmac": "x",
        "x-api-key": "x",
        "x-github-event": "push",
        "x-github-delivery": "d",
        "webhook-id": "msg",
        "content-type": "application/json",
        "x-custom-digest": "x",
    }
    stored = redact(headers, extra=("X-Custom-Digest",))
    kept = {"x-github-event", "x-github-delivery", "webhook-id", "content-type"}
    assert stored == {name: value if name in kept else REDACTED for name, value in headers.items()}
    assert headers["cookie"] == "a=b"


def test_redact_without_extra_keeps_unknown_headers() -> None:
    """Without extra names an unrecognised header is kept."""
    assert redact({"x-custom-digest": "x"}) == {"x-custom-digest": "x"}


# --- never another exception -------------------------------------------------------------------

CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=utf-8",
            "application/foo+json; charset",
            "application/json; charset=\u00e9",
            ";;;",
        ]
    ),
    st.text(max_size=30),
)
TEXT = st.text(st.characters(categories=["Cs", "Nd", "Po", "Ll", "Zs", "Cc"]), max_size=30)
BODIES = st.one_of(
    st.binary(max_size=150),
    st.sampled_from(
        [
            b'{"type":"event_callback","event":{"type":1}}',
            b'{"type":"url_verification"}',
            b'{"type":"url_verification","challenge":"c"}',
            b'{"module":"M","operation":"o"}',
            b"payload=%7B%22type%22%3A1%7D",
            b"payload=%7B%7D&command=%2F",
            b"payload=5",
            b"command=%2Fx%ff",
            b"[]",
            b"null",
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    provider=st.sampled_from(PROVIDERS),
    content_type=CONTENT_TYPES,
    extra=st.dictionaries(
        st.sampled_from(
            [
                "x-github-event",
                "x-github-delivery",
                "x-shopify-topic",
                "shopify-topic",
                "x-shopify-webhook-id",
                "webhook-id",
                "svix-id",
                "x-id",
            ]
        ),
        TEXT,
        max_size=4,
    ),
    body=BODIES,
)
def test_open_envelope_raises_only_patchbay_errors(
    provider: Provider, content_type: str, extra: dict[str, str], body: bytes
) -> None:
    """Arbitrary bytes and headers give an Envelope or a PatchbayError, nothing else."""
    try:
        envelope = open_envelope(
            scheme(provider, id_header="x-id"), {"content-type": content_type, **extra}, body
        )
    except PatchbayError:
        return
    assert len(envelope.event) <= MAX_NAME_LENGTH
    assert len(envelope.delivery_key) <= MAX_NAME_LENGTH
