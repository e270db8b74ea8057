"""The request and reply values: a body read back in pieces, from memory or from its spool."""

from __future__ import annotations

import io

from patchbay.http import Request


def test_chunks_of_a_body_in_memory() -> None:
    """A body kept in memory comes back in pieces of the size asked, and whole."""
    request = Request("POST", "/v1/crm/x", b"", {}, b"abcdefg")
    assert list(request.chunks(3)) == [b"abc", b"def", b"g"]
    assert request.read() == b"abcdefg"
    assert list(Request("POST", "/", b"", {}, b"").chunks()) == []


def test_chunks_of_a_spooled_body_start_from_its_beginning_each_time() -> None:
    """A spooled body is read from its start, however often it is read."""
    spool = io.BytesIO(b"abcdefg")
    spool.seek(5)
    request = Request("POST", "/v1/crm/x", b"", {}, b"", spool=spool)
    assert list(request.chunks(4)) == [b"abcd", b"efg"]
    assert request.read() == b"abcdefg"
