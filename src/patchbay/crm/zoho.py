"""Zoho CRM's Attachments API, sans I/O: the rules, the request framing and the answers.

Everything here is pure (no sockets, no files, no clock): ``crm.client`` does the I/O and asks
this module what to send and what an answer means, so each rule is tested without a server.

- **The module rule** (zoho.md 2.1, 1): attachments go to the standard modules that have an
  Attachments related list (``ATTACHMENT_MODULES``) and to custom modules. Modules that are
  not records (Reports, Dashboards, Forecasts, and the other names in ``NO_ATTACHMENTS``) are
  refused locally, since Zoho would only answer ``INVALID_MODULE`` after a wasted call. Any other
  well-formed API name may be a custom module, which only Zoho can confirm.
- **Local checks** raise ``CrmRequestError`` before any request: the module, the ids (digits
  only, so nothing but an id ever lands in a URL path), the file size against
  ``crm.max_file_bytes`` (the seed's text "File size should not exceed 20 MB" for the 20 MB
  default), ``.exe`` files (Zoho takes every type but those, zoho.md 2.2), a file *and* a URL or
  neither, and a link that is not an http(s) URL of at most 3000 characters with a title of
  1-255 characters. Patchbay never fetches a link itself: Zoho does.
- **Multipart framing** is computed, not buffered: ``file_part`` returns the bytes before and
  after the file content, so the client streams the file between them and sends an exact
  ``Content-Length`` (Zoho's SDK reads the whole file into memory, about twice its size,
  zoho.md 3 and the appendix). File names are sanitised to what every multipart parser reads
  back the same way, so that the name Zoho stores is the name we match after a lost answer.
- **Answers.** Success is ``{"data": [{"code": "SUCCESS", "details": {...}}]}``; the code
  decides, never the message (whose wording changed between versions). Failures are classified
  by HTTP status first and code second (zoho.md 2.1: 429 arrives under two code names) through
  ``ERROR_CLASSES``.

Errors (the CRM branch of the one tree in ``patchbay.errors``; ``ZohoError`` and its first
children live in ``crm.oauth``)::

    PatchbayError
    ├── RequestError (400)
    │   └── CrmRequestError (400)          refused locally, before any request was sent
    │       ├── UnsupportedModule          a module that takes no attachments (Reports...)
    │       ├── InvalidId                  a record or attachment id that is no Zoho id
    │       ├── InvalidAttachment          file and URL both or neither, bad URL/title, .exe,
    │       │                              a missing or changing file
    │       └── FileTooLarge (413)         over crm.max_file_bytes ("File size should not ...")
    └── ZohoError (502)                    Zoho failed us
        ├── ZohoAuthError (502)            the accounts server refused the credentials
        ├── ZohoApiError (502)             the API refused (``http_status``, ``zoho_code``)
        │   ├── ZohoAccessDenied (502)     NO_PERMISSION, OAUTH_SCOPE_MISMATCH, INVALID_TOKEN
        │   │                              after a fresh token: fix the account, not the call
        │   └── ZohoInvalidRequest (400)   INVALID_MODULE, INVALID_DATA, REQUIRED_PARAM_MISSING...
        │       ├── ZohoNotFound (404)     no such record or attachment (INVALID_DATA on an id)
        │       └── ZohoFileTooLarge (413) FILE_SIZE_MORE_THAN_ALLOWED_SIZE, BODY_SIZE_REACHED
        └── ZohoUnavailable (503)          network error, timeout, 5xx: retry later
            ├── ZohoRateLimited            429, refresh budget spent (``retry_after``)
            └── ZohoUncertain              the request was sent and the answer lost: it may
                                           have been carried out (the client checks first)

Only ``ZohoUnavailable`` and its children are worth retrying; every other error is final until
the request or the settings change.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import orjson

from patchbay.crm.oauth import (
    ZohoApiError,
    ZohoError,
    ZohoUnavailable,
    api_error,
)
from patchbay.errors import RequestError

MB: Final = 1_048_576
SEED_LIMIT: Final = 20 * MB  # the seed's (v1's) limit and the default of crm.max_file_bytes
ZOHO_LIMIT: Final = 100 * MB  # what v2+ takes (zoho.md 2.2)
MAX_URL: Final = 3000  # characters of an attachmentUrl
MAX_TITLE: Final = 255
PER_PAGE: Final = 200  # the most a list page holds
# What a list asks for: ``fields`` is required since v8 (else REQUIRED_PARAM_MISSING).
LIST_FIELDS: Final = (
    "id",
    "File_Name",
    "Size",
    "Created_Time",
    "Modified_Time",
    "$type",
    "$link_url",
    "$file_id",
    "Parent_Id",
)
SUCCESS: Final = "SUCCESS"

# zoho.md 2.1 (v8 list): lower-case name -> the API name sent. Appointments and Services are
# system-defined modules whose API names end in ``__s``; their display names map to those.
ATTACHMENT_MODULES: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{
            name.lower(): name
            for name in (
                "Leads",
                "Accounts",
                "Contacts",
                "Deals",
                "Campaigns",
                "Tasks",
                "Cases",
                "Events",
                "Calls",
                "Solutions",
                "Products",
                "Vendors",
                "Price_Books",
                "Quotes",
                "Sales_Orders",
                "Purchase_Orders",
                "Invoices",
                "Appointments__s",
                "Services__s",
                "Notes",
            )
        },
        "appointments": "Appointments__s",
        "services": "Services__s",
    }
)
# Standard names that are not record modules with attachments: the seed's three (zoho.md 1),
# and the other tabs and API resources a caller might take for one.
NO_ATTACHMENTS: Final = frozenset(
    {
        "reports",
        "dashboards",
        "forecasts",
        "home",
        "feeds",
        "activities",
        "visits",
        "documents",
        "social",
        "projects",
        "analytics",
        "approvals",
        "users",
        "org",
        "settings",
        "attachments",
        "emails",
        "actions",
        "coql",
        "functions",
        "territories",
        "search",
    }
)
_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
_ID = re.compile(r"[0-9]{1,30}")  # Zoho's ids are longs, sent as strings
# Characters that multipart parsers read back differently (quotes, escapes, line breaks).
_UNSAFE_NAME = re.compile(r'["\\\x00-\x1f\x7f]')


# -- errors ------------------------------------------------------------------------------------


class CrmRequestError(RequestError):
    """A CRM call refused locally, before any request: the caller must change it."""

    code = "crm_request"
    status = 400


class UnsupportedModule(CrmRequestError):
    """The module takes no attachments, or is not a module API name at all."""

    code = "crm_unsupported_module"


class InvalidId(CrmRequestError):
    """A record or attachment id that is not a Zoho id (a number)."""

    code = "crm_invalid_id"


class InvalidAttachment(CrmRequestError):
    """File and URL both given or neither, a bad URL or title, a file Zoho never takes."""

    code = "crm_invalid_attachment"


class FileTooLarge(CrmRequestError):
    """The file is over ``crm.max_file_bytes``."""

    code = "crm_file_too_large"
    status = 413


class ZohoAccessDenied(ZohoApiError):
    """Patchbay's Zoho account may not do this (scopes, profile, token): fix the account."""

    code = "zoho_access_denied"


