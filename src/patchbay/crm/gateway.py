"""The CRM endpoints: uploads stored as jobs, and the seed's ``uploadFile`` form kept alive.

- ``POST /v1/crm/{Module}/{record_id}/attachments``: a multipart ``file`` part, or a link
  (JSON ``{"url", "title"}`` or form fields ``attachmentUrl``/``title``). The file is written to
  ``<state_dir>/uploads`` and fsynced, and the upload committed as a job, before the 202
  ``{"id", "state"}``; the file is kept until the job succeeds.
- ``GET /v1/crm/uploads/{id}``: ``pending``, ``done`` with the attachment, or ``failed`` with
  the error.
- ``POST /crm/private/{json|xml}/{Module}/uploadFile?authtoken=...&scope=crmapi&id=...``: the
  retired v1 API's form (``content`` or ``attachmentUrl``), off unless ``[crm] legacy_token`` is
  set; the token is compared in constant time and never sent on. It waits up to
  ``legacy_wait`` seconds for the upload and answers as v1 did; past that, v1's error shape with
  code 4500 and the job id, so the client can look the upload up later.

A job runs ``CrmClient.attach`` with ``since`` set to the upload's arrival, so a retry after a
crash or an ambiguous failure first looks for the attachment among the record's and never
uploads it twice.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import orjson
import structlog
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from patchbay.crm.client import CrmClient
from patchbay.crm.zoho import Attachment, check_link, check_module, check_size
from patchbay.errors import (
    MethodNotAllowed,
    NotFound,
    PatchbayError,
    RequestError,
    Unauthorized,
    UnsupportedMedia,
)
from patchbay.http import JSON, Reply, Request, error_reply
from patchbay.jobs.model import Claim, Fail, Message, NewJob, Schedule, Selection, Status
from patchbay.jobs.store import Store
from patchbay.jobs.worker import Policy, Worker
from patchbay.settings import CrmSettings

log = structlog.get_logger("patchbay.crm")
QUEUE: Final = "crm"
STREAM: Final = "crm"
PREFIX: Final = "/v1/crm/"
LEGACY: Final = re.compile(r"/crm/private/(json|xml)/([A-Za-z0-9_]+)/uploadFile")
UPLOAD: Final = re.compile(r"/v1/crm/([A-Za-z0-9_]+)/([0-9]+)/attachments")
RESULT_TTL: Final = 30 * 86400.0
FORM_SLACK: Final = 64 * 1024  # multipart framing and small fields around the file


class CrmGateway:
    """The endpoints and the worker that uploads what they stored."""

    def __init__(
        self,
        settings: CrmSettings,
        store: Store,
        uploads: Path,
        client: Callable[[], CrmClient],
        *,
        clock: Callable[[], float],
        lease: float = 300.0,
        poll_interval: float = 0.5,
    ) -> None:
        self.settings = settings
        self.store = store
        self.uploads = uploads
        self._make_client = client
        self._client: CrmClient | None = None
        self.clock = clock
        self.outcomes: dict[str, int] = {"done": 0, "failed": 0}
        self.worker = Worker(
            store,
            QUEUE,
            self.run,
            policy=lambda task: Policy(
                schedule=Schedule((5, 30, 120, 600, 1800, 3600, 7200)),
                timeout=settings.timeout * 8 + 60,
            ),
            concurrency=settings.concurrency,
            lease=lease,
            poll_interval=poll_interval,
        )

    @property
    def client(self) -> CrmClient:
        """The Zoho client, made on first use."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def body_limit(self, path: str) -> int | None:
        """Uploads may be as large as the file limit, plus the form around the file."""
        if path.startswith(PREFIX) or path.startswith("/crm/private/"):
            return self.settings.max_file_bytes + FORM_SLACK
        return None

    def start(self) -> None:
        """Start uploading stored jobs."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.worker.start()

    async def stop(self, drain: float) -> None:
        """Stop uploading; close the client."""
        await self.worker.stop(drain)
        if self._client is not None:
            await self._client.aclose()

    # -- the modern endpoint -----------------------------------------------------------------

    async def handle(self, request: Request) -> Reply:
        """``POST /v1/crm/{Module}/{id}/attachments`` or ``GET /v1/crm/uploads/{id}``."""
        try:
            if request.path.startswith("/v1/crm/uploads/"):
                if request.method != "GET":
                    raise MethodNotAllowed("an upload's state is read with GET", allow="GET")
                state = await self._state(request.path.removeprefix("/v1/crm/uploads/"))
                return Reply(200, JSON, orjson.dumps(state))
            match = UPLOAD.fullmatch(request.path)
            if match is None:
                raise NotFound(f"no endpoint {request.path}")
            if request.method != "POST":
                raise MethodNotAllowed("uploads are POSTed", allow="POST")
            # Writing and fsyncing up to 100 MB is no work for the event loop's thread.
            form = await asyncio.to_thread(
                _read_form, request, self.uploads, self.settings.max_file_bytes
            )
            upload_id = await self._store(match[1], match[2], form, request)
            return Reply(202, JSON, orjson.dumps({"id": upload_id, "state": "pending"}))
        except PatchbayError as exc:
            return error_reply(exc)

    async def _store(self, module: str, record_id: str, form: Form, request: Request) -> int:
        try:
            module = check_module(module)
        except PatchbayError:
            form.discard()
            raise
        url = form.fields.get("attachmentUrl") or form.fields.get("url")
        if (form.path is None) == (url is None):
            form.discard()
            raise RequestError("give either a file or a link (attachmentUrl), not both")
        if url is not None:
            check_link(url, form.fields.get("title"))
        if form.path is not None:
            check_size(form.size, self.settings.max_file_bytes)
        key = request.headers.get("idempotency-key") or uuid.uuid4().hex
        body = {
            "module": module,
            "record_id": record_id,
            "path": str(form.path) if form.path else None,
            "file_name": form.file_name,
            "size": form.size,
            "url": url,
            "title": form.fields.get("title"),
        }
        put = await self.store.put(
            Message(
                stream=STREAM,
                key=key,
                body=orjson.dumps(body),
                meta={"module": module, "record_id": record_id},
                jobs=(NewJob(queue=QUEUE, task="upload"),),
            )
        )
        if not put.created:
            form.discard()  # the same request again: the first copy's file is the one kept
        log.info("crm upload stored", id=put.message_id, module=module, record=record_id)
        return put.message_id

    async def _state(self, ident: str) -> dict[str, Any]:
        if not ident.isdigit():
            raise NotFound(f"no upload {ident!r}")
        message = await self.store.message(int(ident))
        if message is None or message.stream != STREAM:
            raise NotFound(f"no upload {ident}")
        jobs = await self.store.jobs(Selection(message_ids=[message.id]))
        status = jobs[0].status if jobs else Status.SUCCEEDED
        answer: dict[str, Any] = {"id": message.id, **orjson.loads(message.body)}
        answer.pop("path", None)
        value = await self.store.get_value(f"crm:{message.id}")
        if status is Status.SUCCEEDED and value is not None:
            answer.update(state="done", attachment=orjson.loads(value.data))
        elif status is Status.DEAD:
            answer.update(state="failed", error=(jobs[0].last_error or "").splitlines()[0])
        else:
            answer.update(state="pending", attempts=jobs[0].attempts if jobs else 0)
        return answer

    # -- the job -----------------------------------------------------------------------------

    async def run(self, claim: Claim) -> None:
        """Upload (or link) one stored attachment, never twice."""
        job = orjson.loads(claim.message.body)
        path = Path(job["path"]) if job.get("path") else None
        try:
            attachment = await self.client.attach(
                job["module"],
                job["record_id"],
                path=path,
                url=job.get("url"),
                file_name=job.get("file_name"),
                title=job.get("title"),
                since=claim.message.created_at,
            )
        except (RequestError, Unauthorized) as exc:
            self.outcomes["failed"] += 1
            raise Fail(f"{exc.code}: {exc.message}") from exc
        await self.store.set_value(
            f"crm:{claim.message.id}",
            orjson.dumps(_attachment_json(attachment)),
            expires_at=self.clock() + RESULT_TTL,
        )
        self.outcomes["done"] += 1
        if path is not None:
            path.unlink(missing_ok=True)

    # -- the seed's uploadFile ---------------------------------------------------------------

    async def legacy(self, request: Request) -> Reply:
        """The v1 ``uploadFile`` form, answered as v1 did."""
        match = LEGACY.fullmatch(request.path)
        kind, module = (match[1], match[2]) if match else ("json", "Leads")
        uri = request.path
        params = dict(parse_qsl(request.query.decode("latin-1"), keep_blank_values=True))
        given = params.get("authtoken") or request.headers.get("authorization", "")
        expected = self.settings.legacy_token
        if not expected or match is None:
            return _v1_error(kind, uri, "4600", "Unable to process your request.", 404)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return _v1_error(kind, uri, "4834", "Invalid Ticket Id", 401)
        if request.method != "POST":
            return _v1_error(kind, uri, "4600", "Unable to process your request.", 405)
        record_id = params.get("id", "")
        try:
            form = await asyncio.to_thread(
                _read_form, request, self.uploads, self.settings.max_file_bytes, "content"
            )
            if "attachmentUrl" in params:
                form.fields.setdefault("attachmentUrl", params["attachmentUrl"])
            if not record_id.isdigit():
                return _v1_error(kind, uri, "4831", "Missing parameters: id", 400)
            upload_id = await self._store(module, record_id, form, request)
        except PatchbayError as exc:
            code = "4807" if "File size" in exc.message else "4600"
            return _v1_error(kind, uri, code, exc.message, 400)
        deadline = self.clock() + self.settings.legacy_wait
        while self.clock() < deadline:
            state = await self._state(str(upload_id))
            if state["state"] == "done":
                return _v1_success(kind, uri, state["attachment"])
            if state["state"] == "failed":
                return _v1_error(kind, uri, "4500", state["error"], 400)
            await asyncio.sleep(0.1)
        return _v1_error(
            kind, uri, "4500", f"The upload is still in progress: job {upload_id}", 202
        )


class Form:
    """What a request carried: at most one file (already on disk) and small fields."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.path: Path | None = None
        self.file_name: str | None = None
        self.size = 0

    def discard(self) -> None:
        """Remove the file, when the request is refused or a duplicate."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _read_form(request: Request, uploads: Path, limit: int, file_field: str = "file") -> Form:
    """Parse a multipart, form or JSON body; a file part goes to disk and is fsynced.

    The body is read a piece at a time (the server spools uploads), so a file is never whole in
    memory; JSON and url-encoded bodies are small by nature and read at once.
    """
    form = Form()
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind == b"application/json":
        try:
            value = orjson.loads(request.read())
        except orjson.JSONDecodeError:
            raise RequestError("the body is not JSON") from None
        if not isinstance(value, dict):
            raise RequestError("the body must be a JSON object")
        form.fields = {k: str(v) for k, v in value.items() if isinstance(v, str | int)}
        return form
    if kind == b"application/x-www-form-urlencoded":
        form.fields = dict(parse_qsl(request.read().decode("utf-8", "replace")))
        return form
    if kind == b"" and not any(request.chunks(1)):
        return form
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UnsupportedMedia("send multipart/form-data with a file, or JSON with a url")
    uploads.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"name": "", "filename": None, "chunks": [], "out": None}
    headers: dict[str, bytes] = {}
    field = bytearray()
    value = bytearray()

    def header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def header_end() -> None:
        headers[field.decode("latin-1").lower()] = bytes(value)
        field.clear()
        value.clear()

    def headers_finished() -> None:
        _, disposition = parse_options_header(headers.get("content-disposition", b""))
        state["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        state["filename"] = None if filename is None else filename.decode("utf-8", "replace")
        state["chunks"] = []
        if state["name"] == file_field and form.path is None:
            form.path = uploads / uuid.uuid4().hex
            form.file_name = state["filename"] or "attachment"
            state["out"] = form.path.open("wb")

    def data(chunk: bytes, start: int, end: int) -> None:
        if state["out"] is not None:
            form.size += end - start
            state["out"].write(chunk[start:end])
        elif sum(map(len, state["chunks"])) < FORM_SLACK:
            state["chunks"].append(chunk[start:end])

    def part_end() -> None:
        out = state["out"]
        if out is not None:
            out.flush()
            os.fsync(out.fileno())  # durable before the job that names it is committed
            out.close()
            state["out"] = None
        elif state["name"]:
            form.fields[state["name"]] = b"".join(state["chunks"]).decode("utf-8", "replace")
        headers.clear()

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": data,
            "on_part_end": part_end,
        },
    )
    try:
        for chunk in request.chunks():
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        if state["out"] is not None:
            state["out"].close()
        form.discard()
        raise RequestError("the multipart body is malformed") from None
    if state["out"] is not None:  # the body ended inside the file part
        state["out"].close()
        form.discard()
        raise RequestError("the multipart body ended inside the file")
    if form.path is not None and form.size > limit:
        form.discard()
        check_size(form.size, limit)
    return form


def _attachment_json(attachment: Attachment) -> dict[str, Any]:
    return {
        "id": attachment.id,
        "file_name": attachment.file_name,
        "size": attachment.size,
        "created_time": attachment.created_time.isoformat() if attachment.created_time else None,
        "link_url": attachment.link_url,
    }


def _v1_success(kind: str, uri: str, attachment: dict[str, Any]) -> Reply:
    created = attachment.get("created_time") or ""
    details = [
        ("Id", str(attachment["id"])),
        ("Created Time", created),
        ("Modified Time", created),
        ("Created By", "patchbay"),
        ("Modified By", "patchbay"),
    ]
    message = "File has been attached successfully"
    if kind == "xml":
        fields = "".join(f'<FL val="{escape(k)}">{escape(v)}</FL>' for k, v in details)
        body = (
            f'<?xml version="1.0" encoding="UTF-8" ?>\n<response uri="{escape(uri)}"><result>'
            f"<message>{message}</message><recorddetail>{fields}</recorddetail></result></response>"
        )
        return Reply(200, b"text/xml;charset=utf-8", body.encode())
    result = {
        "response": {
            "result": {
                "message": message,
                "recorddetail": {"FL": [{"val": k, "content": v} for k, v in details]},
            },
            "uri": uri,
        }
    }
    return Reply(200, b"application/json;charset=utf-8", orjson.dumps(result))


def _v1_error(kind: str, uri: str, code: str, message: str, status: int) -> Reply:
    if kind == "xml":
        body = (
            f'<?xml version="1.0" encoding="UTF-8" ?>\n<response uri="{escape(uri)}"><error>'
            f"<code>{code}</code><message>{escape(message)}</message></error></response>"
        )
        return Reply(status, b"text/xml;charset=utf-8", body.encode())
    answer = {"response": {"error": {"code": code, "message": message}, "uri": uri}}
    return Reply(status, b"application/json;charset=utf-8", orjson.dumps(answer))
