"""Where memory goes, stage by stage, against the model's weight size (the floor a stage cannot go under).

1. The graph as `make demo` runs it (materialize_graph: one note partition at a time, in-process executor) on N
   sample notes with the bundled model as base model and a scripted LLM as teacher (the local LLM teacher is
   too slow for 2 cores; it is not a stage measured here). Each stage's own peak comes from its Dagster
   metadata `peak_memory_mib` (Linux resets the peak per stage, so the stages share one process; partitioned
   stages: the largest partition). Each stage as MiB and as a multiple of the bundled float32 weights.
2. The same on 2N notes, in a fresh process: per stage, what the doubling added against the notes' own bytes.
3. `fine-tune-dag generate "…" --adapter base --max-new-tokens 16` with the bundled model: the child's peak RSS.
4. `fine-tune-dag --help`: median wall time of 5 runs.
5. A 1B Llama-shaped model with random weights (built from a config as bench/training_mfu.py does, saved in
   bfloat16 as published 1B checkpoints are, with the bundled tokenizer): generation, LoRA training and
   evaluation through the project's own functions, each in a fresh process, peak RSS as a multiple of the
   weights in the dtype the stage loads them in (generation and evaluation float32, training its `auto`).

Every child's peak is its own (its VmHWM, sampled every 20 ms), imports included.

    python bench/memory.py [--notes 30] [--skip-1b] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import LargestProcessPeak, Row, add_json_argument, report

from fine_tune_dag.core.models.memory_budget import MEMORY_BUDGET_FLOOR_GB

REPO = Path(__file__).resolve().parents[1]
BENCH = "memory"
CLI = str(Path(sys.executable).with_name("fine-tune-dag"))
MIB = 2**20
DEMO_LIMIT_MIB = 2.5e9 / MIB
GENERATE_LIMIT_MIB = 1.0e9 / MIB
WEIGHTS_MULTIPLE_LIMIT = 3.0
HELP_LIMIT_S = 1.0
NOISE_MIB = 16.0  # resident-memory noise between two runs of the same stage (allocator, imports, Dagster)
STAGES = (
    "base_model",
    "passages",
    "qa_pairs",
    "dataset_splits",
    "retrieval_index",
    "lora_adapter",
    "edge_cases",
    "eval_report",
    "preference_candidates",
    "dpo_adapter",
)
# the note runs as bench/incremental.py; training and evaluation only long enough to run them once; every budgeted
# stage at the 2.5 GB floor (an 8 GB laptop's), set explicitly, as the rows' ≤2.5 GB limit measures that case
BUDGET = {"memory_budget_gb": MEMORY_BUDGET_FLOOR_GB}
RUN_CONFIG = {
    "ops": {
        "passages": {"config": {"min_chars": 80, "max_chars": 400}},
        "lora_adapter": {"config": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, **BUDGET}},
        "edge_cases": {"config": {"evaluation": {"max_new_tokens": 4, **BUDGET}}},
        "eval_report": {
            "config": {
                "max_examples": 4,
                "max_new_tokens": 4,
                "max_voice_items": 4,
                "max_written_notes": 1,
                "written_max_new_tokens": 4,
                **BUDGET,
            }
        },
        "dpo_adapter": {"config": BUDGET},
    }
}
BUNDLED_VOCAB = 49152  # the bundled tokenizer's, so the project's loaders and renderer work on the 1B model


def run_child(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Peak RSS (MiB) of this one child, its wall time, and its output; raises if it failed.

    Sampled from the child's own VmHWM: the rusage of a child started by vfork and exec reports at least this
    process's peak (Linux carries the old address space's peak over exec), which made a 0.8 GB `generate` read as
    this bench's 1.6 GB."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        with LargestProcessPeak(child.pid, interval=0.02) as peak:
            child.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} … failed ({child.returncode}):\n{text[-3000:]}")
    return peak.mib, wall, text


def me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def safetensors_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / MIB


# ---- children ------------------------------------------------------------------------------------------------


def child_graph(notes: int, model: Path, root: Path, out: Path) -> None:
    """The graph over `notes` sample notes; writes {stage: peak MiB} and the notes' bytes to `out`."""
    import dagster as dg
    from fine_tune_dag_testkit.notes import write_sample_notes
    from fine_tune_dag_testkit.scripted import ScriptedLLM, scripted_definitions

    from fine_tune_dag.runner import materialize_graph

    notes_dir = root / "notes"
    write_sample_notes(notes_dir, notes)
    notes_bytes = sum(p.stat().st_size for p in notes_dir.iterdir())
    defs = scripted_definitions(notes_dir, root / "data", model, llm=ScriptedLLM(), executor="in_process")
    with dg.instance_for_test() as instance:
        run = materialize_graph(defs, instance, notes_dir, RUN_CONFIG)
        peaks: dict[str, float] = {}
        for stage in STAGES:
            records = instance.fetch_materializations(dg.AssetKey(stage), limit=10_000).records
            values = [
                r.asset_materialization.metadata["peak_memory_mib"].value
                for r in records
                if r.asset_materialization and "peak_memory_mib" in r.asset_materialization.metadata
            ]
            if values:
                peaks[stage] = max(float(v) for v in values)
    out.write_text(
        json.dumps({"peaks": peaks, "notes_bytes": notes_bytes, "failed": run.failed_notes, "error": run.model_failure})
    )


