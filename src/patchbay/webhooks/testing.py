"""Build correctly signed webhook requests, for tests of your own handlers and ``hooks send``.

``signed_request`` returns the body and the lower-case headers a provider would send, signed
with ``verify.sign`` so they go through the real verification path (unlike GitHub's or Probot's
unsigned fixture replays)::

    request = signed_request("github", "s3cret", {"action": "opened"}, event="pull_request")
    response = client.post("/hooks/github", content=request.body, headers=request.headers)

A mapping payload is encoded for the content type (JSON, or a form; GitHub's form puts the JSON
in its ``payload`` field) and completed with what the provider always sends and ``verify`` or
``open_envelope`` reads, never overriding a key already present:

- ``event`` goes where the provider puts it: GitHub's ``X-GitHub-Event`` (a dotted name such as
  ``pull_request.opened`` is split, the part after the dot filling ``action``), Shopify's
  ``X-Shopify-Topic`` (``orders.create`` → ``orders/create``), the body's ``type`` for Stripe,
  Standard Webhooks, Svix and the generic scheme, ``module``/``operation`` for Zoho. Slack
  payloads carry their own type, so ``event`` is ignored there.
- ``delivery_id`` (a fresh random one when not given) becomes ``X-GitHub-Delivery``,
  ``X-Shopify-Webhook-Id``, ``webhook-id``/``svix-id``, the generic scheme's ``id_header``,
  Stripe's body ``id``, or (given explicitly, with no ``id_header``) the generic body's ``id``.
- Zoho's ``secret`` is its token, put into the body with the first configured channel.

Bytes and str payloads are sent exactly as given. The clock is read only when ``now`` is None.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from patchbay.webhooks.envelope import FORM
from patchbay.webhooks.verify import Provider, Scheme, sign

_BODY_TYPED = frozenset({"stripe", "standard", "svix", "hmac"})


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request body and the (lower-case) headers that make it pass verification."""

    headers: dict[str, str]
    body: bytes


def signed_request(
    provider: Provider,
    secret: str,
    payload: bytes | str | Mapping[str, Any],
    *,
    event: str | None = None,
    delivery_id: str | None = None,
    now: float | None = None,
    content_type: str = "application/json",
    **scheme_options: Any,
) -> SignedRequest:
    """Return a request that ``verify`` accepts for ``Scheme(provider, (secret,), **options)``."""
    scheme = Scheme(provider=provider, secrets=(secret,), **scheme_options)
    when = time.time() if now is None else now
    delivery = delivery_id or _fresh_id(provider)
    header_event = event
    if isinstance(payload, Mapping):
        fields = _complete(scheme, dict(payload), event, delivery, explicit=delivery_id is not None)
        if provider == "github" and event and "." in event:
            header_event = event.partition(".")[0]
        body = _encode(provider, fields, content_type)
    elif isinstance(payload, str):
        body = payload.encode("utf-8")
    else:
        body = bytes(payload)
    headers = {"content-type": content_type}
    headers.update(sign(scheme, body, now=when, delivery_id=delivery))
    if provider == "github":
        headers["x-github-delivery"] = delivery
        if header_event:
            headers["x-github-event"] = header_event
    elif provider == "shopify":
        headers["x-shopify-webhook-id"] = delivery
        if event:
            headers["x-shopify-topic"] = event.replace(".", "/")
    return SignedRequest(headers=headers, body=body)


def _fresh_id(provider: str) -> str:
    token = uuid.uuid4()
    if provider in ("standard", "svix"):
        return f"msg_{token.hex}"
    if provider == "stripe":
        return f"evt_{token.hex[:24]}"
    return str(token)


def _complete(
    scheme: Scheme, fields: dict[str, Any], event: str | None, delivery: str, *, explicit: bool
) -> dict[str, Any]:
    provider = scheme.provider
    if event and provider in _BODY_TYPED:
        fields.setdefault("type", event)
    if event and provider == "github" and "." in event:
        fields.setdefault("action", event.partition(".")[2])
    # Stripe events always have an id; a generic sender's body id is used only when asked for.
    if provider == "stripe" or (provider == "hmac" and explicit and not scheme.id_header):
        fields.setdefault("id", delivery)
    if provider == "zoho":
        if event and "." in event:
            module, _, operation = event.rpartition(".")
            fields.setdefault("module", module)
            fields.setdefault("operation", operation)
        fields.setdefault("token", scheme.secrets[0])
        if scheme.channels:
            fields.setdefault("channel_id", scheme.channels[0])
    return fields


def _encode(provider: str, fields: dict[str, Any], content_type: str) -> bytes:
    if content_type.partition(";")[0].strip().lower() != FORM:
        return orjson.dumps(fields)
    if provider == "github":
        return urlencode({"payload": orjson.dumps(fields).decode()}).encode("ascii")
    # Slack's interactivity posts carry JSON in a form field; plain values stay as they are.
    flat = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in fields.items()}
    return urlencode(flat).encode("ascii")
