"""Gemini through Google's `google-genai` SDK: bounded concurrency, client-side pacing under the
quota, retries with backoff that honour the server's retry hint, and blocked or empty answers
returned as outcomes rather than raised.

`google-generativeai`, the older SDK, is end-of-life; `google-genai` is the maintained one.
The API key is passed to the SDK and nowhere else: it is never logged, stored or put in errors
(the SDK's exceptions carry the request headers, key included, so they are never re-raised as causes).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx2
from google import genai
from google.genai import errors, types

from fine_tune_dag.core.llm.ratelimit import RateLimiter, RetryPolicy
from fine_tune_dag.core.llm.types import LLMRequest, LLMResult

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_RETRY_DELAY = re.compile(r"^\s*([\d.]+)s\s*$")


class GeminiError(RuntimeError):
    """A call that cannot succeed (bad request, bad key, retries exhausted); the message never holds the key."""


@dataclass(frozen=True)
class GeminiSettings:
    model: str = "gemini-2.5-flash"
    max_concurrency: int = 4
    requests_per_minute: int = 10  # free tier of the Flash models; raise on a paid plan
    tokens_per_minute: int = 250_000
    rate_window_s: float = 60.0  # the window the two limits above apply to (tests shrink it)
    timeout_s: float = 60.0
    thinking_budget: int | None = 0  # Flash thinks by default, spending output tokens; None keeps the default
    base_url: str = ""  # another endpoint (a proxy, or the local stub the tests use)
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def retry_hint_seconds(error: errors.APIError) -> float | None:
    """The server's `google.rpc.RetryInfo` delay ("1.5s"), wherever the error body carries it."""
    body = error.details if isinstance(error.details, dict) else {}
    for detail in body.get("error", body).get("details", []) or []:
        match = _RETRY_DELAY.match(str(detail.get("retryDelay", ""))) if isinstance(detail, dict) else None
        if match:
            return float(match.group(1))
    return None


def _contents(request: LLMRequest) -> tuple[str, list[types.Content]]:
    system = "\n\n".join(content for role, content in request.messages if role == "system")
    turns = [
        types.Content(role="model" if role == "assistant" else "user", parts=[types.Part(text=content)])
        for role, content in request.messages
        if role != "system"
    ]
    return system, turns


class GeminiLLM:
    provider = "gemini"

    def __init__(self, api_key: str, settings: GeminiSettings = GeminiSettings(), seed: int = 0) -> None:
        if not api_key:
            raise GeminiError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")
        self.settings = settings
        self.model_name = settings.model
        options = types.HttpOptions(
            api_version="v1beta",  # system instructions and JSON schemas are v1beta features
            timeout=int(settings.timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours: paced and hint-aware
            **({"base_url": settings.base_url} if settings.base_url else {}),
        )
        self._client = genai.Client(api_key=api_key, http_options=options)
        self._limiter = RateLimiter(
            settings.requests_per_minute, settings.tokens_per_minute, window_s=settings.rate_window_s
        )
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.max_concurrency, len(requests))) as pool:
            return list(pool.map(self._complete_one, requests))

    def _config(self, request: LLMRequest, system: str) -> types.GenerateContentConfig:
        structured = (
            {"response_mime_type": "application/json", "response_schema": json.loads(request.json_schema)}
            if request.json_schema
            else {}
        )
        thinking = (
            {"thinking_config": types.ThinkingConfig(thinking_budget=self.settings.thinking_budget)}
            if self.settings.thinking_budget is not None
            else {}
        )
        return types.GenerateContentConfig(
            system_instruction=system or None,
            max_output_tokens=request.max_new_tokens,
            temperature=request.temperature,
            **structured,
            **thinking,
        )

    def _complete_one(self, request: LLMRequest) -> LLMResult:
        system, contents = _contents(request)
        config = self._config(request, system)
        estimate = sum(len(content) for _, content in request.messages) // 4 + request.max_new_tokens
        policy = self.settings.retry
        failure = ""
        for attempt in range(1, policy.max_attempts + 1):
            slot = self._limiter.acquire(estimate)
            started = time.perf_counter()
            try:
                response = self._client.models.generate_content(model=self.model_name, contents=contents, config=config)
            except Exception as error:  # noqa: BLE001 — classified just below; anything else is re-raised
                self._limiter.settle(slot)
                retryable, hint, reason = self._classify(error)
                if not retryable:
                    failure = reason
                    break
                failure = f"{reason} (after {attempt} attempts)"
                if attempt < policy.max_attempts:
                    with self._rng_lock:
                        delay = policy.delay(attempt, hint, self._rng)
                    time.sleep(delay)
                continue
            self._limiter.settle(slot)
            return _result(response, time.perf_counter() - started)
        # raised outside the handler: the SDK's exception (its request holds the key) is not chained
        raise GeminiError(f"Gemini {self.model_name} ({request.template}): {failure}")

    @staticmethod
    def _classify(error: Exception) -> tuple[bool, float | None, str]:
        """Whether to retry, the server's hint, and a key-free description."""
        if isinstance(error, errors.APIError):
            return error.code in RETRYABLE_STATUS, retry_hint_seconds(error), f"HTTP {error.code} {error.status}"
        if isinstance(error, httpx2.TimeoutException):
            return True, None, "timed out"
        if isinstance(error, httpx2.TransportError):
            return True, None, f"connection failed ({type(error).__name__})"
        if isinstance(error, json.JSONDecodeError):
            return True, None, "the response was not valid JSON"
        raise error


def _result(response: types.GenerateContentResponse, latency: float) -> LLMResult:
    usage = response.usage_metadata
    input_tokens = (usage.prompt_token_count or 0) if usage else 0
    output_tokens = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        return LLMResult("", "blocked", input_tokens, output_tokens, latency, str(feedback.block_reason))
    text = response.text
    if not text or not text.strip():
        finish = response.candidates[0].finish_reason if response.candidates else "no candidates"
        return LLMResult("", "empty", input_tokens, output_tokens, latency, str(finish))
    return LLMResult(text, "ok", input_tokens, output_tokens, latency)
