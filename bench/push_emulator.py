#!/usr/bin/env python3
"""``patchbay emulate fcm`` with one read-only route added, for counting what a client delivered.

Runs the very same click command (same ``FcmEmulator``, same hypercorn server with HTTP/1.1 and
h2c on one port, same options: ``--latency``, ``--write-service-account`` ...), except that the
app handed to the server is wrapped so that ``GET /__bench/stats`` answers, from the emulator's
own state::

    {"ledger": accepted messages, "distinct": distinct targets among them,
     "targets_sha256": sha256 of the sorted distinct targets (one per line),
     "send_requests", "token_requests", "tokens_issued", "max_in_flight", "in_flight",
     "http_versions": {"send HTTP/2": sends over HTTP/2, "other HTTP/1.1": ...}}

Targets starting with ``warmup-`` (the clients' unmeasured first sends) are counted apart
(``warmup``) and left out of ``distinct`` and the hash, so that the hash can be compared with the
token file's. Every other path goes to the emulator unchanged. The emulator command itself has
no such route (see docs/benchmarks.md, "Push out").

    .venv/bin/python bench/push_emulator.py -p 0 --latency 0.02 --write-service-account sa.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from patchbay.emulators import commands
from patchbay.emulators.fcm import FcmEmulator
from patchbay.emulators.serve import run

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

STATS_PATH = "/__bench/stats"
WARMUP = "warmup-"


def stats(emulator: FcmEmulator) -> dict[str, Any]:
    targets = {a.target for a in emulator.ledger if not a.target.startswith(WARMUP)}
    warmup = sum(1 for a in emulator.ledger if a.target.startswith(WARMUP))
    digest = hashlib.sha256()
    for target in sorted(targets):
        digest.update(target.encode() + b"\n")
    return {
        "ledger": len(emulator.ledger) - warmup,
        "warmup": warmup,
        "distinct": len(targets),
        "targets_sha256": digest.hexdigest(),
        "send_requests": emulator.send_requests,
        "token_requests": emulator.token_requests,
        "tokens_issued": emulator.tokens_issued,
        "max_in_flight": emulator.max_in_flight,
        "in_flight": emulator.in_flight,
    }


class WithStats:
    """The emulator, plus ``GET /__bench/stats``."""

    def __init__(self, emulator: FcmEmulator) -> None:
        self.emulator = emulator
        self.http_versions: Counter[str] = Counter()  # of every request to the emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == STATS_PATH:
            doc = {**stats(self.emulator), "http_versions": dict(self.http_versions)}
            body = json.dumps(doc).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http":
            kind = "send" if scope["path"].endswith("/messages:send") else "other"
            self.http_versions[f"{kind} HTTP/{scope['http_version']}"] += 1
        await self.emulator(scope, receive, send)


def run_with_stats(app: Any, *args: Any, **kwargs: Any) -> None:
    run(WithStats(app), *args, **kwargs)


def main() -> None:
    commands.run = run_with_stats  # the command's only call to the server
    commands.emulate.main(["fcm", *sys.argv[1:]], prog_name="push_emulator.py")


if __name__ == "__main__":
    main()