def child_build(folder: Path, tokenizer_from: Path) -> None:
    import torch
    from training_mfu import LLAMA_1B  # imports torch: only in this child
    from transformers import AutoModelForCausalLM, LlamaConfig

    from fine_tune_dag.core.models.loading import load_tokenizer

    torch.manual_seed(0)
    # training_mfu's 1B shape over the bundled vocabulary, saved in bfloat16 as published 1B checkpoints are;
    # each stage loads it in its own dtype
    config = LlamaConfig(**{**LLAMA_1B.to_dict(), "vocab_size": BUNDLED_VOCAB})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    load_tokenizer(tokenizer_from).save_pretrained(folder)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))


def _conversations(count: int) -> list:
    from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, chat_messages

    return [
        chat_messages(
            DEFAULT_SYSTEM_PROMPT,
            f"What did you learn about the chain on ride {i}?",
            "That a worn chain eats the cassette, so I measure it every month and change it early. " * 2,
        )
        for i in range(count)
    ]


def child_llama(kind: str, model: Path, root: Path) -> None:
    """One stage's work on the 1B model, the way the stage does it; the parent reads this process's peak."""
    import torch

    from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer

    torch.set_num_threads(2)
    if kind == "generate":
        from fine_tune_dag.core.common.chat import render_prompt_ids
        from fine_tune_dag.core.generation.batch import generate_batch

        tokenizer = load_tokenizer(model)
        lm = load_causal_lm(model)
        prompts = [render_prompt_ids(tokenizer, c[:-1]) for c in _conversations(2)]
        generate_batch(lm, tokenizer, prompts, max_new_tokens=4)
    elif kind == "train":
        from fine_tune_dag.core.training.sft import TrainingSettings, train_lora

        settings = TrainingSettings(
            max_steps=1,
            batch_size=2,
            max_seq_length=96,
            eval_fraction=0.0,
            logging_steps=1,
            checkpoint_steps=0,
            **BUDGET,
        )
        train_lora(model, _conversations(2), settings)
    else:
        from fine_tune_dag.core.evaluation.config import EvaluationSettings
        from fine_tune_dag.core.evaluation.measures import evaluate_contender

        settings = EvaluationSettings(max_examples=2, max_new_tokens=4, batch_size=2, **BUDGET)
        tokenizer = load_tokenizer(model)
        lm = load_causal_lm(model)
        conversations = _conversations(2)
        sources = [c[-1]["content"] for c in conversations]
        evaluate_contender(lm, tokenizer, conversations, settings, sources, sources)


# ---- the parent ----------------------------------------------------------------------------------------------


def graph_peaks(notes: int, model: Path, root: Path) -> tuple[dict, float]:
    root.mkdir()
    out = root / "peaks.json"
    _, wall, _ = run_child(
        me("--child", "graph", "--notes", str(notes), "--model", str(model), "--root", str(root), "--out", str(out))
    )
    result = json.loads(out.read_text())
    if result["error"] or result["failed"]:
        print(f"graph on {notes} notes: failed notes {result['failed']}, model job: {result['error']}")
    print(f"graph on {notes} notes: {wall:.0f} s, peaks {result['peaks']}")
    return result, wall


