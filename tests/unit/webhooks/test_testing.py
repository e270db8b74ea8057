"""The signed-request helper for users' handler tests and ``patchbay hooks send``."""

from __future__ import annotations

import time
import types
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest

from patchbay.webhooks import testing
from patchbay.webhooks.envelope import open_envelope
from patchbay.webhooks.testing import SignedRequest, signed_request
from patchbay.webhooks.verify import PROVIDERS, Provider, Scheme, verify

NOW = 1_700_000_000.0
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def secret_for(provider: str) -> str:
    return WHSEC if provider in ("standard", "svix") else "s3cret"


def check(provider: Provider, request: SignedRequest, **options: Any) -> Any:
    """Verify and open a request the way the intake does; return its envelope."""
    scheme = Scheme(provider, (secret_for(provider),), **options)
    verify(scheme, request.headers, request.body, NOW)
    return open_envelope(scheme, request.headers, request.body)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_passes_verification(provider: Provider) -> None:
    """A signed request for each provider verifies and opens."""
    request = signed_request(provider, secret_for(provider), {"n": 1}, now=NOW)
    envelope = check(provider, request)
    assert envelope.payload["n"] == 1
    assert request.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in request.headers)


@pytest.mark.parametrize(
    ("provider", "event", "expected"),
    [
        ("github", "pull_request.opened", "pull_request.opened"),
        ("github", "push", "push"),
        ("shopify", "orders/create", "orders.create"),
        ("shopify", "orders.create", "orders.create"),
        ("stripe", "invoice.paid", "invoice.paid"),
        ("standard", "user.created", "user.created"),
        ("svix", "user.created", "user.created"),
        ("hmac", "thing.happened", "thing.happened"),
        ("zoho", "Leads.insert", "Leads.insert"),
    ],
)
def test_event_lands_where_the_provider_puts_it(
    provider: Provider, event: str, expected: str
) -> None:
    """The event is placed so that open_envelope names it as asked."""
    request = signed_request(provider, secret_for(provider), {}, event=event, now=NOW)
    assert check(provider, request).event == expected


def test_github_dotted_event_is_split() -> None:
    """pull_request.opened becomes X-GitHub-Event pull_request and action opened."""
    request = signed_request("github", "s3cret", {"number": 1}, event="pull_request.opened")
    assert request.headers["x-github-event"] == "pull_request"
    assert orjson.loads(request.body) == {"number": 1, "action": "opened"}


def test_present_keys_are_never_overridden() -> None:
    """A payload's own type, id and action win over the helper's arguments."""
    request = signed_request(
        "stripe", "s3cret", {"id": "evt_mine", "type": "a.b"}, event="c.d", delivery_id="evt_x"
    )
    assert orjson.loads(request.body) == {"id": "evt_mine", "type": "a.b"}


@pytest.mark.parametrize(
    ("provider", "header"),
    [
        ("github", "x-github-delivery"),
        ("shopify", "x-shopify-webhook-id"),
        ("standard", "webhook-id"),
        ("svix", "svix-id"),
    ],
)
def test_delivery_id_header(provider: Provider, header: str) -> None:
    """The delivery id goes into the provider's id header and becomes the delivery key."""
    request = signed_request(provider, secret_for(provider), {}, delivery_id="d-42", now=NOW)
    assert request.headers[header] == "d-42"
    assert check(provider, request).delivery_key == "d-42"


def test_stripe_delivery_id_is_the_body_id() -> None:
    """Stripe's key is the body id, filled from delivery_id."""
    request = signed_request("stripe", "s3cret", {}, delivery_id="evt_42", now=NOW)
    assert check("stripe", request).delivery_key == "evt_42"


def test_generic_delivery_id() -> None:
    """The generic scheme uses id_header when configured, else the body id when asked."""
    with_header = signed_request("hmac", "s3cret", {}, delivery_id="d-1", now=NOW, id_header="x-id")
    assert with_header.headers["x-id"] == "d-1"
    assert check("hmac", with_header, id_header="x-id").delivery_key == "d-1"
    in_body = signed_request("hmac", "s3cret", {}, delivery_id="d-2", now=NOW)
    assert orjson.loads(in_body.body) == {"id": "d-2"}
    assert orjson.loads(signed_request("hmac", "s3cret", {}, now=NOW).body) == {}


def test_fresh_delivery_ids_differ() -> None:
    """Without delivery_id every request gets a new one, in the provider's style."""
    first = signed_request("standard", WHSEC, {}, now=NOW)
    second = signed_request("standard", WHSEC, {}, now=NOW)
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    assert first.headers["webhook-id"].startswith("msg_")
    assert orjson.loads(signed_request("stripe", "s", {}, now=NOW).body)["id"].startswith("evt_")


def test_zoho_token_and_channel_go_into_the_body() -> None:
    """Zoho's secret is its token, added with the first configured channel."""
    request = signed_request("zoho", "tok", {"ids": ["1"]}, now=NOW, channels=("77", "78"))
    assert orjson.loads(request.body) == {"ids": ["1"], "token": "tok", "channel_id": "77"}
    verify(Scheme("zoho", ("tok",), channels=("77",)), request.headers, request.body, NOW)


@pytest.mark.parametrize("payload", [b'{"raw": true}', '{"raw": true}'])
def test_bytes_and_text_are_sent_as_given(payload: bytes | str) -> None:
    """Bytes and str payloads are signed exactly as given, with no fields added."""
    request = signed_request("stripe", "s3cret", payload, event="x.y", now=NOW)
    assert request.body == b'{"raw": true}'
    check("stripe", request)


def test_github_form_delivery() -> None:
    """A form-encoded GitHub delivery carries the JSON in its payload field."""
    form = "application/x-www-form-urlencoded"
    request = signed_request("github", "s3cret", {"zen": "z"}, event="ping", content_type=form)
    assert parse_qs(request.body.decode()) == {"payload": ['{"zen":"z"}']}
    envelope = check("github", request)
    assert (envelope.event, envelope.payload) == ("ping", {"zen": "z"})


def test_slack_interactivity_form() -> None:
    """A Slack form with a nested payload is JSON-encoded into that field."""
    form = "application/x-www-form-urlencoded"
    inner = {"type": "view_submission", "view": {"id": "V1"}}
    request = signed_request("slack", "s3cret", {"payload": inner}, content_type=form, now=NOW)
    envelope = check("slack", request)
    assert (envelope.event, envelope.payload) == ("view_submission", {"payload": inner})


def test_scheme_options_are_used_for_signing() -> None:
    """Generic scheme options shape the signature the helper produces."""
    options: dict[str, Any] = {
        "header": "X-Sig",
        "template": "{timestamp}.{body}",
        "timestamp_header": "X-Ts",
        "encoding": "base64",
        "prefix": "sha256=",
    }
    request = signed_request("hmac", "s3cret", {"type": "a"}, now=NOW, **options)
    assert request.headers["x-ts"] == str(int(NOW))
    assert request.headers["x-sig"].startswith("sha256=")
    check("hmac", request, **options)


def test_clock_is_read_only_without_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """With now given the clock is never read; without it the wall clock is used."""

    def no_clock() -> float:
        raise AssertionError("the clock was read")

    monkeypatch.setattr(testing, "time", types.SimpleNamespace(time=no_clock))
    signed_request("slack", "s3cret", {}, now=NOW)
    monkeypatch.undo()
    request = signed_request("slack", "s3cret", {})
    verify(Scheme("slack", ("s3cret",)), request.headers, request.body, time.time())
