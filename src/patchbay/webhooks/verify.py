"""Webhook signature verification and signing: a pure protocol layer, one function per scheme.

Sans-I/O: nothing here opens a socket or reads the clock. ``verify`` is given the lower-cased
request headers, the exact raw body bytes and ``now`` (Unix seconds), and either returns or raises
one of exactly two errors: ``SignatureRejected`` (401, with a stable ``reason`` code from
``REASONS``) when the request is well-formed but not authentic, fresh or allowed, and
``MalformedSignature`` (400) when a signature or timestamp header is present but cannot be
parsed. No other exception escapes for any headers or body, so a web adapter never answers 500
because a stranger sent garbage. The same scheme table drives ``sign``, which the CLI and the
pytest helper use to build requests that pass ``verify``.

Every scheme follows the same rules: each configured secret is tried (rotation), every candidate
signature is compared against every secret with ``hmac.compare_digest`` on raw digests, the number
of candidates in one header is bounded (``Scheme.max_signatures``, against CPU amplification), and
a timestamp, where the scheme signs one, must lie within ``Scheme.tolerance`` of ``now`` in
*both* directions (stripe-python only rejects old ones). Timestamps must be plain ASCII digits:
``int()`` would also take ``+1``, `` 1``, ``1_0`` or Arabic-Indic digits, which a signer never sends.

Standard Webhooks and Svix go through the ``standardwebhooks`` package, wrapped. Its
``Webhook.verify`` reads the wall clock with a fixed ±5 minute window, decodes the body as text
and raises bare ``ValueError``/``binascii.Error``/``UnicodeDecodeError`` on malformed input. So
the wrapper parses the headers itself, applies its own window against the ``now`` it was given,
and then asks the library's ``Webhook.sign`` for the expected signature at that fixed timestamp:
the library still owns the ``whsec_`` key decoding and the ``{id}.{timestamp}.{body}`` signed
string, while the window is ours alone (narrower *or* wider than 5 minutes) and the function stays
pure. Because the library signs text, a body that is not UTF-8 cannot be checked and is rejected
as ``unverifiable_body``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, get_args

import orjson
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from patchbay.errors import ConfigError, MalformedSignature, RequestError, SignatureRejected

Provider = Literal["github", "standard", "svix", "stripe", "slack", "shopify", "zoho", "hmac"]
Encoding = Literal["hex", "base64"]
Algorithm = Literal["sha256", "sha1", "sha512"]

PROVIDERS: Final[tuple[Provider, ...]] = get_args(Provider)

REASONS: Final = frozenset(
    {
        "no_secret",  # the source has no secret or token configured: fail closed
        "missing_signature",  # no signature header, or none in a version this scheme checks
        "missing_timestamp",  # the scheme signs a timestamp and its header is absent
        "missing_id",  # the scheme signs a message id and its header is absent
        "bad_signature",  # no candidate matches any configured secret
        "timestamp_too_old",  # older than now - tolerance
        "timestamp_in_future",  # later than now + tolerance (also: milliseconds sent as seconds)
        "unverifiable_body",  # Standard Webhooks/Svix body is not UTF-8, so it cannot be checked
        "missing_token",  # Zoho: the body is not a JSON object with a string ``token``
        "bad_token",  # Zoho: the token matches no configured token
        "unknown_channel",  # Zoho: ``channel_id`` is not one of the configured channels
    }
)
"""Every ``SignatureRejected.reason`` that ``verify`` raises; stable, for counters and logs."""

_ALGORITHMS: Final = frozenset(get_args(Algorithm))
_TIMESTAMP: Final = re.compile(r"[0-9]{1,15}")
_HEX: Final = re.compile(r"(?:[0-9a-fA-F]{2})+")
_PLACEHOLDER: Final = re.compile(r"(\{body\}|\{timestamp\}|\{id\})")
_STANDARD_HEADERS: Final = ("webhook-id", "webhook-timestamp", "webhook-signature")
_SVIX_HEADERS: Final = ("svix-id", "svix-timestamp", "svix-signature")


@dataclass(frozen=True, slots=True)
class Scheme:
    """How one source signs its deliveries; invalid combinations raise ``ConfigError``.

    ``secrets`` holds every accepted secret (several during a rotation; Zoho: the accepted
    tokens). ``tolerance`` is the timestamp window in seconds, applied in both directions.
    ``legacy_sha1`` lets GitHub's ``X-Hub-Signature: sha1=`` through when no SHA-256 header is
    sent. The ``header`` … ``algorithm`` fields describe the generic ``hmac`` scheme, whose
    ``template`` builds the signed bytes from ``{body}``, ``{timestamp}`` and ``{id}``; the two
    last are read from ``timestamp_header`` and ``id_header``. ``channels`` lists the Zoho
    ``channel_id`` values accepted (empty: any).
    """

    provider: Provider
    secrets: tuple[str, ...]
    tolerance: float = 300.0
    legacy_sha1: bool = False
    max_signatures: int = 10
    header: str = "x-signature"
    template: str = "{body}"
    encoding: Encoding = "hex"
    prefix: str = ""
    timestamp_header: str = ""
    id_header: str = ""
    algorithm: Algorithm = "sha256"
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Settings loaders hand over lists; a frozen value wants tuples and lower-case names.
        object.__setattr__(self, "secrets", tuple(self.secrets))
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        for name in ("header", "timestamp_header", "id_header"):
            object.__setattr__(self, name, getattr(self, name).strip().lower())
        if self.provider not in PROVIDERS:
            raise ConfigError(f"unknown webhook provider {self.provider!r}", provider=self.provider)
        if not (self.tolerance >= 0):
            raise ConfigError("webhook tolerance must be a non-negative number of seconds")
        if self.max_signatures < 1:
            raise ConfigError("max_signatures must be at least 1")
        if self.encoding not in get_args(Encoding):
            raise ConfigError(f"unknown signature encoding {self.encoding!r}")
        if self.algorithm not in _ALGORITHMS:
            raise ConfigError(f"unknown HMAC algorithm {self.algorithm!r}")
        for secret in self.secrets:
            self._check_secret(secret)
        if self.provider == "hmac":
            self._check_generic()

    def _check_secret(self, secret: object) -> None:
        if not isinstance(secret, str) or not secret:
            raise ConfigError("webhook secrets must be non-empty strings", provider=self.provider)
        try:
            secret.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                "a webhook secret is not valid text", provider=self.provider
            ) from None
        if self.provider not in ("standard", "svix"):
            return
        try:
            Webhook(secret)
        except (ValueError, EmptyWebhookSecretError) as exc:
            # Never echo the secret itself into the error.
            raise ConfigError(
                "a Standard Webhooks secret must be 'whsec_' followed by base64",
                provider=self.provider,
            ) from exc

    def _check_generic(self) -> None:
        if not self.header:
            raise ConfigError("the hmac scheme needs a signature header name")
        used = set(_PLACEHOLDER.findall(self.template))
        if "{body}" not in used:
            raise ConfigError("the hmac template must sign {body}", template=self.template)
        # An unsigned timestamp is replaceable by anyone, so checking one would only look safe.
        if ("{timestamp}" in used) != bool(self.timestamp_header):
            raise ConfigError(
                "the hmac template signs {timestamp} exactly when timestamp_header is set",
                template=self.template,
            )
        if "{id}" in used and not self.id_header:
            raise ConfigError("the hmac template signs {id} but id_header is not set")


def verify(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Accept a delivery or raise ``SignatureRejected`` (401) or ``MalformedSignature`` (400).

    ``headers`` must have lower-case names; ``body`` is the exact raw request body; ``now`` is
    the current Unix time in seconds.
    """
    if not scheme.secrets:
        raise SignatureRejected("no_secret")
    _VERIFIERS[scheme.provider](scheme, headers, body, now)