class ZohoInvalidRequest(ZohoApiError):
    """Zoho found the request invalid (module, record id, parameters)."""

    code = "zoho_invalid_request"
    status = 400


class ZohoNotFound(ZohoInvalidRequest):
    """No such record or attachment at Zoho."""

    code = "zoho_not_found"
    status = 404


class ZohoFileTooLarge(ZohoInvalidRequest):
    """Zoho refused the file as too large (its limit is below ``crm.max_file_bytes``)."""

    code = "zoho_file_too_large"
    status = 413


class ZohoUncertain(ZohoUnavailable):
    """The request was sent and its answer lost; Zoho may have carried it out.

    For an upload, call ``upload`` again with ``since`` set: it looks for the attachment first.
    """

    code = "zoho_uncertain"


# zoho.md 2.1's table: Zoho's code -> the error it means (after the status decided 429/5xx).
ERROR_CLASSES: Final[Mapping[str, type[ZohoApiError]]] = MappingProxyType(
    {
        "INVALID_MODULE": ZohoInvalidRequest,
        "INVALID_DATA": ZohoInvalidRequest,
        "REQUIRED_PARAM_MISSING": ZohoInvalidRequest,
        "MANDATORY_NOT_FOUND": ZohoInvalidRequest,
        "INVALID_REQUEST": ZohoInvalidRequest,
        "INVALID_URL_PATTERN": ZohoInvalidRequest,
        "failure_in_attachment_handling": ZohoInvalidRequest,
        "VIRUS_DETECTED": ZohoInvalidRequest,
        "NOT_SUPPORTED": ZohoInvalidRequest,
        "DOWNLOAD_NOT_ALLOWED": ZohoInvalidRequest,  # a link has no content to download
        "FILE_SIZE_MORE_THAN_ALLOWED_SIZE": ZohoFileTooLarge,
        "BODY_SIZE_REACHED": ZohoFileTooLarge,
        "NO_PERMISSION": ZohoAccessDenied,
        "OAUTH_SCOPE_MISMATCH": ZohoAccessDenied,
        "INVALID_TOKEN": ZohoAccessDenied,
        "AUTHENTICATION_FAILURE": ZohoAccessDenied,
    }
)


