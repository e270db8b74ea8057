"""The push sender's errors, part of Patchbay's one error tree.

Only failures of the *caller* or of the *whole sender* are raised. What happens to one device
(a dead token, an exhausted retry budget, a refused credential) is an outcome in that device's
``Result``, never an exception, so that one bad token cannot abort a send to a million others.

    PatchbayError
    ├── RequestError (400)
    │   └── InvalidMessage          a message FCM would refuse; ``field`` names the wire path
    └── PushError (502)             FCM or its token endpoint failed the sender as a whole
        ├── PushAuthError (502)     the service account was refused: fix the credentials
        └── PushUnavailable (503)   the token endpoint could not be reached: try again later

``InvalidMessage`` is a ``RequestError`` so that the gateway's ``/v1/push`` renders it as a 400
with the field in the message, exactly as it renders any other bad request.
"""

from __future__ import annotations

from typing import Any

from patchbay.errors import PatchbayError, RequestError


class InvalidMessage(RequestError):
    """A message FCM would refuse; the text starts with the field's wire path.

    Example: ``message.data.count: values must be strings, got int``.
    """

    code = "invalid_message"

    def __init__(self, field: str, problem: str, **detail: Any) -> None:
        super().__init__(f"{field}: {problem}", field=field, **detail)
        self.field = field
        self.problem = problem


class PushError(PatchbayError):
    """FCM, or Google's token endpoint, failed the sender as a whole."""

    code = "push"
    status = 502


class PushAuthError(PushError):
    """The service account was refused (``invalid_grant``, a revoked key, a wrong file)."""

    code = "push_auth"


class PushUnavailable(PushError):
    """The token endpoint could not be reached or failed; retrying later may help."""

    code = "push_unavailable"
    status = 503
