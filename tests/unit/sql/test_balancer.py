from __future__ import annotations

from collections import Counter
from dataclasses import FrozenInstanceError
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchbay.sql.balancer import Balancer, Policy, ServerState, retry_allowed

RR = Policy()
LO = Policy(strategy="least_outstanding")
ANY_WRITES = Policy(writes="any")
OFF = Policy(enabled=False)


def reads(b: Balancer, count: int, exclude: frozenset[int] = frozenset()) -> list[int | None]:
    """Pick ``count`` read servers in a row."""
    return [b.pick(write=False, exclude=exclude) for _ in range(count)]


def test_policy_defaults() -> None:
    """Policy defaults to round robin, first-server writes, one failure, 0.5 s probes, on."""
    p = Policy()
    assert (p.strategy, p.writes, p.failures_to_down, p.probe_interval, p.enabled) == (
        "round_robin",
        "first",
        1,
        0.5,
        True,
    )
    with pytest.raises(FrozenInstanceError):
        p.enabled = False  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failures_to_down": 0},
        {"probe_interval": 0.0},
        {"probe_interval": -1.0},
        {"strategy": "random"},
        {"writes": "all"},
    ],
)
def test_policy_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    """Policy raises ValueError for settings the balancer cannot honour."""
    with pytest.raises(ValueError):  # noqa: PT011
        Policy(**kwargs)


def test_balancer_rejects_empty_group_and_bad_index() -> None:
    """A group needs a server, and out-of-range indexes raise IndexError."""
    with pytest.raises(ValueError, match="at least one"):
        Balancer(0, RR)
    b = Balancer(2, RR)
    for bad in (-1, 2):
        with pytest.raises(IndexError):
            b.failed(bad, 0.0)
        with pytest.raises(IndexError):
            b.is_up(bad)


def test_round_robin_rotates_over_all_servers() -> None:
    """Round-robin reads cycle through every server in order."""
    b = Balancer(3, RR)
    assert reads(b, 7) == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_is_fair_over_up_servers() -> None:
    """With one server down, reads alternate evenly over the other two."""
    b = Balancer(3, RR)
    assert b.failed(1, 0.0)
    picks = reads(b, 100)
    assert Counter(picks) == {0: 50, 2: 50}
    assert all(a != c for a, c in pairwise(picks))


def test_round_robin_single_server() -> None:
    """A one-server group always picks server 0."""
    b = Balancer(1, RR)
    assert reads(b, 3) == [0, 0, 0]
    assert b.pick(write=True) == 0


def test_least_outstanding_picks_least_busy() -> None:
    """least_outstanding picks the server with the fewest requests in flight."""
    b = Balancer(3, LO)
    for i, busy in enumerate((2, 0, 1)):
        for _ in range(busy):
            b.begin(i)
    assert b.pick(write=False) == 1
    b.begin(1)
    b.begin(1)
    assert b.pick(write=False) == 2
    b.end(0)
    b.end(0)
    assert b.pick(write=False) == 0


def test_least_outstanding_ties_rotate() -> None:
    """least_outstanding breaks ties by rotation rather than always taking the lowest index."""
    b = Balancer(3, LO)
    assert reads(b, 6) == [0, 1, 2, 0, 1, 2]
    b.begin(0)
    assert reads(b, 4) == [1, 2, 1, 2]


def test_least_outstanding_skips_down_servers() -> None:
    """least_outstanding never picks an idle server that is down."""
    b = Balancer(2, LO)
    b.begin(1)
    b.failed(0, 0.0)
    assert reads(b, 3) == [1, 1, 1]


def test_end_never_goes_below_zero() -> None:
    """An unmatched end() leaves the outstanding count at zero."""
    b = Balancer(1, RR)
    b.end(0)
    b.begin(0)
    assert b.states()[0].outstanding == 1
    b.end(0)
    b.end(0)
    assert b.states()[0].outstanding == 0


def test_writes_go_to_first_up_server() -> None:
    """With writes="first", writes go to the lowest-index server that is up."""
    b = Balancer(3, RR)
    assert [b.pick(write=True) for _ in range(3)] == [0, 0, 0]
    b.failed(0, 0.0)
    assert [b.pick(write=True) for _ in range(3)] == [1, 1, 1]
    b.failed(1, 0.0)
    assert b.pick(write=True) == 2
    b.succeeded(0, 1.0)
    assert b.pick(write=True) == 0


