"""The memory budget: a default that follows the machine, estimates that match what a step really keeps, plans that
pick the cheapest way to fit, and training, scoring and generation that follow the plan without changing what they
compute."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from fine_tune_dag.core.common.chat import render_prompt_ids
from fine_tune_dag.core.evaluation import measures as evaluation
from fine_tune_dag.core.evaluation.measures import answer_nll
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.generation.transformers import TransformersEngine
from fine_tune_dag.core.models import memory_budget
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer
from fine_tune_dag.core.models.memory_budget import (
    GIB,
    MEMORY_BUDGET_FLOOR_GB,
    MemoryBudget,
    ModelShape,
    decoding_bytes,
    fitting_rows,
    plan_training,
    resolve_memory_budget,
    training_bytes,
)
from fine_tune_dag.core.training import loop
from fine_tune_dag.core.training.loop import answer_token_losses, base_precision, collate, save_adapter
from fine_tune_dag.core.training.sft import lora_config, tokenize_conversations, train_lora
from fine_tune_dag.core.training.sft_config import TrainingSettings
from fine_tune_dag_tests.training.test_chat_and_training import CONVERSATIONS

# SmolLM2-135M, the bundled model
BUNDLED = ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)
NO_BUDGET = 1e6  # GB: every plan fits
NOTHING_FITS = 1e-9


def machine_with(monkeypatch: pytest.MonkeyPatch, available_gib: float | None) -> None:
    """A machine with this much memory available (None: one that does not say)."""
    available = None if available_gib is None else int(available_gib * GIB)
    monkeypatch.setattr(memory_budget, "available_memory_bytes", lambda: available)


def test_the_default_budget_is_half_the_memory_available(monkeypatch):
    machine_with(monkeypatch, 20)
    assert resolve_memory_budget(None) == MemoryBudget(10.0, "half of the 20.0 GiB available when the stage started")


def test_the_default_budget_never_goes_under_the_floor(monkeypatch):
    assert MEMORY_BUDGET_FLOOR_GB == 2.5
    machine_with(monkeypatch, 3)
    assert resolve_memory_budget(None) == MemoryBudget(2.5, "the 2.5 GB floor: 3.0 GiB available")
    machine_with(monkeypatch, 5)  # half of it is the floor exactly
    assert resolve_memory_budget(None) == MemoryBudget(2.5, "half of the 5.0 GiB available when the stage started")
    machine_with(monkeypatch, None)
    assert resolve_memory_budget(None) == MemoryBudget(
        2.5, "the 2.5 GB floor: this system does not say what memory is available"
    )


@pytest.mark.parametrize("available_gib", [None, 0.5, 3, 20, 1024])
def test_an_explicit_budget_wins_whatever_is_available(monkeypatch, available_gib):
    machine_with(monkeypatch, available_gib)
    assert resolve_memory_budget(1.0) == MemoryBudget(1.0, "explicit")


def test_training_plans_within_the_machines_budget_and_says_which_and_why(tiny_model_dir: Path, monkeypatch, tmp_path):
    """A process that already holds 2.5 GiB: the floor leaves nothing, so one row at a time with checkpointing;
    half of 20 GiB leaves 7.5 GiB, where the configured 4 rows fit without checkpointing. The adapter's
    `training_config.json` (and its metadata, `TrainingRun.memory_budget_entries`) say which budget and why."""
    monkeypatch.setattr(memory_budget, "resident_bytes", lambda: int(2.5 * GIB))
    settings = TrainingSettings(max_steps=1, batch_size=4, dtype="float32", logging_steps=1)
    assert settings.memory_budget_gb is None

    machine_with(monkeypatch, 20)
    roomy = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    assert (roomy.memory_plan.micro_batch, roomy.memory_plan.gradient_checkpointing) == (4, False)
    assert roomy.memory_plan.available_bytes == int(7.5 * GIB)
    saved = json.loads((save_adapter(roomy, tmp_path, "roomy", {}) / "training_config.json").read_text())
    assert (saved["memory_budget_gb"], saved["memory_budget_reason"]) == (
        10.0,
        "half of the 20.0 GiB available when the stage started",
    )
    assert saved["settings"]["memory_budget_gb"] is None  # the setting stays automatic; the run says what it was

    machine_with(monkeypatch, 3)
    tight = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    assert (tight.memory_plan.micro_batch, tight.memory_plan.gradient_checkpointing) == (1, True)
    assert tight.memory_budget_entries() == {
        "memory_budget_gb": 2.5,
        "memory_budget_reason": "the 2.5 GB floor: 3.0 GiB available",
    }


def test_the_estimate_of_a_training_step_matches_what_autograd_keeps():
    """Bytes saved for backward by a LoRA step in bfloat16 (parameters left out) against `training_bytes`."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = get_peft_model(LlamaForCausalLM(config).to(torch.bfloat16), lora_config(TrainingSettings()))
    model.train()
    rows, length = 4, 96
    batch = {
        "input_ids": torch.randint(0, 2048, (rows, length)),
        "attention_mask": torch.ones(rows, length, dtype=torch.long),
        "labels": torch.randint(0, 2048, (rows, length)),
    }
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        with base_precision(model, "cpu", torch.bfloat16) as autocast, autocast:
            answer_token_losses(model, batch)
    estimate = training_bytes(ModelShape.of(config), rows, length, length - 1, 2, checkpointing=False)
    assert 0.7 < sum(saved.values()) / estimate < 1.3, (sum(saved.values()), estimate)


