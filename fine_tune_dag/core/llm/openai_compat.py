"""Any OpenAI-compatible Chat Completions endpoint (OpenAI, Ollama, vLLM, llama.cpp's server, LM Studio)
through the official `openai` SDK, with the same pacing, retries and outcomes as Gemini (`remote.RemoteLLM`).

The SDK's own retries are off: ours are paced by the shared limiter and honour `Retry-After`. The API key
is passed to the SDK and nowhere else; local servers need none, so an empty key sends a placeholder.
Answers are plain text as the prompt asks for them: the prompts' response schemas are Gemini's dialect
(upper-case types, an array at the root), which OpenAI's structured outputs reject.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import openai
from openai.types.chat import ChatCompletion

from fine_tune_dag.core.common.llm_types import LLMRequest, LLMResult
from fine_tune_dag.core.llm.remote import RETRYABLE_STATUS, Failure, RemoteLLM, RemoteLLMError, RemoteSettings
from fine_tune_dag.core.privacy.egress import Egress

NO_KEY = "not-needed"  # what the SDK, which insists on a key, sends to servers that ask for none


class OpenAICompatibleError(RemoteLLMError):
    """A call that cannot succeed (bad request, bad key, retries exhausted); the message never holds the key."""


class MalformedResponse(Exception):
    """The server answered 200 with something that is not a chat completion (a proxy's HTML page, cut-off JSON)."""


@dataclass(frozen=True)
class OpenAISettings(RemoteSettings):
    model: str = "gpt-4o-mini"
    requests_per_minute: int = 500  # OpenAI's first paid tier for the mini models; a local server needs no pacing
    tokens_per_minute: int = 200_000
    base_url: str = ""  # empty: the SDK's default (api.openai.com, or OPENAI_BASE_URL)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's hint: `retry-after-ms` (OpenAI's), else `Retry-After` in seconds or as an HTTP date."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers.get(name, "")) / scale
        except ValueError:
            pass
    date = email.utils.parsedate_tz(headers.get("retry-after", ""))
    return email.utils.mktime_tz(date) - time.time() if date is not None else None


class OpenAICompatibleLLM(RemoteLLM[ChatCompletion]):
    provider = "openai"
    error = OpenAICompatibleError

    def __init__(self, api_key: str, settings: OpenAISettings = OpenAISettings(), seed: int = 0) -> None:
        self._client = openai.OpenAI(
            api_key=api_key or NO_KEY,
            base_url=settings.base_url or None,
            timeout=settings.timeout_s,
            max_retries=0,  # retries are ours: paced and hint-aware
        )
        server = self._client.base_url.netloc.decode()  # host and port, without any user:password in the URL
        super().__init__(settings, seed, f"OpenAI-compatible {settings.model} at {server}")
        # the policy follows where requests really go: the SDK's base URL (OPENAI_BASE_URL when none is set)
        self.egress = Egress(self.provider, str(self._client.base_url), settings.privacy, self.label)
        self.seed = seed

    def _prepare(self, request: LLMRequest) -> Callable[[], ChatCompletion]:
        chat = request.chat()

        def send() -> ChatCompletion:
            response = self._client.chat.completions.create(
                model=self.model_name,
                messages=chat,  # the system prompt first, as OpenAI's chat format has it
                max_tokens=request.max_new_tokens,
                temperature=request.temperature,
                seed=self.seed,
            )
            # without strict validation (which local servers' extra fields would fail) the SDK hands back a
            # body that is not JSON as text, and JSON of another shape with its fields missing
            if not isinstance(response, ChatCompletion):
                raise MalformedResponse("the response was not valid JSON")
            if not response.choices or response.choices[0].message is None:
                raise MalformedResponse("the response was not a chat completion (no choices[0].message)")
            return response

        return send

    def _classify(self, error: Exception) -> Failure:
        if isinstance(error, openai.APIStatusError):
            reason = f"HTTP {error.status_code} {error.response.reason_phrase}".rstrip()
            if error.status_code == 401:
                reason += " (check OPENAI_API_KEY)"
            return Failure(error.status_code in RETRYABLE_STATUS, reason, retry_after_seconds(error.response.headers))
        if isinstance(error, openai.APITimeoutError):
            return Failure(True, "timed out")
        if isinstance(error, openai.APIConnectionError):  # the SDK keeps the transport's error as the cause
            return Failure(True, f"connection failed ({type(error.__cause__).__name__})")
        if isinstance(error, MalformedResponse):
            return Failure(True, str(error))
        if isinstance(error, json.JSONDecodeError):  # a JSON body cut short
            return Failure(True, "the response was not valid JSON")
        raise error

    def _result(self, response: ChatCompletion, latency_s: float) -> LLMResult:
        usage = response.usage
        input_tokens = (usage.prompt_tokens or 0) if usage else 0
        output_tokens = (usage.completion_tokens or 0) if usage else 0
        choice = response.choices[0]
        if choice.finish_reason == "content_filter":
            return LLMResult("", "blocked", input_tokens, output_tokens, latency_s, "content_filter")
        text = choice.message.content
        if not text or not text.strip():
            return LLMResult("", "empty", input_tokens, output_tokens, latency_s, str(choice.finish_reason))
        return LLMResult(text, "ok", input_tokens, output_tokens, latency_s)
