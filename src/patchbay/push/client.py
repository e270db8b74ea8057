"""The FCM sender: an async concurrent core and a blocking façade over it.

Design (fcm.md section 5):

- **One request per device, many in flight.** HTTP v1 takes one message per request (the batch
  endpoint is gone), so "send to many" is many concurrent requests. ``concurrency`` bounds the
  requests in flight for the whole ``Sender`` (a semaphore held only around the HTTP exchange,
  never during a back-off sleep), whichever of ``send``, ``send_many``, ``send_multicast`` and
  the topic calls they come from.
- **HTTP through one narrow seam** (``transport.py``): the sender only calls
  ``transport.request(method, url, body, headers, limit)`` and classifies the ``Reply``, so the
  retry policy below exists once, whatever the protocol. ``http2 = false`` (the default):
  aiohttp over HTTP/1.1 with a keep-alive pool of ``concurrency`` connections (a C parser, and a
  pool that does not scan its connections: a fraction of httpx's client CPU per request, which
  is what limits a Python sender; docs/push.md, "Which protocol"). ``http2 = true``: httpx over
  HTTP/2 (h2 by ALPN against ``https://``, h2c with prior knowledge against an ``http://``
  emulator), sharded over ``ceil(concurrency / 100)`` connections. ``http=`` (an
  ``httpx.AsyncClient`` or any ``Transport``) and ``transport=`` (an httpx transport:
  ``ASGITransport`` to the emulator in tests) replace the sender's own.
- **Little work per message.** A multicast serializes its template once and splices each
  token's JSON string into the bytes (no dict per message); a JSON POST's headers are built once
  per access token, not per request.
- **Streaming.** ``send_many`` and ``send_multicast`` pull their input lazily (sync or async
  iterables: a file of a million tokens is never in memory) and keep at most ``window`` messages
  being worked on (in flight or waiting to retry); results are yielded as they complete, each
  with its input ``index`` (or in input order with ``ordered=True``, still bounded: completed
  results waiting for an earlier one count against the window). Completed tasks are collected
  through a queue, so each message costs O(1) bookkeeping however large the window.
- **Retries follow FCM's error table.** ``UNREGISTERED`` and ``SENDER_ID_MISMATCH`` (and an
  ``INVALID_ARGUMENT`` that is about the registration token) mean a dead token: never retried,
  reported through ``on_dead_token(token, reason)`` once and in the result, and remembered, so
  no later message of this sender makes a request to it. Other ``INVALID_ARGUMENT`` and
  ``THIRD_PARTY_AUTH_ERROR`` / ``PERMISSION_DENIED`` are never retried. ``QUOTA_EXCEEDED``,
  ``UNAVAILABLE``, ``INTERNAL``, 502, 504 and transport errors back off with full jitter
  (``uniform(0, min(60, 2**n))`` seconds) but never less than ``Retry-After`` (seconds or an
  HTTP date, read against the answer's own ``Date``; capped by ``retry_after_cap``). A
  project-wide ``QUOTA_EXCEEDED`` pauses *every* send of this sender for at least
  ``quota_floor`` seconds (Google: at least a minute), since retrying other messages into an
  exhausted project quota only amplifies the overload. Each send has a total ``deadline`` (a
  retry that would start after it is not attempted) and ``max_attempts``. A 401 means our token
  died early: it is invalidated and the request retried once with a fresh one.
- **Duplicates.** A transport error after the request left (a reset, a timeout) may mean FCM
  delivered it; the retry then duplicates the notification. FCM has no idempotency key; set a
  ``collapse_key`` / ``apns-collapse-id`` where duplicates would hurt (fcm.md 5.4).
- **Topic management** (``subscribe`` / ``unsubscribe``, fcm.md 1.8) has two APIs. By default
  (``api="registrations"``) the FCM v1 per-device resource that replaces Instance ID, as
  firebase-admin 7.7 does: one request per token, ``POST {fcm_url}/v1/projects/{p}/
  registrations/{token}/topicSubscriptions?topicName=T`` (409 ``ALREADY_EXISTS``: already
  subscribed, a success) or ``DELETE .../topicSubscriptions/T?allowMissing=true`` (not
  subscribed: a success too). ``api="iid"`` keeps the legacy Instance ID ``batchAdd`` /
  ``batchRemove`` (``iid_url``, 1,000 tokens a request, ``IID_PARALLEL`` batches at a time).
  Either way the input is read lazily (per-token requests: at most ``window`` tokens being
  worked on), requests take the sender's ``concurrency`` slots, 429/5xx and transport errors
  are retried as sends are (backoff, ``Retry-After``; topic management has a quota of its own,
  so it neither causes nor waits for the project pause of sends), and the ``TopicReport`` holds
  a count and only the failures. A failure's ``error`` is the per-token code of the Instance ID
  API or, per device, the canonical status (``NOT_FOUND``, ``INVALID_ARGUMENT``,
  ``PERMISSION_DENIED``...: the same words). A dead token (IID ``NOT_FOUND``; per device an
  ``UNREGISTERED``, ``SENDER_ID_MISMATCH`` or invalid token, or a JSON ``NOT_FOUND``) is
  reported through ``on_dead_token`` as a send's is.
- **Injected clock, sleep and randomness**, so tests run retries and pauses in virtual time.
- **The blocking API is a thin façade**: ``BlockingSender`` runs one event loop in a daemon
  thread and forwards every call to the async ``Sender`` on it (never ``asyncio.run`` per call,
  PyFCM's bug: it works from plain scripts, WSGI apps and threads that run a loop of their own).
  Iterables given to its ``send_many`` are read in the *caller's* thread, on demand, so a
  generator over a thread-bound database cursor works and the loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote

import httpx
import orjson
import structlog

from patchbay.errors import ConfigError
from patchbay.logs import as_library
from patchbay.push.auth import (
    AccessToken,
    ServiceAccountTokens,
    TokenSource,
    load_service_account,
)
from patchbay.push.errors import InvalidMessage, PushAuthError, PushUnavailable
from patchbay.push.messages import (
    Message,
    Notification,
    Priority,
    TargetKind,
    check_token,
    normalize_topic,
)
from patchbay.push.transport import Transport, TransportFailure, as_transport, make_transport
from patchbay.settings import PushSettings

log = structlog.get_logger("patchbay.push")

Outcome = Literal["sent", "dead_token", "invalid_message", "auth_error", "failed"]
TopicApi = Literal["registrations", "iid"]  # per-device topicSubscriptions, or Instance ID
TOPIC_APIS: Final[tuple[TopicApi, ...]] = ("registrations", "iid")
DeadTokenCallback = Callable[[str, str], Awaitable[None] | None]

WINDOW_PER_SLOT: Final = 4  # messages worked on (sending or waiting to retry) per request slot
BACKOFF_BASE: Final = 1.0  # seconds; Google: 1, 2, 4, 8 ... with jitter
BACKOFF_CAP: Final = 60.0
IID_BATCH: Final = 1000  # registration tokens per batchAdd / batchRemove
IID_PARALLEL: Final = 4  # batches in flight per subscribe call (3,000 QPS per project)
DEAD_CODES: Final = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
AUTH_CODES: Final = frozenset({"THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR"})
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
FCM_ERROR: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
QUOTA_FAILURE: Final = "type.googleapis.com/google.rpc.QuotaFailure"
BAD_REQUEST: Final = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO: Final = "type.googleapis.com/google.rpc.ErrorInfo"

_T = TypeVar("_T")
_R = TypeVar("_R")


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one message to one target.

    ``outcome``: ``sent``; ``dead_token`` (UNREGISTERED, SENDER_ID_MISMATCH or an invalid
    registration token: delete it); ``invalid_message`` (FCM or the local check refused the
    message: fix it); ``auth_error`` (the service account, APNs or web-push credentials were
    refused: fix the configuration); ``failed`` (retries or the deadline ran out). ``index`` is
    the message's position in the input of ``send_many`` / ``send_multicast`` (0 for ``send``).
    """

    target: str
    kind: TargetKind
    outcome: Outcome
    name: str | None = None  # projects/{p}/messages/{id}, when sent
    error_code: str | None = None  # FCM's errorCode, else the canonical status (or TRANSPORT)
    http_status: int | None = None  # of the last answer
    attempts: int = 0  # requests made
    detail: str = ""
    index: int = 0

    @property
    def ok(self) -> bool:
        """Whether FCM accepted the message."""
        return self.outcome == "sent"


