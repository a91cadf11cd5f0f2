"""LoRA supervised fine-tuning with answer-only loss, in a small explicit training loop.

Conventions follow TRL's SFT (prompt/completion loss on the completion only, `loss`,
`mean_token_accuracy` and `learning_rate` logged per step); the loop is our own so that the
label mask, EOS handling, batching and precision are visible and tested.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from fine_tune_dag.core.common.chat import Message, TokenizedExample, render_training_example
from fine_tune_dag.core.common.memory import freed_tensors_returned, release_free_heap
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer
from fine_tune_dag.core.models.memory_budget import resolve_memory_budget
from fine_tune_dag.core.training.loop import (
    TrainingRun,
    answer_token_losses,
    base_precision,
    collate,
    fit_memory_budget,
    held_out_loss,
    length_grouped_batches,
    optimizer_and_schedule,
    seeded_device,
)
from fine_tune_dag.core.training.sft_config import TrainingSettings


def mix_weights(settings: TrainingSettings) -> dict[str, float]:
    """The mix weights by source name (`core.dataset.mixing.MIX_SOURCES`)."""
    return {
        "qa": settings.mix_qa,
        "pretrain": settings.mix_pretrain,
        "write": settings.mix_write,
        "continue": settings.mix_continue,
        "retrieval_qa": settings.mix_retrieval_qa,
    }


def tokenize_conversations(
    tokenizer: Any, conversations: Sequence[Sequence[Message]], max_seq_length: int
) -> tuple[list[TokenizedExample], int]:
    """Render every conversation; ones longer than `max_seq_length` are dropped (and counted), not cut,
    because a truncated answer would teach the model to stop mid-sentence without EOS."""
    kept, dropped = [], 0
    for messages in conversations:
        example = render_training_example(tokenizer, messages)
        if len(example.input_ids) > max_seq_length:
            dropped += 1
            continue
        if sum(label != -100 for label in example.labels) < 2:
            raise ValueError(f"example has no answer tokens to learn: {messages[-2]['content'][:80]!r}")
        kept.append(example)
    return kept, dropped


def split_held_out(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices to train on and to hold out; nothing is held out from fewer than 4 examples."""
    held = round(count * fraction) if count >= 4 else 0
    chosen = set(random.Random(seed).sample(range(count), held))
    return [i for i in range(count) if i not in chosen], sorted(chosen)


def lora_config(settings: TrainingSettings) -> LoraConfig:
    """The adapter's peft config; shared with the benchmark so TRL trains the very same adapter."""
    modules = list(settings.target_modules)
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear" if modules == ["all-linear"] else modules,
        task_type="CAUSAL_LM",
    )


