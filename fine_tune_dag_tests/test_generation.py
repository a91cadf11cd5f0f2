"""generate_batch against plain one-prompt-at-a-time `model.generate`: left padding, prompts read in groups
of similar length, EOS and stop strings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fine_tune_dag.core.modeling.chat import chat_messages, render_prompt_ids
from fine_tune_dag.core.modeling.generation import (
    continuation_text,
    cut_at_stop,
    generate_batch,
    length_groups,
    prefilled_cache,
)
from fine_tune_dag.core.modeling.models import load_causal_lm

QUESTIONS = [
    "Why?",
    "Why do you oil the chain before the long ride in winter?",
    "What do the bees do when it is cold and the river is loud and the wind is honest?",
    "Q: Why ride slowly?",
    "Here is the thing",
    "Tell me all of it: " + "the chain wears slowly, then all at once, and the bees are quiet in the cold. " * 6,
]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    loaded = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():  # make the random model's outputs depend on its input
        for parameter in loaded.parameters():
            parameter.mul_(25)
    return loaded


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer: Any) -> list[list[int]]:
    rendered = [render_prompt_ids(tiny_tokenizer, chat_messages("You are me.", q)) for q in QUESTIONS]
    assert len({len(p) for p in rendered}) == len(rendered)  # every batch needs left padding
    return rendered


def alone(model: Any, tokenizer: Any, prompt: list[int], stop_strings: list[str] | None = None) -> list[int]:
    """Greedy ids of one unpadded prompt through transformers directly (its own stop strings when given),
    up to and with the EOS that ended it."""
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            stop_strings=stop_strings,
            tokenizer=tokenizer if stop_strings else None,
        )
    return out[0, len(prompt) :].tolist()


def forward_passes(model: Any, work: Callable[[], object]) -> int:
    """How many times `work` ran the model: one per generated token, the first on the prompt."""
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        work()
    finally:
        hook.remove()
    return len(calls)


def plain_token(tokenizer: Any, ids: list[int], skip: int = 2) -> tuple[int, str]:
    """A generated token after the first `skip` that decodes to letters only, to stop on."""
    for position in range(skip, len(ids)):
        text = tokenizer.decode([ids[position]])
        if text.strip().isalpha() and text.isascii():
            return position, text
    pytest.skip("the random model produced no plain token to stop on")


def test_length_groups_split_where_one_padded_pass_would_waste_much():
    assert length_groups([40, 60, 72, 300, 310, 400]) == [[0, 1, 2], [3, 4], [5]]
    assert length_groups([5, 20, 36]) == [[0, 1, 2]]  # short prompts stay in one pass


def test_batched_greedy_output_equals_one_at_a_time(model, tiny_tokenizer, prompts):
    """Left padding, and the long prompt's cache computed apart from the short ones' and joined to theirs."""
    assert prefilled_cache(model, prompts, tiny_tokenizer.pad_token_id) is not None
    expected = [continuation_text(tiny_tokenizer, alone(model, tiny_tokenizer, p), ()) for p in prompts]
    assert all(expected)
    for batch_size in (1, 3, len(prompts)):  # several batches, one padded batch, each prompt alone
        assert generate_batch(model, tiny_tokenizer, prompts, NEW_TOKENS, batch_size=batch_size) == expected


def test_stop_string_cuts_the_text_and_ends_the_row(model, tiny_tokenizer, prompts):
    ids = [alone(model, tiny_tokenizer, p) for p in prompts]
    position, stop = plain_token(tiny_tokenizer, ids[1])
    full = [tiny_tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    batched = generate_batch(model, tiny_tokenizer, prompts, NEW_TOKENS, batch_size=3, stop_strings=[stop])
    assert batched == [cut_at_stop(text, [stop]).strip() for text in full]
    assert stop not in batched[1] and batched[1] == tiny_tokenizer.decode(ids[1][:position]).strip()

    def stop_alone() -> list[str]:
        return generate_batch(model, tiny_tokenizer, [prompts[1]], NEW_TOKENS, stop_strings=[stop])

    assert forward_passes(model, stop_alone) == position + 1  # no step after the one that completed the stop


def test_stop_string_must_lie_in_the_generated_text(model, tiny_tokenizer, prompts):
    """The prompt ends with the template's newline: a stop string that starts there is not a stop."""
    ids = alone(model, tiny_tokenizer, prompts[1])
    first = tiny_tokenizer.decode(ids[:1])
    stop = "\n" + first
    assert tiny_tokenizer.decode(prompts[1]).endswith("\n") and stop not in tiny_tokenizer.decode(ids)
    assert len(alone(model, tiny_tokenizer, prompts[1], stop_strings=[stop])) == 1  # as transformers has it
    assert generate_batch(model, tiny_tokenizer, [prompts[1]], NEW_TOKENS, stop_strings=[stop]) == [
        continuation_text(tiny_tokenizer, ids, ())
    ]


def test_eos_ends_one_row_and_leaves_the_others(model, tiny_tokenizer, prompts):
    ids = [alone(model, tiny_tokenizer, p) for p in prompts]
    position, _ = plain_token(tiny_tokenizer, ids[3])
    eos = ids[3][position]
    if eos in ids[3][:position] or any(eos in other for i, other in enumerate(ids) if i != 3):
        pytest.skip("the chosen token also appears elsewhere")
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)  # a model that ends its answer there
    assert tokenizer.eos_token_id == eos
    batched = generate_batch(model, tokenizer, prompts, NEW_TOKENS, batch_size=len(prompts))
    assert batched[3] == tiny_tokenizer.decode(ids[3][:position]).strip()
    assert forward_passes(model, lambda: generate_batch(model, tokenizer, [prompts[3]], NEW_TOKENS)) == position + 1
    others = [continuation_text(tiny_tokenizer, i, ()) for i in ids]
    assert batched[:3] + batched[4:] == others[:3] + others[4:]
