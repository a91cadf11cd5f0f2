"""Direct preference optimization of the champion adapter on chosen/rejected answer pairs.

The loss is DPO's sigmoid loss (Rafailov et al. 2023, as TRL's `DPOTrainer` computes it by default):
-log σ(β·((log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected)))), with summed
answer-token log-probabilities. The policy is the champion adapter itself, trained further; the reference
is the same adapter before the first step, its log-probabilities computed once up front, so no second
model is held in memory. Logged per step under TRL's names (`rewards/chosen`, `rewards/margins`, …).

Pairs render through the one chat renderer and the supervised loop's answer-only log-probabilities, so
DPO sees exactly the prompts training and inference see.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from peft import PeftModel

from fine_tune_dag.core.common.chat import Message, TokenizedExample, render_training_example
from fine_tune_dag.core.common.memory import freed_tensors_returned, release_free_heap
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer
from fine_tune_dag.core.models.memory_budget import resolve_memory_budget
from fine_tune_dag.core.training.dpo_config import DpoSettings
from fine_tune_dag.core.training.loop import (
    TrainingRun,
    answer_token_losses,
    base_precision,
    collate,
    fit_memory_budget,
    optimizer_and_schedule,
    seeded_device,
)

PreferencePair = tuple[TokenizedExample, TokenizedExample]  # chosen, rejected


def tokenize_pairs(
    tokenizer: object, pairs: Sequence[tuple[Sequence[Message], Sequence[Message]]], max_seq_length: int
) -> tuple[list[PreferencePair], int]:
    """Rendered (chosen, rejected) pairs; a pair with either side over `max_seq_length` is dropped (counted)."""
    kept, dropped = [], 0
    for chosen, rejected in pairs:
        pair = (render_training_example(tokenizer, chosen), render_training_example(tokenizer, rejected))
        if max(len(side.input_ids) for side in pair) > max_seq_length:
            dropped += 1
            continue
        kept.append(pair)
    return kept, dropped


def answer_logps(model: PeftModel, pairs: Sequence[PreferencePair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probabilities of the chosen and the rejected sides, from one forward pass."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate([p[0] for p in pairs] + [p[1] for p in pairs], pad_id).items()}
    nll, _, _ = answer_token_losses(model, batch)
    return -nll[: len(pairs)], -nll[len(pairs) :]


@torch.no_grad()
def reference_logps(
    model: PeftModel, pairs: Sequence[PreferencePair], batch_size: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference policy's log-probabilities: the model as it is now, without dropout."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        c, r = answer_logps(model, pairs[start : start + batch_size], pad_id)
        chosen.append(c.float())
        rejected.append(r.float())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean sigmoid DPO loss and the implicit rewards β·(log π − log π_ref) of each side."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    loss = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


@freed_tensors_returned()  # a step frees GiBs of activations whose shapes change with the batch
def train_dpo(
    model_path: Path,
    adapter_dir: Path,
    pairs: Sequence[tuple[Sequence[Message], Sequence[Message]]],
    settings: DpoSettings,
    on_log: Callable[[dict[str, float], int], None] | None = None,
) -> TrainingRun:
    """Train the adapter in `adapter_dir` (the supervised champion) further on (chosen, rejected)
    conversations; `on_log(metrics, total_steps)` reports progress."""
    budget = resolve_memory_budget(settings.memory_budget_gb)  # before the weights take their share
    device, dtype = seeded_device(settings)
    tokenizer = load_tokenizer(adapter_dir)
    examples, dropped = tokenize_pairs(tokenizer, pairs, settings.max_seq_length)
    if not examples:
        raise ValueError(
            f"no preference pairs to learn from: {len(pairs)} given, {dropped} longer than "
            f"max_seq_length={settings.max_seq_length}"
        )
    base = load_causal_lm(model_path, device, dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    pad_id = tokenizer.pad_token_id
    ref_chosen, ref_rejected = reference_logps(model, examples, settings.batch_size, pad_id)
    sides = [side for pair in examples for side in pair]
    plan = fit_memory_budget(model, dtype, 2 * settings.batch_size, sides, budget, False)
    pairs_per_pass = max(1, plan.micro_batch // 2)  # a pass reads both sides of each pair
    model.train()
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total_steps = max(1, math.ceil(settings.epochs * steps_per_epoch))
    trainable, optimizer, scheduler = optimizer_and_schedule(
        model, settings.learning_rate, 0.0, "linear", settings.warmup_ratio, total_steps
    )
    run = TrainingRun(
        model,
        tokenizer,
        settings,
        device,
        str(dtype).removeprefix("torch."),
        examples=len(examples),
        dropped_too_long=dropped,
        memory_budget=budget,
        memory_plan=plan,
    )
    rng = random.Random(settings.seed)
    order: list[int] = []
    started = time.perf_counter()
    for step in range(1, total_steps + 1):
        if len(order) < settings.batch_size:
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            order += epoch
        rows, order = order[: settings.batch_size], order[settings.batch_size :]
        run.tokens += sum(len(side.input_ids) for i in rows for side in examples[i])
        passes = []
        for start in range(0, len(rows), pairs_per_pass):
            part = rows[start : start + pairs_per_pass]
            with base_precision(model, device, dtype) as autocast:
                with autocast:
                    chosen, rejected = answer_logps(model, [examples[i] for i in part], pad_id)
                loss, chosen_rewards, rejected_rewards = dpo_loss(
                    chosen.float(),
                    rejected.float(),
                    ref_chosen[part].to(device),
                    ref_rejected[part].to(device),
                    settings.beta,
                )
                (loss * (len(part) / len(rows))).backward()  # the step's loss is the mean over all its pairs
            passes.append(
                (
                    loss.detach() * (len(part) / len(rows)),
                    chosen.detach(),
                    rejected.detach(),
                    chosen_rewards,
                    rejected_rewards,
                )
            )
        loss = torch.stack([p[0] for p in passes]).sum()
        chosen, rejected, chosen_rewards, rejected_rewards = (torch.cat([p[k] for p in passes]) for k in range(1, 5))
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        release_free_heap()
        margins = chosen_rewards - rejected_rewards
        metrics = {
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "loss": float(loss.detach()),
            "rewards/chosen": float(chosen_rewards.mean()),
            "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/margins": float(margins.mean()),
            "rewards/accuracies": float((margins > 0).float().mean()),
            "logps/chosen": float(chosen.detach().mean()),
            "logps/rejected": float(rejected.detach().mean()),
            "learning_rate": learning_rate,
            "tokens_seen": run.tokens,
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        run.steps.append(metrics)
        if on_log is not None and (step % settings.logging_steps == 0 or step == total_steps):
            on_log(metrics, total_steps)
    run.seconds = time.perf_counter() - started
    model.eval()
    return run