@freed_tensors_returned()  # a step frees GiBs of activations whose shapes change with the batch
def train_lora(
    model_path: Path,
    conversations: Sequence[Sequence[Message]],
    settings: TrainingSettings,
    on_log: Callable[[dict[str, float], int], None] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainingRun:
    """Train a LoRA adapter on chat conversations; `on_log(metrics, total_steps)` reports progress.

    With `checkpoint_dir`, the whole loop state is saved every `checkpoint_steps` steps and a killed
    run (a preempted GPU, an out-of-memory kill) continues from the last one on the same inputs.
    """
    budget = resolve_memory_budget(settings.memory_budget_gb)  # before the weights take their share
    device, dtype = seeded_device(settings)
    tokenizer = load_tokenizer(model_path)
    examples, dropped = tokenize_conversations(tokenizer, conversations, settings.max_seq_length)
    if not examples:
        raise ValueError(
            f"nothing to train on: {len(conversations)} conversations, {dropped} longer than "
            f"max_seq_length={settings.max_seq_length}"
        )
    train_ids, eval_ids = split_held_out(len(examples), settings.eval_fraction, settings.seed)
    held_out = [examples[i] for i in eval_ids]
    examples = [examples[i] for i in train_ids]
    model = get_peft_model(load_causal_lm(model_path, device, dtype), lora_config(settings))
    plan = fit_memory_budget(model, dtype, settings.batch_size, examples, budget, settings.gradient_checkpointing)
    model.train()
    per_step = settings.batch_size * settings.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(examples) / per_step)
    total_steps = settings.max_steps if settings.max_steps > 0 else max(1, math.ceil(settings.epochs * steps_per_epoch))
    trainable, optimizer, scheduler = optimizer_and_schedule(
        model, settings.learning_rate, settings.weight_decay, settings.lr_scheduler, settings.warmup_ratio, total_steps
    )
    run = TrainingRun(
        model,
        tokenizer,
        settings,
        device,
        str(dtype).removeprefix("torch."),
        examples=len(examples),
        dropped_too_long=dropped,
        eval_examples=len(held_out),
        memory_budget=budget,
        memory_plan=plan,
    )
    eval_every = settings.eval_steps if settings.eval_steps > 0 else steps_per_epoch
    loop = _LoopState()
    if checkpoint_dir is not None and (checkpoint_dir / _CHECKPOINT_FILE).exists():
        loop = _resume(checkpoint_dir / _CHECKPOINT_FILE, model, optimizer, scheduler, run)
    lengths = [len(e.input_ids) for e in examples]
    started = time.perf_counter() - loop.elapsed_s
    for step in range(loop.step + 1, total_steps + 1):
        while len(loop.micro_batches) < settings.gradient_accumulation_steps:
            loop.micro_batches += length_grouped_batches(lengths, settings.batch_size, settings.seed + loop.epoch)
            loop.epoch += 1
        current, loop.micro_batches = (
            loop.micro_batches[: settings.gradient_accumulation_steps],
            loop.micro_batches[settings.gradient_accumulation_steps :],
        )
        batches = [
            collate([examples[i] for i in rows[start : start + plan.micro_batch]], tokenizer.pad_token_id)
            for rows in current
            for start in range(0, len(rows), plan.micro_batch)
        ]
        # counted on the host before the batches move, so the device is read once a step, not per micro-batch
        answer_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        run.tokens += sum(int(b["attention_mask"].sum()) for b in batches)
        nll_and_correct = torch.zeros(2, device=device)
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with base_precision(model, device, dtype) as autocast:
                with autocast:
                    nll, _, correct = answer_token_losses(model, batch)
                (nll.sum() / answer_tokens).backward()
            nll_and_correct += torch.stack([nll.detach().sum(), correct.sum().float()])
        window_nll, window_correct = nll_and_correct.tolist()
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        learning_rate = scheduler.get_last_lr()[0]  # the rate this step used
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        release_free_heap()
        metrics = {
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "loss": window_nll / max(answer_tokens, 1),
            "mean_token_accuracy": window_correct / max(answer_tokens, 1),
            "learning_rate": learning_rate,
            "tokens_seen": run.tokens,
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        if held_out and (step % eval_every == 0 or step == total_steps):
            metrics["eval_loss"], metrics["eval_token_accuracy"] = held_out_loss(
                model, held_out, settings.batch_size, tokenizer.pad_token_id
            )
            if metrics["eval_loss"] < run.best_eval_loss:  # a NaN loss (diverged) never counts as better
                run.best_eval_loss, loop.evaluations_without_gain = metrics["eval_loss"], 0
                if settings.early_stopping_patience:
                    loop.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            else:
                loop.evaluations_without_gain += 1
        run.steps.append(metrics)
        if on_log is not None and (step % settings.logging_steps == 0 or step == total_steps):
            on_log(metrics, total_steps)
        if settings.early_stopping_patience and loop.evaluations_without_gain >= settings.early_stopping_patience:
            run.stopped_early_at = step
            break
        if checkpoint_dir is not None and settings.checkpoint_steps and step % settings.checkpoint_steps == 0:
            loop.step, loop.elapsed_s = step, time.perf_counter() - started
            _save_checkpoint(checkpoint_dir / _CHECKPOINT_FILE, loop, model, optimizer, scheduler, run)
    if loop.best_state is not None and run.stopped_early_at:
        model.load_state_dict(loop.best_state, strict=False)  # the adapter as it was at its best eval loss
    run.seconds = time.perf_counter() - started
    model.eval()
    return run


_CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class _LoopState:
    """What the loop carries from step to step, beyond the model, optimizer and scheduler."""

    step: int = 0
    epoch: int = 0
    micro_batches: list[list[int]] = field(default_factory=list)
    evaluations_without_gain: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    elapsed_s: float = 0.0


def _save_checkpoint(
    path: Path, loop: _LoopState, model: PeftModel, optimizer: Any, scheduler: Any, run: TrainingRun
) -> None:
    """Written beside and renamed over the last one, so a kill mid-write leaves the previous intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "loop": asdict(loop),
        "adapter": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "steps": run.steps,
        "tokens": run.tokens,
        "best_eval_loss": run.best_eval_loss,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def _resume(path: Path, model: PeftModel, optimizer: Any, scheduler: Any, run: TrainingRun) -> _LoopState:
    state = torch.load(path, weights_only=False)  # our own file, written by `_save_checkpoint`
    model.load_state_dict(state["adapter"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    run.steps, run.tokens, run.best_eval_loss = state["steps"], state["tokens"], state["best_eval_loss"]
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    loop = _LoopState(**state["loop"])
    run.resumed_from_step = loop.step
    return loop
