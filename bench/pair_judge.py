"""Pair quality: how many pairs near-duplicate removal and the pair judge take out of the shipped notes, and
whether an adapter trained with the judge answers held-out questions better than one trained without it.

Runs the notes stages as `make demo` does (the shipped notes, the bundled model as teacher, every default) with the
judge off, builds the dataset, then runs synthesis again with the judge on (the teacher's Q&A answers come from
the cache: only the verdicts are new calls) and builds it again. An adapter is trained on each train split with
the same settings and seed, and both answer the same held-out items: the test split built without the judge
(split by note, so the judge changes which of a held-out note's pairs exist, never which notes are held out).
Answer NLL is per token of the author's reference answers; grounding is the share of each generated answer's
content not found in its passage (lower is better). The judge is worth its calls for a teacher where it lowers
both beyond noise.

    python bench/pair_judge.py [--steps 24] [--items 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg
from results import Row, add_json_argument, report

from fine_tune_dag.cli import register_note_partitions
from fine_tune_dag.core.common.chat import chat_messages
from fine_tune_dag.core.dataset.mixing import mixed_conversations
from fine_tune_dag.core.evaluation.measures import EvaluationSettings, evaluate_contender, summarize
from fine_tune_dag.core.models.resolution import resolve_model
from fine_tune_dag.core.store.splits import split_items, train_split
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.sft import mix_weights, train_lora
from fine_tune_dag.core.training.sft_config import TrainingSettings
from fine_tune_dag.definitions import definitions_from_settings
from fine_tune_dag.settings import ProjectSettings

REPO = Path(__file__).resolve().parents[1]


def materialized(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    events = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in events[-1].metadata.items()} if events else {}


def synthesize(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[str], judge: str) -> dict[str, int]:
    """qa_pairs for every note with the judge `judge` ('off' or 'llm'); the counts its metadata gives."""
    job = defs.resolve_job_def("notes_job")
    totals = {"kept": 0, "rejected": 0, "near_duplicate_questions": 0, "judged": 0, "judge_rejected": 0}
    for key in keys:
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            run_config={"ops": {"qa_pairs": {"config": {"judge": judge}}}},
            raise_on_error=False,
        )
        metadata = materialized(result, "qa_pairs")
        for name in totals:
            totals[name] += int(metadata.get(name, 0))
    return totals


def build_dataset(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict:
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("dataset_splits")])
    return materialized(result, "dataset_splits")


def answers(db: Warehouse, base: Path, items, steps: int, seed: int) -> dict[str, float]:
    """Train on the current train split, then answer `items`: answer NLL and the unsupported share."""
    training = TrainingSettings(max_steps=steps, seed=seed)
    conversations, _ = mixed_conversations(train_split(db), mix_weights(training), training.seed)
    run = train_lora(base, conversations, training)
    evaluation = EvaluationSettings()
    held_out = [chat_messages(row.system, row.question, row.answer) for row in items.itertuples(index=False)]
    per_item = evaluate_contender(
        run.model, run.tokenizer, held_out, evaluation, items["source"].tolist(), items["note_id"].tolist()
    )
    return summarize(per_item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes-dir", type=Path, default=REPO / "data" / "notes")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of each adapter")
    parser.add_argument("--items", type=int, default=16, help="held-out Q&A items both adapters answer")
    parser.add_argument("--seed", type=int, default=0)
    add_json_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = ProjectSettings.from_environment().with_folders(args.notes_dir, Path(folder) / "data")
        defs = definitions_from_settings(settings)
        instance = dg.DagsterInstance.ephemeral()
        keys = register_note_partitions(instance, settings.layout.notes)
        db = Warehouse(settings.layout.warehouse)
        base = resolve_model(settings.base_model, settings.layout.models).path

        started = time.perf_counter()
        without = synthesize(defs, instance, keys, "off")
        dataset = build_dataset(defs, instance)
        items = split_items(db, "test").head(args.items)
        plain = answers(db, base, items, args.steps, args.seed)
        judged = synthesize(defs, instance, keys, "llm")
        build_dataset(defs, instance)
        with_judge = answers(db, base, items, args.steps, args.seed)
        seconds = time.perf_counter() - started

    candidates = without["kept"] + without["rejected"]
    rows = [
        Row(
            "pair_judge",
            f"synthetic pairs from {len(keys)} notes, kept by the filters",
            without["kept"],
            candidates,
            None,
            "pairs",
        ),
        Row(
            "pair_judge",
            "near-duplicate questions removed within notes (MinHash)",
            without["near_duplicate_questions"],
            None,
            None,
            "pairs",
        ),
        Row(
            "pair_judge",
            "near-duplicate passages across notes removed (their examples)",
            dataset.get("near_duplicate_passages", 0),
            dataset.get("near_duplicate_examples_dropped", 0),
            None,
            "passages",
        ),
        Row(
            "pair_judge",
            "kept pairs the bundled judge rejected (of those it scored)",
            judged["judge_rejected"],
            judged["judged"],
            None,
            "pairs",
        ),
        Row(
            "pair_judge",
            f"answer NLL on {len(items)} held-out items, judge on vs off (lower better)",
            with_judge["nll"],
            plain["nll"],
            plain["nll"] / with_judge["nll"],
            "nats/token",
        ),
        Row(
            "pair_judge",
            f"unsupported share of answers on the same {len(items)} items, judge on vs off (lower better)",
            with_judge["unsupported"],
            plain["unsupported"],
            plain["unsupported"] / with_judge["unsupported"] if with_judge["unsupported"] else None,
            "share",
        ),
        Row("pair_judge", f"wall time ({args.steps} steps per adapter)", seconds, None, None, "s"),
    ]
    report(rows, args.json)


if __name__ == "__main__":
    main()