def classify(status: int, body: bytes) -> ZohoError:
    """The error a failed API answer means: ``crm.oauth.api_error``, refined by the table."""
    error = api_error(status, body)
    if not isinstance(error, ZohoApiError):
        return error  # 429, 5xx: already ZohoRateLimited / ZohoUnavailable
    cls = ERROR_CLASSES.get(error.zoho_code, ZohoApiError)
    details = error.detail.get("details")
    if (cls is ZohoInvalidRequest and _names_an_id(status, error.zoho_code, details)) or (
        cls is ZohoApiError and status == 404
    ):
        cls = ZohoNotFound
    elif cls is ZohoApiError and status == 413:
        cls = ZohoFileTooLarge
    if cls is ZohoApiError:
        return error
    return cls(
        error.message,
        http_status=error.http_status,
        zoho_code=error.zoho_code,
        details=details,
    )


def _names_an_id(status: int, code: str, details: Any) -> bool:
    # INVALID_DATA with ``resource_path_index`` 1 (the record id) or 3 (the attachment id), or
    # answered with 404, means the thing named in the path does not exist.
    if code != "INVALID_DATA":
        return False
    if status == 404:
        return True
    index = details.get("resource_path_index") if isinstance(details, Mapping) else None
    return isinstance(index, int) and not isinstance(index, bool) and index >= 1


# -- local checks ------------------------------------------------------------------------------


def check_module(module: str) -> str:
    """The API name to send for ``module``, or ``UnsupportedModule``.

    Standard names are matched without regard to case or spaces ("price books" is
    ``Price_Books``); other well-formed names are taken as custom modules, as sent.
    """
    key = module.strip().replace(" ", "_").lower()
    known = ATTACHMENT_MODULES.get(key)
    if known is not None:
        return known
    if key in NO_ATTACHMENTS:
        raise UnsupportedModule(
            f"module {module!r} takes no attachments (only record modules do: "
            "Leads, Contacts, Deals, ... and custom modules; never Reports, Dashboards or "
            "Forecasts)",
            module=module,
        )
    name = module.strip()
    if not _API_NAME.fullmatch(name):
        raise UnsupportedModule(
            f"module {module!r} is not a Zoho module API name (a letter, then letters, digits "
            "or underscores)",
            module=module,
        )
    return name


def check_id(value: str, what: str = "record_id") -> str:
    """``value`` if it is a Zoho id (digits), else ``InvalidId`` naming ``what``."""
    text = str(value).strip()
    if not _ID.fullmatch(text):
        raise InvalidId(f"{what}: a Zoho id is a number, got {value!r}", **{what: value})
    return text


def size_message(limit: int) -> str:
    """The refusal text for a file over ``limit`` bytes, in the seed's words."""
    mb = f"{limit / MB:.2f}".rstrip("0").rstrip(".")
    return f"File size should not exceed {mb} MB"


def check_size(size: int, limit: int) -> None:
    """``FileTooLarge`` when ``size`` is over ``limit`` bytes."""
    if size > limit:
        raise FileTooLarge(size_message(limit), size=size, limit=limit)


