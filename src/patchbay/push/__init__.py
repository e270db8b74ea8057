"""Push notifications through Firebase Cloud Messaging (HTTP v1), to FCM or its emulator.

- ``messages``: typed, checked ``Message`` values and their exact wire JSON (pure).
- ``auth``: OAuth access tokens from a service account, refreshed once for all senders.
- ``client``: the async ``Sender`` (concurrent, retries per FCM's error table, dead-token
  reports) and ``BlockingSender``, a thin synchronous façade over it.
- ``transport``: the sender's HTTP seam: aiohttp over HTTP/1.1 (the default) or httpx over
  HTTP/2, behind one ``request`` call.
- ``errors``: ``InvalidMessage`` and the sender-level ``PushError`` tree.

Hand-written rather than built on firebase-admin: its URL is fixed (no emulator), its async
path neither retries 429 nor honours ``Retry-After``, and it has no bound on requests in flight
(fcm.md sections 2 and 5).
"""

from patchbay.push.auth import AccessToken, ServiceAccountTokens, TokenSource
from patchbay.push.client import (
    BlockingSender,
    Outcome,
    Result,
    Sender,
    SenderStats,
    TopicApi,
    TopicFailure,
    TopicReport,
    connect,
)
from patchbay.push.errors import InvalidMessage, PushAuthError, PushError, PushUnavailable
from patchbay.push.messages import (
    AndroidConfig,
    AndroidNotification,
    ApnsConfig,
    Message,
    Notification,
    Priority,
    TargetKind,
    WebpushConfig,
    parse_request,
)

__all__ = [
    "AccessToken",
    "AndroidConfig",
    "AndroidNotification",
    "ApnsConfig",
    "BlockingSender",
    "InvalidMessage",
    "Message",
    "Notification",
    "Outcome",
    "Priority",
    "PushAuthError",
    "PushError",
    "PushUnavailable",
    "Result",
    "Sender",
    "SenderStats",
    "ServiceAccountTokens",
    "TargetKind",
    "TokenSource",
    "TopicApi",
    "TopicFailure",
    "TopicReport",
    "WebpushConfig",
    "connect",
    "parse_request",
]
