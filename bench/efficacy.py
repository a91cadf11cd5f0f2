"""Efficacy: does the model the graph makes write like its author and answer from the notes, better than
prompting or retrieval alone?

Runs the whole graph as `make demo` does (the shipped sample notes, the bundled model, the local LLM, CPU,
every default) into a fresh temporary data folder, then reads the evaluation eval_report recorded: every
contender (base zero-shot, best-prompted base, base + retrieval, tuned, tuned + retrieval) on the same held-out
notes. Every interval resamples held-out notes (passages of one note are not independent) and is paired where
two contenders share items; a target is met only when the interval's conservative end meets it.

    python bench/efficacy.py
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import dagster as dg
from results import Row, add_json_argument, report

from fine_tune_dag.core.common.statistics import Interval
from fine_tune_dag.core.evaluation.gate import PromotionPolicy, stored_interval
from fine_tune_dag.core.store.registry import evaluation_summary, latest_evaluation
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.definitions import definitions_from_settings
from fine_tune_dag.runner import materialize_graph
from fine_tune_dag.settings import ProjectSettings

REPO = Path(__file__).resolve().parents[1]


def stored(values: dict[str, float], key: str) -> Interval:
    interval = stored_interval(values, key)
    return interval if interval is not None else Interval(math.nan, math.nan, math.nan)


def efficacy_rows(summary: dict[str, dict[str, float]], seconds: float, verdict: str) -> list[Row]:
    """Rows with "higher is better" ratios, each with the ratio at its interval's conservative end: a target is
    met only when that bound meets it. Intervals resample held-out notes and are paired where contenders share
    items."""
    tuned, rag = summary["tuned"], summary.get("tuned+rag")
    policy = PromotionPolicy()
    rows = []
    for other, target in (("base", 1 / 0.70), ("prompted", 1 / 0.85)):
        gap = stored(tuned, f"voice_vs_{other}")  # per-token NLL, tuned − other: exp(−gap) = other ÷ tuned
        rows.append(
            Row(
                "efficacy",
                f"voice perplexity, {other} ÷ tuned, paired [CI {math.exp(-gap.high):.2f}, {math.exp(-gap.low):.2f}], "
                f"{gap.notes} notes, {gap.items} passages",
                tuned["voice_perplexity"],
                summary[other]["voice_perplexity"],
                math.exp(-gap.value),
                "ppl",
                target,
                bound=math.exp(-gap.high),
            )
        )
    share = stored(tuned, "authorship")
    rows.append(
        Row(
            "efficacy",
            f"written notes attributed to the author, tuned {share} ({share.notes} notes) vs ≥ 0.5",
            share.value,
            0.5,
            share.value / 0.5,
            "share",
            1.0,
            bound=share.low / 0.5,
        )
    )
    for other in ("prompted", "base"):
        difference = stored(tuned, f"authorship_vs_{other}")
        rows.append(
            Row(
                "efficacy",
                f"attributed to the author, tuned − {other}, paired: {difference} ({difference.notes} notes)",
                share.value,
                summary[other]["authorship"],
                None,
                "share",
            )
        )
    recall, false_positives = stored(tuned, "calibration_recall"), stored(tuned, "calibration_false_positives")
    rows.append(
        Row(
            "efficacy",
            f"authorship classifier: author's held-out passages found, note-wise CV {recall} ({recall.notes} notes)",
            recall.value,
            None,
            None,
            "share",
        )
    )
    rows.append(
        Row(
            "efficacy",
            f"authorship classifier: other writers taken for the author {false_positives} "
            f"({false_positives.notes} writers)",
            false_positives.value,
            None,
            None,
            "share",
        )
    )
    rows.append(
        Row(
            "efficacy",
            f"median words per written note, tuned ÷ the author's passages ({tuned['author_words']:.0f}) vs ≥ 0.8",
            tuned["written_words"],
            tuned["author_words"],
            tuned["written_words"] / tuned["author_words"] if tuned["author_words"] else math.nan,
            "words",
            0.8,
        )
    )
    if rag is not None:
        unsupported = stored(rag, "unsupported")
        rows.append(
            Row(
                "efficacy",
                f"unsupported content, tuned+rag {unsupported} ({unsupported.notes} notes) vs ≤ 0.35",
                unsupported.value,
                0.35,
                0.35 / unsupported.value if unsupported.value else math.inf,
                "share",
                1.0,
                bound=0.35 / unsupported.high if unsupported.high else math.inf,
            )
        )
        cited = stored(rag, "cited_right")
        rows.append(Row("efficacy", f"right note cited, tuned+rag {cited} ({cited.notes} notes)", cited.value, None, None))
    for name in ("tuned", "tuned+rag"):
        loops = summary[name]["loops"] if name in summary else math.nan
        rows.append(
            Row(
                "efficacy",
                f"generations looping, {name} (its saved defaults), vs ≤ 0.05",
                loops,
                0.05,
                0.05 / loops if loops else math.inf,
                "share",
                1.0,
            )
        )
    rows.append(
        Row(
            "efficacy",
            f"tuned generations sharing > {policy.max_shared_words} words with train, vs ≤ {policy.max_memorized_share}",
            tuned["memorized"],
            policy.max_memorized_share,
            policy.max_memorized_share / tuned["memorized"] if tuned["memorized"] else math.inf,
            "share",
            1.0,
        )
    )
    voice = stored(tuned, "voice_vs_base")
    rows.append(
        Row("efficacy", f"graph wall time; held out: {voice.notes} notes, {voice.items} passages", seconds, None, None, "s")
    )
    rows.append(Row("efficacy", f"verdict: {verdict.split(' — ')[0].replace('**', '')}", seconds, None, None, "s"))
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
        evaluation = latest_evaluation(db)
        summary = evaluation_summary(db, evaluation.adapter_version)
    for name, values in summary.items():
        print(
            f"{name:<10} voice ppl {values['voice_perplexity']:8.2f}  authorship {values['authorship']:.2f}  "
            f"unsupported {values['unsupported']:.2f}  rouge_l {values['rouge_l']:.3f}  loops {values['loops']:.2f}"
        )
    print(f"verdict: {evaluation.recommendation}")
    report(efficacy_rows(summary, seconds, evaluation.recommendation), args.json)


if __name__ == "__main__":
    main()
