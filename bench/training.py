"""Our LoRA trainer against TRL's SFTTrainer, measured side by side in one run.

Both train the same model on the same chat conversations with the same LoRA config, learning rate,
schedule, steps and batch size, and both learn the answer tokens only. Ours runs as `lora_adapter`
runs it; TRL runs at its SFTConfig defaults (float32 weights, bf16 autocast, gradient checkpointing)
except for what must match, on conversational prompt/completion data (its chat template adds one
newline token after each answer's EOS). Ours also runs with gradient checkpointing.

Each side trains in a process of its own, so its peak memory is its own, and the processes take turns
of one optimizer step, so a busy spell on a shared machine slows every side alike. tokens/s counts the
non-pad tokens fed to the model (the attention mask's sum) on both sides, over the turns (every step
but the first, which also warms up). Both adapters are then scored by one function, `held_out_loss`, on
the same held-out conversations over the same float32 base model.

    python bench/training.py --examples 64 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fine_tune_dag_testkit.notes import SAMPLE_TOPICS
from peft import PeftModel
from results import Row, add_json_argument, machine, peak_rss_mib, report
from transformers import TrainerCallback, TrainerState

from fine_tune_dag.core.modeling.chat import (
    DEFAULT_SYSTEM_PROMPT,
    Message,
    TokenizedExample,
    chat_messages,
    render_training_example,
)
from fine_tune_dag.core.modeling.loop import held_out_loss
from fine_tune_dag.core.modeling.models import BUNDLED_MODEL, load_causal_lm, load_tokenizer, resolve_model
from fine_tune_dag.core.modeling.sft import TrainingSettings, lora_config, train_lora
from fine_tune_dag.resources.paths import ProjectPaths

SIDES = ("ours", "trl", "ours-checkpointed")
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


class Turns(TrainerCallback):
    """A training process's end of `train_in_turns`: after each optimizer step, wait for the go of the next.

    The first step runs before the turns begin (while the other sides still load), so it is not timed. It is
    also TRL's callback; our loop calls `step_done` from its progress report."""

    def __init__(self, fds: str) -> None:
        go, ready = (int(fd) for fd in fds.split(","))
        self.go, self.ready = os.fdopen(go), os.fdopen(ready, "w")
        self.seconds, self.tokens, self.first_tokens = 0.0, 0, 0
        self.began: float | None = None

    def step_done(self, tokens_seen: int) -> None:
        if self.began is None:
            self.first_tokens = tokens_seen
        else:
            self.seconds += time.perf_counter() - self.began
        self.tokens = tokens_seen - self.first_tokens
        self.ready.write("ready\n")
        self.ready.flush()
        self.go.readline()
        self.began = time.perf_counter()

    def on_step_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        self.step_done(state.num_input_tokens_seen)


def train_ours(
    model_path: Path, data: list[list[Message]], settings: TrainingSettings, out: Path, turns: Turns
) -> None:
    run = train_lora(model_path, data, settings, on_log=lambda metrics, _: turns.step_done(metrics["tokens_seen"]))
    run.model.save_pretrained(out)


