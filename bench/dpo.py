"""Our DPO loop (`train_dpo`, as `dpo_adapter` runs it) against TRL's `DPOTrainer`, like for like, on the same pairs.

Both start from the same supervised adapter (trained for a few steps here) and train it further with the same beta,
learning rate, linear schedule, warmup, batch and steps, in the same precision arrangement: base weights in the
dtype `select_dtype` picks (bf16 on a CPU with AMX), the float32 adapter over them, bf16 autocast (ours through
`base_precision`, TRL's through `bf16=True`); no gradient checkpointing on TRL's side (its default turned off) and
on ours only where the default memory budget needs it, as a user's run would be, LoRA dropout kept on both (TRL's
`disable_dropout` default turned off). The reference is the starting adapter on both sides, its log-probabilities
computed once up front: ours always does, TRL with `precompute_ref_log_probs=True` over the frozen copy of the start
adapter it adds itself (so neither side holds a second model). What still differs is each trainer's own code
(collation, TRL's fused tiled log-probabilities, peft's input casts).

Each side runs in a process of its own and the sides take turns (bench/turns.py): the reference pass is one turn,
then one optimizer step a turn. Timed on both: the reference pass over all pairs, and every step but the first
(warm-up). Pairs: a chosen answer in the author's voice and, as the rejected one, the answer of another
conversation. Both adapters are then scored by one function on all pairs: the DPO loss (ln 2 = 0.693 before
training) and reward accuracy against the starting adapter, over a float32 base.

A third side, `ours-at-floor`, is ours with the budget at its floor (`MEMORY_BUDGET_FLOOR_GB`, the default of an 8 GB
laptop), where the plan may turn checkpointing on: its rows say what that costs against TRL, and which plan ran.

    python bench/dpo.py --pairs 32 --steps 8
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
from generation import MODELS
from peft import PeftModel
from results import Row, add_json_argument, machine, report
from training import conversations
from turns import STEPS, Turns, add_side_arguments, at_floor, take_turns

from fine_tune_dag.core.common.chat import Message
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype, with_adapters
from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_FLOOR_GB
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model
from fine_tune_dag.core.training import dpo as product_dpo
from fine_tune_dag.core.training.dpo import dpo_loss, reference_logps, tokenize_pairs, train_dpo
from fine_tune_dag.core.training.dpo_config import DpoSettings
from fine_tune_dag.core.training.loop import save_adapter
from fine_tune_dag.core.training.sft import TrainingSettings, train_lora

Pair = tuple[list[Message], list[Message]]
SIDES = ("ours", "trl", "ours-at-floor")
SPEC_FILE = "spec.json"
REFERENCE = "reference"  # what a side's reference pass is timed as


def preference_data(tokenizer: Any, count: int) -> list[Pair]:
    made = conversations(tokenizer, count * 2, seed=1)
    rng = random.Random(1)
    pairs = []
    for chosen in made[:count]:
        other = rng.choice(made[count:])
        pairs.append((chosen, [*chosen[:-1], other[-1]]))
    return pairs


def dpo_settings(pairs: int, steps: int, batch_size: int, budget_gb: float | None = None) -> DpoSettings:
    """Our defaults, with the epochs that make `steps` optimizer steps; progress reported every step."""
    # None: the default memory budget (half the memory available, at least the floor), so ours is timed as users
    # get it
    return DpoSettings(
        batch_size=batch_size, epochs=steps * batch_size / pairs, logging_steps=1, memory_budget_gb=budget_gb
    )


def total_steps(settings: DpoSettings, pairs: int) -> int:
    """The optimizer steps `train_dpo` runs, so TRL runs as many."""
    return max(1, math.ceil(settings.epochs * math.ceil(pairs / settings.batch_size)))


def train_ours(base: Path, start: Path, pairs: list[Pair], settings: DpoSettings, out: Path, turns: Turns) -> None:
    """`train_dpo`, its reference pass a turn of its own: `train_dpo` has no hook before that pass, so the
    function it calls is wrapped here."""

    def reference_turn(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        turns.done(None)  # loading and tokenizing, not timed
        logps = reference_logps(*args, **kwargs)
        turns.done(REFERENCE)
        return logps

    with patch.object(product_dpo, "reference_logps", reference_turn):
        run = train_dpo(base, start, pairs, settings, on_log=lambda metrics, _: turns.step_done())
    run.model.save_pretrained(out)
    turns.save_run(out, run)


def train_trl(base: Path, start: Path, pairs: list[Pair], settings: DpoSettings, out: Path, turns: Turns) -> None:
    """DPOTrainer over the start adapter, in our precision and with the reference precomputed (see the top)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class ReferenceTurn(DPOTrainer):
        """Its reference pass (run by the constructor when precomputing) a turn of its own."""

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Dataset:
            turns.done(None)  # loading and tokenizing, not timed
            dataset = super()._precompute_ref_logps(*args, **kwargs)
            turns.done(REFERENCE)
            return dataset

    device = select_device(settings.device)
    policy = PeftModel.from_pretrained(
        load_causal_lm(base, device, select_dtype(settings.dtype, device)), str(start), is_trainable=True
    )
    data = Dataset.from_list(
        [{"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]} for chosen, rejected in pairs]
    )
    steps = total_steps(settings, len(pairs))
    config = DPOConfig(
        output_dir=str(out / "trainer"),
        use_cpu=True,
        bf16=True,
        activation_checkpointing=False,  # transformers 5 name of gradient_checkpointing
        disable_dropout=False,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=settings.batch_size,  # ours runs its reference pass in training batches
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(settings.warmup_ratio * steps),  # as ours counts them
        max_grad_norm=settings.max_grad_norm,
        per_device_train_batch_size=settings.batch_size,
        max_steps=steps,
        max_length=settings.max_seq_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=settings.seed,
    )
    trainer = ReferenceTurn(
        model=policy, args=config, train_dataset=data, processing_class=load_tokenizer(start), callbacks=[turns]
    )
    trainer.train()
    trainer.model.save_pretrained(out, selected_adapters=["default"])


def train_side(side: str, work: Path, fds: str) -> None:
    """In a process of its own: train one side in turns, save its adapter and what was measured."""
    spec = json.loads((work / SPEC_FILE).read_text())
    pairs = [(chosen, rejected) for chosen, rejected in spec["pairs"]]
    budget = MEMORY_BUDGET_FLOOR_GB if side == "ours-at-floor" else None
    settings = dpo_settings(len(pairs), spec["steps"], spec["batch_size"], budget)
    out, turns = work / side, Turns(fds)
    if side == "trl":
        train_trl(Path(spec["base"]), Path(spec["start"]), pairs, settings, out, turns)
        turns.save(out)
    else:
        train_ours(Path(spec["base"]), Path(spec["start"]), pairs, settings, out, turns)


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
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps on each side; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="where the bundled model is converted once")
    add_side_arguments(parser, SIDES)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.side:
        train_side(args.side, args.work, args.turns)
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not timed")
    base = resolve_model(BUNDLED_MODEL, args.models_dir).path
    tokenizer = load_tokenizer(base)
    pairs = preference_data(tokenizer, args.pairs)
    settings = dpo_settings(len(pairs), args.steps, args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        warm = train_lora(base, [c for c, _ in pairs], TrainingSettings(max_steps=4, eval_fraction=0.0))
        start = save_adapter(warm, work, "start", {"base_model_path": str(base)})
        spec = {
            "base": str(base),
            "start": str(start),
            "pairs": pairs,
            "steps": args.steps,
            "batch_size": args.batch_size,
        }
        (work / SPEC_FILE).write_text(json.dumps(spec))
        measured = take_turns(__file__, SIDES, work)
        for side, m in measured.items():
            m["loss"], m["accuracy"] = score(base, start, work / side, pairs, settings.beta)
            m["pairs_per_s"] = m["timed_steps"] * args.batch_size / m["seconds"][STEPS]
            m["total_s"] = m["seconds"][REFERENCE] + m["seconds"][STEPS]
    ours, trl, floor = (measured[side] for side in SIDES)
    floor_name = at_floor(floor, 2 * args.batch_size)  # a chosen and a rejected row a pair
    print(
        f"dpo: {len(pairs)} pairs, {args.steps} steps of {args.batch_size}, beta {settings.beta}, "
        f"lr {settings.learning_rate}; {warm.dtype} base on {warm.device}; {machine()}"
    )
    for side, m in measured.items():
        print(
            f"  {side:<13} reference pass {m['seconds'][REFERENCE]:.1f} s, {m['pairs_per_s']:.2f} pairs/s over "
            f"{m['timed_steps']} timed steps, loss {m['loss']:.4f}, reward accuracy {m['accuracy']:.2f}, "
            f"peak RSS {m['peak_rss_mib']:.0f} MiB"
        )
    print()
    report(
        [
            Row(
                "dpo",
                "pairs/s, steps (ours vs TRL DPOTrainer)",
                ours["pairs_per_s"],
                trl["pairs_per_s"],
                ours["pairs_per_s"] / trl["pairs_per_s"],
                "pairs/s",
            ),
            Row(
                "dpo",
                f"pairs/s, steps ({floor_name} vs TRL DPOTrainer)",
                floor["pairs_per_s"],
                trl["pairs_per_s"],
                floor["pairs_per_s"] / trl["pairs_per_s"],
                "pairs/s",
            ),
            Row(
                "dpo",
                f"reference pass, {len(pairs)} pairs (TRL / ours)",
                ours["seconds"][REFERENCE],
                trl["seconds"][REFERENCE],
                trl["seconds"][REFERENCE] / ours["seconds"][REFERENCE],
                "s",
            ),
            Row(
                "dpo",
                "reference pass + timed steps (TRL / ours)",
                ours["total_s"],
                trl["total_s"],
                trl["total_s"] / ours["total_s"],
                "s",
            ),
            Row(
                "dpo",
                "DPO loss after training, from 0.693 (TRL / ours)",
                ours["loss"],
                trl["loss"],
                trl["loss"] / ours["loss"],
                "nats",
            ),
            Row("dpo", "reward accuracy after training", ours["accuracy"], trl["accuracy"], None, "share"),
            Row(
                "dpo",
                "peak RSS (TRL / ours)",
                ours["peak_rss_mib"],
                trl["peak_rss_mib"],
                trl["peak_rss_mib"] / ours["peak_rss_mib"],
                "MiB",
            ),
            Row(
                "dpo",
                f"peak RSS (TRL / {floor_name})",
                floor["peak_rss_mib"],
                trl["peak_rss_mib"],
                trl["peak_rss_mib"] / floor["peak_rss_mib"],
                "MiB",
            ),
        ],
        args.json,
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
