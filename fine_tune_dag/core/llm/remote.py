"""What every hosted LLM client shares, whichever SDK speaks to the server: bounded concurrency, pacing
under the quota, retries with backoff that honour the server's retry hint, and failures described
without the API key.

Every request passes the egress step first (`core/privacy/egress.py`): those a `CachedLLM` already prepared go
as they are, any other is scanned and redacted (or blocked) here, so no caller reaches the network around it.

A provider supplies three things: the call for one request (`_prepare`), how to read its answer
(`_result`) and how to judge a failed attempt (`_classify`). The SDKs' exceptions carry the request
headers, key included, so they are never chained onto the errors raised here.
"""

from __future__ import annotations

import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import ClassVar, Generic, TypeVar

from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.llm.quota import SharedRateLimiter, quota_key
from fine_tune_dag.core.llm.ratelimit import RateLimiter, RetryPolicy
from fine_tune_dag.core.privacy.egress import Egress, EgressSettings
from fine_tune_dag.core.store.warehouse import Warehouse

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

Response = TypeVar("Response")


class RemoteLLMError(RuntimeError):
    """A call that cannot succeed (bad request, bad key, retries exhausted); the message never holds the key."""


@dataclass(frozen=True)
class RemoteSettings:
    """Pacing, concurrency and retries: the same knobs for every hosted provider."""

    model: str
    max_concurrency: int = 4
    requests_per_minute: int = 10
    tokens_per_minute: int = 250_000
    rate_window_s: float = 60.0  # the window the two limits above apply to (tests shrink it)
    timeout_s: float = 60.0
    base_url: str = ""  # another endpoint (a proxy, a local server, the stub the tests use)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # a warehouse (DuckDB file or PostgreSQL URL) whose quota table paces every process and machine that names
    # it; empty: this process alone. Not in the repr: a URL may hold a password.
    quota_warehouse: str = field(default="", repr=False)
    privacy: EgressSettings = EgressSettings()  # what may leave: policy, the user's list, the NER pipeline


def limiter_for(settings: RemoteSettings, key: str) -> RateLimiter:
    """The shared quota `key` when the settings name a warehouse, otherwise this process's own window."""
    pacing = (settings.requests_per_minute, settings.tokens_per_minute)
    if not settings.quota_warehouse:
        return RateLimiter(*pacing, window_s=settings.rate_window_s)
    warehouse = Warehouse(settings.quota_warehouse)
    return SharedRateLimiter(warehouse, key, *pacing, in_flight_s=settings.timeout_s, window_s=settings.rate_window_s)


@dataclass(frozen=True)
class Failure:
    """One failed attempt as the retry loop needs it: whether to try again, the server's hint, a key-free reason."""

    retryable: bool
    reason: str
    hint_s: float | None = None


class RemoteLLM(ABC, Generic[Response]):
    """Requests fan out over a thread pool; each one is paced by one limiter shared by the whole client (and,
    with `quota_warehouse`, by every process naming that warehouse), then retried until it succeeds, fails for
    good, or runs out of attempts.

    A request that fails does not cancel the others: they finish before its error is raised.
    """

    provider: ClassVar[str]
    error: ClassVar[type[RemoteLLMError]] = RemoteLLMError

    def __init__(self, settings: RemoteSettings, seed: int, label: str) -> None:
        self.settings = settings
        self.model_name = settings.model
        self.label = label  # names the provider and model in errors
        self.egress = Egress(self.provider, settings.base_url, settings.privacy, label)
        self._limiter = limiter_for(settings, quota_key(self.provider, settings.model, settings.base_url))
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        if not requests:
            return []
        batch = self.egress.prepare(requests)  # raises under 'block' with personal data: nothing is sent
        with ThreadPoolExecutor(max_workers=min(self.settings.max_concurrency, len(requests))) as pool:
            results = list(pool.map(self._complete_one, batch.sent))
        return [replace(result, text=batch.restore(i, result.text)) for i, result in enumerate(results)]

    @abstractmethod
    def _prepare(self, request: LLMRequest) -> Callable[[], Response]:
        """The call that sends `request`, built once and repeated on every attempt."""

    @abstractmethod
    def _result(self, response: Response, latency_s: float) -> LLMResult:
        """The answer, with blocked and empty ones as outcomes rather than errors."""

    @abstractmethod
    def _classify(self, error: Exception) -> Failure:
        """How to handle an attempt that raised; anything that is not a failure of the call is re-raised."""

    def _complete_one(self, request: LLMRequest) -> LLMResult:
        send = self._prepare(request)
        estimate = sum(len(content) for _, content in request.messages) // 4 + request.max_new_tokens
        policy = self.settings.retry
        failure = ""
        for attempt in range(1, policy.max_attempts + 1):
            slot = self._limiter.acquire(estimate)
            started = time.perf_counter()
            try:
                response = send()
            except Exception as error:  # noqa: BLE001 — classified just below; anything else is re-raised
                self._limiter.settle(slot)
                judged = self._classify(error)
                if not judged.retryable:
                    failure = judged.reason
                    break
                failure = f"{judged.reason} (after {attempt} attempts)"
                if attempt < policy.max_attempts:
                    with self._rng_lock:
                        delay = policy.delay(attempt, judged.hint_s, self._rng)
                    time.sleep(delay)
                continue
            self._limiter.settle(slot)
            return self._result(response, time.perf_counter() - started)
        # raised outside the handler: the SDK's exception (its request holds the key) is not chained
        raise self.error(f"{self.label} ({request.template}): {failure}")
