"""FCM HTTP v1 messages: typed, checked against FCM's rules, and rendered to the exact wire JSON.

Pure: no I/O, no clock. Design choices:

- **Hand-written dataclasses, not firebase-admin's classes.** firebase-admin's ``Message`` can
  only be encoded by its own sender (whose URL is hard-coded and whose async path ignores
  ``Retry-After``), and it checks a message only while sending. Here a message is checked when
  it is *built*: a frozen, slotted dataclass whose ``__post_init__`` enforces every rule FCM
  enforces with a 400 (exactly one target, string-only ``data``, reserved data keys, ttl format
  and range, topic and condition syntax, analytics labels, https links, APNs priority 10 only
  for alerts, the payload size), so a bad message fails at the line that made it, with an
  ``InvalidMessage`` whose text starts with the field's wire path
  (``message.data.count: values must be strings, got int``). Mappings are copied into read-only
  proxies, so a caller mutating its dict afterwards cannot smuggle in what the check refused.
- **A message without a target is allowed** (it is a *template*, for ``Message.to`` and the
  sender's multicast); ``to_wire`` and the sender refuse it. Two targets are refused at once.
- **One cross-platform ``priority``.** ``priority="high"`` sets ``android.priority`` high,
  ``apns-priority`` 10 (or 5 for a data-only message, the only value APNs accepts for one) and
  WebPush ``Urgency: high``; anything set explicitly on a platform wins over it.
- **Forward compatibility.** Each platform block models the fields Patchbay uses and carries
  an ``extra`` mapping for the rest (FCM keeps adding fields: ``bandwidth_constrained_ok``,
  ``live_activity_token``, ...), merged verbatim into the wire JSON.
- **``from_wire``** parses the v1 JSON back (the gateway's ``/v1/push`` takes FCM's own message
  shape) with the same field-naming errors; ``from_wire(m.payload()) == m`` for every message.
- **Payload size** is counted as FCM describes its limit ("keys and values"): the bytes of the
  data keys and values (``android.data``, which replaces ``data`` on Android, when larger) plus
  the notification's title and body; at most 4096, or 2048 for a topic message. A condition
  is a topic fan-out too, so it gets the topic limit (the emulator applies 4096 to conditions;
  being stricter here costs nothing but a refused borderline message).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar, get_args

import orjson

from patchbay.push.errors import InvalidMessage

Priority = Literal["high", "normal"]
TargetKind = Literal["token", "fid", "topic", "condition"]
Visibility = Literal["PRIVATE", "PUBLIC", "SECRET"]
NotificationPriority = Literal[
    "PRIORITY_MIN", "PRIORITY_LOW", "PRIORITY_DEFAULT", "PRIORITY_HIGH", "PRIORITY_MAX"
]

TARGETS: Final[tuple[TargetKind, ...]] = ("token", "fid", "topic", "condition")
MAX_PAYLOAD: Final = 4096  # bytes, for a message to a device
MAX_TOPIC_PAYLOAD: Final = 2048  # bytes, for a message to a topic or a condition
MAX_TTL: Final = 2_419_200  # seconds: 28 days, FCM's maximum and default
MAX_CONDITION_TOPICS: Final = 5
MAX_TOPIC_LENGTH: Final = 900  # the topicSubscriptions API's limit; FCM documents none lower
TOPIC_PREFIX: Final = "/topics/"
RESERVED_DATA_KEYS: Final = frozenset({"from", "message_type"})
RESERVED_DATA_PREFIXES: Final = ("google", "gcm")
APNS_PRIORITIES: Final = frozenset({"1", "5", "10"})
WEBPUSH_URGENCIES: Final = frozenset({"very-low", "low", "normal", "high"})

_TOPIC = re.compile(r"[a-zA-Z0-9\-_.~%]+")
_LABEL = re.compile(r"[a-zA-Z0-9\-_.~%]{1,50}")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_DURATION = re.compile(r"(\d+)(?:\.(\d{1,9}))?s")
_CONDITION_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\|)|(?P<not>!)|(?P<open>\()|(?P<close>\))"
    r"|(?:'(?P<sq>[^']*)'|\"(?P<dq>[^\"]*)\")\s+in\s+topics\b)"
)

_E = TypeVar("_E")


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


# -- small checks ------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _string(path: str, value: object, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(path, f"must be a string, got {_type_name(value)}")
    return value


def _nonempty(path: str, value: object) -> str | None:
    text = _string(path, value)
    if text is not None and not text.strip():
        raise InvalidMessage(path, "must not be empty")
    return text


def _boolean(path: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidMessage(path, f"must be true or false, got {_type_name(value)}")
    return value


def _choice(path: str, value: object, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        raise InvalidMessage(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _label(path: str, value: object) -> str | None:
    label = _string(path, value)
    if label is not None and not _LABEL.fullmatch(label):
        raise InvalidMessage(path, "must be 1 to 50 of the characters a-z A-Z 0-9 - _ . ~ %")
    return label


def _strings(path: str, value: object) -> Mapping[str, str]:
    """A read-only copy of a string-to-string map, every key and value checked."""
    if not isinstance(value, Mapping):
        raise InvalidMessage(path, f"must be an object of strings, got {_type_name(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidMessage(path, f"keys must be non-empty strings, got {key!r}")
        if not isinstance(item, str):
            raise InvalidMessage(f"{path}.{key}", f"values must be strings, got {_type_name(item)}")
    return MappingProxyType(dict(value))


def _data(path: str, value: object) -> Mapping[str, str]:
    data = _strings(path, value)
    for key in data:
        lowered = key.lower()
        if lowered in RESERVED_DATA_KEYS or lowered.startswith(RESERVED_DATA_PREFIXES):
            raise InvalidMessage(
                f"{path}.{key}",
                "is a reserved key (from, message_type, and anything starting with google or gcm)",
            )
    return data


def _json(path: str, value: object) -> Mapping[str, Any]:
    """A read-only, deep copy of a JSON object (so later changes by the caller do not leak in)."""
    if not isinstance(value, Mapping):
        raise InvalidMessage(path, f"must be an object, got {_type_name(value)}")
    try:
        copy = orjson.loads(orjson.dumps(value, default=_plain))
    except TypeError as exc:
        raise InvalidMessage(path, f"must be plain JSON: {exc}") from None
    return MappingProxyType(copy)


def _plain(value: object) -> object:
    # orjson serialises only dicts; our own read-only proxies (and any other mapping) pass too.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _extra(path: str, value: object, modelled: tuple[str, ...]) -> Mapping[str, Any]:
    extra = _json(path, value)
    for key in extra:
        if key in modelled:
            raise InvalidMessage(f"{path}.{key}", "is a modelled field: set it by name")
    return extra


def _https(path: str, value: object) -> str | None:
    link = _string(path, value)
    if link is not None and not link.lower().startswith("https://"):
        raise InvalidMessage(path, "must be an https:// URL")
    return link


def _set(obj: object, name: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields in __post_init__ this way, and only there.
    object.__setattr__(obj, name, value)


def _fields(cls: type[object]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def _prune(out: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in out.items() if value is not None and value != {}}


# -- durations ---------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """A protobuf ``Duration`` JSON string: ``"3600s"``, ``"3.500s"`` (0, 3, 6 or 9 digits)."""
    whole, nanos = divmod(round(seconds * 1_000_000_000), 1_000_000_000)
    if not nanos:
        return f"{whole}s"
    digits = f"{nanos:09d}"
    for width in (3, 6):
        if digits[width:] == "0" * (9 - width):
            return f"{whole}.{digits[:width]}s"
    return f"{whole}.{digits}s"


def parse_duration(path: str, text: object) -> float:
    """Seconds in a ``Duration`` string such as ``"3600s"`` or ``"3.5s"``."""
    if not isinstance(text, str) or not (match := _DURATION.fullmatch(text)):
        raise InvalidMessage(path, f'must be a duration such as "3600s" or "3.5s", got {text!r}')
    whole, fraction = match.groups()
    return int(whole) + (int(fraction.ljust(9, "0")) / 1e9 if fraction else 0.0)


def _ttl(path: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(path, f"must be seconds or a timedelta, got {_type_name(value)}")
    if not math.isfinite(value) or not 0 <= value <= MAX_TTL:
        raise InvalidMessage(path, f"must be between 0 and {MAX_TTL} seconds (28 days)")
    return float(value)


# -- targets -----------------------------------------------------------------------------------


def normalize_topic(path: str, topic: object) -> str:
    """A topic name without ``/topics/``, checked against FCM's pattern."""
    name = _string(path, topic, optional=False)
    assert name is not None  # not optional
    if name.startswith(TOPIC_PREFIX):
        name = name[len(TOPIC_PREFIX) :]
    if not _TOPIC.fullmatch(name):
        raise InvalidMessage(path, f"{topic!r} is not a topic name (a-z A-Z 0-9 - _ . ~ %)")
    if len(name) > MAX_TOPIC_LENGTH:
        raise InvalidMessage(path, f"must be at most {MAX_TOPIC_LENGTH} characters")
    return name


