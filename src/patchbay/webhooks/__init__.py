"""Webhooks in: verified, stored before the 2xx, dispatched to decorated handlers.

What a handlers module needs::

    from patchbay.webhooks import Context, Fail, Retry, Router

    router = Router()

    @router.on("pull_request.opened")
    async def greet(ctx: Context) -> None: ...
"""

from patchbay.jobs.model import Fail, Retry
from patchbay.webhooks.router import Context, Router

__all__ = ["Context", "Fail", "Retry", "Router"]
