"""Rolling the workers' /v1/stats counters up into one server's."""

from __future__ import annotations

from patchbay.rollup import merge
from patchbay.stats import Histogram


def _latency(*seconds: float) -> dict[str, object]:
    histogram = Histogram()
    for s in seconds:
        histogram.record(s)
    return histogram.summary()


def test_counts_add_up_and_levels_take_the_highest() -> None:
    """Requests add up; uptime, consecutive failures and depth are the highest worker's."""
    a = {"requests": 3, "uptime_seconds": 10.5, "servers": [{"consecutive_failures": 2}]}
    b = {"requests": 4, "uptime_seconds": 9.0, "servers": [{"consecutive_failures": 0}]}
    assert merge([a, b]) == {
        "requests": 7,
        "uptime_seconds": 10.5,
        "servers": [{"consecutive_failures": 2}],
    }


def test_histograms_merge_by_bucket_and_percentiles_are_recomputed() -> None:
    """p99 of two workers' latencies is that of their union, not a sum of p99s."""
    fast = _latency(*[0.0003] * 98)
    slow = _latency(0.02, 0.02)
    merged = merge([fast, slow])
    union = _latency(*[0.0003] * 98, 0.02, 0.02)
    assert merged == union
    assert merged["p50_ms"] == fast["p50_ms"]
    assert merged["p99_ms"] == slow["p99_ms"]


def test_servers_merge_by_position_and_up_needs_every_worker() -> None:
    """A server is up when every worker sees it up; its pool adds up; text is the first's."""
    a = {"servers": [{"url": "a", "up": True, "pool": {"in_use": 1}, "last_error": None}]}
    b = {"servers": [{"url": "a", "up": False, "pool": {"in_use": 2}, "last_error": "reset"}]}
    assert merge([a, b]) == {
        "servers": [{"url": "a", "up": False, "pool": {"in_use": 3}, "last_error": "reset"}]
    }
    assert merge([a, a])["servers"][0]["up"] is True


def test_keys_one_worker_lacks_are_kept() -> None:
    """An event only one worker has seen still shows, with that worker's count."""
    a = {"sources": {"gh": {"events": {"push": {"received": 2}}}}}
    b = {"sources": {"gh": {"events": {"ping": {"received": 1}}}}}
    assert merge([a, b]) == {
        "sources": {"gh": {"events": {"push": {"received": 2}, "ping": {"received": 1}}}}
    }


def test_one_worker_is_its_own_roll_up() -> None:
    """With one worker the merged view is that worker's counters, unchanged."""
    doc = {"requests": 1, "latency": _latency(0.001), "pipeline": None, "kind": "mysql"}
    assert merge([doc]) == doc
