"""Gemini through Google's `google-genai` SDK: bounded concurrency, client-side pacing under the
quota, retries with backoff that honour the server's retry hint, and blocked or empty answers
returned as outcomes rather than raised (the mechanism is `remote.RemoteLLM`, shared with the
OpenAI-compatible client).

`google-generativeai`, the older SDK, is end-of-life; `google-genai` is the maintained one.
The API key is passed to the SDK and nowhere else: it is never logged, stored or put in errors
(the SDK's exceptions carry the request headers, key included, so they are never re-raised as causes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
from google import genai
from google.genai import errors, types

from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.llm.remote import RETRYABLE_STATUS, Failure, RemoteLLM, RemoteLLMError, RemoteSettings

_RETRY_DELAY = re.compile(r"^\s*([\d.]+)s\s*$")


class GeminiError(RemoteLLMError):
    """A call that cannot succeed (bad request, bad key, retries exhausted); the message never holds the key."""


@dataclass(frozen=True)
class GeminiSettings(RemoteSettings):
    model: str = "gemini-2.5-flash"
    requests_per_minute: int = 10  # free tier of the Flash models; raise on a paid plan
    thinking_budget: int | None = 0  # Flash thinks by default, spending output tokens; None keeps the default


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


class GeminiLLM(RemoteLLM[types.GenerateContentResponse]):
    provider = "gemini"
    error = GeminiError
    settings: GeminiSettings  # thinking_budget is Gemini's own

    def __init__(self, api_key: str, settings: GeminiSettings = GeminiSettings(), seed: int = 0) -> None:
        if not api_key:
            raise GeminiError("no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")
        super().__init__(settings, seed, f"Gemini {settings.model}")
        options = types.HttpOptions(
            api_version="v1beta",  # system instructions and JSON schemas are v1beta features
            timeout=int(settings.timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours: paced and hint-aware
            **({"base_url": settings.base_url} if settings.base_url else {}),
        )
        self._client = genai.Client(api_key=api_key, http_options=options)

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

    def _prepare(self, request: LLMRequest) -> Callable[[], types.GenerateContentResponse]:
        system, contents = _contents(request)
        config = self._config(request, system)
        return lambda: self._client.models.generate_content(model=self.model_name, contents=contents, config=config)

    def _classify(self, error: Exception) -> Failure:
        if isinstance(error, errors.APIError):
            return Failure(
                error.code in RETRYABLE_STATUS, f"HTTP {error.code} {error.status}", retry_hint_seconds(error)
            )
        if isinstance(error, httpx2.TimeoutException):
            return Failure(True, "timed out")
        if isinstance(error, httpx2.TransportError):
            return Failure(True, f"connection failed ({type(error).__name__})")
        if isinstance(error, json.JSONDecodeError):
            return Failure(True, "the response was not valid JSON")
        raise error

    def _result(self, response: types.GenerateContentResponse, latency_s: float) -> LLMResult:
        usage = response.usage_metadata
        input_tokens = (usage.prompt_token_count or 0) if usage else 0
        output_tokens = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason:
            return LLMResult("", "blocked", input_tokens, output_tokens, latency_s, str(feedback.block_reason))
        text = response.text
        if not text or not text.strip():
            finish = response.candidates[0].finish_reason if response.candidates else "no candidates"
            return LLMResult("", "empty", input_tokens, output_tokens, latency_s, str(finish))
        return LLMResult(text, "ok", input_tokens, output_tokens, latency_s)
