"""A faithful local Firebase Cloud Messaging: the OAuth token endpoint, HTTP v1 send, topics.

Built from the research notes (fcm.md sections 1 and 4) so that a push sender, or the official
``firebase-admin`` SDK, can be tested offline and behave as against Google:

- **Token endpoint** ``POST /token`` (a service-account JSON's ``token_uri`` points here): the
  JWT-bearer grant (form fields ``grant_type``, ``assertion``). The RS256 signature is checked
  against ``public_keys`` (the JWT's ``kid`` header picks the key); without keys any well-formed
  RS256 assertion passes. Claims are checked as Google does: ``iss`` present, ``aud`` Google's
  token URL (google-auth always puts ``https://oauth2.googleapis.com/token`` there, whatever
  ``token_uri`` says), a ``scope``, ``iat``/``exp`` at most an hour apart and current. Answers
  ``{"access_token", "expires_in", "token_type": "Bearer"}`` or an OAuth error (HTTP 400,
  ``{"error": "invalid_grant", "error_description": ...}``). Tokens live ``token_lifetime``
  seconds of ``clock``.
- **Send** ``POST /v1/projects/{project}/messages:send``: a missing, unknown or expired bearer is
  401 ``UNAUTHENTICATED`` (``google.rpc.ErrorInfo`` ``CREDENTIALS_MISSING`` or
  ``ACCESS_TOKEN_EXPIRED``), a token without an FCM scope or another project is 403
  ``PERMISSION_DENIED``. The message is validated like FCM (proto-JSON field names, snake or
  camel case; exactly one target of ``token``/``fid``/``topic``/``condition``; string data values;
  reserved data keys; 4096 bytes of payload, 2048 to a topic; ``android.ttl`` and ``priority``;
  analytics labels; HTTPS webpush links; no ``apns-priority: 10`` on APNs data-only messages),
  and refused with FCM's ``google.rpc.Status`` bodies (``FcmError`` ``errorCode``,
  ``google.rpc.BadRequest`` field violations). Accepted messages get
  ``{"name": "projects/{project}/messages/{id}"}`` and go to ``ledger``; ``validate_only``
  answers ``.../messages/fake_message_id`` and records nothing.
- **Registration tokens by rule**: ``set_token_state``, ``unregister_prefix``, ``token_rule``
  make a token (or FID) answer ``UNREGISTERED`` (404), ``SENDER_ID_MISMATCH`` (403), an invalid
  token (400) or ``THIRD_PARTY_AUTH_ERROR`` (401).
- **Faults**: per-target scripts (``script``), a script for whatever comes next
  (``script_any``), seeded random rates (``fault_rates``) and a per-minute project quota
  (``set_quota``): 429 with ``Retry-After``, 500, 503, slow answers, a connection dropped before
  the message is stored and one dropped after. Dropping needs the server's help (see
  ``patchbay.emulators.serve``); under ``httpx.ASGITransport`` the client gets the same
  ``httpx.RemoteProtocolError`` a hang-up causes.
- **Topics**: the Instance ID API ``POST /iid/v1:batchAdd`` and ``:batchRemove`` (header
  ``access_token_auth: true``, at most 1000 tokens, per-index results) and the newer
  ``/v1/projects/{p}/registrations/{token}/topicSubscriptions`` resource (create with
  ``topicName``, 409 ``ALREADY_EXISTS``; get; list; delete with ``allowMissing``). ``topics``
  holds who is subscribed.

Pointing clients at it: a sender takes the base URL as a setting. ``firebase-admin`` has no
setting: give it a service-account JSON whose ``token_uri`` is ``{base}/token`` (see
``patchbay.emulators.keys.service_account``), then set its messaging service's ``_fcm_url``
and ``_fcm_topic_url`` (and the class attribute ``IID_URL`` for the legacy topic calls); see
``tests/integration/test_fcm_firebase_admin.py``.

Error texts are FCM's where the research found them; where it did not (reserved keys, payload
size, topic names, conditions, the APNs priority rule), the status, ``errorCode`` and field are
FCM's and the text is ours. The app is a plain ASGI callable (as the Zoho emulator); all state
lives on the instance, mutated only by the event loop serving it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import random
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args
from urllib.parse import parse_qsl, unquote

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from patchbay.emulators.serve import ConnectionDropped, Receive, Scope, Send

FCM_ERROR: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST: Final = "type.googleapis.com/google.rpc.BadRequest"
QUOTA_FAILURE: Final = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO: Final = "type.googleapis.com/google.rpc.ErrorInfo"
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The audiences Google's token endpoint accepts in a service account's assertion.
TOKEN_AUDIENCES: Final = frozenset(
    {
        "https://oauth2.googleapis.com/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
    }
)
FCM_SCOPES: Final = frozenset(
    {
        "https://www.googleapis.com/auth/firebase.messaging",
        "https://www.googleapis.com/auth/cloud-platform",
    }
)
MAX_ASSERTION_LIFETIME: Final = 3600  # exp - iat, seconds
CLOCK_SKEW: Final = 300.0  # seconds of disagreement tolerated on iat and exp
MAX_PAYLOAD: Final = 4096  # bytes of data keys and values (and notification title and body)
MAX_TOPIC_PAYLOAD: Final = 2048
MAX_TTL: Final = 2_419_200  # 28 days
MAX_BATCH: Final = 1000  # tokens per IID batch request
MAX_TOPICS_PER_INSTANCE: Final = 2000
MAX_CONDITION_TOPICS: Final = 5
MAX_TOPIC_NAME: Final = 900
FAKE_MESSAGE_ID: Final = "fake_message_id"  # what FCM names a validate_only message
UNREGISTERED_MESSAGE: Final = "Requested entity was not found."
INVALID_TOKEN_MESSAGE: Final = "The registration token is not a valid FCM registration token"

TokenState = Literal["valid", "unregistered", "sender_mismatch", "invalid", "third_party_auth"]
TOKEN_STATES: Final[frozenset[str]] = frozenset(get_args(TokenState))
_STATE_ALIASES: Final = {"malformed": "invalid"}  # fcm.md's name for "invalid"
CANONICAL: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STATUS_MESSAGES: Final[Mapping[int, str]] = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: UNREGISTERED_MESSAGE,
    409: "Requested entity already exists",
    429: "Device message rate exceeded.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "The service was unable to fulfill your request. Please try again.",
}
# The FcmError code FCM puts in details for a server-side failure of each status.
_FCM_CODES: Final[Mapping[int, str]] = {
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_TOPIC = re.compile(r"[a-zA-Z0-9\-_.~%]+")
_LABEL = re.compile(r"[a-zA-Z0-9\-_.~%]{1,50}")
_DURATION = re.compile(r"(-?\d+)(?:\.(\d{1,9}))?s")
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_SUBSCRIPTIONS_PATH = re.compile(
    r"/v1/projects/([^/]+)/registrations/([^/]+)/topicSubscriptions(?:/([^/]+))?"
)


# -- public values -----------------------------------------------------------------------------


FaultKind = Literal["ok", "status", "quota", "slow", "drop_before", "drop_after"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour for one send request; build with the class methods."""

    kind: FaultKind
    code: int = 0  # the HTTP status of a "status" fault
    retry_after: float | str | None = None  # seconds, or an HTTP-date as sent
    seconds: float = 0.0  # a "slow" fault's added delay

    @classmethod
    def ok(cls) -> Fault:
        """No fault: answer normally (a step in a script, e.g. ``[503, ok, 503]``)."""
        return cls("ok")

    @classmethod
    def status(cls, code: int, retry_after: float | str | None = None) -> Fault:
        """Answer ``code`` with FCM's body for it (429: ``QUOTA_EXCEEDED`` of the device)."""
        if not 400 <= code <= 599:
            raise ValueError(f"a fault's status is 4xx or 5xx, not {code}")
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def quota(cls, retry_after: float | str | None = 60) -> Fault:
        """429 ``QUOTA_EXCEEDED`` for the project (``google.rpc.QuotaFailure`` names it)."""
        return cls("quota", code=429, retry_after=retry_after)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait ``seconds`` more, then answer normally."""
        return cls("slow", seconds=seconds)

    @classmethod
    def drop_before(cls) -> Fault:
        """Close the connection without answering; the message is NOT stored."""
        return cls("drop_before")

    @classmethod
    def drop_after(cls) -> Fault:
        """Process the message (store it when valid), then close the connection unanswered."""
        return cls("drop_after")


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message FCM accepted for delivery (kept in ``FcmEmulator.ledger``)."""

    name: str  # projects/{project}/messages/{id}, as answered
    message: dict[str, Any]  # the request's "message", as received
    target: str  # the token or FID; "/topics/NAME"; or the condition
    at: float  # the emulator's clock when accepted
    kind: str = "token"  # "token", "fid", "topic" or "condition"


