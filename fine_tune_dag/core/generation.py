"""Batched generation for decoder-only models: left padding, KV cache, stop at EOS per sequence."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding would put pad tokens between prompt and continuation; decoder-only models need left."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width - len(prompt) :] = 1
    return input_ids, attention


@torch.inference_mode()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decode continuations of token-id prompts, batched by similar length to waste little padding.

    Sampling is seeded per call so a cached request and a fresh one agree.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    sampling = temperature > 0
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention = left_pad([prompts[i] for i in rows], tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        continuations = generated[:, input_ids.shape[1] :]
        for row, tokens in zip(rows, continuations):
            outputs[row] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if on_batch is not None:
            on_batch(len(rows))
    return outputs
