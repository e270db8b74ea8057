"""FCM messages: the checks FCM would make, the cross-platform priority, and the wire JSON."""

from __future__ import annotations

import dataclasses
import string
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchbay.errors import PatchbayError, RequestError
from patchbay.push.errors import InvalidMessage
from patchbay.push.messages import (
    MAX_PAYLOAD,
    MAX_TOPIC_PAYLOAD,
    AndroidConfig,
    AndroidNotification,
    ApnsConfig,
    Message,
    Notification,
    WebpushConfig,
    condition_topics,
    format_duration,
    parse_duration,
    parse_request,
)


def test_to_wire_is_the_exact_v1_request_body() -> None:
    """A notification-and-data message renders as FCM's documented JSON, nothing more."""
    message = Message(
        token="tok-1",
        notification=Notification(title="Hi", body="There"),
        data={"order": "42"},
        android=AndroidConfig(ttl=3600, collapse_key="orders"),
        analytics_label="orders_v1",
    )
    assert message.to_wire(validate_only=True) == {
        "message": {
            "token": "tok-1",
            "notification": {"title": "Hi", "body": "There"},
            "data": {"order": "42"},
            "android": {"ttl": "3600s", "collapse_key": "orders"},
            "fcm_options": {"analytics_label": "orders_v1"},
        },
        "validate_only": True,
    }


def test_high_priority_wakes_every_platform() -> None:
    """priority=high: Android HIGH, apns-priority 10 for an alert, WebPush Urgency high."""
    wire = Message(token="t", notification=Notification(body="b"), priority="high").payload()
    assert wire["android"] == {"priority": "high"}
    assert wire["apns"] == {"headers": {"apns-priority": "10"}}
    assert wire["webpush"] == {"headers": {"Urgency": "high"}}


def test_high_priority_data_only_uses_apns_priority_5() -> None:
    """APNs refuses 10 without an alert, so a data-only high message gets 5 on iOS."""
    wire = Message(token="t", data={"k": "v"}, priority="high").payload()
    assert wire["android"]["priority"] == "high"
    assert wire["apns"]["headers"]["apns-priority"] == "5"


def test_alerting_apns_payload_allows_priority_10() -> None:
    """An aps alert, sound or badge makes a message an alert even without notification."""
    apns = ApnsConfig(payload={"aps": {"alert": {"title": "x"}}})
    wire = Message(token="t", apns=apns, priority="high").payload()
    assert wire["apns"]["headers"]["apns-priority"] == "10"
    assert wire["apns"]["payload"] == {"aps": {"alert": {"title": "x"}}}


def test_explicit_platform_settings_beat_priority() -> None:
    """What a platform block sets explicitly wins over the cross-platform switch."""
    message = Message(
        token="t",
        notification=Notification(title="x"),
        priority="high",
        android=AndroidConfig(priority="normal"),
        apns=ApnsConfig(headers={"APNS-Priority": "5"}),
        webpush=WebpushConfig(headers={"urgency": "low"}),
    )
    wire = message.payload()
    assert wire["android"]["priority"] == "normal"
    assert wire["apns"]["headers"] == {"apns-priority": "5"}
    assert wire["webpush"]["headers"] == {"Urgency": "low"}


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Message(token="a", topic="b"), "message: exactly one target is allowed"),
        (
            lambda: Message(token="a", data={"count": 1}),  # type: ignore[dict-item]
            "message.data.count: values must be strings",
        ),
        (lambda: Message(token="a", data={"from": "x"}), "message.data.from: is a reserved key"),
        (lambda: Message(token="a", data={"gcm.x": "y"}), "message.data.gcm.x: is a reserved key"),
        (
            lambda: Message(token="a", data={"Google_id": "y"}),
            "message.data.Google_id: is a reserved",
        ),
        (lambda: Message(token="a", data={"": "y"}), "message.data: keys must be non-empty"),
        (lambda: Message(token="a b"), "message.token: must be a non-empty token"),
        (lambda: Message(token=""), "message.token: must be a non-empty token"),
        (lambda: Message(topic="news!"), "message.topic: 'news!' is not a topic name"),
        (lambda: Message(condition="'a' in topics &&"), "message.condition: expected"),
        (lambda: Message(condition="('a' in topics"), "message.condition: a '(' is never closed"),
        (lambda: Message(condition="a in topics"), "message.condition: cannot read"),
        (
            lambda: Message(token="a", analytics_label="x" * 51),
            "message.fcm_options.analytics_label",
        ),
        (
            lambda: Message(token="a", priority="urgent"),  # type: ignore[arg-type]
            "message.priority: must be one of high",
        ),
        (lambda: AndroidConfig(ttl=-1), "message.android.ttl: must be between 0 and 2419200"),
        (lambda: AndroidConfig(ttl=29 * 86400), "message.android.ttl: must be between"),
        (lambda: AndroidConfig(ttl=float("nan")), "message.android.ttl"),
        (
            lambda: AndroidConfig(data={"k": 1}),  # type: ignore[dict-item]
            "message.android.data.k: values must be strings",
        ),
        (lambda: AndroidNotification(color="red"), "message.android.notification.color"),
        (lambda: ApnsConfig(headers={"apns-priority": "7"}), "message.apns.headers.apns-priority"),
        (
            lambda: WebpushConfig(link="http://x"),
            "message.webpush.fcm_options.link: must be an https",
        ),
        (lambda: Notification(), "message.notification: give a title, a body or an image"),
        (
            lambda: Message(
                token="a", data={"k": "v"}, apns=ApnsConfig(headers={"apns-priority": "10"})
            ),
            "message.apns.headers.apns-priority: 10 is for alerts",
        ),
        (lambda: AndroidConfig(extra={"ttl": "1s"}), "message.android.extra.ttl: is a modelled"),
    ],
)
def test_bad_messages_name_the_field(build: Any, error: str) -> None:
    """Every rule FCM enforces with a 400 is refused at construction, naming the wire field."""
    with pytest.raises(InvalidMessage) as caught:
        build()
    assert str(caught.value).startswith(error)
    assert isinstance(caught.value, RequestError) and isinstance(caught.value, PatchbayError)
    assert caught.value.status == 400


