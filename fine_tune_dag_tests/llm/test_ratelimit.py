"""The client-side limiter and the retry policy on a fake clock: exact waits, no real sleeping."""

import random

import pytest

from fine_tune_dag.core.llm.ratelimit import RateLimiter, RetryPolicy, Slot


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        assert self.now < 1000, "waiting for ever"


class AnsweredAtOnce(RateLimiter):
    """Every request answered the moment it is sent, so the window counts from the send."""

    def acquire(self, tokens: int) -> Slot:
        slot = super().acquire(tokens)
        self.settle(slot)
        return slot


def limiter(rpm: int, tpm: int) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return AnsweredAtOnce(rpm, tpm, clock=clock, sleep=clock.sleep), clock


def test_requests_per_minute_are_paced_over_a_sliding_window():
    limit, clock = limiter(rpm=3, tpm=10_000)
    waits = []
    for at in (0.0, 10.0, 20.0, 20.0, 20.0):
        clock.now = max(clock.now, at)
        waits.append(limit.acquire(1).waited)
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(40.0)  # the first request leaves the window at t=60
    assert waits[4] == pytest.approx(10.0)  # the second at t=70


def test_tokens_per_minute_are_paced_too():
    limit, clock = limiter(rpm=100, tpm=250)
    assert limit.acquire(100).waited == 0.0 and limit.acquire(100).waited == 0.0
    assert limit.acquire(100).waited == pytest.approx(60.0)
    assert limit.acquire(1000).waited == pytest.approx(60.0)  # larger than the budget: capped, waits for a clear window


def test_a_settled_slot_counts_from_its_answer():
    clock = FakeClock()
    limit = RateLimiter(1, 10_000, clock=clock, sleep=clock.sleep)
    slot = limit.acquire(1)
    clock.now = 5.0  # the answer took five seconds: the server may have seen the request at any point
    limit.settle(slot)
    assert limit.acquire(1).waited == pytest.approx(60.0)  # until t=65, not t=60


def test_a_request_in_flight_never_leaves_the_window():
    clock = FakeClock()
    limit = RateLimiter(1, 10_000, clock=clock, sleep=clock.sleep)
    slot = limit.acquire(1)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 90.0 and not slot.settled:
            limit.settle(slot)

    limit._sleep = sleep
    # unanswered until t=90: however late it reached the server, the next request waits a window after that
    assert limit.acquire(1).waited == pytest.approx(150.0, abs=1.0)


def test_backoff_grows_with_jitter_and_honours_the_server_hint():
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, max_backoff_s=8.0)
    rng = random.Random(0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0)):
        delays = [policy.delay(attempt, None, rng) for _ in range(50)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling and len(set(delays)) > 1
    assert policy.delay(1, 12.5, rng) == 12.5
