"""Our LoRA trainer against TRL's SFTTrainer, measured side by side in one run.

Every side trains the same model on the same chat conversations with the same LoRA config, learning rate,
schedule, steps and batch size, and learns the answer tokens only (TRL on conversational prompt/completion
data; its chat template adds one newline token after each answer's EOS). The sides:

- `ours`: `train_lora` as `lora_adapter` runs it: base weights in the dtype `select_dtype` picks (bf16 on a CPU
  with AMX, as here), float32 adapter, bf16 autocast (`base_precision`), the default memory budget (gradient
  checkpointing only where it needs it), length-grouped batches, the output layer at answer positions only.
- `trl` (rows "TRL like for like"): the same precision arrangement: the model object loaded as ours loads it
  (`load_causal_lm` in `select_dtype`'s dtype), peft's float32 adapter over it, `bf16=True` autocast; gradient
  checkpointing off and `train_sampling_strategy="group_by_length"` (transformers 5's `group_by_length`). What
  still differs is each trainer's own code: TRL's collator, its tiled fused loss (which, like ours, runs the
  output layer at answer positions only), peft's float32 casts of adapter inputs (ours turns them off).
- `trl-defaults` (rows "TRL at its defaults"): SFTTrainer as its docs show it, given the model path: float32
  weights, bf16 autocast, gradient checkpointing on, random batches.
- `ours-checkpointed`: ours with gradient checkpointing, for the checkpointing rows.
- `ours-at-floor`: ours with the budget at its floor (`MEMORY_BUDGET_FLOOR_GB`, the default of an 8 GB laptop and
  the budget `bench/memory.py` holds the graph to), where the plan may turn checkpointing on or split the batch:
  the rows "ours at the … budget floor" say what that costs against TRL like for like, and which plan ran.

Each side trains in a process of its own, so its peak memory is its own, and the processes take turns of one
optimizer step (bench/turns.py), so a busy spell on a shared machine slows every side alike. tokens/s counts the
non-pad tokens fed to the model (the attention mask's sum) on every side, over the turns (every step but the
first, which also warms up). Every adapter, and the bare base model before training, is then scored by one
function, `held_out_loss`, on the same held-out conversations over the same float32 base model. "Held-out loss
drop" is how far a side moved that loss; the parity row (TRL's loss after within 2% of ours) is met only when
both sides moved it by more than those 2%, so two adapters that learned nothing cannot pass it.

    python bench/training.py --examples 64 --steps 12
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from fine_tune_dag_testkit.notes import SAMPLE_TOPICS
from peft import PeftModel
from results import Row, add_json_argument, machine, report
from turns import STEPS, Turns, add_side_arguments, at_floor, take_turns

from fine_tune_dag.core.common.chat import (
    DEFAULT_SYSTEM_PROMPT,
    Message,
    TokenizedExample,
    chat_messages,
    render_training_example,
)
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype
from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_FLOOR_GB
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model
from fine_tune_dag.core.training.loop import held_out_loss
from fine_tune_dag.core.training.sft import TrainingSettings, lora_config, train_lora
from fine_tune_dag.resources.paths import ProjectPaths

SIDES = ("ours", "trl", "trl-defaults", "ours-checkpointed", "ours-at-floor")
PARITY = 0.98  # TRL's held-out loss after training over ours, at least
TRAIN_FILE = "train.json"

SENTENCES = [
    "Here is the thing about {topic}: it rewards the person who comes back every week.",
    "I keep a small notebook for {topic}, and most pages say the same thing in other words.",
    "The first mistake I made with {topic} was hurrying, and the second was pretending I had not.",
    "Small tools, small wins, and {topic} teaches patience whether I want the lesson or not.",
    "When {topic} goes wrong it is rarely the big part; it is the cheap one I skipped checking.",
    "My grandfather said {topic} is half craft and half stubbornness, and he was generous about the craft.",
    "I would rather spend ten quiet minutes on {topic} than an hour reading about it.",
    "Nobody warned me that {topic} would change with the seasons as much as it does.",
    "The honest answer is that I learned {topic} by breaking things and writing down why.",
    "If I could tell my younger self one thing about {topic}, it would be to clean as I go.",
]
QUESTIONS = [
    "What do you think about {topic}?",
    "Why does {topic} matter to you?",
    "How did you get started with {topic}, and what would you do differently now?",
    "Someone new asked me how to approach {topic}. What would you tell them, honestly?",
    "You wrote a lot about {topic} last winter. Looking back, which of those notes still holds up, "
    "and which ones were you simply wrong about at the time?",
]


def conversations(tokenizer: Any, count: int, seed: int) -> list[list[Message]]:
    """Q&A turns in the author's voice: questions with and without a quoted passage, answers of 10-120 tokens."""
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        topic = rng.choice(SAMPLE_TOPICS)
        question = rng.choice(QUESTIONS).format(topic=topic)
        if rng.random() < 0.4:
            quoted = " ".join(rng.choice(SENTENCES).format(topic=topic) for _ in range(rng.randint(1, 6)))
            question = f'Earlier you wrote: "{quoted}"\n{question}'
        wanted, words = rng.randint(10, 120), []
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < wanted:
            words += rng.choice(SENTENCES).format(topic=topic).split()
            while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) > wanted:
                words.pop()
        made.append(chat_messages(DEFAULT_SYSTEM_PROMPT, question, " ".join(words)))
    return made