def sign(scheme: Scheme, body: bytes, *, now: float, delivery_id: str) -> dict[str, str]:
    """Return the lower-case headers that make ``verify`` accept ``body``, signed with secret 0.

    The headers are those the provider's signature check reads (for Standard Webhooks, Svix and
    a generic scheme with ``id_header``, that includes ``delivery_id``). Zoho's token travels in
    the body, so for Zoho this returns ``{}``.
    """
    if scheme.provider == "zoho":
        return {}
    if not scheme.secrets:
        raise ConfigError("the webhook scheme has no secret to sign with", provider=scheme.provider)
    secret = scheme.secrets[0]
    stamp = str(math.floor(now))
    match scheme.provider:
        case "github":
            headers = {"x-hub-signature-256": "sha256=" + _mac(secret, "sha256", body).hex()}
            if scheme.legacy_sha1:
                headers["x-hub-signature"] = "sha1=" + _mac(secret, "sha1", body).hex()
            return headers
        case "standard" | "svix":
            id_name, stamp_name, signature_name = (
                _STANDARD_HEADERS if scheme.provider == "standard" else _SVIX_HEADERS
            )
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError("a Standard Webhooks body must be UTF-8 text") from exc
            signature = Webhook(secret).sign(delivery_id, _utc(int(stamp)), text)
            return {id_name: delivery_id, stamp_name: stamp, signature_name: signature}
        case "stripe":
            digest = _mac(secret, "sha256", stamp.encode() + b"." + body).hex()
            return {"stripe-signature": f"t={stamp},v1={digest}"}
        case "slack":
            digest = _mac(secret, "sha256", b"v0:" + stamp.encode() + b":" + body).hex()
            return {"x-slack-request-timestamp": stamp, "x-slack-signature": "v0=" + digest}
        case "shopify":
            return {"x-shopify-hmac-sha256": _b64(_mac(secret, "sha256", body))}
        case "hmac":
            parts = {"body": body, "timestamp": stamp.encode(), "id": delivery_id.encode()}
            raw = _mac(secret, scheme.algorithm, _render(scheme.template, parts))
            encoded = raw.hex() if scheme.encoding == "hex" else _b64(raw)
            headers = {scheme.header: scheme.prefix + encoded}
            if scheme.timestamp_header:
                headers[scheme.timestamp_header] = stamp
            if scheme.id_header:
                headers[scheme.id_header] = delivery_id
            return headers
    raise ConfigError(f"unknown webhook provider {scheme.provider!r}")  # pragma: no cover