def condition_topics(path: str, condition: str) -> tuple[str, ...]:
    """The topics of a condition such as ``'a' in topics && ('b' in topics || 'c' in topics)``.

    Checks the syntax (``&&``, ``||``, ``!`` and parentheses over ``'topic' in topics``) with a
    small recursive-descent parser, and the limit of five topics.
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    text = condition.rstrip()
    while position < len(text):
        match = _CONDITION_TOKEN.match(text, position)
        if match is None:
            raise InvalidMessage(
                path, f"cannot read the condition at {text[position:].strip()[:20]!r}"
            )
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind in ("sq", "dq"):
            kind = "topic"
            if not _TOPIC.fullmatch(value):
                raise InvalidMessage(path, f"{value!r} is not a topic name")
        tokens.append((kind, value))
        position = match.end()
    topics: list[str] = []
    index = 0

    def peek() -> str:
        return tokens[index][0] if index < len(tokens) else "end"

    def term() -> None:
        nonlocal index
        while peek() == "not":
            index += 1
        kind = peek()
        if kind == "topic":
            topics.append(tokens[index][1])
            index += 1
        elif kind == "open":
            index += 1
            expression()
            if peek() != "close":
                raise InvalidMessage(path, "a '(' is never closed")
            index += 1
        else:
            raise InvalidMessage(path, "expected 'topic' in topics, '!' or '('")

    def expression() -> None:
        nonlocal index
        term()
        while peek() == "op":
            index += 1
            term()

    expression()
    if index != len(tokens):
        raise InvalidMessage(path, f"unexpected {tokens[index][1]!r}")
    if len(topics) > MAX_CONDITION_TOPICS:
        raise InvalidMessage(path, f"at most {MAX_CONDITION_TOPICS} topics, got {len(topics)}")
    return tuple(topics)


def check_token(path: str, token: object) -> str:
    """A registration token or FID: a non-empty string without spaces or control characters.

    Deliberately loose: whether a well-formed token is *valid* is FCM's to say (and a token it
    refuses is reported dead), so only what can never be a token is refused here.
    """
    value = _string(path, token, optional=False)
    assert value is not None  # not optional
    # str.isprintable is False for every whitespace character but the ASCII space, so this is
    # "no whitespace, no control character", without a Python-level loop over 163 characters.
    if not value or not value.isprintable() or " " in value:
        raise InvalidMessage(path, "must be a non-empty token without spaces")
    return value


# -- the blocks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notification:
    """What every platform shows: ``message.notification``."""

    title: str | None = None
    body: str | None = None
    image: str | None = None

    def __post_init__(self) -> None:
        for name in ("title", "body", "image"):
            _string(f"message.notification.{name}", getattr(self, name))
        if self.title is None and self.body is None and self.image is None:
            raise InvalidMessage("message.notification", "give a title, a body or an image")

    def wire(self) -> dict[str, Any]:
        """The JSON object."""
        return _prune({"title": self.title, "body": self.body, "image": self.image})


@dataclass(frozen=True, slots=True)
class AndroidNotification:
    """``message.android.notification``: Android's own rendering of the notification."""

    title: str | None = None
    body: str | None = None
    icon: str | None = None
    color: str | None = None  # #rrggbb
    sound: str | None = None
    tag: str | None = None
    click_action: str | None = None
    channel_id: str | None = None
    image: str | None = None
    notification_priority: NotificationPriority | None = None
    visibility: Visibility | None = None
    notification_count: int | None = None
    default_sound: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        path = "message.android.notification"
        for name in _ANDROID_NOTIFICATION_STRINGS:
            _string(f"{path}.{name}", getattr(self, name))
        if self.color is not None and not _COLOR.fullmatch(self.color):
            raise InvalidMessage(f"{path}.color", f"must be #rrggbb, got {self.color!r}")
        _choice(
            f"{path}.notification_priority",
            self.notification_priority,
            get_args(NotificationPriority),
        )
        _choice(f"{path}.visibility", self.visibility, get_args(Visibility))
        count = self.notification_count
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise InvalidMessage(f"{path}.notification_count", "must be an integer")
        if count is not None and count < 0:
            raise InvalidMessage(f"{path}.notification_count", "must not be negative")
        _boolean(f"{path}.default_sound", self.default_sound)
        _set(self, "extra", _extra(f"{path}.extra", self.extra, _fields(AndroidNotification)))

    def wire(self) -> dict[str, Any]:
        """The JSON object."""
        out = {name: getattr(self, name) for name in _ANDROID_NOTIFICATION_FIELDS}
        return _prune({**out, **self.extra})