def test_a_plan_keeps_the_batch_then_checkpoints_then_halves_the_micro_batch():
    def plan(available_gib: float) -> tuple[int, bool]:
        chosen = plan_training(BUNDLED, 2, 8, 507, 120, int(available_gib * GIB))
        return chosen.micro_batch, chosen.gradient_checkpointing

    # with the 1.5× headroom: 6.8 GiB as configured, 0.55 checkpointed, 0.28 at 4 rows, 0.14 at 2, 0.07 at 1
    assert plan(16) == (8, False)
    assert plan(2.5) == (8, True)
    assert plan(0.4) == (4, True)
    assert plan(0.2) == (2, True)
    assert plan(0.1) == (1, True)
    assert plan(0) == (1, True)  # nothing fits: the least there is
    assert plan_training(BUNDLED, 2, 8, 507, 120, 16 * GIB, checkpointing=True).gradient_checkpointing


def test_decoding_rows_shrink_until_the_cache_fits():
    per_row = decoding_bytes(BUNDLED, 1, 1500, 96, 4)
    assert fitting_rows(8, lambda rows: decoding_bytes(BUNDLED, rows, 1500, 96, 4), 100 * per_row) == 8
    rows = fitting_rows(8, lambda rows: decoding_bytes(BUNDLED, rows, 1500, 96, 4), int(3.2 * per_row))
    assert rows == 2  # 2 × 1.5 headroom = 3 rows' worth fits in 3.2; 3 would need 4.5
    assert fitting_rows(8, lambda rows: decoding_bytes(BUNDLED, rows, 1500, 96, 4), 0) == 1


def test_checkpointing_switched_on_by_the_budget_changes_no_number(tiny_model_dir: Path, monkeypatch):
    settings = TrainingSettings(max_steps=3, batch_size=4, dtype="float32", logging_steps=1, memory_budget_gb=NO_BUDGET)
    plain = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    # a plan that needs checkpointing but keeps the batch, whatever the tiny model's real sizes
    monkeypatch.setattr(loop, "plan_training", lambda *args, **kwargs: loop.TrainingPlan(4, True, 0, 0))
    checkpointed = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    assert not plain.memory_plan.gradient_checkpointing and checkpointed.memory_plan.gradient_checkpointing
    assert any(getattr(module, "gradient_checkpointing", False) for module in checkpointed.model.modules())
    assert [s["loss"] for s in checkpointed.steps] == [s["loss"] for s in plain.steps]  # dropout masks replayed


