"""The pure Attachments API core: module rule, local checks, framing, answers, error table."""

from __future__ import annotations

import email.parser
import email.policy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from patchbay.crm.oauth import ZohoApiError, ZohoError, ZohoRateLimited, ZohoUnavailable
from patchbay.crm.zoho import (
    MB,
    Attachment,
    CrmRequestError,
    FileTooLarge,
    InvalidAttachment,
    InvalidId,
    UnsupportedModule,
    ZohoAccessDenied,
    ZohoFileTooLarge,
    ZohoInvalidRequest,
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
    size_message,
)
from patchbay.errors import PatchbayError, PayloadTooLarge, RequestError


def body(data: Any) -> bytes:
    """JSON bytes."""
    return orjson.dumps(data)


def error_body(code: str, **details: Any) -> bytes:
    """A Zoho error answer."""
    return body({"code": code, "details": details, "message": code.lower(), "status": "error"})


# -- modules and ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("Leads", "Leads"),
        ("leads", "Leads"),
        ("Price Books", "Price_Books"),
        ("sales_orders", "Sales_Orders"),
        ("Appointments__s", "Appointments__s"),
        ("Appointments", "Appointments__s"),
        ("services", "Services__s"),
        ("Notes", "Notes"),
        ("Invoices", "Invoices"),
        ("Projects_Custom", "Projects_Custom"),  # a custom module, as sent
        ("CustomModule1", "CustomModule1"),
    ],
)
def test_modules_taken(given: str, sent: str) -> None:
    """Standard attachment modules by any case; other API names as custom modules."""
    assert check_module(given) == sent


@pytest.mark.parametrize(
    "module", ["Reports", "Dashboards", "forecasts", "Home", "Feeds", "Activities", "Attachments"]
)
def test_modules_refused(module: str) -> None:
    """The seed's three and the other non-record modules never take attachments."""
    with pytest.raises(UnsupportedModule, match="takes no attachments"):
        check_module(module)


@pytest.mark.parametrize("module", ["", "1Leads", "Leads/123", "../x", "Lé"])
def test_malformed_module_names(module: str) -> None:
    """A name that is no API name is refused before it reaches a URL."""
    with pytest.raises(UnsupportedModule, match="not a Zoho module API name"):
        check_module(module)


def test_ids_are_numbers() -> None:
    """Record and attachment ids are Zoho longs; anything else never reaches a path."""
    assert check_id(" 5725767000000412345 ") == "5725767000000412345"
    with pytest.raises(InvalidId, match="attachment_id"):
        check_id("12/../34", "attachment_id")


# -- local checks ------------------------------------------------------------------------------


def test_size_message_is_the_seeds() -> None:
    """20 MB says the seed's words exactly; other limits say theirs the same way."""
    assert size_message(20_971_520) == "File size should not exceed 20 MB"
    assert size_message(100 * MB) == "File size should not exceed 100 MB"
    assert size_message(int(2.5 * MB)) == "File size should not exceed 2.5 MB"
    check_size(20_971_520, 20_971_520)
    with pytest.raises(FileTooLarge) as caught:
        check_size(20_971_521, 20_971_520)
    assert caught.value.message == "File size should not exceed 20 MB"
    assert caught.value.status == 413


def test_local_errors_in_the_tree() -> None:
    """Local refusals are RequestErrors (4xx): the caller must change the request."""
    assert issubclass(CrmRequestError, RequestError)
    assert issubclass(FileTooLarge, CrmRequestError) and FileTooLarge.status == 413
    assert not issubclass(FileTooLarge, PayloadTooLarge)  # ours, not the gateway's body limit
    for local in (UnsupportedModule, InvalidAttachment, InvalidId):
        assert issubclass(local, CrmRequestError) and local.status == 400
    assert issubclass(ZohoUncertain, ZohoUnavailable)
    for remote in (ZohoAccessDenied, ZohoInvalidRequest, ZohoNotFound, ZohoFileTooLarge):
        assert issubclass(remote, ZohoApiError) and issubclass(remote, PatchbayError)


def test_source_is_a_file_or_a_link() -> None:
    """Both or neither is refused; either alone is fine."""
    check_source(True, False)
    check_source(False, True)
    with pytest.raises(InvalidAttachment, match="not both"):
        check_source(True, True)
    with pytest.raises(InvalidAttachment, match="give a file or an attachmentUrl"):
        check_source(False, False)


