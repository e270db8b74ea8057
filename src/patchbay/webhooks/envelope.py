"""Turn a verified webhook request into an ``Envelope``: event name, delivery key, parsed payload.

Sans-I/O like ``verify``: the caller hands over the lower-cased headers and the raw body, and
``open_envelope`` either returns an ``Envelope`` or raises a ``RequestError`` (400) or
``UnsupportedMedia`` (415), never anything else, whatever the bytes. It runs *after* ``verify``,
so the parsing below only ever sees bodies that a configured secret vouched for.

Bodies are ``application/json`` (also ``application/*+json``) or, for GitHub, Slack and the
generic ``hmac`` scheme, ``application/x-www-form-urlencoded``; a charset other than UTF-8 or
ASCII is refused. GitHub's form body carries the JSON in its ``payload`` field, which becomes the
payload. Slack's form posts (slash commands, interactivity) become a dict of their fields, with a
``payload`` field parsed as JSON when present.

Event names (``"webhook"`` when the rule finds no non-empty string):

- GitHub: ``X-GitHub-Event``, plus ``.`` and the payload's ``action`` when it has one
  (``pull_request.opened``, ``push``, ``ping``).
- Stripe, Standard Webhooks, Svix: the body's ``type``.
- Shopify: ``X-Shopify-Topic`` (or ``Shopify-Topic``) with ``/`` turned into ``.``.
- Slack JSON: for ``event_callback``, the inner ``event.type`` (``app_mention``); else the
  envelope ``type`` (``url_verification``, ``app_rate_limited``). Slack form posts: the ``type``
  of the ``payload`` field (``block_actions``, ``view_submission``), else ``command.`` and the
  slash command without its slash (``/deploy`` → ``command.deploy``).
- Zoho: ``{module}.{operation}`` (``Leads.insert``).
- Generic ``hmac``: the body's ``type``, else its ``event``.

Delivery keys (``sha256:`` and the hex SHA-256 of the body when the provider's key is missing):
GitHub ``X-GitHub-Delivery``; Standard Webhooks ``webhook-id``; Svix ``svix-id``; Stripe the
body's ``id``; Shopify ``X-Shopify-Webhook-Id`` (or ``Shopify-Webhook-Id``); Slack the body's
``event_id``; Zoho always the body hash (Zoho sends no id); generic ``hmac`` the ``id_header``
value, else the body's ``id`` (a string or an integer). Event names and keys longer than
``MAX_NAME_LENGTH`` are refused: they end up in indexed columns and log lines.

A Slack ``url_verification`` request carries a ``Handshake``: the reply the intake must send at
once (Slack accepts the challenge echoed as JSON). It is answered, never stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson

from patchbay.errors import RequestError, UnsupportedMedia
from patchbay.webhooks.verify import Scheme

MAX_NAME_LENGTH: Final = 200
"""The longest event name or delivery key accepted."""

REDACTED: Final = "[redacted]"

JSON: Final = "application/json"
FORM: Final = "application/x-www-form-urlencoded"

_FORM_PROVIDERS: Final = frozenset({"github", "slack", "hmac"})
_CHARSETS: Final = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_MAX_FORM_FIELDS: Final = 1000
_SECRET_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-hub-signature",
        "x-hub-signature-256",
        "webhook-signature",
        "svix-signature",
        "stripe-signature",
        "x-slack-signature",
        "x-shopify-hmac-sha256",
        "shopify-hmac-sha256",
        "x-api-key",
    }
)
_SECRET_WORDS: Final = (
    "signature",
    "token",
    "secret",
    "hmac",
    "authorization",
    "cookie",
    "password",
    "api-key",
    "apikey",
)


@dataclass(frozen=True, slots=True)
class Handshake:
    """A reply the intake sends at once instead of storing the request."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the inbox stores about one delivery, besides its raw bytes."""

    event: str
    delivery_key: str
    payload: Any
    content_type: str
    handshake: Handshake | None = None


def open_envelope(scheme: Scheme, headers: Mapping[str, str], body: bytes) -> Envelope:
    """Parse a (verified) delivery; raise ``UnsupportedMedia`` or ``RequestError`` on bad input."""
    media = _media_type(headers.get("content-type"))
    provider = scheme.provider
    if media == FORM:
        if provider not in _FORM_PROVIDERS:
            raise UnsupportedMedia(f"{provider} webhooks are JSON", content_type=media)
        fields = _parse_form(body)
        if provider == "github":
            if "payload" not in fields:
                raise RequestError("a form-encoded GitHub delivery has no payload field")
            payload: Any = _parse_json(fields["payload"].encode("utf-8"))
        else:
            payload = dict(fields)
            if "payload" in fields:
                payload["payload"] = _parse_json(fields["payload"].encode("utf-8"))
    else:
        payload = _parse_json(body)
    form = media == FORM
    event = _bounded(_EVENTS[provider](scheme, headers, payload, form) or "webhook", "event name")
    key = _KEYS[provider](scheme, headers, payload, form)
    delivery_key = _bounded(key or "sha256:" + hashlib.sha256(body).hexdigest(), "delivery key")
    return Envelope(
        event=event,
        delivery_key=delivery_key,
        payload=payload,
        content_type=media,
        handshake=_handshake(provider, payload, form),
    )


