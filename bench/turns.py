"""Sides of a benchmark that take turns: each side runs in a process of its own, so its peak memory is its own,
and the processes run one turn at a time, round robin, so a busy spell on a shared machine slows every side alike.

The parent calls `take_turns(script, sides, work)`. It starts `script --side S --work W --turns FDS` once per
side; the script hands those arguments (`add_side_arguments`) to a `Turns`, ends each turn with `Turns.done`
(after an optimizer step with `Turns.step_done`, which a transformers Trainer calls when given the Turns as a
callback) and finally writes what it measured with `Turns.save`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from results import peak_rss_mib
from transformers import TrainerCallback, TrainerState

from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_FLOOR_GB
from fine_tune_dag.core.training.loop import TrainingRun

MEASURED = "measured.json"
STEPS = "steps"  # what every optimizer step but the first is timed as


def add_side_arguments(parser: argparse.ArgumentParser, sides: Sequence[str]) -> None:
    """The hidden arguments `take_turns` starts a side's process with."""
    parser.add_argument("--side", choices=sides, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--turns", help=argparse.SUPPRESS)


class Turns(TrainerCallback):
    """A side's end of `take_turns`: the seconds of its turns by what they did, and the tokens its timed steps fed.

    The first optimizer step is never timed: it warms up (and runs while the other sides may still load)."""

    def __init__(self, fds: str) -> None:
        go, ready = (int(fd) for fd in fds.split(","))
        self.go, self.ready = os.fdopen(go), os.fdopen(ready, "w")
        self.seconds: dict[str, float] = {}
        self.steps, self.tokens, self.first_tokens = 0, 0, 0
        self.began: float | None = None  # when the current turn's go came; None before the first

    def done(self, what: str | None) -> None:
        """End this turn, its seconds counted as `what` (None: not timed), and wait for the next go."""
        if what is not None and self.began is not None:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - self.began
        self.ready.write("ready\n")
        self.ready.flush()
        self.go.readline()
        self.began = time.perf_counter()

    def step_done(self, tokens_seen: int = 0) -> None:
        """After an optimizer step; `tokens_seen` counts from the start of training."""
        self.steps += 1
        if self.steps == 1:
            self.first_tokens = tokens_seen
        self.tokens = tokens_seen - self.first_tokens
        self.done(STEPS if self.steps > 1 else None)

    def on_step_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        self.step_done(state.num_input_tokens_seen)

    def save_run(self, out: Path, run: TrainingRun) -> None:
        """`save`, with the plan the memory budget chose for the project's own training run."""
        plan = run.memory_plan
        self.save(
            out, checkpointed=bool(plan and plan.gradient_checkpointing), micro_batch=plan.micro_batch if plan else 0
        )

    def save(self, out: Path, **extra: float | bool) -> None:
        """What this side measured, for `take_turns` to read: seconds by what, timed steps, their tokens, peak RSS."""
        out.mkdir(parents=True, exist_ok=True)
        measured = {
            "seconds": self.seconds,
            "timed_steps": self.steps - 1,
            "tokens": self.tokens,
            "peak_rss_mib": peak_rss_mib(),
            **extra,
        }
        (out / MEASURED).write_text(json.dumps(measured))


def at_floor(measured: dict[str, Any], rows: int) -> str:
    """How rows name a side run at the memory budget's floor, with the plan that budget chose for `rows` a step."""
    plan = (
        f"checkpointing {'on' if measured['checkpointed'] else 'off'}, micro-batch {measured['micro_batch']} of {rows}"
    )
    return f"ours at the {MEMORY_BUDGET_FLOOR_GB:g} GB budget floor ({plan})"


def take_turns(script: str, sides: Sequence[str], work: Path) -> dict[str, dict[str, Any]]:
    """Start every side, then give them turns round robin until all have finished; what each measured, by side."""
    quiet = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    children = {}
    for side in sides:
        go_read, go_write = os.pipe()
        ready_read, ready_write = os.pipe()
        command = [sys.executable, script, "--side", side, "--work", str(work), "--turns", f"{go_read},{ready_write}"]
        process = subprocess.Popen(command, pass_fds=(go_read, ready_write), env=quiet)
        os.close(go_read)
        os.close(ready_write)
        children[side] = (process, os.fdopen(go_write, "w"), os.fdopen(ready_read))
    running = [side for side in sides if children[side][2].readline() == "ready\n"]  # each after its first turn
    while running:
        for side in list(running):
            _, go, ready = children[side]
            go.write("go\n")
            go.flush()
            if ready.readline() != "ready\n":  # it finished (or failed) instead of ending another turn
                running.remove(side)
    for side, (process, go, ready) in children.items():
        go.close()
        ready.close()
        if process.wait() != 0:
            raise SystemExit(f"the {side} side failed (exit code {process.returncode})")
    return {side: json.loads((work / side / MEASURED).read_text()) for side in sides}
