"""``POST /v1/push`` and ``GET /v1/push/{id}``: sends stored as jobs, answered at once.

A request is one message to one target (``token``, ``topic``, ``condition`` or ``fid`` in the
message) or a template with ``"tokens": [...]``. It is checked (every FCM rule the sender knows)
and committed to the job store before the 202, with one job per chunk of ``CHUNK`` devices, so a
restart loses nothing: an unfinished chunk runs again once its lease expires. Each chunk's
per-device results are kept in the store (``push:<id>:<chunk>``) for ``GET``.

Delivery is at least once: a chunk interrupted by a crash is sent again, and FCM has no
idempotency key (fcm.md 5.4); an ``Idempotency-Key`` header only stops the same request from
being stored twice.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import orjson
import structlog

from patchbay.errors import MethodNotAllowed, NotFound, PatchbayError, RequestError
from patchbay.http import JSON, Reply, Request, error_reply
from patchbay.jobs.model import Claim, Message, NewJob, Selection, Status
from patchbay.jobs.store import Store
from patchbay.jobs.worker import Policy, Worker
from patchbay.push.client import Result, Sender
from patchbay.push.messages import Message as Push

log = structlog.get_logger("patchbay.push")
QUEUE: Final = "push"
STREAM: Final = "push"
CHUNK: Final = 500  # devices per job: a crash re-sends at most this many
MAX_TOKENS: Final = 100_000
RESULTS_TTL: Final = 7 * 86400.0


class PushGateway:
    """The endpoint, and the worker that sends what it stored."""

    def __init__(
        self,
        store: Store,
        sender: Callable[[], Sender],
        *,
        clock: Callable[[], float],
        concurrency: int = 4,
        lease: float = 300.0,
        poll_interval: float = 0.5,
        deadline: float = 120.0,
    ) -> None:
        self.store = store
        self._make_sender = sender
        self._sender: Sender | None = None
        self.clock = clock
        self.outcomes: Counter[str] = Counter()
        # A chunk's sends run inside the sender's own deadline; the job timeout only stops a
        # chunk that hangs past every per-device deadline.
        timeout = deadline * 2 + 60
        self.worker = Worker(
            store,
            QUEUE,
            self.run,
            policy=lambda task: Policy(timeout=timeout),
            concurrency=concurrency,
            lease=lease,
            poll_interval=poll_interval,
        )

    @property
    def sender(self) -> Sender:
        """The FCM sender, made on first use (so a bad service account fails the job, not start)."""
        if self._sender is None:
            self._sender = self._make_sender()
        return self._sender

    def start(self) -> None:
        """Start sending stored pushes."""
        self.worker.start()

    async def stop(self, drain: float) -> None:
        """Stop sending; close the sender."""
        await self.worker.stop(drain)
        if self._sender is not None:
            await self._sender.aclose()

    async def handle(self, request: Request) -> Reply:
        """``POST /v1/push`` or ``GET /v1/push/{id}``."""
        try:
            if request.path == "/v1/push":
                if request.method != "POST":
                    raise MethodNotAllowed("sends are POSTed", allow="POST")
                return await self._accept(request)
            if request.method != "GET":
                raise MethodNotAllowed("a send's state is read with GET", allow="GET")
            return await self._state(request.path.removeprefix("/v1/push/"))
        except PatchbayError as exc:
            return error_reply(exc)

    async def _accept(self, request: Request) -> Reply:
        body = _json(request.body)
        tokens = body.pop("tokens", None)
        validate_only = body.get("validate_only", False)
        if not isinstance(validate_only, bool):
            raise RequestError("validate_only: expected true or false")
        push = Push.from_wire(body.get("message"))
        chunks = 1
        if tokens is None:
            push.require_target()
            devices = 1
        else:
            if push.target_kind is not None:
                raise RequestError("message: give either a target in the message or tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
                raise RequestError("tokens: expected a list of registration tokens")
            if not tokens or len(tokens) > MAX_TOKENS:
                raise RequestError(f"tokens: between 1 and {MAX_TOKENS} per request")
            devices = len(tokens)
            chunks = -(-devices // CHUNK)
        key = request.headers.get("idempotency-key") or uuid.uuid4().hex
        stored = orjson.dumps(
            {"message": body.get("message"), "tokens": tokens, "validate_only": validate_only}
        )
        put = await self.store.put(
            Message(
                stream=STREAM,
                key=key,
                body=stored,
                meta={"devices": devices, "chunks": chunks},
                jobs=tuple(NewJob(queue=QUEUE, task=f"chunk:{n}") for n in range(chunks)),
            )
        )
        answer = {"id": put.message_id, "devices": devices, "duplicate": not put.created}
        log.info("push stored", id=put.message_id, devices=devices, duplicate=not put.created)
        return Reply(202, JSON, orjson.dumps(answer))

    async def _state(self, ident: str) -> Reply:
        if not ident.isdigit():
            raise NotFound(f"no push {ident!r}")
        message = await self.store.message(int(ident))
        if message is None or message.stream != STREAM:
            raise NotFound(f"no push {ident}")
        jobs = await self.store.jobs(Selection(message_ids=[message.id]), limit=MAX_TOKENS)
        results: list[dict[str, Any]] = []
        for job in sorted(jobs, key=lambda j: j.task):
            value = await self.store.get_value(_results_key(message.id, job.task))
            if value is not None:
                results.extend(orjson.loads(value.data))
        statuses = {job.status for job in jobs}
        if statuses <= {Status.SUCCEEDED}:
            state = "done"
        elif Status.DEAD in statuses and not statuses & {Status.PENDING, Status.RUNNING}:
            state = "failed"
        else:
            state = "pending"
        counts = Counter(r["outcome"] for r in results)
        answer = {
            "id": message.id,
            "state": state,
            "devices": message.meta.get("devices"),
            "outcomes": dict(counts),
            "results": results,
        }
        return Reply(200, JSON, orjson.dumps(answer))

    async def run(self, claim: Claim) -> None:
        """Send one chunk of a stored push; keep each device's result."""
        stored = orjson.loads(claim.message.body)
        push = Push.from_wire(stored["message"])
        validate_only = bool(stored.get("validate_only"))
        tokens = stored.get("tokens")
        results: list[Result] = []
        if tokens is None:
            results.append(await self.sender.send(push, validate_only=validate_only))
        else:
            n = int(claim.job.task.removeprefix("chunk:"))
            chunk = tokens[n * CHUNK : (n + 1) * CHUNK]
            async for result in self.sender.send_multicast(
                push, chunk, validate_only=validate_only, ordered=True
            ):
                results.append(result)
        for result in results:
            self.outcomes[result.outcome] += 1
        await self.store.set_value(
            _results_key(claim.message.id, claim.job.task),
            orjson.dumps([_result_json(r) for r in results]),
            expires_at=self.clock() + RESULTS_TTL,
        )

    def stats(self) -> dict[str, Any]:
        """Counters for ``/v1/stats``."""
        sender = self._sender.stats if self._sender is not None else None
        return {
            "outcomes": dict(self.outcomes),
            "requests": sender.requests if sender else 0,
            "retries": sender.retries if sender else 0,
            "quota_pauses": sender.quota_pauses if sender else 0,
            "max_in_flight": sender.max_in_flight if sender else 0,
        }


def _results_key(message_id: int, task: str) -> str:
    return f"push:{message_id}:{task}"


def _result_json(result: Result) -> dict[str, Any]:
    return {
        "target": result.target,
        "outcome": result.outcome,
        "name": result.name,
        "error_code": result.error_code,
        "attempts": result.attempts,
    }


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError("the body must be a JSON object with a message")
    return value
