"""DBSlayer's /stats counters and logs, shared by every process, with an injected clock."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from patchbay.stats import Stats


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(stats: Stats, error: str | None = None, request: str = "GET /db?x HTTP/1.0") -> None:
    stats.record(
        client_ip="127.0.0.1",
        request=request,
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


def test_old_buckets_are_reused_after_a_full_turn() -> None:
    """A bucket slot reused after count buckets counts afresh, and only count are shown."""
    clock = Clock(1_000_020)
    stats = Stats(clock=clock, count=3)
    record(stats)
    clock.now += 180  # same ring position, three buckets later
    record(stats)
    clock.now += 60
    assert stats.summary()["hits"] == [0, 0, 1]


def test_log_and_error_rings_keep_the_last_hundred() -> None:
    """Both logs keep the last 100; errors carry DBSlayer's 'ERROR: ' prefix; no CR/LF."""
    clock = Clock(1_000_000)
    stats = Stats(clock=clock)
    for i in range(150):
        clock.now += 0.001
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


def test_long_requests_are_cut_to_fit() -> None:
    """A request line too long for its log slot is shortened, not lost."""
    stats = Stats(clock=Clock(1_000_000))
    record(stats, error="e" * 5000, request="GET /db?" + "x" * 5000)
    assert stats.log[0]["request"].startswith("GET /db?xxx")
    assert stats.errors[0]["error"].startswith("ERROR: eee")


def _worker(path: str, n: int) -> None:
    stats = Stats(path)
    for _ in range(n):
        record(stats)
    stats.close()


def test_processes_sharing_a_file_count_as_one_server(tmp_path: Path) -> None:
    """Several processes on one stats file: totals and logs cover all of them."""
    path = str(tmp_path / "stats")
    reader = Stats(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(path, 30 + i)) for i in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    assert reader.total_requests == 30 + 31 + 32
    assert len(reader.log) == 93
    later = Stats(path)  # a restarted worker takes a free slot and the counts carry on
    record(later)
    assert reader.total_requests == 94
    assert reader.start == later.start


def _publish_and_exit(path: str) -> None:
    Stats(path).publish(b'{"requests": 5}')  # dies without close(): its lock goes with it


def test_snapshots_come_from_live_slots_only(tmp_path: Path) -> None:
    """Snapshots of other live processes are read; a closed or dead one's are not."""
    clock = Clock(1000.0)
    path = str(tmp_path / "stats")
    me, other, gone = Stats(path, clock=clock), Stats(path, clock=clock), Stats(path, clock=clock)
    me.publish(b'{"requests": 1}')
    other.publish(b'{"requests": 2}')
    other.publish(b'{"requests": 3}')  # the latest wins
    gone.publish(b'{"requests": 4}')
    gone.close()
    process = multiprocessing.get_context("spawn").Process(target=_publish_and_exit, args=(path,))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    later = Stats(path, clock=clock)  # takes over the dead process's slot, publishes nothing yet
    clock.now = 1002.5
    assert me.snapshots() == [(2.5, {"requests": 3})]
    assert other.snapshots() == [(2.5, {"requests": 1})]
    assert later.snapshots() == [(2.5, {"requests": 1}), (2.5, {"requests": 3})]


def test_a_snapshot_being_written_is_not_read(tmp_path: Path) -> None:
    """While a snapshot's sequence number is odd (mid-write), readers skip it."""
    from patchbay.stats import _SNAPSHOT_HEAD

    path = str(tmp_path / "stats")
    me, other = Stats(path), Stats(path)
    other.publish(b'{"requests": 2}')
    at = other._snapshot_at(other._slot)
    sequence, stamp, length = _SNAPSHOT_HEAD.unpack_from(other._map, at)
    _SNAPSHOT_HEAD.pack_into(other._map, at, sequence + 1, stamp, length)
    assert me.snapshots() == []
    _SNAPSHOT_HEAD.pack_into(other._map, at, sequence + 2, stamp, length)
    assert [doc for _, doc in me.snapshots()] == [{"requests": 2}]


def test_a_snapshot_too_large_is_refused() -> None:
    """A snapshot that would not fit its slot raises instead of spilling into the next."""
    from patchbay.stats import SNAPSHOT

    with pytest.raises(ValueError, match="does not fit"):
        Stats().publish(b" " * SNAPSHOT)


def test_one_process_has_no_other_snapshots() -> None:
    """Without a shared file there is no one else to read."""
    stats = Stats()
    stats.publish(b"{}")
    assert stats.snapshots() == []


def test_histogram_of_its_counts_is_the_same_histogram() -> None:
    """``Histogram.of(summary()["counts"])`` rebuilds the histogram, empty buckets left out."""
    from patchbay.stats import Histogram

    histogram = Histogram()
    for seconds in (0.000001, 0.0003, 0.0003, 0.02):
        histogram.record(seconds)
    counts = histogram.summary()["counts"]
    assert len(counts) == 16 and sum(counts) == 4  # 20,000 µs: bucket 15, under 2**15
    assert Histogram.of(counts).summary() == histogram.summary()
    assert Histogram().summary()["counts"] == []


def test_histogram_percentiles_bound_the_true_value() -> None:
    """Percentiles are the upper bound of their power-of-two bucket: within 2x above."""
    from patchbay.stats import Histogram

    histogram = Histogram()
    assert histogram.percentile(0.5) is None
    for _ in range(98):
        histogram.record(0.0003)  # 300 µs
    histogram.record(0.020)
    histogram.record(0.020)
    summary = histogram.summary()
    assert summary["p50_ms"] is not None and 0.3 <= summary["p50_ms"] < 0.6
    assert summary["p99_ms"] is not None and 20 <= summary["p99_ms"] < 40