def limit_row(metric: str, peak: float, limit: float, unit: str = "MiB", unmet: str = "") -> Row:
    """project: the figure; baseline: the limit; ratio limit/figure, target 1 (≤ the limit)."""
    return Row(BENCH, metric, peak, limit, limit / peak if peak else None, unit, target=1.0, unmet=unmet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=30, help="N; the second run has 2N (under 25: no test split)")
    parser.add_argument("--skip-1b", action="store_true", help="leave out the 1B random model")
    parser.add_argument("--single", action="store_true", help="leave out the 2N run (no growth rows)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    add_json_argument(parser)
    args = parser.parse_args()
    if args.child == "graph":
        return child_graph(args.notes, args.model, args.root, args.out)
    if args.child == "build":
        return child_build(args.root, args.model)
    if args.child:
        return child_llama(args.child, args.model, args.root)

    from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        bundled = resolve_model(BUNDLED_MODEL, root / "models").path
        weights = safetensors_mib(bundled)
        print(f"bundled model: {weights:.0f} MiB of float32 weights")

        # 3, 4 first: the CLI alone
        env = {**os.environ, "FINE_TUNE_DAG_DATA_DIR": str(root / "cli-data"), "FINE_TUNE_DAG_BASE_MODEL": str(bundled)}
        peak, wall, _ = run_child(
            [CLI, "generate", "What do you do with a worn chain?", "--adapter", "base", "--max-new-tokens", "16"], env
        )
        metric = f"generate (bundled) peak RSS = {peak / weights:.2f}× weights; ≤1.0 GB"
        rows.append(limit_row(metric, peak, GENERATE_LIMIT_MIB))
        helps = [run_child([CLI, "--help"], env)[1] for _ in range(5)]
        metric = "fine-tune-dag --help wall time (median of 5); ≤1 s"
        rows.append(limit_row(metric, statistics.median(helps), HELP_LIMIT_S, "s"))

        # 1, 2
        small, _ = graph_peaks(args.notes, bundled, root / "n")
        large = small if args.single else graph_peaks(2 * args.notes, bundled, root / "2n")[0]
        note = "scripted LLM teacher" + ("; model job failed" if small["error"] else "")
        for stage in STAGES:
            if stage not in small["peaks"]:
                print(f"{stage}: not materialized by the graph run (materialize_graph runs no preference assets)")
                continue
            at_n = small["peaks"][stage]
            rows.append(
                Row(BENCH, f"{stage} peak = {at_n / weights:.2f}× weights [vs weights]", at_n, weights, None, "MiB")
            )
        if small["peaks"]:
            top = max(small["peaks"], key=small["peaks"].get)
            rows.append(
                limit_row(f"graph's largest stage ({top}), {note}; ≤2.5 GB", small["peaks"][top], DEMO_LIMIT_MIB)
            )
        data_mib = (large["notes_bytes"] - small["notes_bytes"]) / MIB
        growth = {s: large["peaks"][s] - small["peaks"][s] for s in small["peaks"] if s in large["peaks"]}
        for stage, grew in growth.items() if not args.single else ():
            rows.append(
                Row(
                    BENCH,
                    f"{stage}: 2N minus N notes [vs notes +{data_mib * 1024:.0f} KiB]",
                    grew,
                    data_mib,
                    None,
                    "MiB",
                )
            )
        if growth and not args.single:
            worst = max(growth, key=growth.get)
            allowed = data_mib + NOISE_MIB
            rows.append(
                limit_row(
                    f"most growth at 2× notes ({worst}); ≤ data + {NOISE_MIB:g} MiB noise",
                    max(growth[worst], 1e-3),
                    allowed,
                )
            )

        # 5
        if not args.skip_1b:
            llama = root / "llama-1b"
            _, wall, text = run_child(me("--child", "build", "--root", str(llama), "--model", str(bundled)))
            params = json.loads(text.strip().splitlines()[-1])["params"]
            print(f"1B random model: {params / 1e9:.2f}B parameters, built in {wall:.0f} s")
            shutil.rmtree(root / "n", ignore_errors=True)
            shutil.rmtree(root / "2n", ignore_errors=True)

            from fine_tune_dag.core.models.loading import select_dtype
            from fine_tune_dag.core.training.sft_config import TrainingSettings

            # bytes per weight as each stage loads them on CPU: generation and evaluation float32 (their
            # default), training its `auto` (bfloat16 only on CPUs with AMX)
            training_bytes = select_dtype(TrainingSettings.dtype, "cpu").itemsize
            floors = {"generate": 4, "train": training_bytes, "evaluate": 4}
            for kind, bytes_per in floors.items():
                floor = params * bytes_per / MIB
                try:
                    peak, wall, _ = run_child(me("--child", kind, "--model", str(llama), "--root", str(root)))
                except RuntimeError as error:
                    print(f"1B {kind}: {error}")
                    continue
                print(f"1B {kind}: peak {peak:.0f} MiB, {wall:.0f} s")
                rows.append(
                    limit_row(
                        f"1B {kind} peak = {peak / floor:.2f}× weights ({bytes_per * 8}-bit); ≤3×",
                        peak,
                        floor * WEIGHTS_MULTIPLE_LIMIT,
                    )
                )
    report(rows, args.json)


if __name__ == "__main__":
    main()