def test_a_budget_too_small_for_the_batch_trains_the_same_steps_in_micro_batches(tiny_model_dir: Path):
    settings = TrainingSettings(
        max_steps=3, batch_size=4, dtype="float32", logging_steps=1, lora_dropout=0.0, memory_budget_gb=NO_BUDGET
    )
    whole = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    split = train_lora(tiny_model_dir, CONVERSATIONS, replace(settings, memory_budget_gb=NOTHING_FITS))
    assert (whole.memory_plan.micro_batch, split.memory_plan.micro_batch) == (4, 1)
    assert split.memory_plan.gradient_checkpointing
    assert [s["tokens_seen"] for s in split.steps] == [s["tokens_seen"] for s in whole.steps]
    for a, b in zip(whole.steps, split.steps):  # the same examples a step, the loss over all of their answers
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)


def test_scoring_without_gradients_reads_the_logits_in_chunks_and_gets_the_same_losses(
    tiny_model_dir: Path, monkeypatch
):
    model = load_causal_lm(tiny_model_dir).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    examples, _ = tokenize_conversations(tokenizer, CONVERSATIONS, 512)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.inference_mode():
        whole = answer_token_losses(model, batch)
        vocabulary = model.get_output_embeddings().out_features
        monkeypatch.setattr(loop, "OUTPUT_CHUNK_BYTES", 3 * 4 * vocabulary)  # three positions a chunk
        chunked = answer_token_losses(model, batch)
    assert int(whole[1].sum()) > 3 * 10  # many chunks
    for a, b in zip(whole, chunked):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-5)


def test_the_training_loss_keeps_only_the_logits_for_backward_and_changes_no_bit():
    torch.manual_seed(0)
    states = torch.randn(37, 16, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(500, 16, dtype=torch.bfloat16)
    wanted = torch.randint(0, 500, (37,))
    row_weights = torch.rand(37)
    whole = torch.nn.functional.cross_entropy((states @ weight.T).float(), wanted, reduction="none")
    (whole_grad,) = torch.autograd.grad((whole * row_weights).sum(), states)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        nll, right = loop._ChunkedCrossEntropy.apply(states @ weight.T, wanted, 8)  # five chunks
    (grad,) = torch.autograd.grad((nll * row_weights).sum(), states)
    assert torch.equal(nll, whole) and torch.equal(grad, whole_grad)
    assert torch.equal(right, (states @ weight.T).float().argmax(-1) == wanted)
    # no float32 log-probabilities over the vocabulary wait for backward, only the bfloat16 logits
    assert [t.dtype for t in saved if t.shape == (37, 500)] == [torch.bfloat16]


def test_generation_and_scoring_take_fewer_rows_when_the_budget_is_short(tiny_model_dir: Path, monkeypatch):
    model = load_causal_lm(tiny_model_dir).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    prompts = [render_prompt_ids(tokenizer, m[:-1]) for m in CONVERSATIONS]
    batches: list[int] = []
    real_rows = TransformersEngine.generate_rows

    def spy(self, requests, *args, **kwargs):
        batches.append(len(requests))
        return real_rows(self, requests, *args, **kwargs)

    monkeypatch.setattr(TransformersEngine, "generate_rows", spy)
    roomy = generate_batch(model, tokenizer, prompts, 8, batch_size=4, memory_budget=resolve_memory_budget(NO_BUDGET))
    tight = generate_batch(model, tokenizer, prompts, 8, batch_size=4, memory_budget=resolve_memory_budget(NOTHING_FITS))
    assert batches == [4] * math.ceil(len(prompts) / 4) + [1] * len(prompts)  # of 4, then one at a time
    assert tight == roomy  # float32 answers do not depend on the batch

    rows: list[int] = []
    real_collate = evaluation.collate
    monkeypatch.setattr(
        evaluation, "collate", lambda examples, pad: rows.append(len(examples)) or real_collate(examples, pad)
    )
    scored = answer_nll(model, tokenizer, CONVERSATIONS, 4, resolve_memory_budget(NO_BUDGET))
    assert max(rows) == 4
    rows.clear()
    one_at_a_time = answer_nll(model, tokenizer, CONVERSATIONS, 4, resolve_memory_budget(NOTHING_FITS))
    assert set(rows) == {1}
    assert (scored["answer_tokens"] == one_at_a_time["answer_tokens"]).all()
    assert scored["nll_sum"].to_numpy() == pytest.approx(one_at_a_time["nll_sum"].to_numpy(), rel=1e-5)
