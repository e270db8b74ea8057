"""Health state machine and server picker for the servers behind one named database.

A :class:`Balancer` tracks, for a group of N database servers given in configured order, which
servers are up or down, how many consecutive failures each has had, how many requests each has
outstanding and when each down server is next due for a background probe; :meth:`Balancer.pick`
chooses the server for a read or a write from that state, and :func:`retry_allowed` decides
whether a failed request may be moved to another server. The module is pure: it does no I/O,
uses no asyncio and never reads the clock, so every time-dependent call takes ``now`` (seconds,
from any monotonic clock) as an argument and the caller owns the probing and the requests.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

__all__ = ["Balancer", "Policy", "ServerState", "retry_allowed"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Balancing and failover settings for one group of servers.

    ``strategy`` spreads reads by round robin or by fewest outstanding requests; ``writes`` sends
    writes to the first healthy server in configured order (``"first"``) or balances them like
    reads (``"any"``). ``failures_to_down`` consecutive failures mark a server down, after which
    it is probed every ``probe_interval`` seconds until a success brings it back. With
    ``enabled=False`` failover is off: no server is ever marked down, reads rotate over every
    server, writes always go to server 0 and no request is retried elsewhere.
    """

    strategy: Literal["round_robin", "least_outstanding"] = "round_robin"
    writes: Literal["first", "any"] = "first"
    failures_to_down: int = 1
    probe_interval: float = 0.5
    enabled: bool = True

    def __post_init__(self) -> None:
        """Reject settings the state machine cannot honour."""
        if self.strategy not in ("round_robin", "least_outstanding"):
            raise ValueError(f"unknown strategy {self.strategy!r}")
        if self.writes not in ("first", "any"):
            raise ValueError(f"unknown writes mode {self.writes!r}")
        if self.failures_to_down < 1:
            raise ValueError(f"failures_to_down must be >= 1, got {self.failures_to_down}")
        if not self.probe_interval > 0:
            raise ValueError(f"probe_interval must be > 0, got {self.probe_interval}")


@dataclass(frozen=True, slots=True)
class ServerState:
    """Snapshot of one server's health and load, for stats."""

    index: int
    up: bool
    consecutive_failures: int
    outstanding: int
    down_since: float | None


@dataclass(slots=True)
class _Server:
    failures: int = 0
    outstanding: int = 0
    down_since: float | None = None
    next_probe: float | None = None

    @property
    def up(self) -> bool:
        return self.down_since is None


class Balancer:
    """Health state and server choice for a group of ``size`` servers under ``policy``."""

    __slots__ = ("_cursor", "_policy", "_servers")

    def __init__(self, size: int, policy: Policy) -> None:
        if size < 1:
            raise ValueError(f"a server group needs at least one server, got {size}")
        self._policy = policy
        self._servers = [_Server() for _ in range(size)]
        self._cursor = 0

    @property
    def size(self) -> int:
        """Number of servers in the group."""
        return len(self._servers)

    @property
    def policy(self) -> Policy:
        """The policy this balancer follows."""
        return self._policy

    def pick(self, *, write: bool, exclude: Collection[int] = ()) -> int | None:
        """Choose a server for a request, or None when every server is excluded.

        Only servers that are up and not in ``exclude`` are considered. Reads (and writes when
        ``writes="any"``) rotate over them, by round robin or by fewest outstanding requests
        with ties broken by rotation; writes with ``writes="first"`` take the lowest such index.
        When every non-excluded server is down, the one that has been down longest is returned
        as a last-resort try.
        """
        if len(self._servers) == 1 and not exclude:  # the common case, on every request
            return 0
        if not self._policy.enabled:
            if write:
                return None if 0 in exclude else 0
            return self._rotate([i for i in self._scan_order() if i not in exclude])
        allowed = [i for i in range(len(self._servers)) if i not in exclude]
        if not allowed:
            return None
        up = [i for i in allowed if self._servers[i].up]
        if not up:
            return min(allowed, key=self._down_key)
        if write and self._policy.writes == "first":
            return up[0]
        up_set = set(up)
        order = [i for i in self._scan_order() if i in up_set]
        if self._policy.strategy == "least_outstanding":
            least = min(self._servers[i].outstanding for i in order)
            order = [i for i in order if self._servers[i].outstanding == least]
        return self._rotate(order)

    def begin(self, i: int) -> None:
        """Count a request as outstanding on server ``i``."""
        self._server(i).outstanding += 1

    def end(self, i: int) -> None:
        """Count a request on server ``i`` as finished (never goes below zero)."""
        server = self._server(i)
        server.outstanding = max(0, server.outstanding - 1)

    def succeeded(self, i: int, now: float) -> None:
        """Record a success on server ``i``: clear its failures and bring it up if it was down."""
        server = self._server(i)
        server.failures = 0
        server.down_since = None
        server.next_probe = None

    def failed(self, i: int, now: float) -> bool:
        """Record a failure on server ``i``; return True if this call marked it down."""
        server = self._server(i)
        server.failures += 1
        if (
            not self._policy.enabled
            or not server.up
            or server.failures < self._policy.failures_to_down
        ):
            return False
        server.down_since = now
        server.next_probe = now + self._policy.probe_interval
        return True

    def probes_due(self, now: float) -> list[int]:
        """Return the down servers due for a probe and schedule each one's next probe."""
        due: list[int] = []
        for i, server in enumerate(self._servers):
            if server.next_probe is not None and server.next_probe <= now:
                server.next_probe = now + self._policy.probe_interval
                due.append(i)
        return due

    def is_up(self, i: int) -> bool:
        """Return whether server ``i`` is up."""
        return self._server(i).up

    def states(self) -> list[ServerState]:
        """Return a snapshot of every server's state, in configured order."""
        return [
            ServerState(
                index=i,
                up=s.up,
                consecutive_failures=s.failures,
                outstanding=s.outstanding,
                down_since=s.down_since,
            )
            for i, s in enumerate(self._servers)
        ]

    def _server(self, i: int) -> _Server:
        if not 0 <= i < len(self._servers):
            raise IndexError(f"server index {i} out of range 0..{len(self._servers) - 1}")
        return self._servers[i]

    def _scan_order(self) -> list[int]:
        n = len(self._servers)
        return [(self._cursor + k) % n for k in range(n)]

    def _rotate(self, order: list[int]) -> int | None:
        if not order:
            return None
        chosen = order[0]
        self._cursor = (chosen + 1) % len(self._servers)
        return chosen

    def _down_key(self, i: int) -> tuple[float, int]:
        down_since = self._servers[i].down_since
        assert down_since is not None
        return (down_since, i)


def retry_allowed(*, sent: bool, write: bool, policy: Policy) -> bool:
    """Return whether a request that failed on one server may be tried on another.

    A request that never reached the server (connect or acquire failed, ``sent=False``) may
    always move when failover is enabled. Once SQL may have reached the server, only a read may
    move: a write could have been applied, and moving it could apply it twice (DBSlayer's blind
    retry is a known bug). ``write`` is the caller's classification (``statements.shape``), which
    counts anything it is not sure only reads as a write.
    """
    return policy.enabled and (not sent or not write)