@pytest.mark.parametrize(
    ("url", "title", "reason"),
    [
        ("ftp://example.com/a", None, "http"),
        ("file:///etc/passwd", None, "http"),
        ("https://", None, "http"),
        ("javascript:alert(1)", None, "http"),
        ("https://example.com/" + "a" * 3000, None, "3000"),
        ("https://example.com/", "", "title"),
        ("https://example.com/", "t" * 256, "title"),
    ],
)
def test_bad_links(url: str, title: str | None, reason: str) -> None:
    """Only http(s) URLs up to 3000 characters, titles of 1-255 characters."""
    with pytest.raises(InvalidAttachment, match=reason):
        check_link(url, title)


def test_file_names() -> None:
    """Quotes, backslashes and control characters are replaced; .exe is refused."""
    assert check_file_name('a"b\\c\r\nd.pdf') == "a_b_c__d.pdf"
    assert check_file_name("résumé.pdf") == "résumé.pdf"
    with pytest.raises(InvalidAttachment, match=r"\.exe"):
        check_file_name("setup.EXE")
    with pytest.raises(InvalidAttachment, match="name"):
        check_file_name("  ")


# -- framing -----------------------------------------------------------------------------------


def test_path_and_list_params() -> None:
    """The version is configurable; list asks for the fields v8 requires, 200 per page."""
    assert attachments_path("v8", "Leads", "1", "2") == "/crm/v8/Leads/1/Attachments/2"
    assert attachments_path("v7", "Leads", "1") == "/crm/v7/Leads/1/Attachments"
    params = list_params()
    assert params["per_page"] == "200" and params["page"] == "1"
    assert {"id", "File_Name", "Size", "Created_Time"} <= set(params["fields"].split(","))
    assert list_params("tok")["page_token"] == "tok"


def test_file_part_frames_a_parseable_body() -> None:
    """Head + content + tail is a multipart body a standard parser reads back exactly."""
    content = b"\x00\r\n--not-the-boundary\r\n" * 100
    part = file_part("b0undary", "résumé.pdf", len(content))
    whole = part.head + content + part.tail
    assert part.content_length == len(whole)
    assert part.content_type == "multipart/form-data; boundary=b0undary"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {part.content_type}\r\n\r\n".encode() + whole
    )
    (file,) = message.iter_parts()
    assert file.get_param("name", header="content-disposition") == "file"
    assert file.get_content_type() == "application/pdf"
    assert file.get_payload(decode=True) == content


def test_form_fields() -> None:
    """A link goes as multipart form fields, as Zoho's documentation sends it."""
    raw = form_fields("xyz", {"attachmentUrl": "https://e.com/a?b=c&d", "title": "T"})
    assert b'name="attachmentUrl"\r\n\r\nhttps://e.com/a?b=c&d\r\n' in raw
    assert raw.endswith(b"--xyz--\r\n")
    with pytest.raises(ValueError, match="boundary"):
        form_fields("bad boundary\r\n", {})


# -- answers -----------------------------------------------------------------------------------


UPLOADED = {
    "data": [
        {
            "code": "SUCCESS",
            "details": {
                "id": "5725767000000512001",
                "Created_Time": "2026-11-28T10:00:00+05:30",
                "Modified_Time": "2026-11-28T10:00:00+05:30",
                "Created_By": {"id": "1", "name": "Patch Bay"},
            },
            "message": "attachment uploaded successfully",
            "status": "success",
        }
    ]
}


def test_parse_success_and_created() -> None:
    """The code decides; the attachment gets our name and size and Zoho's id and time."""
    details = parse_success(200, body(UPLOADED))
    attachment = created_attachment(details, "a.pdf", 10)
    assert attachment.id == "5725767000000512001"
    assert (attachment.file_name, attachment.size) == ("a.pdf", 10)
    assert attachment.created_time == datetime(2026, 11, 28, 4, 30, tzinfo=UTC)
    assert attachment.raw["Created_By"]["name"] == "Patch Bay"
    hash(attachment)  # frozen and hashable, raw excluded


def test_parse_success_with_an_item_error_in_a_2xx() -> None:
    """A per-item error inside HTTP 200/207 is raised as the error it names."""
    item = {"code": "INVALID_DATA", "details": {"resource_path_index": 1}, "status": "error"}
    with pytest.raises(ZohoNotFound):
        parse_success(207, body({"data": [item]}))
    with pytest.raises(ZohoUnavailable):
        parse_success(200, b"<html>")