def test_writes_any_are_balanced_like_reads() -> None:
    """With writes="any", writes rotate over the up servers like reads."""
    b = Balancer(3, ANY_WRITES)
    assert [b.pick(write=True) for _ in range(4)] == [0, 1, 2, 0]
    b.failed(2, 0.0)
    assert [b.pick(write=True) for _ in range(4)] == [1, 0, 1, 0]


def test_failed_server_is_skipped_until_probe_succeeds() -> None:
    """A down server gets no traffic until a successful probe brings it back."""
    b = Balancer(2, Policy(probe_interval=1.0))
    assert b.failed(0, 10.0) is True
    assert not b.is_up(0)
    assert reads(b, 4) == [1, 1, 1, 1]
    assert b.pick(write=True) == 1
    assert b.probes_due(11.0) == [0]
    b.failed(0, 11.0)
    assert reads(b, 2) == [1, 1]
    assert b.probes_due(12.0) == [0]
    b.succeeded(0, 12.0)
    assert b.is_up(0)
    assert b.probes_due(100.0) == []
    assert set(reads(b, 2)) == {0, 1}
    assert b.pick(write=True) == 0


def test_failures_to_down_threshold() -> None:
    """A server goes down only after failures_to_down consecutive failures."""
    b = Balancer(2, Policy(failures_to_down=3))
    assert b.failed(0, 1.0) is False
    assert b.failed(0, 2.0) is False
    b.succeeded(0, 3.0)
    assert b.states()[0].consecutive_failures == 0
    assert b.failed(0, 4.0) is False
    assert b.failed(0, 5.0) is False
    assert b.is_up(0)
    assert b.failed(0, 6.0) is True
    assert not b.is_up(0)
    assert b.failed(0, 7.0) is False
    assert b.states()[0] == ServerState(
        index=0, up=False, consecutive_failures=4, outstanding=0, down_since=6.0
    )


def test_all_down_last_resort_is_oldest_down() -> None:
    """When every allowed server is down, pick returns the one down the longest."""
    b = Balancer(3, RR)
    b.failed(1, 5.0)
    b.failed(2, 6.0)
    b.failed(0, 7.0)
    assert b.pick(write=False) == 1
    assert b.pick(write=True) == 1
    assert b.pick(write=False, exclude=frozenset({1})) == 2
    assert b.pick(write=True, exclude=frozenset({1, 2})) == 0


def test_last_resort_prefers_up_server_outside_exclude() -> None:
    """An up, non-excluded server always beats the last-resort down server."""
    b = Balancer(3, RR)
    b.failed(0, 1.0)
    b.failed(1, 2.0)
    assert reads(b, 3) == [2, 2, 2]
    assert b.pick(write=False, exclude=frozenset({2})) == 0


def test_exclude_set() -> None:
    """Excluded servers are never picked, and excluding every server gives None."""
    b = Balancer(3, RR)
    ex = frozenset({1})
    assert reads(b, 4, ex) == [0, 2, 0, 2]
    assert b.pick(write=True, exclude=frozenset({0})) == 1
    assert b.pick(write=False, exclude=frozenset({0, 1, 2})) is None
    assert b.pick(write=True, exclude=frozenset({0, 1, 2})) is None


def test_disabled_never_marks_down_and_rotates_over_all() -> None:
    """With failover off, failures never mark a server down and reads rotate over all."""
    b = Balancer(3, OFF)
    for t in range(5):
        assert b.failed(1, float(t)) is False
    assert b.is_up(1)
    assert b.states()[1].consecutive_failures == 5
    assert b.probes_due(100.0) == []
    assert reads(b, 6) == [0, 1, 2, 0, 1, 2]
    assert [b.pick(write=True) for _ in range(3)] == [0, 0, 0]


def test_disabled_ignores_strategy_and_write_mode() -> None:
    """With failover off, reads are plain round robin and writes always go to server 0."""
    b = Balancer(3, Policy(strategy="least_outstanding", writes="any", enabled=False))
    b.begin(1)
    b.begin(1)
    assert reads(b, 3) == [0, 1, 2]
    assert [b.pick(write=True) for _ in range(3)] == [0, 0, 0]
    assert reads(b, 2, frozenset({0})) == [1, 2]
    assert b.pick(write=True, exclude=frozenset({0})) is None


