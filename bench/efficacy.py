"""Efficacy: does the model the graph makes write like its author and answer from the notes, better than
prompting or retrieval alone?

Runs the whole graph as `make demo` does (the shipped sample notes, the bundled model, the local LLM, CPU,
every default) into a fresh temporary data folder, then reads the evaluation eval_report recorded: every
contender (base zero-shot, best-prompted base, base + retrieval, tuned, tuned + retrieval) on the same held-out
notes. Every ratio carries its 95% bootstrap interval (over held-out passages or answers).

    python bench/efficacy.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg
from results import Row, add_json_argument, report

from fine_tune_dag.cli import materialize_graph
from fine_tune_dag.core.store.promotion import PromotionPolicy
from fine_tune_dag.core.store.registry import evaluation_summary, latest_evaluation
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.definitions import definitions_from_settings
from fine_tune_dag.settings import ProjectSettings

REPO = Path(__file__).resolve().parents[1]


def interval(summary: dict[str, float], metric: str) -> str:
    return f"[{summary[f'{metric}_low']:.3f}, {summary[f'{metric}_high']:.3f}]"


def efficacy_rows(summary: dict[str, dict[str, float]], seconds: float) -> list[Row]:
    """Rows with "higher is better" ratios, as the bench table reads them."""
    tuned, base, rag = summary["tuned"], summary["base"], summary.get("tuned+rag")
    policy = PromotionPolicy()
    rows = []
    for other, target in (("base", 1 / 0.70), ("prompted", 1 / 0.85)):
        ratio = f"voice_ratio_vs_{other}"
        low, high = 1 / tuned[f"{ratio}_high"], 1 / tuned[f"{ratio}_low"]
        rows.append(
            Row(
                "efficacy",
                f"voice perplexity, {other} ÷ tuned [CI {low:.2f}, {high:.2f}]",
                tuned["voice_perplexity"],
                summary[other]["voice_perplexity"],
                1 / tuned[ratio],
                "ppl",
                target,
            )
        )
    rows.append(
        Row(
            "efficacy",
            f"written notes attributed to the author, tuned {interval(tuned, 'authorship')} vs ≥ 0.5",
            tuned["authorship"],
            0.5,
            tuned["authorship"] / 0.5,
            "share",
            1.0,
        )
    )
    rows.append(
        Row(
            "efficacy",
            f"attributed to the author, tuned ÷ base (base {interval(base, 'authorship')})",
            tuned["authorship"],
            base["authorship"],
            tuned["authorship"] / base["authorship"] if base["authorship"] else float("inf"),
            "share",
            3.0,
        )
    )
    if rag is not None:
        rows.append(
            Row(
                "efficacy",
                f"unsupported content, tuned+rag {interval(rag, 'unsupported')} vs ≤ 0.35",
                rag["unsupported"],
                0.35,
                0.35 / rag["unsupported"] if rag["unsupported"] else float("inf"),
                "share",
                1.0,
            )
        )
        rows.append(
            Row(
                "efficacy",
                f"ROUGE-L, tuned+rag {interval(rag, 'rouge_l')} ÷ base {interval(base, 'rouge_l')}",
                rag["rouge_l"],
                base["rouge_l"],
                rag["rouge_l"] / base["rouge_l"] if base["rouge_l"] else float("inf"),
                "F1",
                1.5,
            )
        )
        rows.append(
            Row(
                "efficacy",
                f"right note cited, tuned+rag {interval(rag, 'cited_right')}",
                rag["cited_right"],
                None,
                None,
            )
        )
    for name in ("tuned", "tuned+rag"):
        loops = summary[name]["loops"] if name in summary else float("nan")
        rows.append(
            Row(
                "efficacy",
                f"generations looping, {name} (its saved defaults), vs ≤ 0.05",
                loops,
                0.05,
                0.05 / loops if loops else float("inf"),
                "share",
                1.0,
            )
        )
    worst = max(summary, key=lambda name: summary[name]["loops"])
    rows.append(
        Row("efficacy", f"generations looping, worst contender ({worst})", summary[worst]["loops"], None, None, "share")
    )
    rows.append(
        Row(
            "efficacy",
            f"tuned generations sharing > {policy.max_shared_words} words with train, vs ≤ {policy.max_memorized_share}",
            tuned["memorized"],
            policy.max_memorized_share,
            policy.max_memorized_share / tuned["memorized"] if tuned["memorized"] else float("inf"),
            "share",
            1.0,
        )
    )
    rows.append(
        Row("efficacy", f"held-out passages (voice items): {int(tuned['voice_items'])}", seconds, None, None, "s")
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes-dir", type=Path, default=REPO / "data" / "notes")
    parser.add_argument("--keep", type=Path, help="write the data folder here and keep it (to read the report)")
    add_json_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = args.keep or Path(folder) / "data"
        settings = ProjectSettings.from_environment().with_folders(args.notes_dir, data)
        started = time.perf_counter()
        run = materialize_graph(
            definitions_from_settings(settings), dg.DagsterInstance.ephemeral(), settings.layout.notes
        )
        seconds = time.perf_counter() - started
        if not run.success:
            raise SystemExit(f"the graph failed: {run.model_failure}")
        db = Warehouse(settings.layout.warehouse)
        summary = evaluation_summary(db, latest_evaluation(db).adapter_version)
    for name, values in summary.items():
        print(
            f"{name:<10} voice ppl {values['voice_perplexity']:8.2f}  authorship {values['authorship']:.2f}  "
            f"unsupported {values['unsupported']:.2f}  rouge_l {values['rouge_l']:.3f}  loops {values['loops']:.2f}"
        )
    report(efficacy_rows(summary, seconds), args.json)


if __name__ == "__main__":
    main()
