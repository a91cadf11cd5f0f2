"""Client-side pacing for a hosted LLM: requests and tokens per minute, and retries with backoff.

The server enforces its quota by answering 429; pacing below it avoids paying the round trip and
the backoff, and honouring the server's retry hint avoids hammering it when it does answer 429.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate


@dataclass
class Slot:
    """One request's place in the window; `settle` moves it to when the answer came back."""

    sent_at: float
    tokens: int
    waited: float = 0.0
    settled: bool = False  # answered; until then the request may still be on its way to the server
    deadline: float = math.inf  # in flight, the server receives it by then or never (inf: no such bound)


@dataclass(frozen=True)
class Window:
    """The pacing arithmetic every limiter shares: which slots still count, and how long until one more fits.

    A settled slot counts for one window from its answer: the server saw the request at some point
    before that, so the server's own count over any window never exceeds the limit, whatever the network
    delayed. A slot in flight counts until a window after its deadline: the request may still reach the
    server late, beside the ones sent after it.
    """

    requests: int
    tokens: int
    seconds: float = 60.0

    def cost(self, tokens: int) -> int:
        """A request's tokens as counted: at least one, at most the whole budget (it must fit some day)."""
        return min(max(tokens, 1), self.tokens)

    def leaves_at(self, slot: Slot) -> float:
        return (slot.sent_at if slot.settled else slot.deadline) + self.seconds

    def counting(self, slots: Iterable[Slot], now: float) -> list[Slot]:
        """The slots still in the window at `now`, the soonest to leave first."""
        return sorted((slot for slot in slots if self.leaves_at(slot) > now), key=self.leaves_at)

    def wait(self, slots: Sequence[Slot], tokens: int, now: float) -> float:
        """0 when one more request of `tokens` fits beside `slots` (as `counting` orders them), else the seconds
        until enough of them leave. Waiting on a slot in flight, look again shortly: its answer may come any
        moment, and it leaves a window after that."""
        used = sum(slot.tokens for slot in slots)
        if len(slots) < self.requests and used + tokens <= self.tokens:
            return 0.0
        need = len(slots) - self.requests + 1
        freed = accumulate(slot.tokens for slot in slots)
        last = next(
            slot
            for count, (slot, gone) in enumerate(zip(slots, freed), start=1)
            if count >= need and used - gone + tokens <= self.tokens
        )
        if last.settled:
            return max(self.leaves_at(last) - now, 0.001)
        return min(self.leaves_at(last) - now, max(last.sent_at + self.seconds - now, self.seconds / 100))


class RateLimiter:
    """A sliding window (one minute unless told) over requests and tokens, for this process's threads;
    `acquire` blocks until both fit. A slot still in flight never leaves the window (no deadline)."""

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        window_s: float = 60.0,
    ) -> None:
        if requests_per_minute < 1 or tokens_per_minute < 1:
            raise ValueError("rate limits must be at least 1 per minute")
        self.window = Window(requests_per_minute, tokens_per_minute, window_s)
        self._clock, self._sleep = clock, sleep
        self._slots: list[Slot] = []
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> Slot:
        """Reserve one request of `tokens` tokens (capped at the per-minute budget), waiting as needed."""
        tokens = self.window.cost(tokens)
        waited = 0.0
        while True:
            admitted = self._admit(tokens, waited)
            if isinstance(admitted, Slot):
                return admitted
            self._sleep(admitted)
            waited += admitted

    def settle(self, slot: Slot) -> None:
        """The request behind `slot` is answered: count it from now."""
        with self._lock:
            slot.sent_at, slot.settled = self._clock(), True

    def _admit(self, tokens: int, waited: float) -> Slot | float:
        """In one step no other acquirer interleaves with: the slot taken now, or the seconds to wait."""
        with self._lock:
            now = self._clock()
            self._slots = self.window.counting(self._slots, now)
            wait = self.window.wait(self._slots, tokens, now)
            if wait:
                return wait
            slot = Slot(now, tokens, waited)
            self._slots.append(slot)
            return slot


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server retry hint is a floor, never ignored."""

    max_attempts: int = 6
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, server_hint_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempts count from 1)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
        backoff = rng.uniform(ceiling / 2, ceiling)
        return max(backoff, server_hint_s or 0.0)