# -- plumbing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    """An answer, before it is sent."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json; charset=UTF-8"

    @classmethod
    def json(cls, status: int, data: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A JSON answer."""
        return cls(status, orjson.dumps(data), tuple(headers))


class Rejected(Exception):
    """A request FCM refuses: ``response`` is its answer."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def rpc_error(
    code: int,
    message: str | None = None,
    details: Sequence[Mapping[str, Any]] = (),
    *,
    status: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A ``google.rpc.Status`` answer: ``{"error": {"code", "message", "status", "details"}}``."""
    error: dict[str, Any] = {
        "code": code,
        "message": message if message is not None else _STATUS_MESSAGES.get(code, "Error"),
        "status": status or CANONICAL.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = list(details)
    return Response.json(code, {"error": error}, headers)


def fcm_error(code: str) -> dict[str, str]:
    """The ``FcmError`` detail carrying FCM's ``errorCode``."""
    return {"@type": FCM_ERROR, "errorCode": code}


def bad_request(field_path: str | None, description: str) -> dict[str, Any]:
    """A ``google.rpc.BadRequest`` detail with one field violation."""
    violation = {"description": description}
    if field_path is not None:
        violation = {"field": field_path, "description": description}
    return {"@type": BAD_REQUEST, "fieldViolations": [violation]}


def invalid(message: str, field_path: str | None = None) -> Rejected:
    """FCM refusing a message: 400 with ``FcmError`` ``INVALID_ARGUMENT`` (and the field)."""
    details: list[dict[str, Any]] = [fcm_error("INVALID_ARGUMENT")]
    if field_path is not None:
        details.append(bad_request(field_path, message))
    return Rejected(rpc_error(400, message, details))


def unparsable(message: str, field_path: str | None = None) -> Rejected:
    """The JSON transcoder refusing a request: 400 with only ``google.rpc.BadRequest``.

    These errors come from Google's front end before FCM sees the message, so they carry no
    ``FcmError`` detail.
    """
    return Rejected(rpc_error(400, message, [bad_request(field_path, message)]))


def _html_not_found(path: str) -> Response:
    # Google's front end answers unknown URLs with an HTML page, not JSON.
    page = (
        "<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n"
        "<title>Error 404 (Not Found)!!1</title>\n"
        f"<p><b>404.</b> <ins>That\u2019s an error.</ins>\n"
        f"<p>The requested URL <code>{path}</code> was not found on this server."
        " <ins>That\u2019s all we know.</ins>\n"
    )
    return Response(404, page.encode(), content_type="text/html; charset=UTF-8")


def _retry_after(value: float | str | None) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (("retry-after", value),)
    return (("retry-after", str(int(value)) if float(value).is_integer() else str(value)),)


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _snake(name: str) -> str:
    # proto3 JSON accepts a field's lowerCamelCase name as well as its own snake_case one.
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# -- the message schema (what the JSON transcoder knows) ---------------------------------------


@dataclass(frozen=True, slots=True)
class _Object:
    """A proto message: its full type name and its fields' kinds (nested ``_Object`` or a name)."""

    type_name: str
    fields: Mapping[str, _Object | str]


_V1 = "google.firebase.fcm.v1"
# Only the levels where every field is known are strict; android.notification, apns.payload and
# webpush.notification are free-form here (the last two are google.protobuf.Struct at FCM too).
_ANALYTICS = {"analytics_label": "string"}
_MESSAGE = _Object(
    f"{_V1}.Message",
    {
        "name": "string",
        "data": "map",
        "notification": _Object(
            f"{_V1}.Notification", {"title": "string", "body": "string", "image": "string"}
        ),
        "android": _Object(
            f"{_V1}.AndroidConfig",
            {
                "collapse_key": "string",
                "priority": "priority",
                "ttl": "duration",
                "restricted_package_name": "string",
                "data": "map",
                "notification": "struct",
                "fcm_options": _Object(f"{_V1}.AndroidFcmOptions", _ANALYTICS),
                "direct_boot_ok": "bool",
                "bandwidth_constrained_ok": "bool",
                "restricted_satellite_ok": "bool",
            },
        ),
        "webpush": _Object(
            f"{_V1}.WebpushConfig",
            {
                "headers": "map",
                "data": "map",
                "notification": "struct",
                "fcm_options": _Object(
                    f"{_V1}.WebpushFcmOptions", {"link": "string", "analytics_label": "string"}
                ),
            },
        ),
        "apns": _Object(
            f"{_V1}.ApnsConfig",
            {
                "headers": "map",
                "payload": "struct",
                "fcm_options": _Object(
                    f"{_V1}.ApnsFcmOptions", {"analytics_label": "string", "image": "string"}
                ),
                "live_activity_token": "string",
            },
        ),
        "fcm_options": _Object(f"{_V1}.FcmOptions", _ANALYTICS),
        "token": "string",
        "topic": "string",
        "condition": "string",
        "fid": "string",
    },
)
_TARGETS: Final = ("token", "topic", "condition", "fid")
_PRIORITIES: Final = {"normal", "high", "0", "1", "2"}


def _transcode(value: Any, spec: _Object | str, path: str) -> Any:
    """``value`` with snake_case field names, or ``Rejected`` as the transcoder would."""
    if value is None:
        return None  # proto3 JSON: null is the field's default
    if isinstance(spec, _Object):
        if not isinstance(value, dict):
            raise unparsable(
                f"Invalid value at '{path}' (type.googleapis.com/{spec.type_name}), {_json(value)}",
                path,
            )
        result: dict[str, Any] = {}
        target: str | None = None
        for key, item in value.items():
            name = _snake(key)
            kind = spec.fields.get(name)
            if kind is None:
                raise unparsable(
                    f"Invalid JSON payload received. Unknown name {_json(key)} at '{path}': Cannot find field.",
                    path,
                )
            if spec is _MESSAGE and name in _TARGETS and item is not None:
                if target is not None:
                    raise unparsable(
                        f"Invalid value at '{path}' (oneof), oneof field 'target' is already set. Cannot set '{key}'",
                        path,
                    )
                target = name
            result[name] = _transcode(item, kind, f"{path}.{name}")
        return result
    if spec == "string" and not isinstance(value, str):
        raise unparsable(f"Invalid value at '{path}' (TYPE_STRING), {_json(value)}", path)
    if spec == "bool" and not isinstance(value, bool):
        raise unparsable(f"Invalid value at '{path}' (TYPE_BOOL), {_json(value)}", path)
    if spec == "struct" and not isinstance(value, dict):
        raise unparsable(
            f"Invalid value at '{path}' (type.googleapis.com/google.protobuf.Struct), {_json(value)}",
            path,
        )
    if spec == "map":
        if not isinstance(value, dict):
            raise unparsable(f"Invalid value at '{path}' (map), {_json(value)}", path)
        for index, item in enumerate(value.values()):
            if not isinstance(item, str):
                where = f"{path}[{index}].value"
                raise unparsable(f"Invalid value at '{where}' (TYPE_STRING), {_json(item)}", where)
    if spec == "duration" and not (isinstance(value, str) and _DURATION.fullmatch(value)):
        raise unparsable(
            f"Invalid value at '{path}' (type.googleapis.com/google.protobuf.Duration), {_json(value)}",
            path,
        )
    if spec == "priority" and str(value).lower() not in _PRIORITIES:
        raise unparsable(
            f"Invalid value at '{path}' (type.googleapis.com/{_V1}.AndroidMessagePriority), {_json(value)}",
            path,
        )
    return value


# -- FCM's own checks --------------------------------------------------------------------------


def _target(message: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, key) of a message's target; the key is what rules, scripts and counters use."""
    for kind in _TARGETS:
        value = message.get(kind)
        if isinstance(value, str):
            return kind, f"/topics/{value}" if kind == "topic" else value
    return None


def _check_reserved(data: Mapping[str, str] | None, path: str) -> None:
    for key in data or {}:
        lowered = key.lower()
        if lowered in ("from", "message_type") or lowered.startswith(("google", "gcm")):
            raise invalid(f"Invalid data message key: {key!r} is reserved", path)


def _check_label(options: Mapping[str, Any] | None, path: str) -> None:
    label = (options or {}).get("analytics_label")
    if label is not None and not _LABEL.fullmatch(label):
        raise invalid(f"Invalid analytics_label: {label!r}", f"{path}.analytics_label")


def _check_topic(topic: str, path: str) -> None:
    if not _TOPIC.fullmatch(topic) or len(topic) > MAX_TOPIC_NAME:
        raise invalid(f"Invalid topic name: {topic!r}", path)


_CONDITION_TOKEN = re.compile(
    r"\s*(?:(?P<topic>'[^']*'|\"[^\"]*\")\s+in\s+topics\b|(?P<op>&&|\|\||!|\(|\)))"
)


def condition_topics(condition: str) -> list[str]:
    """The topics a condition names, or ``ValueError`` when it is not a valid expression.

    Grammar: ``'t' in topics``, ``!``, ``&&``, ``||`` and parentheses, as FCM documents.
    """
    tokens: list[str] = []
    topics: list[str] = []
    position = 0
    while position < len(condition.rstrip()):
        match = _CONDITION_TOKEN.match(condition, position)
        if match is None:
            raise ValueError(f"unexpected text at {position}")
        if match["topic"] is not None:
            name = match["topic"][1:-1]
            if not _TOPIC.fullmatch(name):
                raise ValueError(f"invalid topic {name!r}")
            topics.append(name)
            tokens.append("T")
        else:
            tokens.append(match["op"])
        position = match.end()

    def expression(i: int) -> int:
        i = term(i)
        while i < len(tokens) and tokens[i] == "||":
            i = term(i + 1)
        return i

    def term(i: int) -> int:
        i = factor(i)
        while i < len(tokens) and tokens[i] == "&&":
            i = factor(i + 1)
        return i

    def factor(i: int) -> int:
        if i >= len(tokens):
            raise ValueError("unexpected end")
        if tokens[i] == "!":
            return factor(i + 1)
        if tokens[i] == "(":
            i = expression(i + 1)
            if i >= len(tokens) or tokens[i] != ")":
                raise ValueError("unbalanced parentheses")
            return i + 1
        if tokens[i] == "T":
            return i + 1
        raise ValueError(f"unexpected {tokens[i]!r}")

    if expression(0) != len(tokens):
        raise ValueError("trailing operators")
    return topics


def payload_size(message: Mapping[str, Any]) -> int:
    """Bytes FCM counts against the payload limit: data keys and values, notification text.

    ``android.data`` replaces the top-level data for Android, so the larger of the two counts.
    """

    def data_size(data: Mapping[str, str] | None) -> int:
        return sum(len(k.encode()) + len(v.encode()) for k, v in (data or {}).items())

    notification = message.get("notification") or {}
    text = sum(len(str(notification.get(k) or "").encode()) for k in ("title", "body"))
    android = message.get("android") or {}
    return max(data_size(message.get("data")), data_size(android.get("data"))) + text


def validate(message: Mapping[str, Any]) -> None:
    """FCM's checks on a transcoded (snake_case) message; ``Rejected`` on the first failure."""
    target = _target(message)
    if target is None:
        raise invalid("Recipient of the message is not set.", "message")
    kind, value = target
    if kind in ("token", "fid") and not value:
        raise invalid(INVALID_TOKEN_MESSAGE, f"message.{kind}")
    if kind == "topic":
        _check_topic(message["topic"], "message.topic")
    if kind == "condition":
        try:
            topics = condition_topics(value)
        except ValueError:
            raise invalid("Invalid condition expression provided.", "message.condition") from None
        if len(topics) > MAX_CONDITION_TOPICS:
            raise invalid(
                f"Invalid condition expression provided: at most {MAX_CONDITION_TOPICS} topics",
                "message.condition",
            )
    android = message.get("android") or {}
    _check_reserved(message.get("data"), "message.data")
    _check_reserved(android.get("data"), "message.android.data")
    ttl = android.get("ttl")
    if ttl is not None:
        match = _DURATION.fullmatch(ttl)
        assert match is not None  # the transcoder checked the format
        seconds = int(match[1]) + (int((match[2] or "0").ljust(9, "0")) / 1e9)
        if not 0 <= seconds <= MAX_TTL:
            raise invalid(
                f"TTL must be between 0 and {MAX_TTL} seconds (28 days)", "message.android.ttl"
            )
    _check_label(message.get("fcm_options"), "message.fcm_options")
    _check_label(android.get("fcm_options"), "message.android.fcm_options")
    apns = message.get("apns") or {}
    _check_label(apns.get("fcm_options"), "message.apns.fcm_options")
    webpush = message.get("webpush") or {}
    _check_label(webpush.get("fcm_options"), "message.webpush.fcm_options")
    link = (webpush.get("fcm_options") or {}).get("link")
    if link is not None and not link.lower().startswith("https://"):
        raise invalid("The link must be an HTTPS URL", "message.webpush.fcm_options.link")
    headers = apns.get("headers") or {}
    priority = {k.lower(): v for k, v in headers.items()}.get("apns-priority")
    if priority == "10" and _apns_data_only(message, apns):
        raise invalid(
            "A data-only APNs message (no alert, badge or sound) must use apns-priority 5",
            "message.apns.headers",
        )
    limit = MAX_TOPIC_PAYLOAD if kind == "topic" else MAX_PAYLOAD
    size = payload_size(message)
    if size > limit:
        raise invalid(f"Message is too big: {size} bytes of payload, the limit is {limit}")


def _apns_data_only(message: Mapping[str, Any], apns: Mapping[str, Any]) -> bool:
    if message.get("notification"):
        return False
    aps = (apns.get("payload") or {}).get("aps") or {}
    return not (isinstance(aps, dict) and any(k in aps for k in ("alert", "badge", "sound")))


# -- auth --------------------------------------------------------------------------------------


class _GrantRefused(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.body = {"error": error, "error_description": description}


_BAD_TIMES = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


@dataclass(frozen=True, slots=True)
class _AccessToken:
    expires_at: float
    scopes: frozenset[str]
    account: str


# -- the app -----------------------------------------------------------------------------------


class FcmEmulator:
    """FCM's token endpoint, HTTP v1 send and topic APIs in one ASGI app (module docstring)."""

    def __init__(
        self,
        *,
        project_id: str = "demo-project",
        public_keys: Mapping[str, str] | None = None,
        token_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.project_id = project_id
        self.public_keys: dict[str, rsa.RSAPublicKey] | None = None
        if public_keys is not None:
            self.public_keys = {kid: _load_public_key(pem) for kid, pem in public_keys.items()}
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.latency = latency
        self.random = random.Random(seed)
        # What tests inspect.
        self.ledger: list[Accepted] = []
        self.token_requests = 0  # every POST /token
        self.tokens_issued = 0
        self.send_requests = 0  # every request to messages:send
        self.topic_requests = 0  # every IID or topicSubscriptions request
        self.in_flight = 0  # send requests being answered now
        self.max_in_flight = 0
        self.requests_per_target: Counter[str] = Counter()
        self.topics: dict[str, set[str]] = {}  # topic name -> registration tokens (or FIDs)
        # Rules.
        # token -> state for tokens not set one by one (e.g. 1% of a load test's tokens);
        # consulted after set_token_state, before unregister_prefix.
        self.token_rule: Callable[[str], str] | None = None
        self._states: dict[str, str] = {}
        self._unregistered_prefixes: tuple[str, ...] = ()
        self._scripts: dict[str, deque[Fault]] = {}
        self._any_script: deque[Fault] = deque()
        self._rates: list[tuple[Fault, float]] = []
        self._quota_per_minute: int | None = None
        self._quota_window: tuple[float, int] = (0.0, 0)  # window start, sends in it
        # State.
        self._access_tokens: dict[str, _AccessToken] = {}
        self._subscriptions: dict[str, set[str]] = {}  # token -> topics
        self._next_id = 0
        self._id_suffix = f"{self.random.getrandbits(64):016x}"

    # -- rules, for tests --------------------------------------------------------------------

    def set_token_state(self, token: str, state: str) -> None:
        """Make ``token`` (or FID) answer as ``state`` from now on (``"valid"`` to heal it).

        States: ``valid``; ``unregistered`` (404 ``UNREGISTERED``); ``sender_mismatch`` (403
        ``SENDER_ID_MISMATCH``); ``invalid`` (400, not a valid registration token);
        ``third_party_auth`` (401 ``THIRD_PARTY_AUTH_ERROR``). ``malformed`` means ``invalid``.
        """
        self._states[token] = _state(state)

    def unregister_prefix(self, prefix: str) -> None:
        """Every token starting with ``prefix`` is unregistered (unless set otherwise)."""
        self._unregistered_prefixes += (prefix,)

    def token_state(self, token: str) -> str:
        """How ``token`` answers: ``set_token_state``, else ``token_rule``, else prefixes."""
        state = self._states.get(token)
        if state is not None:
            return state
        if self.token_rule is not None:
            ruled = _state(self.token_rule(token))
            if ruled != "valid":
                return ruled
        if token.startswith(self._unregistered_prefixes) and self._unregistered_prefixes:
            return "unregistered"
        return "valid"

    def script(self, target: str, faults: Iterable[Fault]) -> None:
        """Answer the next send requests to ``target`` with ``faults``, one each, then normally.

        ``target`` is a token or FID, ``/topics/NAME``, or a condition. Replaces its script.
        """
        self._scripts[target] = deque(faults)

    def script_any(self, faults: Iterable[Fault]) -> None:
        """Answer the next send requests, whatever their target, with ``faults`` (after scripts)."""
        self._any_script = deque(faults)

    def fault_rates(self, rates: Mapping[Fault, float]) -> None:
        """Give each send request fault F with probability ``rates[F]`` (seeded; {} to stop)."""
        for fault, probability in rates.items():
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"{fault}: probability {probability} is not in [0, 1]")
        self._rates = list(rates.items())

    def set_quota(self, per_minute: int | None) -> None:
        """Accept at most ``per_minute`` sends per minute of ``clock`` (None: no limit).

        Windows start at the first send after the last window ended (FCM's minutes are not
        clock-aligned); beyond the limit the answer is 429 ``QUOTA_EXCEEDED`` for the project
        with ``Retry-After`` the rest of the window.
        """
        self._quota_per_minute = per_minute
        self._quota_window = (0.0, 0)

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired (401 ``ACCESS_TOKEN_EXPIRED``)."""
        self._access_tokens.clear()

    def sent_to(self, target: str) -> list[Accepted]:
        """The accepted messages to ``target`` (a token or FID, ``/topics/NAME``, a condition)."""
        return [accepted for accepted in self.ledger if accepted.target == target]

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = _Request(scope, receive)
        response = await self._route(request)
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
        ]
        headers += [(k.encode(), v.encode()) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _route(self, request: _Request) -> Response:
        path, method = request.path, request.method
        try:
            if path == "/token":
                if method != "POST":
                    return _method_not_found()
                return await self._token(request)
            match = _SEND_PATH.fullmatch(path)
            if match is not None:
                if method != "POST":
                    return _method_not_found()
                return await self._send(request, match[1])
            if path in ("/iid/v1:batchAdd", "/iid/v1:batchRemove"):
                if method != "POST":
                    return _method_not_found()
                return await self._iid(request, add=path.endswith("Add"))
            match = _SUBSCRIPTIONS_PATH.fullmatch(path)
            if match is not None:
                return await self._subscriptions_api(request, match[1], match[2], match[3])
        except Rejected as rejected:
            return rejected.response
        return _html_not_found(path)

    # -- token endpoint ----------------------------------------------------------------------

    async def _token(self, request: _Request) -> Response:
        self.token_requests += 1
        form = dict(parse_qsl((await request.body()).decode("latin-1"), keep_blank_values=True))
        grant_type = form.get("grant_type", "")
        if grant_type != JWT_BEARER:
            return Response.json(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Invalid grant_type: {grant_type}",
                },
            )
        assertion = form.get("assertion")
        if not assertion:
            return Response.json(
                400,
                {
                    "error": "invalid_request",
                    "error_description": "Missing required parameter: assertion",
                },
            )
        now = self.clock()
        try:
            claims = self._verify(assertion, now)
        except _GrantRefused as refused:
            return Response.json(400, refused.body)
        token = f"ya29.emulator-{secrets.token_urlsafe(32)}"
        scopes = frozenset(str(claims.get("scope", "")).split())
        self._access_tokens[token] = _AccessToken(
            now + self.token_lifetime, scopes, str(claims["iss"])
        )
        self.tokens_issued += 1
        return Response.json(
            200,
            {
                "access_token": token,
                "expires_in": math.ceil(self.token_lifetime),
                "token_type": "Bearer",
            },
        )

    def _verify(self, assertion: str, now: float) -> dict[str, Any]:
        """The claims of a valid assertion, or ``_GrantRefused`` as Google words it."""
        parts = assertion.split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not three segments")
            header = orjson.loads(_b64url(parts[0]))
            claims = orjson.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
            if not isinstance(header, dict) or not isinstance(claims, dict) or not signature:
                raise ValueError("not a JWS")
        except (ValueError, binascii.Error):
            raise _GrantRefused("invalid_grant", "Invalid JWT: not a valid JWT") from None
        if header.get("alg") != "RS256":
            raise _GrantRefused("invalid_grant", "Invalid JWT Signature.")
        if self.public_keys is not None:
            kid = header.get("kid")
            keys = (
                [self.public_keys[kid]]
                if isinstance(kid, str) and kid in self.public_keys
                else ([] if kid else list(self.public_keys.values()))
            )
            if not any(_signed(key, parts, signature) for key in keys):
                raise _GrantRefused("invalid_grant", "Invalid JWT Signature.")
        if not isinstance(claims.get("iss"), str) or not claims["iss"]:
            raise _GrantRefused("invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") not in TOKEN_AUDIENCES:
            raise _GrantRefused(
                "invalid_grant",
                "Invalid JWT: Failed audience check. "
                "The expected audience is https://oauth2.googleapis.com/token.",
            )
        if not isinstance(claims.get("scope"), str) or not claims["scope"].split():
            raise _GrantRefused("invalid_scope", "Empty or missing scope not allowed.")
        iat, exp = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(iat, int | float)
            or not isinstance(exp, int | float)
            or exp - iat > MAX_ASSERTION_LIFETIME
            or exp <= iat
            or iat > now + CLOCK_SKEW
            or exp < now - CLOCK_SKEW
        ):
            raise _GrantRefused("invalid_grant", _BAD_TIMES)
        return claims

    def _authorize(self, request: _Request, project: str, permission: str) -> None:
        """Nothing when the bearer token may ``permission`` on ``project``, else ``Rejected``."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        challenge = ("www-authenticate", 'Bearer realm="https://accounts.google.com/"')
        if scheme.lower() != "bearer" or not token:
            raise Rejected(
                rpc_error(
                    401,
                    "Request is missing required authentication credential. Expected OAuth 2 "
                    "access token, login cookie or other valid authentication credential.",
                    [_error_info("CREDENTIALS_MISSING")],
                    headers=[challenge],
                )
            )
        grant = self._access_tokens.get(token)
        if grant is None or self.clock() >= grant.expires_at:
            # Google cannot tell an unknown token from an expired one, and says "expired".
            raise Rejected(
                rpc_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access "
                    "token, login cookie or other valid authentication credential.",
                    [_error_info("ACCESS_TOKEN_EXPIRED")],
                    headers=[(challenge[0], challenge[1] + ', error="invalid_token"')],
                )
            )
        if not grant.scopes & FCM_SCOPES:
            raise Rejected(
                rpc_error(
                    403,
                    "Request had insufficient authentication scopes.",
                    [_error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT")],
                )
            )
        if project != self.project_id:
            raise Rejected(
                rpc_error(
                    403,
                    f"Permission '{permission}' denied on resource "
                    f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                    "(or it may not exist).",
                    [
                        {
                            "@type": ERROR_INFO,
                            "reason": "IAM_PERMISSION_DENIED",
                            "domain": "cloudresourcemanager.googleapis.com",
                            "metadata": {
                                "permission": permission,
                                "resource": f"projects/{project}",
                            },
                        }
                    ],
                )
            )

    # -- send --------------------------------------------------------------------------------

    async def _send(self, request: _Request, project: str) -> Response:
        self.send_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            return await self._send_one(request, project)
        finally:
            self.in_flight -= 1

    async def _send_one(self, request: _Request, project: str) -> Response:
        raw = await request.body()  # first: a connection is reusable only once its body is read
        self._authorize(request, project, "cloudmessaging.messages.create")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise unparsable("Invalid JSON payload received. Unexpected token.") from None
        if not isinstance(body, dict):
            raise unparsable(
                'Invalid JSON payload received. Unknown name "": Root element must be a message.'
            )
        received = body.get("message")
        target = _target(received) if isinstance(received, dict) else None
        key = target[1] if target is not None else ""
        if target is not None:
            self.requests_per_target[key] += 1

        fault = self._next_fault(key)
        if fault is not None:
            if fault.kind == "slow":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "drop_before":
                raise ConnectionDropped()
            elif fault.kind in ("status", "quota"):
                return self._fault_response(fault, key)
        quota = self._spend_quota()
        if quota is not None:
            return quota

        try:
            response = self._accept(body, project)
        except Rejected as rejected:
            response = rejected.response
        if fault is not None and fault.kind == "drop_after":
            raise ConnectionDropped()
        return response

    def _accept(self, body: dict[str, Any], project: str) -> Response:
        """Transcode, validate, apply the token's state, store: the answer to a send."""
        validate_only = False
        for key, value in body.items():
            name = _snake(key)
            if name == "validate_only":
                if value is not None and not isinstance(value, bool):
                    raise unparsable(
                        f"Invalid value at 'validate_only' (TYPE_BOOL), {_json(value)}",
                        "validate_only",
                    )
                validate_only = bool(value)
            elif name != "message":
                raise unparsable(
                    f"Invalid JSON payload received. Unknown name {_json(key)}: Cannot find field."
                )
        received = body.get("message")
        message = _transcode(received, _MESSAGE, "message") or {}
        validate(message)
        target = _target(message)
        assert target is not None  # validate() checked it
        kind, key = target
        if kind in ("token", "fid"):
            refused = _state_error(self.token_state(key))
            if refused is not None:
                return refused
        if validate_only:
            return Response.json(200, {"name": f"projects/{project}/messages/{FAKE_MESSAGE_ID}"})
        self._next_id += 1
        name = (
            f"projects/{project}/messages/0:{1_700_000_000_000_000 + self._next_id}"
            f"%{self._id_suffix}"
        )
        stored = received if isinstance(received, dict) else {}  # always a dict here
        self.ledger.append(Accepted(name, stored, key, self.clock(), kind))
        return Response.json(200, {"name": name})

    def _next_fault(self, target: str) -> Fault | None:
        script = self._scripts.get(target)
        if script:
            fault = script.popleft()
        elif self._any_script:
            fault = self._any_script.popleft()
        else:
            fault = next((f for f, p in self._rates if self.random.random() < p), Fault.ok())
        return None if fault.kind == "ok" else fault

    def _fault_response(self, fault: Fault, target: str) -> Response:
        headers = _retry_after(fault.retry_after)
        if fault.kind == "quota":
            return self._quota_exceeded(headers)
        code = fault.code
        if code == 401:
            return rpc_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                [_error_info("ACCESS_TOKEN_EXPIRED")],
                headers=headers,
            )
        if code == 502:
            # A 502 comes from Google's front end, as an HTML page.
            page = b"<!DOCTYPE html>\n<title>Error 502 (Server Error)!!1</title>\n"
            return Response(502, page, headers, "text/html; charset=UTF-8")
        details: list[dict[str, Any]] = []
        fcm_code = _FCM_CODES.get(code)
        if fcm_code is not None:
            details.append(fcm_error(fcm_code))
        if code == 429:
            details.append(
                {
                    "@type": QUOTA_FAILURE,
                    "violations": [
                        {
                            "subject": f"device:{target}",
                            "description": "Message rate exceeded for the target device",
                        }
                    ],
                }
            )
        return rpc_error(code, None, details, headers=headers)

    def _quota_exceeded(self, headers: Iterable[tuple[str, str]]) -> Response:
        return rpc_error(
            429,
            "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per "
            f"minute' of service 'fcm.googleapis.com' for consumer 'projects/{self.project_id}'.",
            [
                fcm_error("QUOTA_EXCEEDED"),
                {
                    "@type": QUOTA_FAILURE,
                    "violations": [
                        {
                            "subject": f"project:{self.project_id}",
                            "description": "Project message rate exceeded",
                        }
                    ],
                },
            ],
            headers=headers,
        )

    def _spend_quota(self) -> Response | None:
        if self._quota_per_minute is None:
            return None
        now = self.clock()
        start, used = self._quota_window
        if used == 0 or now >= start + 60.0:
            start, used = now, 0
        if used >= self._quota_per_minute:
            return self._quota_exceeded(_retry_after(math.ceil(start + 60.0 - now)))
        self._quota_window = (start, used + 1)
        return None

    # -- topics ------------------------------------------------------------------------------

    def _subscribe(self, token: str, topic: str) -> str | None:
        """Subscribe; None on success, else the reason (``TOO_MANY_TOPICS``)."""
        topics = self._subscriptions.setdefault(token, set())
        if topic not in topics and len(topics) >= MAX_TOPICS_PER_INSTANCE:
            return "TOO_MANY_TOPICS"
        topics.add(topic)
        self.topics.setdefault(topic, set()).add(token)
        return None

    def _unsubscribe(self, token: str, topic: str) -> bool:
        """Unsubscribe; whether it was subscribed."""
        members = self.topics.get(topic)
        if members is None or token not in members:
            return False
        members.discard(token)
        if not members:
            del self.topics[topic]
        self._subscriptions[token].discard(topic)
        return True

    async def _iid(self, request: _Request, *, add: bool) -> Response:
        self.topic_requests += 1
        if request.headers.get("access_token_auth", "").lower() != "true":
            # Without this header IID reads Authorization as a (retired) server key.
            return Response.json(401, {"error": "UNAUTHENTICATED"})
        try:
            self._authorize(request, self.project_id, "cloudmessaging.topics.update")
        except Rejected:
            return Response.json(401, {"error": "UNAUTHENTICATED"})
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return Response.json(400, {"error": "INVALID_ARGUMENT"})
        to = body.get("to") if isinstance(body, dict) else None
        tokens = body.get("registration_tokens") if isinstance(body, dict) else None
        if (
            not isinstance(to, str)
            or not to.startswith("/topics/")
            or not _TOPIC.fullmatch(to[len("/topics/") :])
            or not isinstance(tokens, list)
            or not tokens
            or not all(isinstance(t, str) and t for t in tokens)
        ):
            return Response.json(400, {"error": "INVALID_ARGUMENT"})
        if len(tokens) > MAX_BATCH:
            return Response.json(400, {"error": "INVALID_ARGUMENT"})
        topic = to[len("/topics/") :]
        results: list[dict[str, str]] = []
        for token in tokens:
            reason = {
                "unregistered": "NOT_FOUND",
                "invalid": "INVALID_ARGUMENT",
                "sender_mismatch": "PERMISSION_DENIED",
            }.get(self.token_state(token))
            if reason is None:
                reason = self._subscribe(token, topic) if add else None
                if not add:
                    self._unsubscribe(token, topic)
            results.append({"error": reason} if reason else {})
        return Response.json(200, {"results": results})

    async def _subscriptions_api(
        self, request: _Request, project: str, token: str, topic: str | None
    ) -> Response:
        self.topic_requests += 1
        method = request.method
        if (topic is None and method not in ("POST", "GET")) or (
            topic is not None and method not in ("GET", "DELETE")
        ):
            return _method_not_found()
        self._authorize(
            request,
            project,
            "cloudmessaging.topicSubscriptions.get"
            if method == "GET"
            else "cloudmessaging.topicSubscriptions.update",
        )
        refused = _state_error(self.token_state(token))
        if refused is not None:
            return refused
        base = f"projects/{project}/registrations/{token}/topicSubscriptions"
        if method == "GET" and topic is None:
            names = sorted(self._subscriptions.get(token, ()))
            body = {"topicSubscriptions": [{"name": f"{base}/{t}"} for t in names]} if names else {}
            return Response.json(200, body)
        if method == "POST":
            topic = request.query.get("topicName") or request.query.get("topic_name")
            if not topic:
                raise invalid("topicName is required", "topic_name")
        assert topic is not None
        _check_topic(topic, "topic_name")
        subscribed = topic in self._subscriptions.get(token, ())
        if method == "GET":
            if not subscribed:
                return rpc_error(404, UNREGISTERED_MESSAGE)
            return Response.json(200, {"name": f"{base}/{topic}"})
        if method == "DELETE":
            allow = request.query.get("allowMissing") or request.query.get("allow_missing")
            if not subscribed and (allow or "").lower() != "true":
                return rpc_error(404, UNREGISTERED_MESSAGE)
            self._unsubscribe(token, topic)
            return Response.json(200, {})
        if subscribed:
            return rpc_error(409, "Requested entity already exists")
        if self._subscribe(token, topic) is not None:
            return rpc_error(
                400,
                f"Too many topic subscriptions for this registration (at most "
                f"{MAX_TOPICS_PER_INSTANCE})",
                status="FAILED_PRECONDITION",
            )
        return Response.json(200, {"name": f"{base}/{topic}"})


class _Request:
    """One HTTP request: method, decoded path, query, lower-case headers, lazily read body."""

    __slots__ = ("_body", "_receive", "headers", "method", "path", "query")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method = str(scope["method"]).upper()
        raw = scope.get("raw_path")
        # Decode segment by segment, so an encoded "/" in a token or topic stays inside it.
        if raw:
            segments = bytes(raw).split(b"?")[0].decode("latin-1").split("/")
            self.path = "/".join(unquote(s).replace("/", "%2F") for s in segments)
        else:
            self.path = str(scope["path"])
        self.query = dict(parse_qsl(bytes(scope.get("query_string", b"")).decode("latin-1")))
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self._receive = receive
        self._body: bytes | None = None

    async def body(self) -> bytes:
        """The whole body."""
        if self._body is None:
            chunks = []
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            self._body = b"".join(chunks)
        return self._body


def _state(state: str) -> str:
    state = _STATE_ALIASES.get(state, state)
    if state not in TOKEN_STATES:
        raise ValueError(f"unknown token state {state!r}: expected one of {sorted(TOKEN_STATES)}")
    return state


def _state_error(state: str) -> Response | None:
    """FCM's answer for a registration token in ``state``; None when it is valid."""
    if state == "unregistered":
        return rpc_error(404, UNREGISTERED_MESSAGE, [fcm_error("UNREGISTERED")])
    if state == "sender_mismatch":
        return rpc_error(403, "SenderId mismatch", [fcm_error("SENDER_ID_MISMATCH")])
    if state == "invalid":
        return invalid(INVALID_TOKEN_MESSAGE, "message.token").response
    if state == "third_party_auth":
        return rpc_error(
            401, "Auth error from APNS or Web Push Service", [fcm_error("THIRD_PARTY_AUTH_ERROR")]
        )
    return None


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": ERROR_INFO,
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {
            "service": "fcm.googleapis.com",
            "method": "google.firebase.fcm.v1.FcmService.SendMessage",
        },
    }


def _method_not_found() -> Response:
    return rpc_error(404, "Method not found.")


def _load_public_key(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("RS256 needs an RSA public key")
    return key


def _signed(key: rsa.RSAPublicKey, parts: Sequence[str], signature: bytes) -> bool:
    try:
        key.verify(
            signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


__all__ = [
    "Accepted",
    "Fault",
    "FcmEmulator",
    "Rejected",
    "Response",
    "condition_topics",
    "payload_size",
    "validate",
]