def check_file_name(name: str) -> str:
    """The file name to send: sanitised, and never an ``.exe`` (Zoho refuses those)."""
    clean = _UNSAFE_NAME.sub("_", name).strip()
    if not clean:
        raise InvalidAttachment("the file needs a name")
    if clean.lower().endswith(".exe"):
        raise InvalidAttachment(f"Zoho takes no .exe files: {clean!r}", file_name=clean)
    return clean


def check_link(url: str, title: str | None) -> tuple[str, str | None]:
    """The link and title to send, or ``InvalidAttachment`` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise InvalidAttachment(
            f"attachmentUrl must be an http:// or https:// URL, got {url[:100]!r}"
        )
    if len(url) > MAX_URL:
        raise InvalidAttachment(f"attachmentUrl is over {MAX_URL} characters ({len(url)})")
    if title is not None and not 1 <= len(title) <= MAX_TITLE:
        raise InvalidAttachment(f"title must be 1 to {MAX_TITLE} characters, got {len(title)}")
    return url, title


def check_source(has_file: bool, has_url: bool) -> None:
    """One attachment is a file *or* a link: ``InvalidAttachment`` for both or neither."""
    if has_file and has_url:
        raise InvalidAttachment("give a file or an attachmentUrl, not both")
    if not has_file and not has_url:
        raise InvalidAttachment("give a file or an attachmentUrl")


# -- requests ----------------------------------------------------------------------------------


def attachments_path(version: str, module: str, record_id: str, attachment_id: str = "") -> str:
    """``/crm/{version}/{module}/{record_id}/Attachments[/{attachment_id}]``, escaped."""
    path = f"/crm/{quote(version, safe='')}/{quote(module, safe='')}/{quote(record_id, safe='')}"
    path += "/Attachments"
    return f"{path}/{quote(attachment_id, safe='')}" if attachment_id else path


def list_params(page_token: str | None = None, page: int = 1) -> dict[str, str]:
    """The query of one list page (``page_token`` once Zoho gave one, else ``page``)."""
    params = {"fields": ",".join(LIST_FIELDS), "per_page": str(PER_PAGE)}
    if page_token:
        params["page_token"] = page_token
    else:
        params["page"] = str(page)
    return params


@dataclass(frozen=True, slots=True)
class FilePart:
    """A multipart body with one file part: the bytes around the content, and the length."""

    boundary: str
    head: bytes
    tail: bytes
    size: int  # of the file content

    @property
    def content_length(self) -> int:
        """The exact body length, so the body can be streamed with a ``Content-Length``."""
        return len(self.head) + self.size + len(self.tail)

    @property
    def content_type(self) -> str:
        """The request's ``Content-Type``."""
        return f"multipart/form-data; boundary={self.boundary}"


def content_type_of(file_name: str) -> str:
    """The part's media type, guessed from the name (``application/octet-stream`` else)."""
    return mimetypes.guess_type(file_name)[0] or "application/octet-stream"


def file_part(
    boundary: str, file_name: str, size: int, content_type: str | None = None
) -> FilePart:
    """The framing of a ``file`` part of ``size`` bytes named ``file_name`` (sanitised)."""
    _check_boundary(boundary)
    media = content_type or content_type_of(file_name)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        f"Content-Type: {media}\r\n\r\n"
    ).encode()
    return FilePart(boundary, head, f"\r\n--{boundary}--\r\n".encode(), size)


def form_fields(boundary: str, fields: Mapping[str, str]) -> bytes:
    """A small multipart body of text fields (a link and its title), as Zoho's docs send it."""
    _check_boundary(boundary)
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def _check_boundary(boundary: str) -> None:
    if not re.fullmatch(r"[0-9A-Za-z'()+_,./:=?-]{1,70}", boundary):
        raise ValueError(f"not a multipart boundary: {boundary!r}")


