import csv
import json
from dataclasses import replace

import pytest
import torch
from peft import PeftModel

import fine_tune_dag.core.training.sft as training
from fine_tune_dag.core.common.chat import chat_messages, render_prompt_ids, render_training_example
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.measures import evaluate_contender
from fine_tune_dag.core.generation.batch import generate_batch
from fine_tune_dag.core.llm.local import LocalLLM
from fine_tune_dag.core.models.loading import load_causal_lm, select_device
from fine_tune_dag.core.training.loop import (
    collate,
    length_grouped_batches,
    next_adapter_version,
    save_adapter,
)
from fine_tune_dag.core.training.sft import TrainingSettings, tokenize_conversations, train_lora

CONVERSATIONS = [
    chat_messages(
        "You are me.",
        f"Why do you oil the chain, part {i}?",
        "Here is the thing: the chain wears slowly." * (1 + i % 3),
    )
    for i in range(12)
]


def test_labels_mask_the_prompt_and_end_with_eos(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id  # the pitfall case, on purpose
    for messages in CONVERSATIONS:
        example = render_training_example(tiny_tokenizer, messages)
        assert example.labels[: example.prompt_length] == [-100] * example.prompt_length
        assert example.labels[example.prompt_length :] == example.input_ids[example.prompt_length :]
        assert example.labels[-1] == tiny_tokenizer.eos_token_id
        assert sum(label != -100 for label in example.labels) >= 2


def test_collate_masks_padding_by_position_not_by_id(tiny_tokenizer):
    examples, _ = tokenize_conversations(tiny_tokenizer, CONVERSATIONS[:3], 512)
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        assert batch["labels"][row, n - 1] == tiny_tokenizer.eos_token_id  # EOS survives though pad == EOS
        assert (batch["labels"][row, n:] == -100).all()
        assert batch["attention_mask"][row].sum() == n


def test_too_long_examples_are_dropped_and_counted(tiny_tokenizer):
    examples, dropped = tokenize_conversations(tiny_tokenizer, CONVERSATIONS, max_seq_length=45)
    assert dropped > 0 and all(len(e.input_ids) <= 45 for e in examples)


def test_length_grouped_batches_cover_every_example_once():
    lengths = [5, 50, 7, 48, 6, 49, 30, 31]
    batches = length_grouped_batches(lengths, 2, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert batches == length_grouped_batches(lengths, 2, seed=1)


def test_prompt_tokens_identical_in_training_evaluation_and_generation(tiny_model_dir, tiny_tokenizer, monkeypatch):
    """The one renderer feeds all three paths: capture what each actually sends to the model."""
    messages = CONVERSATIONS[0]
    expected = render_prompt_ids(tiny_tokenizer, messages[:-1])
    seen: dict[str, list[int]] = {}
    model = load_causal_lm(tiny_model_dir)

    def capture(name):
        def hook(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and name not in seen:
                mask = kwargs.get("attention_mask")
                row = ids[0] if mask is None else ids[0][mask[0].bool()]
                seen[name] = row.tolist()

        return hook

    handle = model.get_decoder().register_forward_pre_hook(capture("evaluation"), with_kwargs=True)
    evaluate_contender(model, tiny_tokenizer, [messages], EvaluationSettings(max_new_tokens=2), ["source"], ["a.md"])
    handle.remove()

    generation_model = load_causal_lm(tiny_model_dir)
    generation_model.get_decoder().register_forward_pre_hook(capture("generation"), with_kwargs=True)
    local = LocalLLM(tiny_model_dir, device="cpu", dtype="float32")
    local._loaded = (generation_model, tiny_tokenizer)
    local.complete([LLMRequest(tuple((m["role"], m["content"]) for m in messages[:-1]), "t", "1", 2)])

    training_model = load_causal_lm(tiny_model_dir)
    training_model.get_decoder().register_forward_pre_hook(capture("training"), with_kwargs=True)
    monkeypatch.setattr(training, "load_causal_lm", lambda *a, **k: training_model)
    train_lora(tiny_model_dir, [messages], TrainingSettings(max_steps=1, batch_size=1, dtype="float32"))

    assert seen["generation"] == expected
    assert seen["evaluation"][: len(expected)] == expected
    assert seen["training"][: len(expected)] == expected


def test_training_lowers_answer_loss_and_saves_versions(tiny_model_dir, tmp_path):
    settings = TrainingSettings(max_steps=12, batch_size=4, learning_rate=1e-2, logging_steps=3, dtype="float32")
    logged = []
    run = train_lora(tiny_model_dir, CONVERSATIONS, settings, on_log=lambda m, total: logged.append((m, total)))
    assert [m["step"] for m, _ in logged] == [3, 6, 9, 12] and logged[0][1] == 12
    assert [s["step"] for s in run.steps] == list(range(1, 13))  # every step recorded
    assert run.steps[-1]["loss"] < run.steps[0]["loss"]
    # settings.device is "auto": the run reports the device selected here, and its weights live there
    assert run.device == select_device() == next(run.model.parameters()).device.type and run.tokens > 0
    first = next_adapter_version(tmp_path, "abcdef123456")
    folder = save_adapter(run, tmp_path, first, {"dataset_version": "abcdef123456"})
    second = next_adapter_version(tmp_path, "abcdef123456")
    assert second != first
    save_adapter(run, tmp_path, second, {"dataset_version": "abcdef123456"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first, second])
    config = json.loads((folder / "training_config.json").read_text())
    assert config["dataset_version"] == "abcdef123456" and config["settings"]["lora_r"] == 16
    with (folder / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"step", "loss", "mean_token_accuracy", "learning_rate"} <= set(rows[0])
    reloaded = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), folder)
    assert any("lora" in name for name, _ in reloaded.named_parameters())


def test_training_is_seeded(tiny_model_dir):
    settings = TrainingSettings(max_steps=3, batch_size=4, dtype="float32", logging_steps=1)
    a = train_lora(tiny_model_dir, CONVERSATIONS, settings).steps
    b = train_lora(tiny_model_dir, CONVERSATIONS, settings).steps
    assert [s["loss"] for s in a] == pytest.approx([s["loss"] for s in b])


def test_batched_generation_matches_one_at_a_time(tiny_model_dir, tiny_tokenizer):
    torch.manual_seed(3)
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():  # make the random model's outputs depend on its input
        for parameter in model.parameters():
            parameter.mul_(25)
    prompts = [render_prompt_ids(tiny_tokenizer, m[:-1]) for m in CONVERSATIONS[:4]]
    prompts[1] = prompts[1][:-3]  # different lengths force left padding
    batched = generate_batch(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=4)
    single = [generate_batch(model, tiny_tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_held_out_loss_is_measured_during_training(tiny_model_dir):
    settings = TrainingSettings(
        max_steps=4, batch_size=4, learning_rate=1e-2, eval_fraction=0.25, eval_steps=2, dtype="float32"
    )
    run = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    assert (
        run.eval_examples == round(len(CONVERSATIONS) * 0.25) and run.examples == len(CONVERSATIONS) - run.eval_examples
    )
    measured = [s["step"] for s in run.steps if "eval_loss" in s]
    assert measured == [2, 4]
    assert run.best_eval_loss == min(s["eval_loss"] for s in run.steps if "eval_loss" in s)
    assert all(0 <= s["eval_token_accuracy"] <= 1 for s in run.steps if "eval_loss" in s)


def test_early_stopping_stops_and_keeps_the_best_adapter(tiny_model_dir, monkeypatch):
    """The held-out loss is scripted (best at step 2, then worse twice), so the curve is the same on every machine."""
    scripted = iter([5.0, 4.0, 4.5, 4.6, 3.0, 2.0, 1.0, 0.5])
    snapshots = []

    def scripted_held_out_loss(model, *args):
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return next(scripted), 0.5

    monkeypatch.setattr(training, "held_out_loss", scripted_held_out_loss)
    settings = TrainingSettings(
        max_steps=8,
        batch_size=4,
        learning_rate=0.05,
        warmup_ratio=0.0,
        eval_fraction=0.25,
        eval_steps=1,
        early_stopping_patience=2,
        dtype="float32",
    )
    run = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    assert run.stopped_early_at == 4 and len(run.steps) == 4 and run.best_eval_loss == 4.0
    kept = {n: p for n, p in run.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(kept[n], snapshots[1][n]) for n in kept)  # the weights evaluated at step 2
    assert not all(torch.equal(kept[n], snapshots[3][n]) for n in kept)  # not the last step's


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_losses(tiny_model_dir, monkeypatch):
    """Checkpointing trades memory for compute only: same dropout masks, same gradients, same losses."""
    settings = TrainingSettings(max_steps=4, batch_size=4, learning_rate=1e-2, eval_fraction=0.0, dtype="float32")
    layer_calls = {False: 0, True: 0}
    losses = {}
    for checkpointed in (False, True):
        model = load_causal_lm(tiny_model_dir)
        activation = model.get_decoder().layers[0].mlp.act_fn  # module hooks do not fire in the recompute

        def counted(*args, forward=activation.forward, checkpointed=checkpointed):
            layer_calls[checkpointed] += 1
            return forward(*args)

        activation.forward = counted
        monkeypatch.setattr(training, "load_causal_lm", lambda *a, model=model, **k: model)
        run = train_lora(tiny_model_dir, CONVERSATIONS, replace(settings, gradient_checkpointing=checkpointed))
        losses[checkpointed] = [s["loss"] for s in run.steps]
    assert layer_calls[True] == 2 * layer_calls[False]  # each layer ran again in the backward pass
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_bf16_base_weights_train_a_float32_adapter_like_float32(tiny_model_dir):
    """Autocast computes the adapter in bf16 beside bf16 base weights; its weights stay float32 and learn the same,
    with gradient checkpointing too (its recompute in backward must see the same dtypes as the forward)."""
    settings = TrainingSettings(max_steps=4, batch_size=4, learning_rate=1e-2, dtype="float32")
    full = train_lora(tiny_model_dir, CONVERSATIONS, settings)
    mixed = train_lora(tiny_model_dir, CONVERSATIONS, replace(settings, dtype="bfloat16"))
    checkpointed = train_lora(
        tiny_model_dir, CONVERSATIONS, replace(settings, dtype="bfloat16", gradient_checkpointing=True)
    )
    assert mixed.dtype == "bfloat16"
    adapter = [p for name, p in mixed.model.named_parameters() if "lora_" in name]
    assert adapter and all(p.dtype == torch.float32 for p in adapter)
    assert [s["loss"] for s in mixed.steps] == pytest.approx([s["loss"] for s in full.steps], rel=2e-2)
    assert [s["loss"] for s in checkpointed.steps] == pytest.approx([s["loss"] for s in mixed.steps], rel=1e-3)
