"""The Zoho CRM client: attachments uploaded, linked, listed, downloaded and deleted.

Hand-written rather than Zoho's SDK (``zohocrmsdk8-0``), because the SDK is a poor fit for a
gateway (zoho.md 0 and 3): it reads the whole file into memory (42.6 MiB of peak for a 20 MiB
upload), sends POSTs without any timeout, never retries (no 429 or 5xx handling), refreshes the
token only when under 5 s of life is left and without any lock (so workers refresh at once,
burn Zoho's 10-per-10-minutes budget and invalidate each other's tokens), keeps its state in a
process-global initializer, and writes per-user JSON files. What this client does instead:

- **Streaming.** A file is never read into memory: the multipart body is a generator that
  yields the precomputed part header, the file in 64 KiB chunks read off the event loop, and the
  closing boundary, under an exact ``Content-Length`` (``crm.zoho.file_part``). A download is
  streamed to a temporary file next to the destination and renamed into place when complete.
- **Checks first** (``crm.zoho``): the module, the ids, the file's size against
  ``crm.max_file_bytes`` (with the seed's "File size should not exceed 20 MB"), ``.exe``, file
  and URL both or neither, the link's form. Nothing is sent when one fails. A link is passed to
  Zoho as given; Patchbay never fetches it.
- **Tokens** from ``crm.oauth.TokenSource`` in its shared mode when a store is given: one
  refresh at a time for the whole deployment, the token kept in the store across restarts. A
  401 ``INVALID_TOKEN`` drops the token and the request is sent once more with a fresh one.
- **Limits** from ``crm.limits.CallLimiter``: every request (retries and 401 resends included)
  holds one of the edition's concurrency slots and takes a per-minute turn, server-wide.
- **Retries** within a call: 429, 5xx and network errors, up to ``attempts`` tries with full
  jitter backoff (``backoff`` doubling to ``backoff_cap`` seconds). A wait longer than the cap
  (a refresh budget spent for minutes) is not slept here: the error goes to the caller, whose
  durable job retries later. Every other error is final and typed (``crm.zoho``'s tree); the
  store's own ``StoreUnavailable`` (limiter, token) passes through as it is.
- **Never lost, never doubled** (zoho.md 5.3). Zoho has no idempotency key, so after an
  ambiguous failure (the request was sent, the answer lost: a read timeout, a dropped
  connection, a 5xx to a POST) the client lists the record's attachments and takes one with the
  same name and size (for a link: the same URL and title) created since the first attempt as
  the outcome; only when none is there is the request sent again. If the tries run out while
  the outcome is unknown, ``ZohoUncertain`` is raised, and the job layer calls ``upload`` again
  with ``since`` = when its first attempt started, which makes the client look before sending.
  Deleting is safe to repeat: after an ambiguous failure, "not found" means it was deleted.

The client is async and owns nothing global: settings, store, HTTP client, clock and sleep are
injected (tests pass ``httpx.ASGITransport(app=ZohoEmulator(...))``, a ``SqliteStore`` and a
fake clock). One client per process is meant to be shared by every request handler and job.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import email.message
import os
import random
import secrets
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import httpx
import structlog

from patchbay.crm.limits import CallLimiter
from patchbay.crm.oauth import (
    INVALID_TOKEN,
    SharedState,
    TokenSource,
    ZohoApiError,
    ZohoRateLimited,
    ZohoUnavailable,
)
from patchbay.crm.zoho import (
    MB,
    Attachment,
    FilePart,
    InvalidAttachment,
    ZohoNotFound,
    ZohoUncertain,
    attachments_path,
    check_file_name,
    check_id,
    check_link,
    check_module,
    check_size,
    check_source,
    classify,
    created_attachment,
    file_part,
    find_upload,
    form_fields,
    list_params,
    parse_page,
    parse_success,
)
from patchbay.errors import ConfigError
from patchbay.logs import as_library
from patchbay.settings import CrmSettings

log = structlog.get_logger("patchbay.crm")

T = TypeVar("T")
Progress = Callable[[int, int], None]
CHUNK: Final = 64 * 1024  # bytes read and sent at a time: memory stays flat, syscalls few
MAX_PAGES: Final = 1000  # a list stops here rather than loop on a server that always says more
# Network errors after which the request may have reached Zoho whole (its answer was lost).
# A failed connect, a pool timeout or a failed write mean Zoho cannot have the whole request.
_UNCERTAIN: Final = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError)


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A downloaded attachment: where it is, its size, and what Zoho said it was."""

    path: Path
    size: int
    content_type: str | None
    file_name: str | None


