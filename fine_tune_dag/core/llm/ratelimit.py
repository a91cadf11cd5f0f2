"""Client-side pacing for a hosted LLM: requests and tokens per minute, and retries with backoff.

The server enforces its quota by answering 429; pacing below it avoids paying the round trip and
the backoff, and honouring the server's retry hint avoids hammering it when it does answer 429.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Slot:
    """One request's place in the window; `settle` moves it to when the answer came back."""

    sent_at: float
    tokens: int
    waited: float = 0.0
    settled: bool = False  # answered; until then the request may still be on its way to the server


class RateLimiter:
    """A sliding window (one minute unless told) over requests and tokens; `acquire` blocks until both fit.

    A slot counts from the moment its answer arrives once settled: the server saw the request at some
    point before that, so the server's own count over any window never exceeds the limit, whatever
    the network delayed. A slot still in flight never leaves the window: a request held up on its way (a
    busy machine, a slow connection) may reach the server late, beside the ones sent after it.
    """

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
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock, self._sleep, self.window_s = clock, sleep, window_s
        self._slots: list[Slot] = []
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> Slot:
        """Reserve one request of `tokens` tokens (capped at the per-minute budget), waiting as needed."""
        tokens = min(max(tokens, 1), self.tokens_per_minute)
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._slots = sorted(
                    (s for s in self._slots if not s.settled or now - s.sent_at < self.window_s), key=_sent_at
                )
                used = sum(s.tokens for s in self._slots)
                if len(self._slots) < self.requests_per_minute and used + tokens <= self.tokens_per_minute:
                    slot = Slot(now, tokens, waited)
                    self._slots.append(slot)
                    return slot
                wait = self._wait_until_fits(now, tokens, used)
            self._sleep(wait)
            waited += wait

    def settle(self, slot: Slot) -> None:
        """The request behind `slot` is answered: count it from now."""
        with self._lock:
            slot.sent_at, slot.settled = self._clock(), True

    def _wait_until_fits(self, now: float, tokens: int, used: int) -> float:
        """Seconds until enough of the window's oldest entries expire for one more request of `tokens`."""
        freed, need_requests = 0, len(self._slots) - self.requests_per_minute + 1
        for count, slot in enumerate(self._slots, start=1):
            freed += slot.tokens
            if count >= need_requests and used - freed + tokens <= self.tokens_per_minute:
                # a slot in flight frees the window only a window after its answer: look again shortly
                return max(slot.sent_at + self.window_s - now, 0.001 if slot.settled else self.window_s / 100)
        return self.window_s


def _sent_at(slot: Slot) -> float:
    return slot.sent_at


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