# Every modelled field: all but ``extra``, which holds the fields that are not modelled.
_ANDROID_NOTIFICATION_FIELDS: Final = tuple(
    name for name in _fields(AndroidNotification) if name != "extra"
)
_ANDROID_NOTIFICATION_STRINGS: Final = (
    "title",
    "body",
    "icon",
    "sound",
    "tag",
    "click_action",
    "channel_id",
    "image",
)


@dataclass(frozen=True, slots=True)
class AndroidConfig:
    """``message.android``: delivery options for Android devices."""

    priority: Priority | None = None
    ttl: float | timedelta | None = None  # seconds; normalised to float
    collapse_key: str | None = None
    restricted_package_name: str | None = None
    data: Mapping[str, str] = field(default_factory=_empty)  # replaces message.data on Android
    notification: AndroidNotification | None = None
    analytics_label: str | None = None  # fcm_options.analytics_label
    direct_boot_ok: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        path = "message.android"
        _choice(f"{path}.priority", self.priority, get_args(Priority))
        _set(self, "ttl", _ttl(f"{path}.ttl", self.ttl))
        _string(f"{path}.collapse_key", self.collapse_key)
        _string(f"{path}.restricted_package_name", self.restricted_package_name)
        _set(self, "data", _data(f"{path}.data", self.data))
        if self.notification is not None and not isinstance(self.notification, AndroidNotification):
            raise InvalidMessage(f"{path}.notification", "must be an AndroidNotification")
        _label(f"{path}.fcm_options.analytics_label", self.analytics_label)
        _boolean(f"{path}.direct_boot_ok", self.direct_boot_ok)
        _set(self, "extra", _extra(f"{path}.extra", self.extra, _WIRE_ANDROID))

    def wire(self) -> dict[str, Any]:
        """The JSON object."""
        ttl = self.ttl
        assert not isinstance(ttl, timedelta)  # normalised in __post_init__
        out = {
            "priority": self.priority,
            "ttl": None if ttl is None else format_duration(ttl),
            "collapse_key": self.collapse_key,
            "restricted_package_name": self.restricted_package_name,
            "data": dict(self.data),
            "notification": None if self.notification is None else self.notification.wire(),
            "fcm_options": _prune({"analytics_label": self.analytics_label}),
            "direct_boot_ok": self.direct_boot_ok,
        }
        return _prune({**out, **self.extra})


