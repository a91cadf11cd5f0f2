"""Held-out evaluation: answer NLL and perplexity by teacher forcing, ROUGE-L and token F1 of
greedy generations, for the base model and each adapter, on the same test items."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from peft import PeftModel

from fine_tune_dag.core.chat import Message, render_prompt_ids, render_training_example
from fine_tune_dag.core.generation import generate_batch
from fine_tune_dag.core.text_metrics import rouge_l_f1, token_f1
from fine_tune_dag.core.training import answer_token_losses, collate


@dataclass(frozen=True)
class EvaluationSettings:
    max_examples: int = 64  # test items evaluated (all of them when fewer)
    max_new_tokens: int = 96
    batch_size: int = 8


@torch.inference_mode()
def answer_nll(model: Any, tokenizer: Any, conversations: Sequence[Sequence[Message]], batch_size: int) -> pd.DataFrame:
    """Summed NLL and token count of each reference answer (with its EOS) given its prompt."""
    device = next(model.parameters()).device
    examples = [render_training_example(tokenizer, messages) for messages in conversations]
    rows = []
    for start in range(0, len(examples), batch_size):
        batch = {
            k: v.to(device) for k, v in collate(examples[start : start + batch_size], tokenizer.pad_token_id).items()
        }
        nll, count, _ = answer_token_losses(model, batch)
        rows += [{"nll_sum": float(a), "answer_tokens": int(b)} for a, b in zip(nll, count)]
    return pd.DataFrame(rows)


def evaluate_contender(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    settings: EvaluationSettings,
    on_progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Per-item question, reference, NLL, generation and overlap with the reference answer."""
    scores = answer_nll(model, tokenizer, conversations, settings.batch_size)
    prompts = [render_prompt_ids(tokenizer, messages[:-1]) for messages in conversations]
    generations = generate_batch(
        model, tokenizer, prompts, settings.max_new_tokens, batch_size=settings.batch_size, on_batch=on_progress
    )
    references = [messages[-1]["content"] for messages in conversations]
    return scores.assign(
        question=[messages[-2]["content"] for messages in conversations],
        reference=references,
        generation=generations,
        rouge_l=[rouge_l_f1(g, r) for g, r in zip(generations, references)],
        token_f1=[token_f1(g, r) for g, r in zip(generations, references)],
    )


def summarize(per_item: pd.DataFrame) -> dict[str, float]:
    """Token-weighted mean NLL (so long answers count per token), its perplexity, mean overlaps."""
    mean_nll = per_item["nll_sum"].sum() / max(per_item["answer_tokens"].sum(), 1)
    return {
        "nll": float(mean_nll),
        "perplexity": float(math.exp(min(mean_nll, 50.0))),
        "rouge_l": float(per_item["rouge_l"].mean()),
        "token_f1": float(per_item["token_f1"].mean()),
    }


def compare_contenders(
    model: PeftModel,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    settings: EvaluationSettings,
    adapter_names: Sequence[str],
    on_progress: Callable[[str, int], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Every contender from one loaded model: "base" is the adapters switched off, the rest are named adapters."""
    chosen = list(conversations)[: settings.max_examples]
    results = {}
    for name in ("base", *adapter_names):
        report = partial(on_progress, name) if on_progress else None
        if name == "base":
            with model.disable_adapter():
                results[name] = evaluate_contender(model, tokenizer, chosen, settings, report)
        else:
            model.set_adapter(name)
            results[name] = evaluate_contender(model, tokenizer, chosen, settings, report)
    return results