def test_parse_page() -> None:
    """Records become Attachments; more_records gives the next page or page token."""
    records = [
        {
            "id": "1",
            "File_Name": "a.pdf",
            "Size": "10",
            "Created_Time": "2026-11-28T10:00:00+00:00",
            "$type": "File",
        },
        {
            "id": "2",
            "File_Name": "Example",
            "$link_url": "https://example.com",
            "$type": "Link URL",
            "Created_Time": "2026-11-28T10:00:01+00:00",
        },
    ]
    page = parse_page(200, body({"data": records, "info": {"more_records": False}}), 1)
    first, second = page.attachments
    assert (first.size, first.is_link, second.link_url, second.size) == (
        10,
        False,
        "https://example.com",
        None,
    )
    assert page.next_page is None and page.next_token is None
    more = parse_page(200, body({"data": records, "info": {"more_records": True}}), 3)
    assert more.next_page == 4
    tokened = body({"data": records, "info": {"more_records": True, "next_page_token": "t"}})
    assert parse_page(200, tokened, 1).next_token == "t"
    assert parse_page(204, b"", 1).attachments == ()


def _attachment(aid: str, name: str, size: int | None, at: float, link: str | None = None) -> Any:
    return Attachment(aid, name, size, datetime.fromtimestamp(at, UTC), link)


def test_find_upload_matches_name_size_and_time() -> None:
    """Same name and size, created no earlier than the first attempt (to the second)."""
    listed = [
        _attachment("1", "a.pdf", 10, 1000),  # older: someone else's same file
        _attachment("2", "a.pdf", 11, 2000),
        _attachment("3", "b.pdf", 10, 2000),
        _attachment("4", "a.pdf", 10, 2000),
        _attachment("5", "a.pdf", 10, 2001),
    ]
    found = find_upload(listed, 2000.7, file_name="a.pdf", size=10)
    assert found is not None and found.id == "4"
    assert find_upload(listed, 2002, file_name="a.pdf", size=10) is None
    late = find_upload(listed, 2030, file_name="a.pdf", size=10, skew=30)
    assert late is not None and late.id == "4"


def test_find_upload_of_a_link() -> None:
    """A link matches by URL (and title when one was given)."""
    listed = [
        _attachment("1", "Page title", None, 2000, "https://e.com/x"),
        _attachment("2", "Mine", None, 2000, "https://e.com/y"),
    ]
    found = find_upload(listed, 2000, file_name=None, link_url="https://e.com/x")
    assert found is not None and found.id == "1"
    assert find_upload(listed, 2000, file_name="Other", link_url="https://e.com/y") is None


@pytest.mark.parametrize(
    ("status", "raw", "error"),
    [
        (400, error_body("INVALID_MODULE", resource_path_index=0), ZohoInvalidRequest),
        (400, error_body("INVALID_DATA", resource_path_index=1), ZohoNotFound),
        (404, error_body("INVALID_DATA"), ZohoNotFound),
        (400, error_body("INVALID_DATA", api_name="attachmentUrl"), ZohoInvalidRequest),
        (400, error_body("REQUIRED_PARAM_MISSING", param="fields"), ZohoInvalidRequest),
        (404, error_body("INVALID_URL_PATTERN"), ZohoInvalidRequest),
        (413, error_body("FILE_SIZE_MORE_THAN_ALLOWED_SIZE"), ZohoFileTooLarge),
        (413, error_body("BODY_SIZE_REACHED"), ZohoFileTooLarge),
        (403, error_body("NO_PERMISSION"), ZohoAccessDenied),
        (401, error_body("OAUTH_SCOPE_MISMATCH"), ZohoAccessDenied),
        (401, error_body("INVALID_TOKEN"), ZohoAccessDenied),
        (429, error_body("TOO_MANY_REQUESTS"), ZohoRateLimited),
        (429, error_body("RATE_LIMIT_EXCEEDED"), ZohoRateLimited),
        (500, error_body("INTERNAL_ERROR"), ZohoUnavailable),
        (503, b"<html>maintenance</html>", ZohoUnavailable),
        (418, error_body("SOMETHING_NEW"), ZohoApiError),
    ],
)
def test_error_table(status: int, raw: bytes, error: type[ZohoError]) -> None:
    """Status first (429, 5xx), then Zoho's code, to the error class of the tree."""
    got = classify(status, raw)
    assert type(got) is error
    if isinstance(got, ZohoApiError):
        assert got.http_status == status


def test_error_statuses() -> None:
    """What the gateway answers for each: the caller's fault 4xx, Zoho's or ours 5xx."""
    assert (ZohoNotFound.status, ZohoFileTooLarge.status, ZohoInvalidRequest.status) == (
        404,
        413,
        400,
    )
    assert (ZohoAccessDenied.status, ZohoUncertain.status) == (502, 503)