def test_payload_limit_is_4096_for_devices_and_2048_for_topics() -> None:
    """The payload is the message's JSON without its target; topics get half."""
    fits = Message(token="t", data={"k": "x" * (MAX_PAYLOAD - 100)})
    assert fits.payload_size() <= MAX_PAYLOAD
    with pytest.raises(InvalidMessage, match=r"^message: payload is \d+ bytes; FCM allows 4096"):
        Message(token="t", data={"k": "x" * MAX_PAYLOAD})
    with pytest.raises(InvalidMessage, match="FCM allows 2048 to a topic"):
        fits.to(topic="news")
    assert Message(topic="news", data={"k": "x" * (MAX_TOPIC_PAYLOAD - 100)}).topic == "news"


def test_payload_counts_bytes_not_characters() -> None:
    """Multi-byte UTF-8 counts as FCM counts it, in bytes."""
    with pytest.raises(InvalidMessage, match="payload is"):
        Message(token="t", data={"k": "é" * 2100})


def test_templates_have_no_target_until_sent() -> None:
    """A message without a target is a template: fine to build, refused on the wire."""
    template = Message(notification=Notification(title="Sale"))
    assert template.target_kind is None
    with pytest.raises(InvalidMessage, match=r"^message: needs a target"):
        template.to_wire()
    message = template.to(fid="fid-1")
    assert (message.target_kind, message.target) == ("fid", "fid-1")
    assert message.to(token="t2").payload()["token"] == "t2"
    assert "fid" not in message.to(token="t2").payload()


def test_topic_prefix_is_stripped() -> None:
    """/topics/news and news are the same topic (firebase-admin accepts both)."""
    assert Message(topic="/topics/news").payload()["topic"] == "news"


def test_conditions_allow_five_topics_and_negation() -> None:
    """&&, ||, ! and parentheses over at most five 'topic' in topics."""
    topics = condition_topics(
        "c", "!('a' in topics) && (\"b\" in topics || 'c' in topics) && 'd' in topics"
    )
    assert topics == ("a", "b", "c", "d")
    six = " || ".join(f"'t{i}' in topics" for i in range(6))
    with pytest.raises(InvalidMessage, match="at most 5 topics, got 6"):
        Message(condition=six)


def test_mappings_are_copied_and_read_only() -> None:
    """A caller changing its dict afterwards cannot change (or un-check) the message."""
    data = {"k": "v"}
    message = Message(token="t", data=data)
    data["k"] = 1  # type: ignore[assignment]
    assert message.data == {"k": "v"}
    with pytest.raises(TypeError):
        message.data["k"] = "w"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.token = "u"  # type: ignore[misc]


def test_timedelta_ttl_and_extra_fields() -> None:
    """A timedelta ttl is normalised to seconds; extra fields pass through verbatim."""
    android = AndroidConfig(
        ttl=timedelta(minutes=1, milliseconds=500), extra={"bandwidth_constrained_ok": True}
    )
    assert android.ttl == 60.5
    assert Message(token="t", android=android).payload()["android"] == {
        "ttl": "60.500s",
        "bandwidth_constrained_ok": True,
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (3600, "3600s"),
        (3.5, "3.500s"),
        (0.3, "0.300s"),
        (1e-6, "0.000001s"),
        (1e-9, "0.000000001s"),
    ],
)
def test_durations_use_protobuf_json(seconds: float, text: str) -> None:
    """Durations render with 0, 3, 6 or 9 fractional digits and parse back."""
    assert format_duration(seconds) == text
    assert parse_duration("ttl", text) == pytest.approx(seconds)


def test_parse_request_reads_fcm_request_bodies() -> None:
    """A messages:send body (validate_only or validateOnly) parses; unknown fields do not."""
    body = {"message": {"topic": "news", "data": {"a": "b"}}, "validateOnly": True}
    message, validate_only = parse_request(body)
    assert (message.topic, validate_only) == ("news", True)
    with pytest.raises(InvalidMessage, match=r"^message\.tokens: is not a field FCM knows"):
        parse_request({"message": {"tokens": ["a"]}})
    with pytest.raises(InvalidMessage, match=r"^message\.android\.ttl: must be a duration"):
        Message.from_wire({"token": "t", "android": {"ttl": 60}})
    with pytest.raises(InvalidMessage, match=r"^message\.data\.n: values must be strings"):
        Message.from_wire({"token": "t", "data": {"n": 1}})


