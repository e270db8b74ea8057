"""Patchbay's one error tree.

Every failure Patchbay reports on purpose is a ``PatchbayError``. Each class carries a stable
machine-readable ``code`` and the HTTP ``status`` it maps to outside the DBSlayer endpoints, where
it is rendered as ``{"error": {"code", "message", "detail"}}``. The DBSlayer endpoints keep their
own convention (HTTP 200 with ``ERROR``) and use ``dbslayer_message`` instead.

    PatchbayError
    ├── ConfigError                 bad settings file, variable or flag (never reaches HTTP)
    ├── RequestError (400)          the client's request cannot be understood
    │   ├── PayloadTooLarge (413)   the request is over the size limit
    │   ├── UnsupportedMedia (415)  a body in a content type the endpoint does not take
    │   └── MalformedSignature      a signature header that cannot be parsed (400)
    ├── Unauthorized (401)          a bearer token is required and was not given
    │   └── SignatureRejected       a webhook whose signature, token or timestamp fails (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── MethodNotAllowed (405)
    ├── StoreUnavailable (503)      the durable store cannot commit: try again later
    └── BackendError (503)          a database could not serve the request
        ├── BackendUnavailable      no server of the group accepted a connection
        ├── PoolExhausted           no pooled connection came free within the acquire timeout
        └── QueryTimeout (504)      the query ran past its timeout and was cancelled
"""

from __future__ import annotations

from typing import Any, ClassVar


class PatchbayError(Exception):
    """The root of every error Patchbay raises on purpose."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        """Return the one JSON error shape used outside the DBSlayer endpoints."""
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail}}


class ConfigError(PatchbayError):
    """A setting is missing or invalid; the message names the key."""

    code = "config"


class RequestError(PatchbayError):
    """The client's request cannot be understood."""

    code = "bad_request"
    status = 400


class PayloadTooLarge(RequestError):
    """The request is larger than the configured limit."""

    code = "payload_too_large"
    status = 413


class UnsupportedMedia(RequestError):
    """The body's content type is not one the endpoint takes."""

    code = "unsupported_media_type"
    status = 415


class MalformedSignature(RequestError):
    """A signature or timestamp header is present but cannot be parsed."""

    code = "malformed_signature"


class NotFound(PatchbayError):
    """No such resource."""

    code = "not_found"
    status = 404


class Unauthorized(PatchbayError):
    """A bearer token is required and was missing or wrong."""

    code = "unauthorized"
    status = 401


class SignatureRejected(Unauthorized):
    """A webhook failed verification; ``detail["reason"]`` says why, never with secrets."""

    code = "signature_rejected"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason.replace("_", " "), reason=reason)
        self.reason = reason


class MethodNotAllowed(PatchbayError):
    """The endpoint does not take this HTTP method."""

    code = "method_not_allowed"
    status = 405


class StoreUnavailable(PatchbayError):
    """The durable store cannot commit right now; the caller should retry later."""

    code = "store_unavailable"
    status = 503


class Forbidden(PatchbayError):
    """The caller may not do this."""

    code = "forbidden"
    status = 403


class BackendError(PatchbayError):
    """A database could not serve the request."""

    code = "backend"
    status = 503


class BackendUnavailable(BackendError):
    """No server of the database's group accepted a connection."""

    code = "backend_unavailable"


class PoolExhausted(BackendError):
    """No pooled connection came free within the acquire timeout."""

    code = "pool_exhausted"


class QueryTimeout(BackendError):
    """The query ran past its timeout; it was cancelled on the server."""

    code = "query_timeout"
    status = 504