class CrmClient:
    """Zoho CRM attachments for the ``[crm]`` account; see the module docstring."""

    def __init__(
        self,
        settings: CrmSettings,
        *,
        store: SharedState | None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tokens: TokenSource | None = None,
        limiter: CallLimiter | None = None,
        attempts: int = 4,
        backoff: float = 1.0,
        backoff_cap: float = 30.0,
        match_skew: float = 5.0,
        rng: random.Random | None = None,
        chunk_size: int = CHUNK,
    ) -> None:
        as_library()
        if not settings.configured and tokens is None:
            raise ConfigError(
                "crm.client_id, crm.client_secret and crm.refresh_token are required for "
                "Zoho CRM calls"
            )
        if attempts < 1 or backoff < 0 or backoff_cap < 0 or chunk_size < 1:
            raise ValueError("attempts and chunk_size must be positive, backoffs not negative")
        self.settings = settings
        self.store = store
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=settings.timeout,
            limits=httpx.Limits(max_connections=settings.concurrency + 2),
        )
        self.clock = clock
        self.sleep = sleep
        self._own_tokens = tokens is None
        self.tokens = tokens or TokenSource.from_settings(
            settings, self.http, clock=clock, store=store, sleep=sleep
        )
        self.limiter = limiter or CallLimiter(
            concurrency=settings.concurrency,
            calls_per_minute=settings.calls_per_minute,
            store=store,
            clock=clock,
            sleep=sleep,
            rng=rng,
        )
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.match_skew = match_skew  # seconds Zoho's clock may lag ours when matching uploads
        self.rng = rng or random.Random()
        self.chunk_size = chunk_size

    async def __aenter__(self) -> CrmClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel a token refresh in flight and close the HTTP client if this client made it."""
        if self._own_tokens:
            await self.tokens.aclose()
        if self._own_http:
            await self.http.aclose()

    # -- the operations ----------------------------------------------------------------------

    async def upload(
        self,
        module: str,
        record_id: str,
        path: str | os.PathLike[str],
        *,
        file_name: str | None = None,
        progress: Progress | None = None,
        since: float | None = None,
    ) -> Attachment:
        """Attach the file at ``path`` to a record; return the attachment Zoho made.

        ``file_name`` (default: the path's name) is what Zoho shows. ``progress(sent, total)``
        is called after each chunk (from 0 again when a try starts over). ``since``: when an
        earlier call for this same upload may have reached Zoho (it raised ``ZohoUncertain`` or
        the process died during it), the time that call started; the record's attachments are
        then looked at first, and an attachment matching by name and size is returned instead
        of uploading again.
        """
        module = check_module(module)
        record_id = check_id(record_id)
        name = check_file_name(file_name or Path(path).name)
        file = await _open(path)
        try:
            size = os.fstat(file.fileno()).st_size
            check_size(size, self.settings.max_file_bytes)
            started = self.clock()
            first = started if since is None else min(since, started)
            api_path = attachments_path(self.settings.api_version, module, record_id)
            part = file_part(secrets.token_hex(16), name, size)
            headers = {
                "content-type": part.content_type,
                "content-length": str(part.content_length),
            }
            # Reading the answer may wait for Zoho to scan a large file: a second per MB more.
            timeout = httpx.Timeout(self.settings.timeout, read=self.settings.timeout + size / MB)

            async def send() -> Attachment:
                async with self._exchange(
                    "POST",
                    api_path,
                    content=lambda: self._chunks(file, part, progress),
                    headers=headers,
                    timeout=timeout,
                ) as response:
                    details = _succeeded(response)
                return created_attachment(details, name, size)

            async def recover() -> Attachment | None:
                found = find_upload(
                    await self._list(module, record_id),
                    first,
                    file_name=name,
                    size=size,
                    skew=self.match_skew,
                )
                if found is not None:
                    log.info("zoho upload found after a lost answer", attachment_id=found.id)
                return found

            attachment = await self._retrying(
                send, recover=recover, uncertain=since is not None, what="upload"
            )
        finally:
            await asyncio.to_thread(file.close)
        log.info(
            "zoho attachment uploaded",
            module=module,
            record_id=record_id,
            attachment_id=attachment.id,
            size=size,
        )
        return attachment

    async def attach_url(
        self,
        module: str,
        record_id: str,
        url: str,
        *,
        title: str | None = None,
        since: float | None = None,
    ) -> Attachment:
        """Attach a link (Zoho fetches nothing for us either: it stores the URL and title).

        ``since`` as for ``upload``: a link with the same URL (and title) is looked for first.
        """
        module = check_module(module)
        record_id = check_id(record_id)
        url, title = check_link(url, title)
        started = self.clock()
        first = started if since is None else min(since, started)
        fields = {"attachmentUrl": url} | ({"title": title} if title is not None else {})
        boundary = secrets.token_hex(16)
        body = form_fields(boundary, fields)
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        api_path = attachments_path(self.settings.api_version, module, record_id)

        async def send() -> Attachment:
            async with self._exchange(
                "POST", api_path, content=lambda: body, headers=headers
            ) as response:
                details = _succeeded(response)
            return created_attachment(details, title or url, None, link_url=url)

        async def recover() -> Attachment | None:
            attachments = await self._list(module, record_id)
            return find_upload(
                attachments, first, file_name=title, link_url=url, skew=self.match_skew
            )

        return await self._retrying(send, recover=recover, uncertain=since is not None, what="link")

    async def attach(
        self,
        module: str,
        record_id: str,
        *,
        path: str | os.PathLike[str] | None = None,
        url: str | None = None,
        file_name: str | None = None,
        title: str | None = None,
        progress: Progress | None = None,
        since: float | None = None,
    ) -> Attachment:
        """``upload`` a file or ``attach_url`` a link: exactly one of ``path`` and ``url``.

        For callers that take either, like the seed's ``uploadFile`` (``content`` or
        ``attachmentUrl``): both or neither is ``InvalidAttachment``, before any request.
        """
        check_source(path is not None, bool(url))
        if path is not None:
            return await self.upload(
                module, record_id, path, file_name=file_name, progress=progress, since=since
            )
        assert url is not None
        return await self.attach_url(module, record_id, url, title=title, since=since)

    async def list(self, module: str, record_id: str) -> list[Attachment]:
        """Every attachment of a record (all pages), oldest page first, as Zoho orders them."""
        module = check_module(module)
        record_id = check_id(record_id)

        async def once() -> builtins.list[Attachment]:
            return await self._list(module, record_id)

        return await self._retrying(once, what="list")

    async def download(
        self, module: str, record_id: str, attachment_id: str, dest: str | os.PathLike[str]
    ) -> Downloaded:
        """Stream an attachment's content into the file ``dest`` (replaced only when complete)."""
        module = check_module(module)
        record_id = check_id(record_id)
        attachment_id = check_id(attachment_id, "attachment_id")
        api_path = attachments_path(self.settings.api_version, module, record_id, attachment_id)
        target = Path(dest)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")

        async def once() -> Downloaded:
            async with self._exchange("GET", api_path, stream=True) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise classify(response.status_code, response.content)
                size = await _save(response, partial)
                headers = response.headers
            await asyncio.to_thread(os.replace, partial, target)
            return Downloaded(
                path=target,
                size=size,
                content_type=headers.get("content-type"),
                file_name=_disposition_name(headers.get("content-disposition")),
            )

        try:
            return await self._retrying(once, what="download")
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(partial.unlink)

    async def delete(self, module: str, record_id: str, attachment_id: str) -> None:
        """Delete one attachment; after a lost answer, "not found" counts as deleted."""
        module = check_module(module)
        record_id = check_id(record_id)
        attachment_id = check_id(attachment_id, "attachment_id")
        api_path = attachments_path(self.settings.api_version, module, record_id, attachment_id)
        maybe_done = False

        async def once() -> None:
            nonlocal maybe_done
            try:
                async with self._exchange("DELETE", api_path) as response:
                    _succeeded(response)
            except ZohoUncertain:
                maybe_done = True
                raise
            except ZohoNotFound:
                if not maybe_done:
                    raise

        await self._retrying(once, what="delete")

    # -- plumbing ----------------------------------------------------------------------------

    async def _list(self, module: str, record_id: str) -> builtins.list[Attachment]:
        # One try per page; the caller's retry loop repeats the whole list.
        api_path = attachments_path(self.settings.api_version, module, record_id)
        found: builtins.list[Attachment] = []
        token: str | None = None
        page = 1
        for _ in range(MAX_PAGES):
            async with self._exchange("GET", api_path, params=list_params(token, page)) as response:
                result = parse_page(response.status_code, response.content, page)
            found.extend(result.attachments)
            if result.next_token is None and result.next_page is None:
                break
            token, page = result.next_token, result.next_page or page
        return found

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: Callable[[], bytes | AsyncIterator[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,  # noqa: ASYNC109 (httpx's, per request)
        stream: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """One request under the limiter, sent once more with a fresh token on INVALID_TOKEN.

        The answer is read unless ``stream``; the limiter's place is held until the block ends,
        so a streamed download counts as in flight while its body arrives.
        """
        for attempt in (1, 2):
            token = await self.tokens.token()
            async with self.limiter.call():
                request = self.http.build_request(
                    method,
                    token.api_domain + path,
                    params=params,
                    content=None if content is None else content(),
                    headers={**(headers or {}), "authorization": token.authorization},
                    timeout=self.settings.timeout if timeout is None else timeout,
                )
                try:
                    response = await self.http.send(request, stream=stream)
                except httpx.HTTPError as exc:
                    raise _network_error(exc, method, token.api_domain) from exc
                try:
                    if attempt == 1 and response.status_code == 401:
                        await response.aread()
                        error = classify(401, response.content)
                        if isinstance(error, ZohoApiError) and error.zoho_code == INVALID_TOKEN:
                            # Dropped early (revoked, or an eleventh token issued elsewhere).
                            self.tokens.invalidate(token)
                            continue
                    yield response
                    return
                finally:
                    await response.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _retrying(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        what: str,
        recover: Callable[[], Awaitable[T | None]] | None = None,
        uncertain: bool = False,
    ) -> T:
        """Run ``operation`` until it succeeds, fails for good, or the tries run out.

        With ``recover`` (the POSTs), a try that may have reached Zoho is followed by a look
        (``recover``) before anything is sent again; ``uncertain`` starts with one.
        """
        last: ZohoUnavailable | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                if uncertain and recover is not None:
                    found = await recover()
                    if found is not None:
                        return found
                    uncertain = False  # looked: not there, so sending again cannot double it
                return await operation()
            except ZohoUncertain as exc:
                uncertain = recover is not None
                last = exc
            except ZohoUnavailable as exc:
                last = exc
            delay = self._delay(attempt, last)
            if attempt == self.attempts or delay is None:
                break
            log.info(
                "zoho call failed, retrying",
                operation=what,
                attempt=attempt,
                delay=round(delay, 2),
                error=last.message,
            )
            await self.sleep(delay)
        assert last is not None
        if uncertain and not isinstance(last, ZohoUncertain):
            raise ZohoUncertain(
                f"the Zoho {what} may have been carried out and could not be checked: "
                f"{last.message}"
            ) from last
        raise last

    def _delay(self, attempt: int, error: ZohoUnavailable) -> float | None:
        # Full jitter (zoho.md 5.3); a longer wait that Zoho or the budget names is left to the
        # durable job (None), rather than holding a worker for it.
        ceiling = min(self.backoff_cap, self.backoff * 2 ** (attempt - 1))
        delay = self.rng.uniform(0, ceiling)
        if isinstance(error, ZohoRateLimited) and error.retry_after is not None:
            if error.retry_after > self.backoff_cap:
                return None
            delay = max(delay, error.retry_after)
        return delay

    async def _chunks(
        self, file: IO[bytes], part: FilePart, progress: Progress | None
    ) -> AsyncIterator[bytes]:
        # One try's body: the part header, the file from its start, the closing boundary.
        yield part.head
        await asyncio.to_thread(file.seek, 0)
        sent = 0
        while sent < part.size:
            chunk = await asyncio.to_thread(file.read, min(self.chunk_size, part.size - sent))
            if not chunk:
                raise InvalidAttachment("the file shrank while it was being uploaded")
            sent += len(chunk)
            yield chunk
            if progress is not None:
                progress(sent, part.size)
        if await asyncio.to_thread(file.read, 1):
            # Content-Length was sent already; a grown file would be cut short at Zoho.
            raise InvalidAttachment("the file grew while it was being uploaded")
        yield part.tail


def _succeeded(response: httpx.Response) -> Mapping[str, Any]:
    # A 5xx to a POST or DELETE comes after Zoho read the whole request: it may have acted.
    if response.status_code >= 500:
        error = classify(response.status_code, response.content)
        raise ZohoUncertain(
            f"{error.message} (after the request was sent: it may have been carried out)",
            http_status=response.status_code,
        )
    return parse_success(response.status_code, response.content)


def _network_error(exc: httpx.HTTPError, method: str, base: str) -> ZohoUnavailable:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, _UNCERTAIN) and method != "GET":
        return ZohoUncertain(f"the Zoho API at {base} did not answer ({text})")
    return ZohoUnavailable(f"cannot reach the Zoho API at {base}: {text}")


async def _open(path: str | os.PathLike[str]) -> IO[bytes]:
    try:
        file = await asyncio.to_thread(open, path, "rb")
    except OSError as exc:
        raise InvalidAttachment(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
        file.close()
        raise InvalidAttachment(f"{os.fspath(path)!r} is not a regular file")
    return file


async def _save(response: httpx.Response, path: Path) -> int:
    size = 0
    file = await asyncio.to_thread(open, path, "wb")
    try:
        async for chunk in response.aiter_bytes():
            await asyncio.to_thread(file.write, chunk)
            size += len(chunk)
    finally:
        await asyncio.to_thread(file.close)
    return size


def _disposition_name(value: str | None) -> str | None:
    if not value:
        return None
    message = email.message.Message()
    message["content-disposition"] = value
    return message.get_filename()
