"""DBSlayer's /stats counters and logs with an injected clock."""

from __future__ import annotations

from patchbay.stats import Stats


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(stats: Stats, error: str | None = None) -> None:
    stats.record(
        client_ip="127.0.0.1",
        request="GET /db?x HTTP/1.0",
        status=200,
        bytes_sent=10,
        micros=5,
        error=error,
    )


def test_fresh_server_shows_empty_buckets() -> None:
    """The current bucket is not shown, so a fresh server has empty hits and slices."""
    stats = Stats(clock=Clock(1_000_020))
    record(stats)
    summary = stats.summary()
    assert summary["hits"] == [] and summary["slices"] == []
    assert summary["total_requests"] == 1
    assert list(summary) == sorted(summary)


def test_completed_buckets_count_hits() -> None:
    """Each completed minute shows its hits, oldest first, empty minutes as 0."""
    clock = Clock(1_000_020)
    stats = Stats(clock=clock)
    record(stats)
    record(stats)
    clock.now += 120
    record(stats)
    clock.now += 60
    summary = stats.summary()
    assert summary["hits"] == [2, 0, 1]
    assert summary["slices"][1] - summary["slices"][0] == 60


def test_log_and_error_rings_keep_the_last_hundred() -> None:
    """Both logs are rings of 100; errors carry DBSlayer's 'ERROR: ' prefix; no CR/LF."""
    stats = Stats(clock=Clock(1_000_000))
    for i in range(150):
        record(stats, error=f"bad\n{i}" if i % 2 else None)
    assert len(stats.log) == 100
    assert len(stats.errors) == 75
    assert stats.errors[-1]["error"] == "ERROR: bad 149"
    assert set(stats.log[0]) == {
        "bytes_sent",
        "client_ip",
        "request",
        "request_time",
        "response_code",
        "time_toservice",
    }