@dataclass(frozen=True, slots=True)
class TopicFailure:
    """One registration token a topic subscription change failed for."""

    token: str
    # The Instance ID API's per-token error (NOT_FOUND, ...), or the canonical status of the
    # per-device API's answer (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, ...), or why the
    # request failed (UNAVAILABLE, TRANSPORT, ...).
    error: str


@dataclass(frozen=True, slots=True)
class TopicReport:
    """The outcome of ``subscribe`` / ``unsubscribe``: a count, and only the failures listed."""

    topic: str
    action: Literal["subscribe", "unsubscribe"]
    succeeded: int
    failures: tuple[TopicFailure, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every token was changed."""
        return not self.failures


@dataclass(slots=True)
class SenderStats:
    """Counters of one sender (mutable, for /v1/stats and tests)."""

    requests: int = 0
    retries: int = 0
    quota_pauses: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    http_versions: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Answer:
    """An FCM answer, classified (pure: see ``classify``)."""

    verdict: Literal["sent", "dead", "invalid", "auth", "unauthenticated", "retry", "failed"]
    http_status: int | None = None
    error_code: str | None = None
    detail: str = ""
    name: str | None = None
    retry_after: float | None = None  # seconds, as the server asked (uncapped)
    project_quota: bool = False  # a QUOTA_EXCEEDED for the whole project (or unspecified)
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)  # a success's JSON
    status: str | None = None  # the google.rpc.Status canonical code (NOT_FOUND, ...), if any


@dataclass(frozen=True, slots=True)
class _End:
    """How a retry loop ended: with an answer not to retry, or why it stopped asking."""

    why: Literal["answered", "stopped", "gave_up", "deadline"]
    answer: Answer | None  # the last answer; None when no request was answered
    attempts: int  # requests made
    detail: str = ""


_Tally = tuple[int, Sequence[TopicFailure]]  # tokens changed, tokens failed


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    kind: TargetKind
    target: str
    body: bytes  # the request body, ready to send


# -- classifying answers (pure) ----------------------------------------------------------------


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta-seconds or an HTTP date.

    A date is read against the answer's own ``Date`` header when there is one (so that clock
    skew between us and Google does not matter), else against ``now`` (epoch seconds).
    """
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    when = _http_date(value)
    if when is None:
        return None
    reference = _http_date(headers.get("date", ""))
    base = reference if reference is not None else (time.time() if now is None else now)
    return max(when - base, 0.0)


def _http_date(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # "-0000" dates: RFC 9110 dates are all GMT
    return parsed.timestamp()


def _details(error: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    details = error.get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, Mapping) and d.get("@type") == kind]


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    """What an FCM ``messages:send`` answer means for the message and the sender.

    Classifies on ``FcmError.errorCode`` first, then the canonical status, then the HTTP
    status, as Google recommends (fcm.md 1.5).
    """
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if 200 <= status < 300:
        name = data.get("name")
        return Answer("sent", status, name=name if isinstance(name, str) else None, data=data)
    error = data.get("error")
    error = error if isinstance(error, Mapping) else {}
    canonical = error.get("status") if isinstance(error.get("status"), str) else None
    message = str(error.get("message", "")) or f"HTTP {status}"
    fcm_codes = [d.get("errorCode") for d in _details(error, FCM_ERROR)]
    fcm_code = next((c for c in fcm_codes if isinstance(c, str)), None)
    code = fcm_code or canonical or f"HTTP_{status}"
    after = retry_after(headers)

    def answer(verdict: Any, **extra: Any) -> Answer:
        return Answer(verdict, status, code, message, retry_after=after, status=canonical, **extra)

    if fcm_code in DEAD_CODES:
        return answer("dead")
    if fcm_code in AUTH_CODES:
        return answer("auth")
    if fcm_code == "QUOTA_EXCEEDED" or status == 429:
        return answer("retry", project_quota=_project_quota(error))
    if fcm_code in ("UNAVAILABLE", "INTERNAL") or status in RETRY_STATUSES or status >= 500:
        return answer("retry")
    if status == 401:
        return answer("unauthenticated")
    if status == 403:
        return answer("auth")
    if fcm_code == "INVALID_ARGUMENT" or status == 400:
        return answer("dead" if _about_token(error, message) else "invalid")
    return answer("failed")


def _project_quota(error: Mapping[str, Any]) -> bool:
    """Whether a QUOTA_EXCEEDED is for the whole project (the default when FCM does not say).

    ``google.rpc.QuotaFailure`` names the quota; a per-device or per-topic limit concerns only
    that target, everything else (or nothing) is treated as the project's quota.
    """
    for failure in _details(error, QUOTA_FAILURE):
        violations = failure.get("violations")
        for violation in violations if isinstance(violations, list) else []:
            if not isinstance(violation, Mapping):
                continue
            text = f"{violation.get('subject', '')} {violation.get('description', '')}".lower()
            if "project" in text:
                return True
            if any(word in text for word in ("device", "topic", "token", "registration")):
                return False
    return True


def _about_token(error: Mapping[str, Any], message: str) -> bool:
    """Whether an INVALID_ARGUMENT is about the registration token rather than the message."""
    for bad in _details(error, BAD_REQUEST):
        violations = bad.get("fieldViolations")
        for violation in violations if isinstance(violations, list) else []:
            if isinstance(violation, Mapping) and violation.get("field") in (
                "message.token",
                "message.fid",
            ):
                return True
    return "registration token" in message.lower()


def _no_answer(exc: TransportFailure) -> Answer:
    return Answer("retry", None, "TRANSPORT", str(exc))


def _splice(base: Mapping[str, Any], kind: str, validate_only: bool) -> tuple[bytes, bytes]:
    """The request body of a multicast around its target: ``head + json(token) + tail``.

    The template is serialized once; each message then costs one small ``orjson.dumps`` of its
    token (which escapes it) and two concatenations, and the bytes equal
    ``orjson.dumps({"message": {kind: token, **base}, "validate_only": validate_only})``.
    """
    rest = orjson.dumps(base)[1:]  # the template's members and its closing brace, or just "}"
    head = b'{"message":{' + orjson.dumps(kind) + b":"
    tail = (b"," if rest != b"}" else b"") + rest + b',"validate_only":'
    return head, tail + (b"true}" if validate_only else b"false}")


# -- the async sender --------------------------------------------------------------------------


class Sender:
    """Sends FCM HTTP v1 messages concurrently, with retries, to FCM or the emulator.

    ``settings`` gives the URLs and limits; ``tokens`` the access tokens (``from_settings``
    builds them from the service account). ``project_id`` overrides ``settings.project_id``.
    ``http`` is an ``httpx.AsyncClient`` or a ``Transport`` to use (the caller closes it); else
    the sender makes its own (``make_transport``: HTTP/1.1 or HTTP/2 as ``settings.http2`` says,
    or one httpx client on ``transport`` when given) and closes it in ``aclose``.
    ``on_dead_token(token, reason)``, sync or async, is called once per token found dead.
    ``clock`` (monotonic seconds), ``sleep`` and ``rng`` are injectable for tests; ``window``
    bounds the messages a stream works on at once (default ``4 * concurrency``). Use from one
    event loop only.
    """

    def __init__(
        self,
        settings: PushSettings,
        tokens: TokenSource,
        *,
        project_id: str | None = None,
        http: httpx.AsyncClient | Transport | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_dead_token: DeadTokenCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        window: int | None = None,
    ) -> None:
        project = project_id or settings.project_id
        if not project:
            raise ConfigError("push.project_id: required (or a service account that names one)")
        as_library()
        self.settings = settings
        self.tokens = tokens
        self.project_id = project
        self.on_dead_token = on_dead_token
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.window = window or settings.concurrency * WINDOW_PER_SLOT
        self.stats = SenderStats()
        self.send_url = f"{settings.fcm_url.rstrip('/')}/v1/projects/{project}/messages:send"
        self.iid_url = f"{settings.iid_url.rstrip('/')}/iid/v1"
        self.registrations_url = (
            f"{settings.fcm_url.rstrip('/')}/v1/projects/{project}/registrations"
        )
        self._owned = http is None
        self.transport = make_transport(settings, transport) if http is None else as_transport(http)
        # (access token, headers of a JSON POST with it): built once per token, not per request
        # (the transports copy what they are given, so sharing one dict is safe).
        self._json_headers: tuple[AccessToken, dict[str, str]] | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._dead: dict[str, str] = {}  # token -> reason; grows only with dead tokens
        self._paused_until = -math.inf
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def from_settings(
        cls,
        push: PushSettings,
        *,
        tokens: TokenSource | None = None,
        http: httpx.AsyncClient | Transport | None = None,
        **kwargs: Any,
    ) -> Sender:
        """A sender for ``[push]``: credentials from ``push.service_account`` unless given.

        The project is ``push.project_id``, else the service account's own.
        """
        if tokens is not None:
            return cls(push, tokens, http=http, **kwargs)
        info = load_service_account(push.service_account)
        sender = cls(
            push,
            _Unset(),
            project_id=push.project_id or str(info.get("project_id") or ""),
            http=http,
            **kwargs,
        )
        source = ServiceAccountTokens.from_info(
            info, sender.transport, clock=sender.clock, timeout=push.timeout
        )
        sender.tokens = source
        sender._closers.append(source.aclose)
        return sender

    # -- lifecycle

    async def aclose(self) -> None:
        """Close what this sender opened (its transport, the token source it made)."""
        for close in self._closers:
            await close()
        self._closers.clear()
        if self._owned:
            await self.transport.aclose()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- dead tokens

    def is_dead(self, token: str) -> bool:
        """Whether ``token`` was reported dead by this sender."""
        return token in self._dead

    @property
    def dead_tokens(self) -> Mapping[str, str]:
        """Every token reported dead so far, with FCM's reason."""
        return self._dead

    async def _report_dead(self, token: str, reason: str) -> None:
        if token in self._dead:
            return
        self._dead[token] = reason
        log.debug("fcm token dead", reason=reason)
        if self.on_dead_token is None:
            return
        try:
            outcome = self.on_dead_token(token, reason)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            # The token is still reported in its result; a broken callback must not lose it.
            log.exception("on_dead_token failed", reason=reason)

    # -- sending

    async def send(self, message: Message, *, validate_only: bool = False) -> Result:
        """Send one message; ``InvalidMessage`` (before any request) for a template."""
        kind = message.require_target()
        body = orjson.dumps(message.to_wire(validate_only))
        return await self._deliver(_Job(0, kind, message.target or "", body))

    def send_many(
        self,
        messages: Iterable[Message] | AsyncIterable[Message],
        *,
        validate_only: bool = False,
        ordered: bool = False,
    ) -> AsyncIterator[Result]:
        """Send every message, reading the input lazily; one result per message.

        Results come as they complete (``Result.index`` is the input position) or, with
        ``ordered``, in input order. A message without a target gives an ``invalid_message``
        result (no request) rather than ending the stream.
        """

        def job(index: int, message: Message) -> _Job | Result:
            kind = message.target_kind
            if kind is None:
                return Result(
                    "", "token", "invalid_message", detail="message: no target", index=index
                )
            return _Job(
                index, kind, message.target or "", orjson.dumps(message.to_wire(validate_only))
            )

        return self._stream(messages, job, ordered)

    def send_multicast(
        self,
        template: Message,
        tokens: Iterable[str] | AsyncIterable[str],
        *,
        kind: Literal["token", "fid"] = "token",
        validate_only: bool = False,
        ordered: bool = False,
    ) -> AsyncIterator[Result]:
        """Send ``template`` (its own target ignored) to every token (or FID), lazily.

        The template is checked once; each token only for being one. A malformed token (empty,
        with spaces) gives an ``invalid_message`` result, not an exception.
        """
        head, tail = _splice(template.to().body(), kind, validate_only)
        path = f"message.{kind}"

        def job(index: int, token: str) -> _Job | Result:
            try:
                target = check_token(path, token)
            except InvalidMessage as exc:
                return Result(str(token), kind, "invalid_message", detail=exc.message, index=index)
            return _Job(index, kind, target, head + orjson.dumps(target) + tail)

        return self._stream(tokens, job, ordered)

    async def _stream(
        self,
        items: Iterable[_T] | AsyncIterable[_T],
        make: Callable[[int, _T], _Job | Result],
        ordered: bool,
    ) -> AsyncIterator[Result]:
        """Run jobs with at most ``window`` unfinished (or, ordered, unyielded); yield results."""
        done: asyncio.Queue[asyncio.Task[Result] | Result] = asyncio.Queue()
        tasks: set[asyncio.Task[Result]] = set()
        waiting: dict[int, Result] = {}  # ordered: results that wait for an earlier one
        source = _aiter(items)
        admitted = yielded = 0
        exhausted = False
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not exhausted and admitted - yielded < self.window:
                    try:
                        item = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    work = make(admitted, item)
                    admitted += 1
                    if isinstance(work, Result):
                        self.stats.outcomes[work.outcome] += 1
                        done.put_nowait(work)
                        continue
                    task = loop.create_task(self._deliver(work))
                    tasks.add(task)
                    task.add_done_callback(done.put_nowait)
                if admitted == yielded:
                    return
                finished = await done.get()
                if isinstance(finished, asyncio.Task):
                    tasks.discard(finished)
                    finished = finished.result()
                if not ordered:
                    yielded += 1
                    yield finished
                    continue
                waiting[finished.index] = finished
                while yielded in waiting:
                    ready = waiting.pop(yielded)
                    yielded += 1
                    yield ready
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    async def _deliver(self, job: _Job) -> Result:
        result = await self._attempts(job)
        self.stats.outcomes[result.outcome] += 1
        return result

    async def _attempts(self, job: _Job) -> Result:
        device = job.kind in ("token", "fid")

        def dead() -> bool:
            return device and job.target in self._dead

        end = await self._exchange(self.send_url, job.body, stop=dead)
        last = end.answer
        if end.why == "stopped":
            return Result(
                job.target,
                job.kind,
                "dead_token",
                error_code=self._dead[job.target],
                attempts=end.attempts,
                detail="reported dead earlier; not sent again",
                index=job.index,
            )

        def result(outcome: Outcome) -> Result:
            return Result(
                job.target,
                job.kind,
                outcome,
                name=last.name if last else None,
                error_code=last.error_code if last else None,
                http_status=last.http_status if last else None,
                attempts=end.attempts,
                detail=end.detail or (last.detail if last else ""),
                index=job.index,
            )

        if end.why != "answered" or last is None:
            return result("failed")
        if last.verdict == "sent":
            return result("sent")
        if last.verdict == "dead" and device:
            await self._report_dead(job.target, last.error_code or "UNREGISTERED")
            return result("dead_token")
        if last.verdict in ("dead", "invalid"):
            return result("invalid_message")
        if last.verdict in ("auth", "unauthenticated"):
            return result("auth_error")
        return result("failed")

    async def _exchange(
        self,
        url: str,
        body: bytes | None,
        *,
        stop: Callable[[], bool] = lambda: False,
        headers: Mapping[str, str] | None = None,
        sends: bool = True,
        method: str = "POST",
    ) -> _End:
        """POST ``body`` until an answer that is not retried, with the whole retry policy.

        Waits out a project quota pause, gets a token, takes a request slot, retries what is
        retryable (backoff, ``Retry-After``, ``max_attempts``, the ``deadline``), and retries a
        401 once with a fresh token. ``stop`` is asked before each request (a token reported
        dead meanwhile): when it says so, no request is made. ``sends=False`` (topic
        management, which has a quota of its own) neither waits for nor causes the pause of
        sends after a project QUOTA_EXCEEDED. ``method`` makes it another kind of request (a
        ``DELETE``, with ``body`` None).
        """
        settings = self.settings
        deadline = self.clock() + settings.deadline
        attempts = failures = 0
        refreshed = False
        answer: Answer | None = None
        while True:
            if stop():
                return _End("stopped", answer, attempts)
            pause = self._paused_until - self.clock() if sends else 0.0
            if pause > 0:
                if self.clock() + pause > deadline:
                    detail = "deadline: the project's quota pause outlasts it"
                    return _End("deadline", answer, attempts, detail)
                await self.sleep(pause)
                continue
            try:
                token = await self.tokens.token()
            except PushAuthError as exc:
                return _End("answered", Answer("auth", None, "PUSH_AUTH", exc.message), attempts)
            except PushUnavailable as exc:
                answer = Answer("retry", None, "PUSH_UNAVAILABLE", exc.message)
            else:
                async with self._slots:
                    # Waiting for a slot can take a while: look again just before the request.
                    if stop() or (sends and self._paused_until > self.clock()):
                        continue
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        detail = f"deadline of {settings.deadline:g} s passed"
                        return _End("deadline", answer, attempts, detail)
                    attempts += 1
                    answer = await self._post(
                        url, body, token, min(settings.timeout, remaining), headers, method
                    )
                if answer.verdict == "unauthenticated" and not refreshed:
                    refreshed = True
                    self.tokens.invalidate(token)
                    continue
            if answer.verdict != "retry":
                return _End("answered", answer, attempts)
            failures += 1  # a token endpoint that failed counts as a try, though no request
            if failures >= settings.max_attempts:
                detail = f"gave up after {failures} attempts: {answer.detail}"
                return _End("gave_up", answer, attempts, detail)
            delay = self._delay(failures, answer, pause_sends=sends)
            if self.clock() + delay > deadline:
                detail = f"deadline: a retry in {delay:.1f} s would pass it ({answer.detail})"
                return _End("deadline", answer, attempts, detail)
            self.stats.retries += 1
            await self.sleep(delay)

    def _delay(self, failures: int, answer: Answer, *, pause_sends: bool = True) -> float:
        """Seconds before the next attempt: full jitter, never before ``Retry-After``.

        A project-wide quota error (of a send) also pauses every send for ``quota_floor``.
        """
        jitter = self.rng.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1)))
        asked = answer.retry_after
        floor = 0.0 if asked is None else min(asked, self.settings.retry_after_cap)
        if answer.project_quota and pause_sends:
            floor = max(floor, self.settings.quota_floor)
            until = self.clock() + floor
            if until > self._paused_until:
                self._paused_until = until
                self.stats.quota_pauses += 1
                log.warning("fcm project quota exceeded: pausing sends", seconds=floor)
        return max(floor, jitter)

    async def _post(
        self,
        url: str,
        body: bytes | None,
        token: AccessToken,
        limit: float,
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> Answer:
        """One request (POST unless ``method``) through the transport, counted; classified."""
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        if headers is None and body is not None:
            sent = self._json_headers
            if sent is None or sent[0] is not token:
                json = {"authorization": token.authorization, "content-type": "application/json"}
                sent = self._json_headers = (token, json)
            request_headers = sent[1]
        else:
            request_headers = {
                "authorization": token.authorization,
                **({} if body is None else {"content-type": "application/json"}),
                **(headers or {}),
            }
        try:
            reply = await self.transport.request(method, url, body, request_headers, limit)
        except TransportFailure as exc:
            return _no_answer(exc)
        finally:
            stats.in_flight -= 1
        stats.http_versions[reply.http_version] += 1
        return classify(reply.status, reply.headers, reply.body)

    # -- topics

    async def subscribe(
        self,
        topic: str,
        tokens: Iterable[str] | AsyncIterable[str],
        *,
        api: TopicApi = "registrations",
    ) -> TopicReport:
        """Subscribe tokens (or FIDs) to ``topic``, read lazily, any number of them.

        ``api="registrations"``: one ``topicSubscriptions`` create per token (already
        subscribed counts as success); ``api="iid"``: Instance ID ``batchAdd``, 1,000 a request.
        """
        return await self._topic("subscribe", topic, tokens, api)

    async def unsubscribe(
        self,
        topic: str,
        tokens: Iterable[str] | AsyncIterable[str],
        *,
        api: TopicApi = "registrations",
    ) -> TopicReport:
        """Unsubscribe tokens (or FIDs) from ``topic``, read lazily, any number of them.

        ``api="registrations"``: one ``topicSubscriptions`` delete per token, with
        ``allowMissing`` (not subscribed counts as success); ``api="iid"``: ``batchRemove``.
        """
        return await self._topic("unsubscribe", topic, tokens, api)

    async def _topic(
        self,
        action: Literal["subscribe", "unsubscribe"],
        topic: str,
        tokens: Iterable[str] | AsyncIterable[str],
        api: TopicApi,
    ) -> TopicReport:
        name = normalize_topic("topic", topic)
        if api == "iid":
            url = f"{self.iid_url}:{'batchAdd' if action == 'subscribe' else 'batchRemove'}"

            def batch(chunk: list[str]) -> Awaitable[_Tally]:
                return self._iid_batch(url, name, chunk)

            tally = await self._topic_work(_batches(_aiter(tokens), IID_BATCH), batch, IID_PARALLEL)
        elif api == "registrations":

            def one(token: str) -> Awaitable[_Tally]:
                return self._registration(action, name, token)

            tally = await self._topic_work(_aiter(tokens), one, self.window)
        else:
            raise ValueError(f"api: {api!r} is not one of {', '.join(TOPIC_APIS)}")
        return TopicReport(name, action, tally[0], tuple(tally[1]))

    async def _topic_work(
        self, units: AsyncIterator[_T], run: Callable[[_T], Awaitable[_Tally]], parallel: int
    ) -> tuple[int, list[TopicFailure]]:
        """``run`` every unit, at most ``parallel`` at a time; the summed tally.

        Finished tasks come back through a queue (O(1) each, however many run), and only
        failures are kept, so memory stays flat whatever the number of tokens.
        """
        done: asyncio.Queue[asyncio.Task[_Tally]] = asyncio.Queue()
        running: set[asyncio.Task[_Tally]] = set()
        loop = asyncio.get_running_loop()
        succeeded = 0
        failures: list[TopicFailure] = []
        exhausted = False

        async def task(unit: _T) -> _Tally:
            return await run(unit)

        try:
            while True:
                while not exhausted and len(running) < parallel:
                    try:
                        unit = await anext(units)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    started = loop.create_task(task(unit))
                    running.add(started)
                    started.add_done_callback(done.put_nowait)
                if not running:
                    return succeeded, failures
                finished = await done.get()
                running.discard(finished)
                ok, failed = finished.result()
                succeeded += ok
                failures.extend(failed)
        finally:
            for pending in running:
                pending.cancel()
            if running:
                await asyncio.wait(running)

    async def _registration(
        self, action: Literal["subscribe", "unsubscribe"], topic: str, token: str
    ) -> _Tally:
        """One token's ``topicSubscriptions`` create or delete, with a send's retry policy."""
        try:
            target = check_token("token", token)
        except InvalidMessage:
            return 0, (TopicFailure(str(token), "INVALID_ARGUMENT"),)  # no URL can name it
        base = f"{self.registrations_url}/{quote(target, safe='')}/topicSubscriptions"
        if action == "subscribe":
            end = await self._exchange(
                f"{base}?topicName={quote(topic, safe='')}", b"{}", sends=False
            )
        else:
            end = await self._exchange(
                f"{base}/{quote(topic, safe='')}?allowMissing=true",
                None,
                sends=False,
                method="DELETE",
            )
        answer = end.answer
        if answer is None:
            return 0, (TopicFailure(target, "FAILED"),)
        if end.why == "answered":
            if answer.verdict == "sent":
                return 1, ()
            if action == "subscribe" and (
                answer.http_status == 409 or answer.status == "ALREADY_EXISTS"
            ):
                return 1, ()  # already subscribed: what was asked for
            if answer.verdict == "dead" or (
                answer.http_status == 404 and answer.status == "NOT_FOUND"
            ):
                # A JSON NOT_FOUND on this resource: no such registration (a wrong URL or
                # method gets an HTML page or "Method not found", neither a dead token).
                await self._report_dead(target, answer.error_code or "NOT_FOUND")
        return 0, (TopicFailure(target, answer.status or answer.error_code or "FAILED"),)

    async def _iid_batch(self, url: str, topic: str, batch: list[str]) -> _Tally:
        """One batch with the retry policy of a send; (succeeded, failures)."""
        body = orjson.dumps({"to": f"/topics/{topic}", "registration_tokens": batch})
        # Without this header the Instance ID API reads the bearer as a (retired) server key.
        end = await self._exchange(url, body, headers={"access_token_auth": "true"}, sends=False)
        answer = end.answer
        if end.why == "answered" and answer is not None and answer.verdict == "sent":
            results = answer.data.get("results")
            if isinstance(results, list) and len(results) == len(batch):
                return await self._iid_results(batch, results)
            return 0, [TopicFailure(t, "BAD_ANSWER") for t in batch]
        code = (answer.error_code if answer else None) or "FAILED"
        return 0, [TopicFailure(t, code) for t in batch]

    async def _iid_results(self, batch: list[str], results: list[Any]) -> _Tally:
        failed: list[TopicFailure] = []
        for token, item in zip(batch, results, strict=True):
            error = item.get("error") if isinstance(item, Mapping) else "BAD_ANSWER"
            if error:
                failed.append(TopicFailure(token, str(error)))
                if error == "NOT_FOUND":  # the token was deleted or its app uninstalled
                    await self._report_dead(token, "NOT_FOUND")
        return len(batch) - len(failed), failed


class _Unset:
    """Stands in for the token source while ``from_settings`` builds the real one."""

    async def token(self) -> AccessToken:
        raise PushAuthError("no token source")  # pragma: no cover

    def invalidate(self, token: AccessToken) -> None:
        """Nothing to forget."""  # pragma: no cover


# -- iteration helpers -------------------------------------------------------------------------


class _SyncSource(AsyncIterator[_T]):
    """A sync iterator read one item at a time on the loop (no thread hop per item)."""

    def __init__(self, items: Iterable[_T]) -> None:
        self._items = iter(items)

    async def __anext__(self) -> _T:
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None


def _aiter(items: Iterable[_T] | AsyncIterable[_T]) -> AsyncIterator[_T]:
    if isinstance(items, AsyncIterable):
        return aiter(items)
    return _SyncSource(items)


async def _batches(items: AsyncIterator[_T], size: int) -> AsyncIterator[list[_T]]:
    batch: list[_T] = []
    async for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the blocking façade -----------------------------------------------------------------------

_END: Final = object()


class BlockingSender:
    """The ``Sender`` for synchronous code: one event loop in a daemon thread runs it.

    Every method forwards to the async sender on that loop and waits; none may be called from
    the loop's own thread (callbacks such as ``on_dead_token`` run there).
    """

    def __init__(self, create: Callable[[], Sender]) -> None:
        """Start the loop thread and build the sender there, with ``create``."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="patchbay-push", daemon=True)
        self._thread.start()
        self._closed = False

        async def build() -> Sender:
            return create()

        try:
            self.sender = self._call(build())
        except BaseException:
            self._stop()
            raise

    @classmethod
    def from_settings(cls, push: PushSettings, **kwargs: Any) -> BlockingSender:
        """A blocking sender for ``[push]`` (keyword arguments as ``Sender.from_settings``)."""
        return cls(lambda: Sender.from_settings(push, **kwargs))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, _R]) -> _R:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BlockingSender called from its own loop; await the Sender instead")
        if self._closed:
            coro.close()
            raise RuntimeError("BlockingSender is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- sending

    def send(self, message: Message, *, validate_only: bool = False) -> Result:
        """Send one message and wait for its result."""
        return self._call(self.sender.send(message, validate_only=validate_only))

    def notify(
        self,
        token: str,
        title: str | None = None,
        body: str | None = None,
        data: Mapping[str, str] | None = None,
        *,
        image: str | None = None,
        priority: Priority | None = None,
        validate_only: bool = False,
    ) -> Result:
        """PyFCM's ``notify``: a notification (and data) to one registration token."""
        notification = (
            None
            if title is None and body is None and image is None
            else Notification(title=title, body=body, image=image)
        )
        message = Message(
            token=token, notification=notification, data=data or {}, priority=priority
        )
        return self.send(message, validate_only=validate_only)

    def send_many(
        self, messages: Iterable[Message], *, validate_only: bool = False, ordered: bool = False
    ) -> Iterator[Result]:
        """Send every message; results stream back as ``Sender.send_many`` yields them."""
        return self._stream(
            messages,
            lambda source: self.sender.send_many(
                source, validate_only=validate_only, ordered=ordered
            ),
        )

    def send_multicast(
        self,
        template: Message,
        tokens: Iterable[str],
        *,
        kind: Literal["token", "fid"] = "token",
        validate_only: bool = False,
        ordered: bool = False,
    ) -> Iterator[Result]:
        """Send ``template`` to every token; results stream back as they complete."""
        return self._stream(
            tokens,
            lambda source: self.sender.send_multicast(
                template, source, kind=kind, validate_only=validate_only, ordered=ordered
            ),
        )

    def subscribe(
        self, topic: str, tokens: Iterable[str], *, api: TopicApi = "registrations"
    ) -> TopicReport:
        """Subscribe tokens to ``topic`` (``api`` as ``Sender.subscribe``)."""
        return _last(
            self._stream(tokens, lambda s: _once(self.sender.subscribe(topic, s, api=api)))
        )

    def unsubscribe(
        self, topic: str, tokens: Iterable[str], *, api: TopicApi = "registrations"
    ) -> TopicReport:
        """Unsubscribe tokens from ``topic`` (``api`` as ``Sender.unsubscribe``)."""
        return _last(
            self._stream(tokens, lambda s: _once(self.sender.unsubscribe(topic, s, api=api)))
        )

    def _stream(
        self, items: Iterable[_T], run: Callable[[AsyncIterator[_T]], AsyncIterator[_R]]
    ) -> Generator[_R, None, None]:
        """Run ``run(source)`` on the loop; ``source`` is fed from ``items`` in this thread.

        The loop asks for each input item through ``inbox`` (``need``) and this thread answers
        with the next item, so the caller's iterable is only ever touched by the caller's
        thread; results travel the same queue. Both directions are bounded by the sender's
        window: without a pull from here, the loop admits nothing new.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("BlockingSender called from its own loop; await the Sender instead")
        inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        source: _Pull[_T] = _Pull(self._loop, inbox)

        async def drive() -> None:
            async for result in run(source):
                inbox.put(("result", result))

        future = asyncio.run_coroutine_threadsafe(drive(), self._loop)
        future.add_done_callback(lambda _: inbox.put(("done", None)))
        iterator = iter(items)
        try:
            while True:
                kind, value = inbox.get()
                if kind == "need":
                    try:
                        item: Any = next(iterator)
                    except StopIteration:
                        item = _END
                    except Exception as exc:  # handed to the loop, which ends the stream
                        self._loop.call_soon_threadsafe(_settle, value, None, exc)
                        continue
                    self._loop.call_soon_threadsafe(_settle, value, item, None)
                elif kind == "result":
                    yield value
                else:
                    future.result()  # re-raises what ended the stream
                    return
        finally:
            # Stopped early (the caller broke out, or an error here): cancelling the loop side
            # cancels its sends; asks it may still post are never answered, which is fine, as
            # cancellation reaches the coroutine waiting on them.
            future.cancel()

    # -- lifecycle

    def close(self) -> None:
        """Close the sender, stop the loop and its thread. Idempotent."""
        if self._closed:
            return
        try:
            self._call(self.sender.aclose())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pull(AsyncIterator[_T]):
    """An async iterator whose items the blocking caller's thread supplies on request."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, inbox: queue.SimpleQueue[tuple[str, Any]]
    ) -> None:
        self._loop = loop
        self._inbox = inbox

    async def __anext__(self) -> _T:
        wanted: asyncio.Future[Any] = self._loop.create_future()
        self._inbox.put(("need", wanted))
        item = await wanted
        if item is _END:
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]  # what the caller's iterable holds


def _settle(future: asyncio.Future[Any], item: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(item)


async def _once(coro: Awaitable[_R]) -> AsyncIterator[_R]:
    yield await coro


def _last(results: Iterator[_R]) -> _R:
    return list(results)[-1]


def connect(service_account: str | Path, **settings: Any) -> BlockingSender:
    """A ``BlockingSender`` for a service-account file, for scripts.

    ``with connect("sa.json") as fcm: fcm.notify(token, "Hi", "there")``; ``settings`` are ``[push]`` settings (``concurrency=50``, ``fcm_url=...``).
    """
    push = PushSettings(service_account=str(service_account), **settings)
    return BlockingSender.from_settings(push)


__all__ = [
    "Answer",
    "BlockingSender",
    "Outcome",
    "Result",
    "Sender",
    "SenderStats",
    "TopicApi",
    "TopicFailure",
    "TopicReport",
    "classify",
    "connect",
    "retry_after",
]
