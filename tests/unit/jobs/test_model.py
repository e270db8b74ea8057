"""The pure job model: retry schedules."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchbay.jobs.model import DEFAULT_DELAYS, Retry, Schedule

delays = st.lists(st.floats(min_value=0, max_value=1e7), min_size=1, max_size=12).map(tuple)
jitters = st.floats(min_value=0, max_value=1)


def test_default_schedule() -> None:
    """The default schedule retries once per default delay, ten attempts in all."""
    schedule = Schedule()
    assert schedule.delays == DEFAULT_DELAYS
    assert schedule.max_attempts == len(DEFAULT_DELAYS) + 1 == 10


@given(delays, jitters, st.data())
def test_delay_stays_within_its_jitter(
    steps: tuple[float, ...], jitter: float, data: st.DataObject
) -> None:
    """Each delay is shortened by at most ``jitter`` of itself, never lengthened."""
    schedule = Schedule(steps, jitter)
    attempts = data.draw(st.integers(min_value=1, max_value=len(steps)))
    delay = schedule.next_delay(attempts, random.Random(data.draw(st.integers())))
    assert delay is not None
    base = steps[attempts - 1]
    assert base * (1.0 - jitter) <= delay <= base


@given(delays, jitters, st.integers())
def test_no_delay_past_the_end(steps: tuple[float, ...], jitter: float, seed: int) -> None:
    """Attempts before the first or at max_attempts and beyond get None: no retry is left."""
    schedule = Schedule(steps, jitter)
    rng = random.Random(seed)
    assert schedule.max_attempts == len(steps) + 1
    for attempts in range(1, schedule.max_attempts):
        assert schedule.next_delay(attempts, rng) is not None
    for attempts in (0, -1, schedule.max_attempts, schedule.max_attempts + 5):
        assert schedule.next_delay(attempts, rng) is None


def test_without_jitter_the_delays_are_exact() -> None:
    """With jitter 0 the delays are the schedule's own."""
    schedule = Schedule((1.0, 2.5, 60.0), jitter=0.0)
    assert [schedule.next_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.5, 60.0, None]


def test_full_jitter_spreads_over_the_whole_delay() -> None:
    """With jitter 1 a delay lies anywhere in (0, delay]."""
    schedule = Schedule((10.0,), jitter=1.0)
    rng = random.Random(7)
    draws = [schedule.next_delay(1, rng) for _ in range(200)]
    assert all(d is not None and 0.0 < d <= 10.0 for d in draws)
    assert min(d for d in draws if d is not None) < 1.0


def test_the_same_seed_gives_the_same_delays() -> None:
    """A seeded generator makes the schedule reproducible."""
    schedule = Schedule()
    first = [schedule.next_delay(n, random.Random(3)) for n in range(1, 10)]
    again = [schedule.next_delay(n, random.Random(3)) for n in range(1, 10)]
    assert first == again


def test_no_delays_means_one_attempt() -> None:
    """An empty schedule never retries."""
    schedule = Schedule(())
    assert schedule.max_attempts == 1
    assert schedule.next_delay(1) is None


@pytest.mark.parametrize(
    ("steps", "jitter", "match"),
    [((-1.0,), 0.2, "negative"), ((1.0,), -0.1, "jitter"), ((1.0,), 1.5, "jitter")],
)
def test_invalid_schedules_are_refused(steps: tuple[float, ...], jitter: float, match: str) -> None:
    """Negative delays and jitter outside [0, 1] raise ValueError."""
    with pytest.raises(ValueError, match=match):
        Schedule(steps, jitter)


def test_retry_carries_its_delay_and_reason() -> None:
    """Retry keeps the requested delay and reason; both are optional."""
    assert (Retry().after, Retry().reason) == (None, "retry requested")
    retry = Retry(after=30.0, reason="rate limited")
    assert (retry.after, retry.reason, str(retry)) == (30.0, "rate limited", "rate limited")