def redact(headers: Mapping[str, str], *, extra: Collection[str] = ()) -> dict[str, str]:
    """Return the headers safe to store: credentials and signatures become ``"[redacted]"``.

    A header is redacted when its name is a known credential or signature header, contains one
    of ``signature``, ``token``, ``secret``, ``hmac``, ``authorization``, ``cookie``,
    ``password`` or ``api-key``, or is listed in ``extra`` (say, a generic scheme's own header).
    """
    also = {name.lower() for name in extra}
    return {
        name: REDACTED if _secret_header(name.lower(), also) else value
        for name, value in headers.items()
    }


def _secret_header(name: str, also: Collection[str]) -> bool:
    return name in _SECRET_HEADERS or name in also or any(w in name for w in _SECRET_WORDS)


# --- parsing -----------------------------------------------------------------------------------


def _media_type(value: str | None) -> str:
    if not value or not value.strip():
        raise UnsupportedMedia("a webhook needs a Content-Type")
    media, _, parameters = value.partition(";")
    media = media.strip().lower()
    if media != FORM and media != JSON and not _is_json_suffix(media):
        raise UnsupportedMedia("webhooks must be JSON or form-encoded", content_type=media[:100])
    for parameter in parameters.split(";"):
        name, _, content = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = content.strip().strip('"').lower()
            if charset not in _CHARSETS:
                raise UnsupportedMedia("webhook bodies must be UTF-8", charset=charset[:40])
    return media


def _is_json_suffix(media: str) -> bool:
    kind, slash, subtype = media.partition("/")
    return kind == "application" and bool(slash) and subtype.endswith("+json")


def _parse_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson also refuses invalid UTF-8, lone surrogates and nesting deeper than 1024.
        raise RequestError("the webhook body is not valid JSON") from None


def _parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except ValueError:
        # UnicodeDecodeError (raw or percent-encoded bytes) or too many fields.
        raise RequestError("the webhook body is not a valid UTF-8 form") from None
    return dict(pairs)


def _bounded(value: str, what: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise RequestError(f"the {what} is longer than {MAX_NAME_LENGTH} characters")
    return value


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _field(payload: Any, name: str) -> str | None:
    return _text(payload.get(name)) if isinstance(payload, dict) else None


def _first_header(headers: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = headers.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


# --- event names -------------------------------------------------------------------------------

_Rule = Callable[[Scheme, Mapping[str, str], Any, bool], str | None]


def _github_event(
    scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool
) -> str | None:
    name = _first_header(headers, "x-github-event")
    if name is None:
        return None
    action = _field(payload, "action")
    return f"{name}.{action}" if action else name


def _type_event(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
    return _field(payload, "type")


def _shopify_event(
    scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool
) -> str | None:
    topic = _first_header(headers, "x-shopify-topic", "shopify-topic")
    return topic.replace("/", ".") if topic else None


def _slack_event(
    scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool
) -> str | None:
    if form:
        inner = _field(payload.get("payload"), "type")
        if inner:
            return inner
        command = _field(payload, "command")
        name = command.lstrip("/") if command else ""
        return f"command.{name}" if name else None
    kind = _field(payload, "type")
    if kind == "event_callback":
        return _field(payload.get("event"), "type") or kind
    return kind


def _zoho_event(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
    module, operation = _field(payload, "module"), _field(payload, "operation")
    return f"{module}.{operation}" if module and operation else None


def _hmac_event(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
    return _field(payload, "type") or _field(payload, "event")


_EVENTS: Final[dict[str, _Rule]] = {
    "github": _github_event,
    "standard": _type_event,
    "svix": _type_event,
    "stripe": _type_event,
    "slack": _slack_event,
    "shopify": _shopify_event,
    "zoho": _zoho_event,
    "hmac": _hmac_event,
}


# --- delivery keys -----------------------------------------------------------------------------


def _header_key(*names: str) -> _Rule:
    def rule(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
        return _first_header(headers, *names)

    return rule


def _stripe_key(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
    return _field(payload, "id")


def _slack_key(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
    return None if form else _field(payload, "event_id")


def _no_key(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
    return None


def _hmac_key(scheme: Scheme, headers: Mapping[str, str], payload: Any, form: bool) -> str | None:
    if scheme.id_header:
        value = _first_header(headers, scheme.id_header)
        if value:
            return value
    if isinstance(payload, dict):
        found = payload.get("id")
        if isinstance(found, int) and not isinstance(found, bool):
            return str(found)
        return _text(found)
    return None


_KEYS: Final[dict[str, _Rule]] = {
    "github": _header_key("x-github-delivery"),
    "standard": _header_key("webhook-id"),
    "svix": _header_key("svix-id"),
    "stripe": _stripe_key,
    "slack": _slack_key,
    "shopify": _header_key("x-shopify-webhook-id", "shopify-webhook-id"),
    "zoho": _no_key,
    "hmac": _hmac_key,
}


def _handshake(provider: str, payload: Any, form: bool) -> Handshake | None:
    if provider != "slack" or form or _field(payload, "type") != "url_verification":
        return None
    challenge = _field(payload, "challenge")
    if challenge is None:
        raise RequestError("a Slack url_verification request has no challenge")
    return Handshake(200, JSON, orjson.dumps({"challenge": challenge}))