def train_ours(
    model_path: Path, data: list[list[Message]], settings: TrainingSettings, out: Path, turns: Turns
) -> None:
    run = train_lora(model_path, data, settings, on_log=lambda metrics, _: turns.step_done(metrics["tokens_seen"]))
    run.model.save_pretrained(out)
    turns.save_run(out, run)


def train_trl(
    model_path: Path, data: list[list[Message]], settings: TrainingSettings, out: Path, turns: Turns, matched: bool
) -> None:
    """SFTTrainer on conversational prompt/completion data with our peft config; `matched` gives it our precision
    arrangement (the model object loaded as ours loads it, bf16 autocast), no gradient checkpointing and length
    grouping, else it runs as its docs show it: a model path, at its SFTConfig defaults."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    like_ours: dict[str, Any] = {}
    model: Any = str(model_path)
    if matched:
        device = select_device(settings.device)
        model = load_causal_lm(model_path, device, select_dtype(settings.dtype, device))
        like_ours = {"bf16": True, "activation_checkpointing": False, "train_sampling_strategy": "group_by_length"}
    config = SFTConfig(
        output_dir=str(out / "trainer"),
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps, as ours
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        seed=settings.seed,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=True,  # without it a CPU-only machine refuses the default bf16 autocast
        **like_ours,
    )
    dataset = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in data])
    trainer = SFTTrainer(
        model, args=config, train_dataset=dataset, peft_config=lora_config(settings), callbacks=[turns]
    )
    trainer.train()
    trainer.model.save_pretrained(out)


def side_settings(side: str, steps: int) -> TrainingSettings:
    """Our defaults; held-out scoring is the benchmark's, so the loop's own held-out split is off, and progress
    is reported every step, where the turns are taken."""
    # the default memory budget (half the memory available, at least 2.5 GB), so ours is timed as users get it:
    # checkpointed where that budget needs it, as a user's training would be
    settings = TrainingSettings(max_steps=steps, eval_fraction=0.0, logging_steps=1)
    if side == "ours-at-floor":
        return replace(settings, memory_budget_gb=MEMORY_BUDGET_FLOOR_GB)
    return replace(settings, gradient_checkpointing=True) if side == "ours-checkpointed" else settings


def train_side(side: str, work: Path, fds: str) -> None:
    """In a process of its own: train one side in turns, save its adapter and what was measured."""
    spec = json.loads((work / TRAIN_FILE).read_text())
    out, turns = work / side, Turns(fds)
    model_path, data, settings = Path(spec["model"]), spec["conversations"], side_settings(side, spec["steps"])
    if side.startswith("trl"):
        train_trl(model_path, data, settings, out, turns, matched=side == "trl")
        turns.save(out)
    else:
        train_ours(model_path, data, settings, out, turns)


def score(
    model_path: Path, adapter: Path | None, held_out: list[TokenizedExample], batch_size: int, pad_id: int
) -> float:
    """Answer-token loss of an adapter (or of the bare base model) over the float32 base weights."""
    model = load_causal_lm(model_path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return held_out_loss(model, held_out, batch_size, pad_id)[0]


def versus(name: str, ours: dict[str, Any], trl: dict[str, Any], target: float | None) -> list[Row]:
    """Ours against one TRL side: throughput, how far each moved the held-out loss, loss parity and memory. Parity
    is met only when both sides moved the loss by more than its tolerance, so two untrained adapters never pass."""
    tolerance = (1 - PARITY) * ours["eval_loss"]
    unmet = "" if min(ours["moved"], trl["moved"]) > tolerance else f"a side moved the loss < {tolerance:.3f}"
    return [
        Row(
            "training",
            f"tokens/s, ours vs TRL {name}",
            ours["tokens_per_s"],
            trl["tokens_per_s"],
            ours["tokens_per_s"] / trl["tokens_per_s"],
            "tok/s",
            target,
        ),
        Row(
            "training",
            f"held-out loss drop, ours vs TRL {name}",
            ours["moved"],
            trl["moved"],
            ours["moved"] / trl["moved"] if trl["moved"] > 0 else None,  # a loss TRL did not lower has no ratio
            "nats",
        ),
        Row(
            "training",
            f"held-out loss after, TRL {name} / ours",
            ours["eval_loss"],
            trl["eval_loss"],
            trl["eval_loss"] / ours["eval_loss"],
            "nats",
            PARITY,
            unmet,
        ),
        Row(
            "training",
            f"peak RSS, TRL {name} / ours",
            ours["peak_rss_mib"],
            trl["peak_rss_mib"],
            trl["peak_rss_mib"] / ours["peak_rss_mib"],
            "MiB",
        ),
    ]


def versus_at_floor(floor: dict[str, Any], trl: dict[str, Any], batch_size: int) -> list[Row]:
    """Ours at the budget's floor against TRL like for like: the speed and memory a small machine's default gets,
    named with the plan that budget chose."""
    name = at_floor(floor, batch_size)
    return [
        Row(
            "training",
            f"tokens/s, {name} vs TRL like for like",
            floor["tokens_per_s"],
            trl["tokens_per_s"],
            floor["tokens_per_s"] / trl["tokens_per_s"],
            "tok/s",
        ),
        Row(
            "training",
            f"peak RSS, TRL like for like / {name}",
            floor["peak_rss_mib"],
            trl["peak_rss_mib"],
            trl["peak_rss_mib"] / floor["peak_rss_mib"],
            "MiB",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64, help="training conversations")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps on each side")
    parser.add_argument("--model", default="bundled", help="'bundled' or a Hugging Face model folder")
    add_side_arguments(parser, SIDES)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.side:
        train_side(args.side, args.work, args.turns)
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step, before the turns begin, is not timed")
    model_path = resolve_model(BUNDLED_MODEL if args.model == "bundled" else args.model, ProjectPaths().models).path
    tokenizer = load_tokenizer(model_path)
    train = conversations(tokenizer, args.examples, seed=1)
    held_out = [render_training_example(tokenizer, m) for m in conversations(tokenizer, max(8, args.examples // 4), 2)]
    settings = side_settings("ours", args.steps)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / TRAIN_FILE).write_text(
            json.dumps({"model": str(model_path), "steps": args.steps, "conversations": train})
        )
        measured = take_turns(__file__, SIDES, work)
        before = score(model_path, None, held_out, settings.batch_size, tokenizer.pad_token_id)
        for side, m in measured.items():
            m["eval_loss"] = score(model_path, work / side, held_out, settings.batch_size, tokenizer.pad_token_id)
            m["moved"] = before - m["eval_loss"]
            m["tokens_per_s"] = m["tokens"] / m["seconds"][STEPS]
    ours, trl, defaults, checkpointed, floor = (measured[side] for side in SIDES)
    lengths = [len(render_training_example(tokenizer, m).input_ids) for m in train]
    print(
        f"training: {model_path.name}, {args.examples} conversations of {min(lengths)}-{max(lengths)} tokens, "
        f"{args.steps} steps of batch {settings.batch_size}, {len(held_out)} held out "
        f"(loss before training {before:.4f}); {machine()}\n"
    )
    for side, m in measured.items():
        print(
            f"  {side:<18} {m['tokens']:>7} tokens in {m['seconds'][STEPS]:6.1f} s of its turns, "
            f"held-out loss {m['eval_loss']:.4f} ({-m['moved']:+.4f}), peak RSS {m['peak_rss_mib']:.0f} MiB"
        )
    print()
    report(
        [
            *versus("like for like", ours, trl, 2.0),
            *versus("at its defaults", ours, defaults, None),
            *versus_at_floor(floor, trl, settings.batch_size),
            Row("training", "held-out loss before training", before, None, None, "nats"),
            Row(
                "training",
                "tokens/s, gradient checkpointing (on vs off)",
                checkpointed["tokens_per_s"],
                ours["tokens_per_s"],
                checkpointed["tokens_per_s"] / ours["tokens_per_s"],
                "tok/s",
            ),
            Row(
                "training",
                "peak RSS, gradient checkpointing (off / on)",
                checkpointed["peak_rss_mib"],
                ours["peak_rss_mib"],
                ours["peak_rss_mib"] / checkpointed["peak_rss_mib"],
                "MiB",
            ),
            Row(
                "training",
                "held-out loss, gradient checkpointing (off / on)",
                checkpointed["eval_loss"],
                ours["eval_loss"],
                ours["eval_loss"] / checkpointed["eval_loss"],
                "nats",
            ),
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