# --- the verifiers, one per provider -------------------------------------------------------


def _verify_github(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    # GitHub has no timestamp: replay defence is the X-GitHub-Delivery dedup in the inbox.
    value = _header(headers, "x-hub-signature-256")
    algorithm: Algorithm = "sha256"
    if value is None and scheme.legacy_sha1:
        value = _header(headers, "x-hub-signature")
        algorithm = "sha1"
    if value is None:
        raise SignatureRejected("missing_signature")
    candidate = _decode(_strip_prefix(value, algorithm + "="), "hex")
    _accept(scheme, algorithm, body, [candidate])


def _verify_standard(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    id_name, stamp_name, signature_name = (
        _STANDARD_HEADERS if scheme.provider == "standard" else _SVIX_HEADERS
    )
    value = _require(headers, signature_name, "missing_signature")
    message_id = _require(headers, id_name, "missing_id")
    raw_stamp = _require(headers, stamp_name, "missing_timestamp")
    entries = _split(value, None, scheme.max_signatures)
    candidates = []
    for entry in entries:
        version, comma, encoded = entry.partition(",")
        if not comma:
            raise MalformedSignature(f"a {signature_name} entry has no comma")
        # Unknown versions (v1a is ed25519, v2 is future) are skipped, as the spec says.
        if version == "v1":
            candidates.append(_decode(encoded, "base64"))
    if not candidates:
        raise SignatureRejected("missing_signature")
    _, stamp = _check_timestamp(raw_stamp, scheme, now)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureRejected("unverifiable_body") from None
    try:
        when = _utc(stamp)
        expected = [
            base64.b64decode(Webhook(secret).sign(message_id, when, text).partition(",")[2])
            for secret in scheme.secrets
        ]
    except (ValueError, OverflowError, OSError, EmptyWebhookSecretError) as exc:
        # UnicodeEncodeError (a lone surrogate in the id) and binascii.Error are ValueErrors.
        raise MalformedSignature(f"{id_name} or {stamp_name} cannot be signed") from exc
    if not _any_match(expected, candidates):
        raise SignatureRejected("bad_signature")


def _verify_stripe(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    value = _require(headers, "stripe-signature", "missing_signature")
    # One item more than the bound leaves room for the ``t=`` item.
    items = _split(value, ",", scheme.max_signatures + 1)
    raw_stamp: str | None = None
    candidates = []
    for item in items:
        key, equals, content = item.strip().partition("=")
        if not equals:
            raise MalformedSignature("a Stripe-Signature item is not key=value")
        if key == "t":
            if raw_stamp is not None:
                raise MalformedSignature("Stripe-Signature has two timestamps")
            raw_stamp = content
        elif key == "v1":
            candidates.append(_decode(content, "hex"))
        # v0 (test-mode) and unknown schemes are ignored: only v1 is Stripe's HMAC-SHA256.
    if raw_stamp is None:
        raise MalformedSignature("Stripe-Signature has no t= timestamp")
    if not candidates:
        raise SignatureRejected("missing_signature")
    _, stamp = _check_timestamp(raw_stamp, scheme, now)
    # stripe-python signs "%d.%s" % (int(t), body): the integer, not the header text.
    _accept(scheme, "sha256", b"%d." % stamp + body, candidates)


def _verify_slack(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    value = _require(headers, "x-slack-signature", "missing_signature")
    raw_stamp = _require(headers, "x-slack-request-timestamp", "missing_timestamp")
    candidate = _decode(_strip_prefix(value, "v0="), "hex")
    text, _ = _check_timestamp(raw_stamp, scheme, now)
    # slack_sdk signs the timestamp header's text as sent.
    _accept(scheme, "sha256", b"v0:" + text.encode() + b":" + body, [candidate])


def _verify_shopify(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    # The un-prefixed name is Shopify's newer "Events" delivery; no timestamp is signed.
    value = _header(headers, "x-shopify-hmac-sha256") or _header(headers, "shopify-hmac-sha256")
    if value is None:
        raise SignatureRejected("missing_signature")
    _accept(scheme, "sha256", body, [_decode(value, "base64")])


def _verify_zoho(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    # Zoho CRM signs nothing: it echoes the token we gave it when subscribing. A body that is not
    # a JSON object carrying a string token is treated like a missing signature (401, not 400),
    # so that probing with junk looks the same as probing without a token.
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise SignatureRejected("missing_token")
    # orjson never yields lone surrogates, so the token always encodes.
    if not _any_match([s.encode("utf-8") for s in scheme.secrets], [token.encode("utf-8")]):
        raise SignatureRejected("bad_token")
    if scheme.channels:
        channel = data.get("channel_id")
        if isinstance(channel, bool) or not isinstance(channel, int | str):
            raise SignatureRejected("unknown_channel")
        if str(channel) not in scheme.channels:
            raise SignatureRejected("unknown_channel")


def _verify_hmac(scheme: Scheme, headers: Mapping[str, str], body: bytes, now: float) -> None:
    value = _require(headers, scheme.header, "missing_signature")
    # Comma-separated candidates, one per active secret, is how django-webhook rotates.
    candidates = [
        _decode(_strip_prefix(item, scheme.prefix), scheme.encoding)
        for item in _split(value, ",", scheme.max_signatures)
    ]
    parts = {"body": body}
    if scheme.timestamp_header:
        raw_stamp = _require(headers, scheme.timestamp_header, "missing_timestamp")
        text, _ = _check_timestamp(raw_stamp, scheme, now)
        parts["timestamp"] = text.encode()
    if "{id}" in scheme.template:
        message_id = _require(headers, scheme.id_header, "missing_id")
        try:
            parts["id"] = message_id.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedSignature(f"{scheme.id_header} is not valid text") from None
    _accept(scheme, scheme.algorithm, _render(scheme.template, parts), candidates)


_VERIFIERS: Final[dict[str, Callable[[Scheme, Mapping[str, str], bytes, float], None]]] = {
    "github": _verify_github,
    "standard": _verify_standard,
    "svix": _verify_standard,
    "stripe": _verify_stripe,
    "slack": _verify_slack,
    "shopify": _verify_shopify,
    "zoho": _verify_zoho,
    "hmac": _verify_hmac,
}


# --- shared pieces ---------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def _require(headers: Mapping[str, str], name: str, reason: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise SignatureRejected(reason)
    return value


def _split(value: str, separator: str | None, limit: int) -> list[str]:
    # maxsplit keeps a hostile header from being split into millions of pieces first.
    items = value.split(separator, limit)
    if len(items) > limit:
        raise MalformedSignature(f"more than {limit} signatures in one header")
    return items


def _strip_prefix(value: str, prefix: str) -> str:
    value = value.strip()
    if not value[: len(prefix)].lower() == prefix.lower():
        raise MalformedSignature(f"the signature does not start with {prefix!r}")
    return value[len(prefix) :]


def _decode(text: str, encoding: Encoding) -> bytes:
    text = text.strip()
    if encoding == "hex":
        if not _HEX.fullmatch(text):
            raise MalformedSignature("the signature is not hexadecimal")
        return bytes.fromhex(text)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # ValueError: b64decode refuses non-ASCII str before looking at it.
        raise MalformedSignature("the signature is not valid base64") from None


def _check_timestamp(raw: str, scheme: Scheme, now: float) -> tuple[str, int]:
    text = raw.strip()
    if not _TIMESTAMP.fullmatch(text):
        raise MalformedSignature("the timestamp is not an integer number of seconds")
    stamp = int(text)
    # Written as negated comparisons so that a NaN ``now`` fails closed.
    if not stamp >= now - scheme.tolerance:
        raise SignatureRejected("timestamp_too_old")
    if not stamp <= now + scheme.tolerance:
        raise SignatureRejected("timestamp_in_future")
    return text, stamp


def _mac(secret: str, algorithm: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, algorithm).digest()


def _accept(scheme: Scheme, algorithm: str, message: bytes, candidates: list[bytes]) -> None:
    expected = [_mac(secret, algorithm, message) for secret in scheme.secrets]
    if not _any_match(expected, candidates):
        raise SignatureRejected("bad_signature")


def _any_match(expected: Iterable[bytes], candidates: list[bytes]) -> bool:
    # No early exit: every pair is compared, so timing does not tell which secret matched.
    matched = False
    for want in expected:
        for given in candidates:
            matched |= hmac.compare_digest(want, given)
    return matched


def _render(template: str, parts: Mapping[str, bytes]) -> bytes:
    pieces = _PLACEHOLDER.split(template)
    # re.split puts the captured placeholders at the odd indices.
    return b"".join(
        parts[piece[1:-1]] if index % 2 else piece.encode("utf-8")
        for index, piece in enumerate(pieces)
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _utc(stamp: int) -> datetime:
    return datetime.fromtimestamp(stamp, tz=UTC)
