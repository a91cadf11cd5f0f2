"""What synthesizing notes will cost before any call is made, and what training on them will take.

Requests are built exactly as the assets build them (heuristic passages stand in for the LLM's
boundaries); input tokens are counted as characters / 4 (the usual rule for English; the request
log holds the true counts afterwards); output tokens are the mean this model and template produced
so far according to the request log, or half the token budget when there is no history yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from fine_tune_dag.core.common.llm_types import LLMRequest, request_cost
from fine_tune_dag.core.store.notes import synthesis_history
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.synthesis.chunking import (
    BOUNDARY_MAX_NEW_TOKENS,
    ChunkingSettings,
    boundary_requests,
    heuristic_passages,
    needs_boundary_request,
)
from fine_tune_dag.core.synthesis.qa_pairs import SynthesisSettings, synthesis_request

CHARS_PER_TOKEN = 4
DEFAULT_KEEP_RATE = 0.3  # share of candidate pairs the filters keep, before any history
DEFAULT_PAIR_TOKENS = 150


@dataclass
class CostEstimate:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    candidate_pairs: int = 0

    def add(self, other: CostEstimate) -> None:
        for name in ("requests", "input_tokens", "output_tokens", "cost_usd", "candidate_pairs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class History:
    """What earlier runs taught: output tokens per template, keep rate, tokens per training pair."""

    output_tokens: dict[str, float]
    keep_rate: float = DEFAULT_KEEP_RATE
    pair_tokens: float = DEFAULT_PAIR_TOKENS

    @classmethod
    def from_warehouse(cls, db: Warehouse, provider: str) -> History:
        means, total, kept, pair_tokens = synthesis_history(db, provider)
        return cls(
            dict(zip(means["template"], means["tokens"].astype(float))),
            kept / total if total else DEFAULT_KEEP_RATE,
            pair_tokens if pair_tokens is not None else DEFAULT_PAIR_TOKENS,
        )


def estimate_note(
    note_id: str, text: str, title: str, history: History, model: str, prices: dict[str, tuple[float, float]]
) -> CostEstimate:
    """Requests, tokens and cost of chunking and synthesizing one note with the default settings."""
    requests = note_requests(note_id, text, title, ChunkingSettings(), SynthesisSettings(), BOUNDARY_MAX_NEW_TOKENS)
    return estimate_requests(requests, history, model, prices)


def note_requests(
    note_id: str,
    text: str,
    title: str,
    chunking: ChunkingSettings,
    synthesis: SynthesisSettings,
    boundary_max_new_tokens: int,
) -> list[LLMRequest]:
    boundary = needs_boundary_request(text, chunking)
    requests = boundary_requests(text, chunking, boundary_max_new_tokens) if boundary else []
    passages = heuristic_passages(note_id, text, title, chunking).passages
    return requests + [synthesis_request(p, mode, synthesis) for p in passages for mode in synthesis.modes]


def estimate_requests(
    requests: list[LLMRequest], history: History, model: str, prices: dict[str, tuple[float, float]]
) -> CostEstimate:
    estimate = CostEstimate()
    for request in requests:
        input_tokens = sum(len(content) for _, content in request.messages) // CHARS_PER_TOKEN
        output_tokens = int(history.output_tokens.get(request.template, request.max_new_tokens / 2))
        estimate.add(
            CostEstimate(1, input_tokens, output_tokens, request_cost(prices, model, input_tokens, output_tokens))
        )
        estimate.candidate_pairs += _candidates(request)
    return estimate


def _candidates(request: LLMRequest) -> int:
    """Pairs a request can yield: `count` grounded questions, one back-translated instruction, or none."""
    if request.template == "chunk_boundaries":
        return 0
    return int(dict(request.variables).get("count", "1"))


def expected_training_tokens(candidate_pairs: int, history: History, train_share: float, epochs: float) -> int:
    """Tokens the next training will see from these notes: kept pairs on the train side, every epoch."""
    return int(candidate_pairs * history.keep_rate * train_share * history.pair_tokens * epochs)
