"""Generation as callers want it: texts for prompts from an engine, stopped at EOS or a stop string per row; and
the decoding settings saved with each adapter."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from fine_tune_dag.core.generation.base import Decoding, GenerationEngine, GenerationRequest, token_limits
from fine_tune_dag.core.models.memory_budget import MemoryBudget


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the first stop string (a stop string's last token may carry characters past it)."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
    return text[:cut]


def continuation_text(tokenizer: Any, tokens: Sequence[int] | torch.Tensor, stop_strings: Sequence[str]) -> str:
    """What the caller sees of one row's generated ids: nothing from its first EOS on (the padding after it
    included, and whether or not the tokenizer flags EOS as special), no special tokens, cut at the first
    stop string, outer whitespace stripped."""
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop_strings).strip()


def as_engine(model_or_engine: Any, tokenizer: Any, batch_size: int, memory_budget: MemoryBudget | None = None) -> Any:
    """An engine as it is; a loaded transformers model (as loaded: its active adapter answers) under transformers'
    `generate`, taking fewer rows at once
    where `batch_size` rows would not fit `memory_budget` (engines hold their own cache within their settings)."""
    if isinstance(model_or_engine, GenerationEngine):
        return model_or_engine
    from fine_tune_dag.core.generation.transformers import TransformersEngine

    return TransformersEngine(model_or_engine, tokenizer, batch_size, memory_budget=memory_budget, as_loaded=True)


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    stop_strings: Sequence[str] = (),
    no_repeat_ngram_size: int = 0,
    memory_budget: MemoryBudget | None = None,
    adapter: str | None = None,
) -> list[str]:
    """Continuations of token-id prompts from `model`: a `GenerationEngine` (`generation.engines.open_engine`), or a
    loaded transformers model. `adapter` names the adapter that answers (None: the base model); `on_batch` hears
    how many more are done.

    `max_new_tokens` is one limit for every prompt or one per prompt. A row that reaches EOS or one of
    `stop_strings` is finished, and its text ends before the stop string. Sampling is seeded by `seed` and each
    prompt, so a cached request and a fresh one agree whatever their batch. `no_repeat_ngram_size` > 0 forbids a
    row to repeat any run of that many of its own generated tokens (the prompt's are free to quote).
    `**asdict(GenerationSettings(...))` fills the decoding arguments. With `memory_budget`, a loaded model
    decodes fewer rows at once where `batch_size` rows of the longest prompt would not fit."""
    engine = as_engine(model, tokenizer, batch_size, memory_budget)
    decoding = Decoding(temperature, top_p, no_repeat_ngram_size, seed)
    stops = tuple(s for s in stop_strings if s)
    requests = [
        GenerationRequest(tuple(prompt), limit, decoding, stops, adapter)
        for prompt, limit in zip(prompts, token_limits(max_new_tokens, len(prompts)))
    ]
    finished = engine.generate(requests, on_batch)
    return [continuation_text(tokenizer, f.tokens, stops) for f in finished]