def test_from_wire_reads_platform_blocks_and_keeps_unknown_fields() -> None:
    """Android's HIGH enum, fcm_options and unknown platform fields survive a round trip."""
    wire = {
        "token": "t",
        "android": {
            "priority": "HIGH",
            "ttl": "86400s",
            "fcm_options": {"analytics_label": "a"},
            "notification": {"channel_id": "c", "light_settings": {"color": {"red": 1}}},
            "restricted_satellite_ok": True,
        },
        "apns": {
            "headers": {"apns-push-type": "background", "apns-priority": "5"},
            "payload": {"aps": {"content-available": 1}},
            "fcm_options": {"image": "https://i"},
            "live_activity_token": "lat",
        },
        "webpush": {"headers": {"TTL": "60"}, "fcm_options": {"link": "https://x"}},
    }
    message = Message.from_wire(wire)
    assert message.android is not None and message.android.priority == "high"
    assert message.android.extra == {"restricted_satellite_ok": True}
    assert message.apns is not None and message.apns.extra == {"live_activity_token": "lat"}
    out = message.payload()
    assert out["android"]["priority"] == "high"
    assert out["android"]["notification"]["light_settings"] == {"color": {"red": 1}}
    assert out["apns"] == wire["apns"]
    assert out["webpush"] == wire["webpush"]


# -- properties --------------------------------------------------------------------------------

_text = st.text(string.ascii_letters + string.digits + " é😀", max_size=20)
_keys = st.text(string.ascii_lowercase + "_", min_size=1, max_size=10).filter(
    lambda k: k not in ("from", "message_type") and not k.startswith(("google", "gcm"))
)
_data = st.dictionaries(_keys, _text, max_size=5)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """Random valid messages across targets and blocks."""
    target = draw(st.sampled_from(["token", "fid", "topic", "condition"]))
    value = {
        "token": draw(st.text(string.ascii_letters + ":-_", min_size=1, max_size=40)),
        "fid": draw(st.text(string.ascii_letters, min_size=1, max_size=22)),
        "topic": draw(st.text(string.ascii_letters + "-_.~%", min_size=1, max_size=20)),
        "condition": "'a' in topics || ('b' in topics && !('c' in topics))",
    }[target]
    notification = draw(st.none() | st.builds(Notification, title=_text, body=st.none() | _text))
    android = draw(
        st.none()
        | st.builds(
            AndroidConfig,
            ttl=st.none() | st.integers(0, 2_419_200) | st.sampled_from([0.5, 1.25, 0.001]),
            collapse_key=st.none() | _text,
            data=_data,
            notification=st.none() | st.builds(AndroidNotification, title=_text, tag=_text),
        )
    )
    webpush = draw(st.none() | st.builds(WebpushConfig, data=_data, headers=st.just({"TTL": "5"})))
    return Message(
        **{target: value},  # type: ignore[arg-type]
        notification=notification,
        data=draw(_data),
        android=android,
        webpush=webpush,
        analytics_label=draw(st.none() | st.sampled_from(["a", "campaign_1"])),
    )


@given(messages())
def test_wire_round_trip(message: Message) -> None:
    """from_wire(payload()) renders the same JSON (empty blocks, which render as nothing, aside)."""
    again = Message.from_wire(orjson.loads(orjson.dumps(message.payload())))
    assert again.payload() == message.payload()
    if message.android is None or message.android.wire():
        assert again == message


@given(messages(), st.sampled_from(["high", "normal"]))
def test_priority_renders_consistently(message: Message, priority: Any) -> None:
    """Parsing a prioritised message's JSON gives one that renders the same JSON."""
    prioritised = dataclasses.replace(message, priority=priority)
    wire = prioritised.payload()
    assert Message.from_wire(wire).payload() == wire
    assert wire["apns"]["headers"]["apns-priority"] in ("5", "10")
    if prioritised.notification is None:
        assert wire["apns"]["headers"]["apns-priority"] == "5"


@given(
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers(), st.none()))
)
def test_data_values_must_be_strings(data: dict[str, Any]) -> None:
    """Any data map is either accepted as strings-only or refused naming the bad entry."""
    if all(isinstance(v, str) for v in data.values()) and all(data):
        assert Message(token="t", data=data).data == data
        return
    with pytest.raises(InvalidMessage, match=r"^message\.data"):
        Message(token="t", data=data)


@given(st.decimals(min_value=0, max_value=2_419_200, places=9, allow_nan=False))
def test_durations_round_trip(seconds: Any) -> None:
    """Every duration FCM allows renders to a string that parses back to it (to the ns)."""
    value = float(seconds)
    assert parse_duration("ttl", format_duration(value)) == pytest.approx(value, abs=1e-9)