def test_probes_due_schedules_with_injected_clock() -> None:
    """probes_due returns a down server when due and reschedules it probe_interval later."""
    b = Balancer(3, Policy(probe_interval=2.0))
    assert b.probes_due(0.0) == []
    b.failed(2, 10.0)
    b.failed(0, 11.0)
    assert b.probes_due(11.5) == []
    assert b.probes_due(12.0) == [2]
    assert b.probes_due(12.5) == []
    assert b.probes_due(13.0) == [0]
    assert b.probes_due(14.0) == [2]
    assert b.probes_due(20.0) == [0, 2]
    assert b.probes_due(21.9) == []
    b.succeeded(2, 21.9)
    assert b.probes_due(22.0) == [0]
    assert b.probes_due(30.0) == [0]


def test_states_snapshot() -> None:
    """states() reports index, health, failures, load and down time for every server."""
    b = Balancer(2, Policy(failures_to_down=2))
    b.begin(1)
    b.failed(0, 3.0)
    assert b.states() == [
        ServerState(index=0, up=True, consecutive_failures=1, outstanding=0, down_since=None),
        ServerState(index=1, up=True, consecutive_failures=0, outstanding=1, down_since=None),
    ]
    b.failed(0, 4.0)
    snapshot = b.states()
    assert snapshot[0].down_since == 4.0
    assert not snapshot[0].up
    b.succeeded(0, 5.0)
    assert snapshot[0].down_since == 4.0
    assert b.states()[0].down_since is None


@pytest.mark.parametrize(
    ("enabled", "sent", "write", "expected"),
    [
        (True, False, False, True),
        (True, False, True, True),
        (True, True, False, True),
        (True, True, True, False),
        (False, False, False, False),
        (False, False, True, False),
        (False, True, False, False),
        (False, True, True, False),
    ],
)
def test_retry_allowed_table(enabled: bool, sent: bool, write: bool, expected: bool) -> None:
    """Retry elsewhere only with failover on, and after sending only for a read."""
    policy = Policy(enabled=enabled)
    assert retry_allowed(sent=sent, write=write, policy=policy) is expected


SIZE = 4
indexes = st.integers(min_value=0, max_value=SIZE - 1)
steps = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
operations = st.one_of(
    st.tuples(st.just("fail"), indexes, steps),
    st.tuples(st.just("ok"), indexes, steps),
    st.tuples(st.just("begin"), indexes),
    st.tuples(st.just("end"), indexes),
    st.tuples(st.just("probe"), steps),
    st.tuples(st.just("pick"), st.booleans(), st.frozensets(indexes)),
)
policies = st.builds(
    Policy,
    strategy=st.sampled_from(["round_robin", "least_outstanding"]),
    writes=st.sampled_from(["first", "any"]),
    failures_to_down=st.integers(min_value=1, max_value=3),
    probe_interval=st.sampled_from([0.25, 0.5, 1.0]),
    enabled=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=SIZE),
    policy=policies,
    ops=st.lists(operations, max_size=60),
)
def test_pick_never_excluded_and_prefers_up(
    size: int, policy: Policy, ops: list[tuple[Any, ...]]
) -> None:
    """For any operations, pick avoids excluded servers and returns an up one when it can."""
    b = Balancer(size, policy)
    now = 0.0
    for op in ops:
        kind = op[0]
        if kind in ("fail", "ok", "begin", "end") and op[1] >= size:
            continue
        if kind == "fail":
            now += op[2]
            b.failed(op[1], now)
        elif kind == "ok":
            now += op[2]
            b.succeeded(op[1], now)
        elif kind == "begin":
            b.begin(op[1])
        elif kind == "end":
            b.end(op[1])
        elif kind == "probe":
            now += op[1]
            for i in b.probes_due(now):
                assert not b.is_up(i)
        else:
            write: bool = op[1]
            exclude: frozenset[int] = op[2]
            allowed = [i for i in range(size) if i not in exclude]
            chosen = b.pick(write=write, exclude=exclude)
            if policy.enabled:
                assert (chosen is None) == (not allowed)
            if chosen is None:
                continue
            assert 0 <= chosen < size
            assert chosen not in exclude
            if any(b.is_up(i) for i in allowed):
                assert b.is_up(chosen)
        if not policy.enabled:
            assert all(b.is_up(i) for i in range(size))