_ANDROID_FIELDS: Final = (
    "priority",
    "ttl",
    "collapse_key",
    "restricted_package_name",
    "data",
    "notification",
    "direct_boot_ok",
)
_WIRE_ANDROID: Final = (*_ANDROID_FIELDS, "fcm_options")


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    """``message.apns``: APNs headers (``apns-priority``, ``apns-push-type``, ...) and payload."""

    headers: Mapping[str, str] = field(default_factory=_empty)
    payload: Mapping[str, Any] = field(default_factory=_empty)  # {"aps": {...}, custom keys}
    analytics_label: str | None = None  # fcm_options.analytics_label
    image: str | None = None  # fcm_options.image
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        path = "message.apns"
        headers = _strings(f"{path}.headers", self.headers)
        # APNs header names are case-insensitive; FCM passes them on, so store them lower-case.
        _set(self, "headers", MappingProxyType({k.lower(): v for k, v in headers.items()}))
        priority = self.headers.get("apns-priority")
        if priority is not None and priority not in APNS_PRIORITIES:
            raise InvalidMessage(f"{path}.headers.apns-priority", "must be 10, 5 or 1")
        _set(self, "payload", _json(f"{path}.payload", self.payload))
        aps = self.payload.get("aps")
        if aps is not None and not isinstance(aps, Mapping):
            raise InvalidMessage(f"{path}.payload.aps", "must be an object")
        _label(f"{path}.fcm_options.analytics_label", self.analytics_label)
        _string(f"{path}.fcm_options.image", self.image)
        _set(self, "extra", _extra(f"{path}.extra", self.extra, _WIRE_APNS))

    @property
    def alerts(self) -> bool:
        """Whether ``aps`` asks for something the user sees or hears (alert, sound, badge)."""
        aps = self.payload.get("aps")
        return isinstance(aps, Mapping) and any(k in aps for k in ("alert", "sound", "badge"))

    def wire(self, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The JSON object, with ``headers`` instead of the block's own when given."""
        out = {
            "headers": dict(self.headers if headers is None else headers),
            "payload": dict(self.payload),
            "fcm_options": _prune({"analytics_label": self.analytics_label, "image": self.image}),
        }
        return _prune({**out, **self.extra})


_WIRE_APNS: Final = ("headers", "payload", "fcm_options")


@dataclass(frozen=True, slots=True)
class WebpushConfig:
    """``message.webpush``: RFC 8030 headers (``TTL``, ``Urgency``, ``Topic``) and the rest."""

    headers: Mapping[str, str] = field(default_factory=_empty)
    data: Mapping[str, str] = field(default_factory=_empty)
    notification: Mapping[str, Any] = field(default_factory=_empty)  # Web Notification API JSON
    link: str | None = None  # fcm_options.link, https only
    analytics_label: str | None = None  # fcm_options.analytics_label
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        path = "message.webpush"
        headers = _strings(f"{path}.headers", self.headers)
        _set(self, "headers", MappingProxyType({_title_case(k): v for k, v in headers.items()}))
        urgency = self.headers.get("Urgency")
        if urgency is not None and urgency not in WEBPUSH_URGENCIES:
            raise InvalidMessage(
                f"{path}.headers.Urgency", f"must be one of {', '.join(sorted(WEBPUSH_URGENCIES))}"
            )
        _set(self, "data", _data(f"{path}.data", self.data))
        _set(self, "notification", _json(f"{path}.notification", self.notification))
        _https(f"{path}.fcm_options.link", self.link)
        _label(f"{path}.fcm_options.analytics_label", self.analytics_label)
        _set(self, "extra", _extra(f"{path}.extra", self.extra, _WIRE_WEBPUSH))

    def wire(self, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The JSON object, with ``headers`` instead of the block's own when given."""
        out = {
            "headers": dict(self.headers if headers is None else headers),
            "data": dict(self.data),
            "notification": dict(self.notification),
            "fcm_options": _prune({"link": self.link, "analytics_label": self.analytics_label}),
        }
        return _prune({**out, **self.extra})


_WIRE_WEBPUSH: Final = ("headers", "data", "notification", "fcm_options")


def _title_case(name: str) -> str:
    # RFC 8030 names (TTL, Urgency, Topic) are matched case-insensitively; keep one spelling.
    lowered = name.lower()
    return {"ttl": "TTL", "urgency": "Urgency", "topic": "Topic"}.get(lowered, name)


# -- the message -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One FCM message to one target; checked against FCM's rules when built.

    Exactly one of ``token``, ``fid``, ``topic`` or ``condition`` (none makes a template for
    ``to`` and multicast). ``priority`` is the cross-platform switch (see the module docstring).
    """

    token: str | None = None
    fid: str | None = None
    topic: str | None = None
    condition: str | None = None
    notification: Notification | None = None
    data: Mapping[str, str] = field(default_factory=_empty)
    priority: Priority | None = None
    android: AndroidConfig | None = None
    apns: ApnsConfig | None = None
    webpush: WebpushConfig | None = None
    analytics_label: str | None = None  # fcm_options.analytics_label

    def __post_init__(self) -> None:
        given = [kind for kind in TARGETS if getattr(self, kind) is not None]
        if len(given) > 1:
            raise InvalidMessage(
                "message", f"exactly one target is allowed, got {' and '.join(given)}"
            )
        if self.token is not None:
            check_token("message.token", self.token)
        if self.fid is not None:
            check_token("message.fid", self.fid)
        if self.topic is not None:
            _set(self, "topic", normalize_topic("message.topic", self.topic))
        if self.condition is not None:
            _string("message.condition", self.condition)
            condition_topics("message.condition", self.condition)
        for name, kind in _BLOCKS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise InvalidMessage(f"message.{name}", f"must be a {kind.__name__}")
        _set(self, "data", _data("message.data", self.data))
        _choice("message.priority", self.priority, get_args(Priority))
        _label("message.fcm_options.analytics_label", self.analytics_label)
        explicit = None if self.apns is None else self.apns.headers.get("apns-priority")
        if explicit == "10" and not self.alerts:
            raise InvalidMessage(
                "message.apns.headers.apns-priority",
                "10 is for alerts; a data-only message must use 5 (APNs refuses 10)",
            )
        limit = self.payload_limit
        size = self.payload_size()
        if size > limit:
            raise InvalidMessage(
                "message",
                f"payload is {size} bytes; FCM allows {limit} "
                f"{'to a topic' if limit == MAX_TOPIC_PAYLOAD else 'to a device'}",
                size=size,
                limit=limit,
            )

    # -- the target

    @property
    def target_kind(self) -> TargetKind | None:
        """``token``, ``fid``, ``topic`` or ``condition``; None for a template."""
        for kind in TARGETS:
            if getattr(self, kind) is not None:
                return kind
        return None

    @property
    def target(self) -> str | None:
        """The token, FID, topic or condition this message goes to."""
        kind = self.target_kind
        return None if kind is None else str(getattr(self, kind))

    def to(
        self,
        *,
        token: str | None = None,
        fid: str | None = None,
        topic: str | None = None,
        condition: str | None = None,
    ) -> Message:
        """The same message to another target (the old target is dropped)."""
        return dataclasses.replace(self, token=token, fid=fid, topic=topic, condition=condition)

    def require_target(self) -> TargetKind:
        """The target kind; ``InvalidMessage`` for a template."""
        kind = self.target_kind
        if kind is None:
            raise InvalidMessage("message", "needs a target: token, fid, topic or condition")
        return kind

    # -- what it looks like to APNs and FCM

    @property
    def alerts(self) -> bool:
        """Whether the user is shown or played something (APNs priority 10 is allowed)."""
        return self.notification is not None or (self.apns is not None and self.apns.alerts)

    @property
    def payload_limit(self) -> int:
        """FCM's size limit for this message's target."""
        topical = self.topic is not None or self.condition is not None
        return MAX_TOPIC_PAYLOAD if topical else MAX_PAYLOAD

    def payload_size(self) -> int:
        """Bytes FCM counts against the limit: data keys and values, notification title and body."""

        def size(data: Mapping[str, str]) -> int:
            return sum(len(k.encode()) + len(v.encode()) for k, v in data.items())

        android = {} if self.android is None else self.android.data
        text = 0
        if self.notification is not None:
            text = sum(
                len((t or "").encode()) for t in (self.notification.title, self.notification.body)
            )
        return max(size(self.data), size(android)) + text

    def body(self) -> dict[str, Any]:
        """The v1 ``Message`` JSON without its target (what a multicast shares)."""
        out: dict[str, Any] = {}
        if self.notification is not None:
            out["notification"] = self.notification.wire()
        if self.data:
            out["data"] = dict(self.data)
        android = {} if self.android is None else self.android.wire()
        if self.priority is not None:
            android.setdefault("priority", self.priority)
        if android:
            out["android"] = android
        apns = self._apns_wire()
        if apns:
            out["apns"] = apns
        webpush = self._webpush_wire()
        if webpush:
            out["webpush"] = webpush
        if self.analytics_label is not None:
            out["fcm_options"] = {"analytics_label": self.analytics_label}
        return out

    def payload(self) -> dict[str, Any]:
        """The v1 ``Message`` JSON, target included."""
        kind = self.require_target()
        return {kind: getattr(self, kind), **self.body()}

    def to_wire(self, validate_only: bool = False) -> dict[str, Any]:
        """The request body of ``messages:send``: ``{"message": ..., "validate_only": ...}``."""
        return {"message": self.payload(), "validate_only": validate_only}

    def _apns_wire(self) -> dict[str, Any]:
        headers = dict(self.apns.headers) if self.apns is not None else {}
        if self.priority is not None and "apns-priority" not in headers:
            # APNs refuses 10 for a message that neither alerts, sounds nor badges.
            high = self.priority == "high" and self.alerts
            headers["apns-priority"] = "10" if high else "5"
        if self.apns is not None:
            return self.apns.wire(headers)
        return {"headers": headers} if headers else {}

    def _webpush_wire(self) -> dict[str, Any]:
        headers = dict(self.webpush.headers) if self.webpush is not None else {}
        if self.priority is not None:
            headers.setdefault("Urgency", self.priority)
        if self.webpush is not None:
            return self.webpush.wire(headers)
        return {"headers": headers} if headers else {}

    # -- parsing

    @classmethod
    def from_wire(cls, message: object) -> Message:
        """A ``Message`` from the v1 ``Message`` JSON (the value of ``"message"``)."""
        obj = _object("message", message)
        known = (*TARGETS, "notification", "data", "android", "apns", "webpush", "fcm_options")
        _known_only("message", obj, known)
        notification = obj.get("notification")
        return cls(
            token=_string("message.token", obj.get("token")),
            fid=_string("message.fid", obj.get("fid")),
            topic=_string("message.topic", obj.get("topic")),
            condition=_string("message.condition", obj.get("condition")),
            notification=None
            if notification is None
            else _build(
                "message.notification",
                Notification,
                _object("message.notification", notification),
                ("title", "body", "image"),
            ),
            data=_strings("message.data", obj.get("data", {})),
            android=_parse_optional("message.android", obj.get("android"), _android_from),
            apns=_parse_optional("message.apns", obj.get("apns"), _apns_from),
            webpush=_parse_optional("message.webpush", obj.get("webpush"), _webpush_from),
            analytics_label=_fcm_options("message", obj, ("analytics_label",)).get(
                "analytics_label"
            ),
        )


_BLOCKS: Final[Mapping[str, type]] = MappingProxyType(
    {
        "notification": Notification,
        "android": AndroidConfig,
        "apns": ApnsConfig,
        "webpush": WebpushConfig,
    }
)


def parse_request(body: object) -> tuple[Message, bool]:
    """The message and ``validate_only`` of a ``messages:send`` request body."""
    obj = _object("request", body)
    _known_only("request", obj, ("message", "validate_only", "validateOnly"))
    validate_only = obj.get("validate_only", obj.get("validateOnly", False))
    if not isinstance(validate_only, bool):
        raise InvalidMessage("validate_only", "must be true or false")
    if "message" not in obj:
        raise InvalidMessage("message", "is required")
    return Message.from_wire(obj["message"]), validate_only


# -- parsing helpers ---------------------------------------------------------------------------


def _object(path: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidMessage(path, f"must be an object, got {_type_name(value)}")
    return value


def _known_only(path: str, obj: Mapping[str, Any], known: tuple[str, ...]) -> None:
    for key in obj:
        if key not in known:
            raise InvalidMessage(f"{path}.{key}", "is not a field FCM knows")


def _parse_optional(
    path: str, value: object, parse: Callable[[str, Mapping[str, Any]], _E]
) -> _E | None:
    return None if value is None else parse(path, _object(path, value))


def _fcm_options(path: str, obj: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    options = _object(f"{path}.fcm_options", obj.get("fcm_options", {}))
    _known_only(f"{path}.fcm_options", options, known)
    return dict(options)


def _build(path: str, cls: type[_E], obj: Mapping[str, Any], known: tuple[str, ...]) -> _E:
    """``cls`` from the fields of ``obj`` it models; anything else goes to ``extra``."""
    values = {key: obj[key] for key in known if key in obj}
    rest = {key: value for key, value in obj.items() if key not in known}
    if rest:
        if "extra" not in _fields(cls):
            _known_only(path, rest, ())
        values["extra"] = rest
    return cls(**values)


def _android_from(path: str, obj: Mapping[str, Any]) -> AndroidConfig:
    values = dict(obj)
    options = _fcm_options(path, values, ("analytics_label",))
    values.pop("fcm_options", None)
    if "ttl" in values:
        values["ttl"] = parse_duration(f"{path}.ttl", values["ttl"])
    if isinstance(values.get("priority"), str):
        values["priority"] = values["priority"].lower()  # the proto enum is HIGH / NORMAL
    if values.get("notification") is not None:
        values["notification"] = _build(
            f"{path}.notification",
            AndroidNotification,
            _object(f"{path}.notification", values["notification"]),
            _ANDROID_NOTIFICATION_FIELDS,
        )
    values["analytics_label"] = options.get("analytics_label")
    known = (*_ANDROID_FIELDS, "analytics_label")
    return _build(path, AndroidConfig, values, known)


def _apns_from(path: str, obj: Mapping[str, Any]) -> ApnsConfig:
    values = dict(obj)
    options = _fcm_options(path, values, ("analytics_label", "image"))
    values.pop("fcm_options", None)
    values.update(analytics_label=options.get("analytics_label"), image=options.get("image"))
    return _build(path, ApnsConfig, values, ("headers", "payload", "analytics_label", "image"))


def _webpush_from(path: str, obj: Mapping[str, Any]) -> WebpushConfig:
    values = dict(obj)
    options = _fcm_options(path, values, ("link", "analytics_label"))
    values.pop("fcm_options", None)
    values.update(link=options.get("link"), analytics_label=options.get("analytics_label"))
    return _build(
        path, WebpushConfig, values, ("headers", "data", "notification", "link", "analytics_label")
    )
