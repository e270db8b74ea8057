"""DBSlayer's ``/stats``, ``/stats/log`` and ``/stats/error``, counted for the whole server.

``/stats`` keeps beta-18's exact keys: ``hits[i]`` counts the responses completed in the bucket
that starts at ``slices[i]``; buckets are ``width`` seconds wide, ``count`` are kept, oldest
first, and the current bucket is not shown (a fresh server answers ``[]`` for both). The logs
are the last 100 entries.

With ``--workers N`` every worker is a process of its own, yet the server must count as one. The
counters therefore live in a memory-mapped file that every worker maps: each worker claims a slot
(an exclusive ``flock`` on the slot's lock file, held while it lives, so a restarted worker takes a free slot and
carries on its counts) and is the only writer of that slot, so the hot path takes no lock; a
reader sums the slots and merges their rings by time. A torn log entry (read while being
written) fails to decode and is skipped. Without a file (tests, one process) the mapping is
anonymous memory. The clock is injected.

Each slot also holds its worker's latest *snapshot*: the JSON of its own ``/v1/stats`` counters,
which it publishes every second, so that the worker answering ``/v1/stats`` can add up the
others' (``rollup.py``). A snapshot is written under a sequence number that is odd while it is
being written (a seqlock); a reader that sees it change reads again. Only slots whose lock is
still held count, so a dead worker's last snapshot is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

RING: Final = 100
ENTRY: Final = 1024  # bytes per log entry slot; longer request lines are cut
SLOTS: Final = 64  # workers one file can count
_HEADER = struct.Struct("<8sQ")  # magic, start time
_COUNTERS = struct.Struct("<QQQ")  # total requests, log writes, error writes
_BUCKET = struct.Struct("<QQ")  # bucket start, hits
_ENTRY_HEAD = struct.Struct("<QH")  # time in ns (0: empty), length
_SNAPSHOT_HEAD = struct.Struct("<QQQ")  # sequence (odd: being written), time in ns, length
SNAPSHOT: Final = 64 * 1024  # bytes per worker snapshot, header included
MAGIC: Final = b"PBSTATS1"


class Stats:
    """The server's DBSlayer counters, one writer slot per process."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        width: int = 60,
        count: int = 1440,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.width = width
        self.count = count
        self.clock = clock
        self._slot_size = _COUNTERS.size + count * _BUCKET.size + 2 * RING * ENTRY + SNAPSHOT
        size = _HEADER.size + SLOTS * self._slot_size
        self._lock_fd: int | None = None
        self._slots_dir: Path | None = None
        if path is None:
            self._map = mmap.mmap(-1, size)
            _HEADER.pack_into(self._map, 0, MAGIC, int(clock()))
            self._slot = 0
        else:
            self._map = _open(Path(path), size, int(clock()))
            self._slots_dir = Path(str(path) + ".slots")
            self._lock_fd, self._slot = _claim(self._slots_dir)
        self.start = _HEADER.unpack_from(self._map, 0)[1]
        self._base = _HEADER.size + self._slot * self._slot_size
        # A slot taken over from a dead worker still holds that worker's last snapshot.
        _SNAPSHOT_HEAD.pack_into(self._map, self._snapshot_at(self._slot), 0, 0, 0)

    def close(self) -> None:
        """Withdraw this process's snapshot and release the slot."""
        _SNAPSHOT_HEAD.pack_into(self._map, self._snapshot_at(self._slot), 0, 0, 0)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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
        now_ns = time.time_ns() if self.clock is time.time else int(self.clock() * 1e9)
        now = now_ns // 1_000_000_000
        base = self._base
        total, logs, errors = _COUNTERS.unpack_from(self._map, base)
        bucket = now - now % self.width
        at = base + _COUNTERS.size + (bucket // self.width % self.count) * _BUCKET.size
        start, hits = _BUCKET.unpack_from(self._map, at)
        _BUCKET.pack_into(self._map, at, bucket, hits + 1 if start == bucket else 1)
        request = request.replace("\r", " ").replace("\n", " ")
        entry = {
            "bytes_sent": bytes_sent,
            "client_ip": client_ip,
            "request": request,
            "request_time": now,
            "response_code": status,
            "time_toservice": micros,
        }
        self._write_entry(0, logs, now_ns, entry)
        if error is not None:
            self._write_entry(
                1,
                errors,
                now_ns,
                {
                    "client_ip": client_ip,
                    "error": "ERROR: " + error.replace("\r", " ").replace("\n", " "),
                    "request": request,
                    "request_time": now,
                },
            )
            errors += 1
        _COUNTERS.pack_into(self._map, base, total + 1, logs + 1, errors)

    def _write_entry(self, ring: int, n: int, now_ns: int, entry: dict[str, Any]) -> None:
        body = orjson.dumps(entry)
        room = ENTRY - _ENTRY_HEAD.size
        if len(body) > room:
            cut = room - 200
            entry["request"] = entry["request"].encode()[:cut].decode("utf-8", "ignore")
            if "error" in entry:
                entry["error"] = entry["error"][:100]
            body = orjson.dumps(entry)[:room]
        at = self._ring_at(self._slot, ring) + (n % RING) * ENTRY
        _ENTRY_HEAD.pack_into(self._map, at, 0, 0)  # invalid while being written
        self._map[at + _ENTRY_HEAD.size : at + _ENTRY_HEAD.size + len(body)] = body
        _ENTRY_HEAD.pack_into(self._map, at, now_ns, len(body))

    def _ring_at(self, slot: int, ring: int) -> int:
        return (
            _HEADER.size
            + slot * self._slot_size
            + _COUNTERS.size
            + self.count * _BUCKET.size
            + ring * RING * ENTRY
        )

    def _snapshot_at(self, slot: int) -> int:
        return _HEADER.size + (slot + 1) * self._slot_size - SNAPSHOT

    def publish(self, body: bytes) -> None:
        """Make ``body`` (JSON) this process's snapshot; too large a body raises ValueError."""
        if len(body) > SNAPSHOT - _SNAPSHOT_HEAD.size:
            raise ValueError(f"a stats snapshot of {len(body)} bytes does not fit")
        at = self._snapshot_at(self._slot)
        sequence = _SNAPSHOT_HEAD.unpack_from(self._map, at)[0] | 1  # odd from here on
        _SNAPSHOT_HEAD.pack_into(self._map, at, sequence, 0, 0)
        start = at + _SNAPSHOT_HEAD.size
        self._map[start : start + len(body)] = body
        _SNAPSHOT_HEAD.pack_into(self._map, at, sequence + 1, int(self.clock() * 1e9), len(body))

    def snapshots(self) -> list[tuple[float, Any]]:
        """The other live processes' snapshots, each with its age in seconds."""
        found: list[tuple[float, Any]] = []
        for slot in range(SLOTS):
            if slot == self._slot:
                continue
            at = self._snapshot_at(slot)
            if not _SNAPSHOT_HEAD.unpack_from(self._map, at)[1] or not self._alive(slot):
                continue
            for _ in range(3):  # a snapshot being rewritten is read again
                sequence, stamp, length = _SNAPSHOT_HEAD.unpack_from(self._map, at)
                if sequence % 2 or not stamp:
                    continue
                raw = self._map[at + _SNAPSHOT_HEAD.size : at + _SNAPSHOT_HEAD.size + length]
                if _SNAPSHOT_HEAD.unpack_from(self._map, at)[0] != sequence:
                    continue
                with contextlib.suppress(orjson.JSONDecodeError):
                    found.append((max(0.0, self.clock() - stamp / 1e9), orjson.loads(raw)))
                break
        return found

    def _alive(self, slot: int) -> bool:
        """Whether the slot's process still holds its lock (it does not when it died)."""
        if self._slots_dir is None:
            return False
        try:
            fd = os.open(self._slots_dir / f"{slot}.lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the lock, if we got it
        return False

    def _used_slots(self) -> list[int]:
        return [
            s
            for s in range(SLOTS)
            if _COUNTERS.unpack_from(self._map, _HEADER.size + s * self._slot_size)[0]
        ]

    @property
    def total_requests(self) -> int:
        """Responses completed by every process of the server."""
        return sum(
            _COUNTERS.unpack_from(self._map, _HEADER.size + s * self._slot_size)[0]
            for s in self._used_slots()
        )

    @property
    def log(self) -> list[dict[str, Any]]:
        """The last 100 responses of the whole server, oldest first."""
        return self._entries(0)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The last 100 errors of the whole server, oldest first."""
        return self._entries(1)

    def _entries(self, ring: int) -> list[dict[str, Any]]:
        found: list[tuple[int, dict[str, Any]]] = []
        for slot in self._used_slots():
            at = self._ring_at(slot, ring)
            for i in range(RING):
                where = at + i * ENTRY
                stamp, length = _ENTRY_HEAD.unpack_from(self._map, where)
                if not stamp:
                    continue
                raw = self._map[where + _ENTRY_HEAD.size : where + _ENTRY_HEAD.size + length]
                try:
                    found.append((stamp, orjson.loads(raw)))
                except orjson.JSONDecodeError:
                    continue
        found.sort(key=lambda item: item[0])
        return [entry for _, entry in found[-RING:]]

    def summary(self) -> dict[str, Any]:
        """The ``/stats`` object."""
        now = int(self.clock())
        current = now - now % self.width
        first = self.start - self.start % self.width
        slices = list(range(max(first, current - self.count * self.width), current, self.width))
        hits = dict.fromkeys(slices, 0)
        view = memoryview(self._map)
        for slot in self._used_slots():
            at = _HEADER.size + slot * self._slot_size + _COUNTERS.size
            for start, n in _BUCKET.iter_unpack(view[at : at + self.count * _BUCKET.size]):
                if start in hits:
                    hits[start] += n
        view.release()
        return {
            "current_time": now,
            "hits": [hits[s] for s in slices],
            "slices": slices,
            "start_time": self.start,
            "total_requests": self.total_requests,
        }


def _open(path: Path, size: int, now: int) -> mmap.mmap:
    """Map the server's stats file, creating it (with the start time) if it is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            mapped = mmap.mmap(fd, size)
            if mapped[: len(MAGIC)] != MAGIC:
                _HEADER.pack_into(mapped, 0, MAGIC, now)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return mapped


def _claim(folder: Path) -> tuple[int, int]:
    """Take the first free slot: an exclusive ``flock`` on its lock file, held while we live."""
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(SLOTS):
        fd = os.open(folder / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return fd, slot
    raise RuntimeError(f"more than {SLOTS} processes share {folder}")


class Histogram:
    """Latencies in power-of-two microsecond buckets: cheap to record, percentiles within 2x."""

    BUCKETS: Final = 26  # 1 µs .. 2**25 µs (33 s); slower lands in the last bucket

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.total = 0

    @classmethod
    def of(cls, counts: list[int]) -> Histogram:
        """The histogram with these bucket counts (as ``summary()["counts"]`` gives them)."""
        histogram = cls()
        used = counts[: cls.BUCKETS]
        histogram.counts[: len(used)] = used
        histogram.total = sum(used)
        return histogram

    def record(self, seconds: float) -> None:
        """Count one latency."""
        micros = int(seconds * 1e6)
        self.counts[min(micros.bit_length(), self.BUCKETS - 1)] += 1
        self.total += 1

    def percentile(self, q: float) -> float | None:
        """The upper bound, in milliseconds, of the bucket holding quantile ``q`` (0-1)."""
        if not self.total:
            return None
        rank = q * self.total
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return (1 << i) / 1000
        return (1 << (self.BUCKETS - 1)) / 1000

    def summary(self) -> dict[str, Any]:
        """p50, p90, p99 and p99.9 in ms (upper bounds of their buckets), and the counts.

        ``counts[i]`` is how many latencies fell under ``2**i`` µs (and at or over half that),
        trailing empty buckets left out: enough to add histograms up (``rollup.py``).
        """
        used = max((i + 1 for i, n in enumerate(self.counts) if n), default=0)
        return {
            "p50_ms": self.percentile(0.5),
            "p90_ms": self.percentile(0.9),
            "p99_ms": self.percentile(0.99),
            "p999_ms": self.percentile(0.999),
            "counts": self.counts[:used],
        }
