"""Our DPO loop (`train_dpo`, as `dpo_adapter` runs it) against TRL's `DPOTrainer`, on the same pairs.

Both start from the same supervised adapter (trained for a few steps here) and train it further with the same
beta, learning rate, linear schedule, warmup, batch and steps; the reference is that adapter before training on
both sides (TRL gets it merged into the base as `ref_model`). TRL runs at its DPOConfig defaults otherwise
(float32 weights with bf16 autocast on CPU). Pairs: a chosen answer in the author's voice and, as the rejected
one, the answer of another conversation. Both adapters are then scored by one function on all pairs: the DPO
loss and reward accuracy against the starting adapter. The first step of each side (warm-up) is not timed.

    python bench/dpo.py --pairs 32 --steps 8
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from generation import MODELS
from peft import PeftModel
from results import Row, add_json_argument, machine, peak_rss_mib, report
from training import conversations
from transformers import TrainerCallback

from fine_tune_dag.core.modeling.chat import Message
from fine_tune_dag.core.modeling.dpo import DpoSettings, dpo_loss, reference_logps, tokenize_pairs, train_dpo
from fine_tune_dag.core.modeling.loop import save_adapter
from fine_tune_dag.core.modeling.models import (
    BUNDLED_MODEL,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    with_adapters,
)
from fine_tune_dag.core.modeling.sft import TrainingSettings, train_lora

Pair = tuple[list[Message], list[Message]]


class StepClock(TrainerCallback):
    """Seconds of every optimizer step but the first."""

    def __init__(self) -> None:
        self.seconds, self.steps, self.began = 0.0, 0, None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.began = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 1:
            self.seconds += time.perf_counter() - self.began
            self.steps += 1


def preference_data(tokenizer: Any, count: int) -> list[Pair]:
    made = conversations(tokenizer, count * 2, seed=1)
    rng = random.Random(1)
    pairs = []
    for chosen in made[:count]:
        other = rng.choice(made[count:])
        pairs.append((chosen, [*chosen[:-1], other[-1]]))
    return pairs


def train_trl(base: Path, start: Path, pairs: list[Pair], settings: DpoSettings, out: Path) -> tuple[float, int]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy = PeftModel.from_pretrained(load_causal_lm(base), str(start), is_trainable=True)
    reference = PeftModel.from_pretrained(load_causal_lm(base), str(start)).merge_and_unload()
    data = Dataset.from_list(
        [{"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]} for chosen, rejected in pairs]
    )
    config = DPOConfig(
        output_dir=str(out / "trl"),
        use_cpu=True,
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(settings.warmup_ratio * settings_steps(settings, len(pairs))),  # as ours counts them
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings_steps(settings, len(pairs)),
        max_length=settings.max_seq_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
    )
    clock = StepClock()
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=data,
        processing_class=load_tokenizer(start),
        callbacks=[clock],
    )
    trainer.train()
    trainer.model.save_pretrained(out / "trl-adapter")
    return clock.seconds, clock.steps


def settings_steps(settings: DpoSettings, pairs: int) -> int:
    return max(1, round(settings.epochs * -(-pairs // settings.batch_size)))


def score(base: Path, start: Path, adapter: Path, pairs: list[Pair], beta: float) -> tuple[float, float]:
    """DPO loss and reward accuracy of `adapter` on all pairs, against the starting adapter."""
    tokenizer = load_tokenizer(start)
    tokenized, _ = tokenize_pairs(tokenizer, pairs, 10_000)
    model = with_adapters(load_causal_lm(base), {"start": start, "trained": adapter})
    model.set_adapter("start")
    ref_chosen, ref_rejected = reference_logps(model, tokenized, 8, tokenizer.pad_token_id)
    model.set_adapter("trained")
    chosen, rejected = reference_logps(model, tokenized, 8, tokenizer.pad_token_id)
    loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    return float(loss), float((chosen_rewards > rejected_rewards).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps on each side")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="where the bundled model is converted once")
    add_json_argument(parser)
    args = parser.parse_args()
    base = resolve_model(BUNDLED_MODEL, args.models_dir).path
    tokenizer = load_tokenizer(base)
    pairs = preference_data(tokenizer, args.pairs)
    settings = DpoSettings(
        batch_size=args.batch_size, epochs=args.steps * args.batch_size / len(pairs), logging_steps=1
    )
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        warm = train_lora(base, [c for c, _ in pairs], TrainingSettings(max_steps=4, eval_fraction=0.0))
        start = save_adapter(warm, work, "start", {"base_model_path": str(base)})
        logged: list[dict[str, float]] = []
        ours = train_dpo(base, start, pairs, settings, on_log=lambda metrics, _: logged.append(metrics))
        ours.model.save_pretrained(work / "ours-adapter")
        ours_seconds = logged[-1]["elapsed_s"] - logged[0]["elapsed_s"]
        ours_steps = len(logged) - 1
        trl_seconds, trl_steps = train_trl(base, start, pairs, settings, work)
        ours_loss, ours_accuracy = score(base, start, work / "ours-adapter", pairs, settings.beta)
        trl_loss, trl_accuracy = score(base, start, work / "trl-adapter", pairs, settings.beta)
    ours_rate = ours_steps * args.batch_size / ours_seconds
    trl_rate = trl_steps * args.batch_size / trl_seconds
    print(
        f"dpo: {len(pairs)} pairs, {args.steps} steps of {args.batch_size}, beta {settings.beta}, "
        f"lr {settings.learning_rate}; {ours.dtype} base on {ours.device}; {machine()}\n"
        f"  ours {ours_rate:.2f} pairs/s, loss {ours_loss:.4f}, reward accuracy {ours_accuracy:.2f}\n"
        f"  TRL  {trl_rate:.2f} pairs/s, loss {trl_loss:.4f}, reward accuracy {trl_accuracy:.2f}; "
        f"peak RSS {peak_rss_mib():.0f} MiB (both in this process)"
    )
    report(
        [
            Row("dpo", "pairs/s (ours vs TRL DPOTrainer)", ours_rate, trl_rate, ours_rate / trl_rate, "pairs/s"),
            Row("dpo", "DPO loss after training (TRL / ours)", ours_loss, trl_loss, trl_loss / ours_loss, "nats"),
            Row("dpo", "reward accuracy after training", ours_accuracy, trl_accuracy, None, "share"),
        ],
        args.json,
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