# -- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment of a record: a file (``size`` in bytes) or a link (``link_url``)."""

    id: str
    file_name: str
    size: int | None
    created_time: datetime | None
    link_url: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_link(self) -> bool:
        """Whether it is a link rather than a file."""
        return self.link_url is not None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Attachment:
        """From one item of a list answer."""
        link = record.get("$link_url")
        kind = str(record.get("$type", ""))
        return cls(
            id=str(record.get("id", "")),
            file_name=str(record.get("File_Name") or ""),
            size=_int(record.get("Size")),
            created_time=parse_time(record.get("Created_Time")),
            link_url=str(link) if link and kind.lower() != "file" else None,
            raw=MappingProxyType(dict(record)),
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list answer, and how to ask for the next (None: it was the last)."""

    attachments: tuple[Attachment, ...]
    next_token: str | None
    next_page: int | None


def parse_time(value: Any) -> datetime | None:
    """A Zoho date-time (ISO 8601 with offset), or None when missing or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def parse_success(status: int, body: bytes) -> Mapping[str, Any]:
    """The ``details`` of a one-item success answer (upload, link, delete), or its error."""
    data = _json(body)
    items = data.get("data") if data is not None else None
    item = items[0] if isinstance(items, list) and items else None
    if status >= 400 or not isinstance(item, Mapping):
        if status < 400:
            raise ZohoUnavailable(
                f"Zoho answered HTTP {status} without the expected data list", http_status=status
            )
        raise classify(status, body)
    if str(item.get("code", "")) != SUCCESS:
        # A per-item error inside a 2xx (or 207) answer: classify it as if it stood alone.
        raise classify(
            status if status >= 400 else _status_for(item), orjson.dumps({"data": [item]})
        )
    details = item.get("details")
    return details if isinstance(details, Mapping) else {}


def _status_for(item: Mapping[str, Any]) -> int:
    code = str(item.get("code", ""))
    if code in ("TOO_MANY_REQUESTS", "RATE_LIMIT_EXCEEDED"):
        return 429
    if code in ("INTERNAL_ERROR", "SERVICE_UNAVAILABLE"):
        return 500
    return 400


def created_attachment(
    details: Mapping[str, Any], file_name: str, size: int | None, link_url: str | None = None
) -> Attachment:
    """The attachment an upload created: Zoho's ``details`` give only its id and times."""
    attachment_id = details.get("id")
    if attachment_id is None or str(attachment_id) == "":
        raise ZohoUnavailable("Zoho reported success but no attachment id")
    return Attachment(
        id=str(attachment_id),
        file_name=file_name,
        size=size,
        created_time=parse_time(details.get("Created_Time")),
        link_url=link_url,
        raw=MappingProxyType(dict(details)),
    )


def parse_page(status: int, body: bytes, page: int) -> Page:
    """One page of ``GET .../Attachments`` (204: none), or its error."""
    if status == 204 or (status == 200 and not body.strip()):
        return Page((), None, None)
    if status >= 400:
        raise classify(status, body)
    data = _json(body)
    records = data.get("data") if data is not None else None
    if not isinstance(records, list):
        raise ZohoUnavailable(
            f"Zoho answered HTTP {status} to a list without a data list", http_status=status
        )
    attachments = tuple(Attachment.from_record(r) for r in records if isinstance(r, Mapping))
    info = data.get("info") if data is not None else None
    info = info if isinstance(info, Mapping) else {}
    if not info.get("more_records") or not attachments:
        return Page(attachments, None, None)
    token = info.get("next_page_token")
    if isinstance(token, str) and token:
        return Page(attachments, token, None)
    return Page(attachments, None, page + 1)


def find_upload(
    attachments: Sequence[Attachment],
    since: float,
    *,
    file_name: str | None,
    size: int | None = None,
    link_url: str | None = None,
    skew: float = 0.0,
) -> Attachment | None:
    """The attachment an earlier attempt stored, if the list shows one.

    Zoho has no idempotency key (zoho.md 5.3), so a file is recognised by its name and size, a
    link by its URL (and title, when one was given: without one Zoho names it after the page),
    and either by a creation time no earlier than the first attempt, less ``skew`` for clocks
    that disagree (Zoho's times have whole seconds). The oldest match wins, so a doubled upload,
    should one exist, always resolves to the same id.
    """
    floor = int(since) - skew

    def same(a: Attachment) -> bool:
        if link_url is not None:
            return a.link_url == link_url and (file_name is None or a.file_name == file_name)
        return not a.is_link and a.file_name == file_name and a.size == size

    found = [
        a
        for a in attachments
        if same(a) and a.created_time is not None and a.created_time.timestamp() >= floor
    ]
    if not found:
        return None
    return min(found, key=lambda a: (a.created_time.timestamp() if a.created_time else 0.0, a.id))


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
