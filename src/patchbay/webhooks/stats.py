"""Webhook counters of one worker process: per source and event, rejections by reason, latencies.

What is durable (how many runs are pending, succeeded or dead) is counted from the job store by
``hooks stats``; these are the rates that only the receiving process sees.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from patchbay.stats import Histogram

OUTCOMES = ("processed", "failed", "dead")


class HookStats:
    """Counters for ``/v1/stats``; all in memory, cheap to bump."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()  # (source, event, counter)
        self.rejections: Counter[tuple[str, str]] = Counter()  # (source, reason)
        self.ack_latency = Histogram()
        self.queue_lag = Histogram()
        self.handler_seconds = Histogram()

    def received(self, source: str, event: str, *, duplicate: bool) -> None:
        """Count a delivery that was stored, or recognised as a duplicate."""
        self.counts[source, event, "received"] += 1
        if duplicate:
            self.counts[source, event, "duplicate"] += 1

    def rejected(self, source: str, reason: str) -> None:
        """Count a delivery refused before it was stored."""
        self.rejections[source, reason] += 1

    def outcome(self, source: str, event: str, outcome: str, seconds: float) -> None:
        """Count one handler run's end: ``succeeded``, ``retry`` or ``dead``."""
        name = {"succeeded": "processed", "retry": "failed"}.get(outcome, outcome)
        self.counts[source, event, name] += 1
        if outcome == "dead":  # a dead run failed its last attempt, too
            self.counts[source, event, "failed"] += 1
        self.handler_seconds.record(seconds)

    def summary(self) -> dict[str, Any]:
        """Nested counters: ``sources[source][event][counter]``, plus latencies in ms."""
        sources: dict[str, Any] = {}
        for (source, event, counter), n in sorted(self.counts.items()):
            sources.setdefault(source, {}).setdefault("events", {}).setdefault(event, {})[
                counter
            ] = n
        for (source, reason), n in sorted(self.rejections.items()):
            sources.setdefault(source, {}).setdefault("rejected", {})[reason] = n
        return {
            "sources": sources,
            "ack_latency": self.ack_latency.summary(),
            "queue_lag": self.queue_lag.summary(),
            "handler_duration": self.handler_seconds.summary(),
        }
