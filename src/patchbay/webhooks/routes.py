"""``POST /hooks/{source}``: gate, verify, store, and only then acknowledge.

The order is the whole point: method and size gates, then the signature over the exact raw bytes
(before any parsing), then the envelope, then a durable commit, then the 2xx. A handshake
(Slack's ``url_verification``) is answered at once and never stored. Handlers never run here:
their failures cannot reach the provider, and a slow handler cannot make it time out and resend.

Answers: 200 ``{"delivery", "duplicate", "runs"}`` (a duplicate is 200 too, storing nothing new);
404 unknown source; 405 other methods; 413 over the source's body limit; 415 content type;
400 malformed signature headers or body; 401 bad signature (``X-Slack-No-Retry: 1`` for Slack);
503 with ``Retry-After`` when the store cannot commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import orjson
import structlog

from patchbay.errors import (
    MethodNotAllowed,
    NotFound,
    PatchbayError,
    PayloadTooLarge,
    SignatureRejected,
    StoreUnavailable,
)
from patchbay.http import JSON, Reply, Request, error_reply
from patchbay.webhooks.envelope import open_envelope
from patchbay.webhooks.inbox import Inbox, Source
from patchbay.webhooks.stats import HookStats
from patchbay.webhooks.verify import verify

log = structlog.get_logger("patchbay.webhooks")
PREFIX: Final = "/hooks/"
RETRY_AFTER: Final = b"5"


class Receiver:
    """The webhook intake endpoint."""

    def __init__(
        self,
        sources: Mapping[str, Source],
        inbox: Inbox,
        stats: HookStats,
        clock: Callable[[], float],
    ) -> None:
        self.sources = sources
        self.inbox = inbox
        self.stats = stats
        self.clock = clock

    def body_limit(self, path: str) -> int | None:
        """The body limit of the source at ``path``, or None for an unknown source."""
        source = self.sources.get(path.removeprefix(PREFIX))
        return None if source is None else source.max_body_bytes

    async def handle(self, request: Request) -> Reply:
        """Answer one delivery."""
        began = self.clock()
        name = request.path.removeprefix(PREFIX)
        source = self.sources.get(name)
        try:
            if source is None:
                raise NotFound(f"no webhook source {name!r}", source=name)
            if request.method != "POST":
                raise MethodNotAllowed("webhooks are delivered with POST", allow="POST")
            if len(request.body) > source.max_body_bytes:
                raise PayloadTooLarge(
                    f"the body is over {source.max_body_bytes} bytes", limit=source.max_body_bytes
                )
            verify(source.scheme, request.headers, request.body, began)
            envelope = open_envelope(source.scheme, request.headers, request.body)
        except PatchbayError as exc:
            reason = getattr(exc, "reason", exc.code)
            if source is not None:
                self.stats.rejected(source.name, reason)
            log.info("delivery rejected", source=name, reason=reason, peer=request.peer)
            return self._rejection(exc, source)
        if envelope.handshake is not None:
            shake = envelope.handshake
            return Reply(shake.status, shake.content_type.encode(), shake.body)
        try:
            put, runs = await self.inbox.accept(source, envelope, request.headers, request.body)
        except StoreUnavailable as exc:
            self.stats.rejected(source.name, exc.code)
            log.error("cannot store a delivery", source=name, error=exc.message)
            return error_reply(exc, (b"retry-after", RETRY_AFTER))
        acked = self.clock()
        self.stats.received(source.name, envelope.event, duplicate=not put.created)
        self.stats.ack_latency.record(acked - began)
        # Debug, not info: one line per delivery cost a quarter of the bare endpoint's CPU.
        (log.debug if put.created else log.info)(
            "delivery stored" if put.created else "duplicate delivery",
            source=name,
            hook=envelope.event,
            delivery=envelope.delivery_key,
            runs=runs if put.created else 0,
        )
        body = {
            "delivery": envelope.delivery_key,
            "duplicate": not put.created,
            "runs": runs if put.created else 0,
        }
        return Reply(200, JSON, orjson.dumps(body))

    def _rejection(self, exc: PatchbayError, source: Source | None) -> Reply:
        headers: list[tuple[bytes, bytes]] = []
        if isinstance(exc, MethodNotAllowed):
            headers.append((b"allow", b"POST"))
        if isinstance(exc, SignatureRejected) and source and source.scheme.provider == "slack":
            headers.append((b"x-slack-no-retry", b"1"))
        return error_reply(exc, *headers)
