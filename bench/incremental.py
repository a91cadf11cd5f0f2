"""Incremental update against a full rebuild, measured side by side in one run.

N notes are materialized through the real sensor and automation (ticked in-process by
LocalDaemon, the scripted LLM answering, a tiny random model as base model); then one note is
added and the graph catches up. The same N + 1 notes are then rebuilt from nothing. Printed: LLM
calls, runs and wall time of each, and their ratios.

    python bench/incremental.py --notes 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from fine_tune_dag_testkit.daemon import LocalDaemon
from fine_tune_dag_testkit.models import build_tiny_model
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import ScriptedLLM, scripted_definitions
from results import Row, add_json_argument, report

from fine_tune_dag.resources.policy import AutomationPolicy

RUN_CONFIG = {"ops": {"passages": {"config": {"min_chars": 80, "max_chars": 400}}}}


@dataclass
class Measured:
    llm_calls: int
    runs: int
    seconds: float


def graph_over(notes: Path, data: Path, model: Path, instance: dg.DagsterInstance, llm: ScriptedLLM) -> LocalDaemon:
    # training is the same work either way: keep it out of both measurements
    policy = AutomationPolicy(settle_seconds=0, retrain_min_new_examples=1_000_000, notes_per_tick=1000)
    defs = scripted_definitions(notes, data, model, policy, llm=llm)
    return LocalDaemon(defs, instance, RUN_CONFIG, log_level="ERROR")


def measure(daemon: LocalDaemon, llm: ScriptedLLM) -> Measured:
    calls, started = llm.total_calls, time.perf_counter()
    runs = daemon.settle()
    failed = [run for run in runs if not run.success]
    if failed:
        raise SystemExit(f"runs failed: {failed}")
    return Measured(llm.total_calls - calls, len(runs), time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=50, help="notes materialized before one is added")
    add_json_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = build_tiny_model(root / "tiny-model")
        with dg.instance_for_test() as instance:
            llm = ScriptedLLM()
            daemon = graph_over(root / "notes", root / "data", model, instance, llm)
            write_sample_notes(root / "notes", args.notes)
            initial = measure(daemon, llm)
            write_sample_notes(root / "notes", 1, start=args.notes)
            incremental = measure(daemon, llm)
        with dg.instance_for_test() as instance:
            write_sample_notes(root / "rebuild-notes", args.notes + 1)
            llm = ScriptedLLM()
            full = measure(graph_over(root / "rebuild-notes", root / "rebuild-data", model, instance, llm), llm)
    print(f"incremental update: {args.notes} notes materialized ({initial.seconds:.1f} s), then one added\n")
    rows = [
        Row("incremental", f"{label}, one note added (ours vs full rebuild)", b, a, a / max(b, 1e-9))
        for label, attribute in (("LLM calls", "llm_calls"), ("runs", "runs"), ("wall time (s)", "seconds"))
        for a, b in [(getattr(full, attribute), getattr(incremental, attribute))]
    ]
    report(rows, args.json)


if __name__ == "__main__":
    main()
