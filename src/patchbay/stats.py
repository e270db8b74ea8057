"""DBSlayer's ``/stats``, ``/stats/log`` and ``/stats/error``: per-minute hits and two rings.

``/stats`` keeps beta-18's exact keys: ``hits[i]`` counts the responses completed in the bucket
that starts at ``slices[i]``; buckets are ``width`` seconds wide, ``count`` are kept, oldest
first, and the current bucket is not shown (a fresh server answers ``[]`` for both). The logs
are rings of the last 100 entries. The clock is injected.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RING = 100


@dataclass
class Stats:
    """Counters of one server process."""

    width: int = 60
    count: int = 1440
    clock: Callable[[], float] = time.time
    start: int = 0
    total_requests: int = 0
    buckets: dict[int, int] = field(default_factory=dict)
    log: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=RING)
    )
    errors: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=RING)
    )

    def __post_init__(self) -> None:
        if not self.start:
            self.start = int(self.clock())

    def record(
        self,
        *,
        client_ip: str,
        request: str,
        status: int,
        bytes_sent: int,
        micros: int,
        error: str | None = None,
    ) -> None:
        """Count one completed response; log it, and its error if it carried one."""
        now = int(self.clock())
        self.total_requests += 1
        bucket = now - now % self.width
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        if len(self.buckets) > self.count + 1:
            del self.buckets[min(self.buckets)]
        request = request.replace("\r", " ").replace("\n", " ")
        self.log.append(
            {
                "bytes_sent": bytes_sent,
                "client_ip": client_ip,
                "request": request,
                "request_time": now,
                "response_code": status,
                "time_toservice": micros,
            }
        )
        if error is not None:
            self.errors.append(
                {
                    "client_ip": client_ip,
                    "error": "ERROR: " + error.replace("\r", " ").replace("\n", " "),
                    "request": request,
                    "request_time": now,
                }
            )

    def summary(self) -> dict[str, Any]:
        """The ``/stats`` object."""
        now = int(self.clock())
        current = now - now % self.width
        first = self.start - self.start % self.width
        slices = list(range(max(first, current - self.count * self.width), current, self.width))
        return {
            "current_time": now,
            "hits": [self.buckets.get(s, 0) for s in slices],
            "slices": slices,
            "start_time": self.start,
            "total_requests": self.total_requests,
        }