def train_trl(model_path: Path, data: list[list[Message]], settings: TrainingSettings, out: Path, turns: Turns) -> None:
    """SFTTrainer as its docs show it: a model path, conversational prompt/completion data, a peft config."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

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
    )
    dataset = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in data])
    trainer = SFTTrainer(
        str(model_path),
        args=config,
        train_dataset=dataset,
        peft_config=lora_config(settings),
        callbacks=[turns],
    )
    trainer.train()
    trainer.model.save_pretrained(out)


def side_settings(side: str, steps: int) -> TrainingSettings:
    """Our defaults; held-out scoring is the benchmark's, so the loop's own held-out split is off, and progress
    is reported every step, where the turns are taken."""
    settings = TrainingSettings(max_steps=steps, eval_fraction=0.0, logging_steps=1)
    return replace(settings, gradient_checkpointing=True) if side == "ours-checkpointed" else settings


def train_side(side: str, work: Path, fds: str) -> None:
    """In a process of its own: train one side in turns, save its adapter and what was measured."""
    spec = json.loads((work / TRAIN_FILE).read_text())
    out, turns = work / side, Turns(fds)
    trainer = train_trl if side == "trl" else train_ours
    trainer(Path(spec["model"]), spec["conversations"], side_settings(side, spec["steps"]), out, turns)
    measured = {
        "tokens": turns.tokens,
        "seconds": turns.seconds,
        "tokens_per_s": turns.tokens / turns.seconds,
        "peak_rss_mib": peak_rss_mib(),
    }
    (out / "measured.json").write_text(json.dumps(measured))


def train_in_turns(work: Path) -> dict[str, dict]:
    """Start every side, then let them run one optimizer step at a time, round robin, until all have finished."""
    quiet = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    children = {}
    for side in SIDES:
        go_read, go_write = os.pipe()
        ready_read, ready_write = os.pipe()
        command = [sys.executable, __file__, "--side", side, "--work", str(work), "--turns", f"{go_read},{ready_write}"]
        process = subprocess.Popen(command, pass_fds=(go_read, ready_write), env=quiet)
        os.close(go_read)
        os.close(ready_write)
        children[side] = (process, os.fdopen(go_write, "w"), os.fdopen(ready_read))
    running = [side for side in SIDES if children[side][2].readline() == "ready\n"]  # each after its first step
    while running:
        for side in list(running):
            _, go, ready = children[side]
            go.write("go\n")
            go.flush()
            if ready.readline() != "ready\n":  # it finished (or failed) instead of stepping again
                running.remove(side)
    for side, (process, go, ready) in children.items():
        go.close()
        ready.close()
        if process.wait() != 0:
            raise SystemExit(f"the {side} side failed (exit code {process.returncode})")
    return {side: json.loads((work / side / "measured.json").read_text()) for side in SIDES}


def score(
    model_path: Path, adapter: Path | None, held_out: list[TokenizedExample], batch_size: int, pad_id: int
) -> float:
    """Answer-token loss of an adapter (or of the bare base model) over the float32 base weights."""
    model = load_causal_lm(model_path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return held_out_loss(model, held_out, batch_size, pad_id)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64, help="training conversations")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps on each side")
    parser.add_argument("--model", default="bundled", help="'bundled' or a Hugging Face model folder")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--turns", help=argparse.SUPPRESS)
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
        measured = train_in_turns(work)
        before = score(model_path, None, held_out, settings.batch_size, tokenizer.pad_token_id)
        for side in SIDES:
            measured[side]["eval_loss"] = score(
                model_path, work / side, held_out, settings.batch_size, tokenizer.pad_token_id
            )
    ours, trl, checkpointed = (measured[side] for side in SIDES)
    lengths = [len(render_training_example(tokenizer, m).input_ids) for m in train]
    print(
        f"training: {model_path.name}, {args.examples} conversations of {min(lengths)}-{max(lengths)} tokens, "
        f"{args.steps} steps of batch {settings.batch_size}, {len(held_out)} held out "
        f"(loss before training {before:.4f}); {machine()}\n"
    )
    for side, m in measured.items():
        print(f"  {side:<18} {m['tokens']:>7} tokens in {m['seconds']:6.1f} s of its turns")
    print()
    report(
        [
            Row(
                "training",
                "tokens/s (ours vs TRL SFTTrainer)",
                ours["tokens_per_s"],
                trl["tokens_per_s"],
                ours["tokens_per_s"] / trl["tokens_per_s"],
                "tok/s",
                2.0,
            ),
            Row(
                "training",
                "held-out loss (TRL / ours; within 2%)",
                ours["eval_loss"],
                trl["eval_loss"],
                trl["eval_loss"] / ours["eval_loss"],
                "nats",
                0.98,
            ),
            Row(
                "training",
                "peak RSS (TRL / ours)",
                ours["peak_rss_mib"],
                trl["peak_rss_mib"],
                trl["peak_rss_mib"] / ours["peak_rss_mib"],
                "MiB",
            ),
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
