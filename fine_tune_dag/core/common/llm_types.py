"""What every LLM client speaks: requests, results, usage and prices. Nothing heavy is imported here, so
text-only stages (chunking, synthesis, estimates) build requests without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from fine_tune_dag.prompts import PromptTemplate

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class LLMRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, hashable for caching
    template: str
    template_version: str
    max_new_tokens: int = 256
    temperature: float = 0.0
    variables: tuple[tuple[str, str], ...] = ()  # what filled the template: logged, not part of the cache key
    json_schema: str = ""  # JSON schema of the answer, for providers with structured output
    # the note the request carries text of: its placeholders are shared with the note's other requests (privacy)
    note: str = ""
    # the privacy policy this request passed on its way out (core/privacy/egress.py); empty: not prepared yet
    egress: str = ""

    @classmethod
    def from_template(
        cls, template: PromptTemplate, max_new_tokens: int, temperature: float = 0.0, note: str = "", **variables: str
    ) -> LLMRequest:
        messages = tuple((m["role"], m["content"]) for m in template.render(**variables))
        return cls(
            messages,
            template.name,
            template.version,
            max_new_tokens,
            temperature,
            tuple(sorted(variables.items())),
            template.response_schema,
            note,
        )

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class LLMResult:
    """One answer; `blocked` and `empty` answers are outcomes to record, not errors."""

    text: str
    status: str = "ok"  # ok | blocked | empty
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    detail: str = ""  # why blocked or empty, as the provider said it


class LLMClient(Protocol):
    provider: str
    model_name: str

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        """One result per request, in order."""


# USD per million input and output tokens, Gemini's and OpenAI's own models; local models and servers cost
# nothing. Override per resource (LLMResource.prices).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}


def request_cost(prices: dict[str, tuple[float, float]], model: str, input_tokens: int, output_tokens: int) -> float:
    per_input, per_output = prices.get(model, (0.0, 0.0))
    return (input_tokens * per_input + output_tokens * per_output) / 1e6


@dataclass
class LLMUsage:
    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    rejected: int = 0  # blocked or empty answers
    redacted_requests: int = 0  # requests whose personal data was replaced by placeholders before sending
    redacted: dict[str, int] = field(default_factory=dict)  # distinct values replaced, by kind (never the values)
    withheld: int = 0  # requests not sent at all: personal data under the privacy policy 'block'

    @property
    def requests(self) -> int:
        return self.calls + self.cache_hits
