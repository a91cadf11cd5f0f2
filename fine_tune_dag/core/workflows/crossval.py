"""A cross-validated verdict for a small corpus: k folds by note, each training an adapter on the other folds'
notes and evaluating it, with every contender, on its own; the comparison pooled over every note decides.

With 10–50 notes a held-out split of a fifth holds two to ten notes, too few for any interval to decide. Here
every note is held out once, so the pooled comparison rests on all of them, still resampled by note. The folds
judge the *method* (fine-tuning on these notes with these settings); their adapters are never registered, so
never promoted. After a verdict of "Tune" the adapter to keep can be trained on every note
(`dataset_splits.test_fraction: 0`), and its report says it was kept on this evidence.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.dataset.mixing import mixed_conversations
from fine_tune_dag.core.dataset.splits import fold_key, folds_by_note_hash
from fine_tune_dag.core.dataset.writing import WRITE, WRITING_MODES
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.efficacy import HeldOut, recommendation
from fine_tune_dag.core.evaluation.gate import PromotionPolicy, judge_challenger
from fine_tune_dag.core.evaluation.report import write_verdict_report
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype, with_adapters
from fine_tune_dag.core.models.resolution import ResolvedModel
from fine_tune_dag.core.store.crossval import record_crossval_verdict
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import latest_adapter
from fine_tune_dag.core.store.splits import dataset_rows, notes_key
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.loop import save_adapter
from fine_tune_dag.core.training.sft import mix_weights, train_lora
from fine_tune_dag.core.training.sft_config import TrainingSettings
from fine_tune_dag.core.workflows.adapters import Log
from fine_tune_dag.core.workflows.evaluation import (
    HeldOutResults,
    HeldOutSplit,
    authorship_classifier,
    contender_engine,
    held_out_contenders,
    load_index,
    outcome_summary,
    run_contenders,
)

RESULTS_FILE = "results.json"
# Tokens per second the bundled model generated in batches on the 2-core reference machine (DESIGN.md), for an
# estimate before any fold has run; afterwards the folds' own timings replace it.
REFERENCE_GENERATION_TOKENS_PER_SECOND = 35.0
REFERENCE_TRAINING_TOKENS_PER_SECOND = 100.0


@dataclass(frozen=True)
class FoldPlan:
    """Which notes one fold holds out and trains on."""

    fold: int
    folds: int
    test_notes: tuple[str, ...]
    train_notes: tuple[str, ...]

    @property
    def key(self) -> str:
        return fold_key(self.fold, self.folds)


def plan_folds(rows: pd.DataFrame, folds: int) -> list[FoldPlan]:
    """k folds by note hash over every note of the dataset; a clear error when there are fewer notes than folds."""
    notes = sorted(set(rows["note_id"]))
    if len(notes) < folds:
        raise StageError(f"{len(notes)} notes cannot make {folds} folds: lower crossval folds or add notes")
    assignment = folds_by_note_hash(notes, folds)
    return [
        FoldPlan(
            fold,
            folds,
            tuple(n for n in notes if assignment[n] == fold),
            tuple(n for n in notes if assignment[n] != fold),
        )
        for fold in range(folds)
    ]


def fold_split(rows: pd.DataFrame, plan: FoldPlan) -> tuple[HeldOutSplit, pd.DataFrame]:
    """The fold's held-out items and its train rows (nothing of a held-out note is trained on)."""
    held = rows["note_id"].isin(plan.test_notes)
    test, train = rows[held], rows[~held].reset_index(drop=True)
    split = HeldOutSplit(
        test[~test["mode"].isin(WRITING_MODES)].reset_index(drop=True),
        test[test["mode"] == WRITE].reset_index(drop=True),
        train[train["mode"] == WRITE].reset_index(drop=True),
    )
    return split, train


def crossval_folder(layout: DataLayout, dataset_version: str, training: TrainingSettings) -> Path:
    """One folder per dataset and training settings: a fold done for them is never redone (resumable)."""
    return layout.data / "crossval" / f"{dataset_version}-{fingerprint(training)}"


@dataclass(frozen=True)
class CrossvalEstimate:
    folds: int
    notes: int
    train_tokens: int  # over all folds
    generated_tokens: int  # over all folds and contenders
    seconds: float

    @property
    def text(self) -> str:
        return (
            f"{self.folds} folds over {self.notes} notes: about {self.train_tokens:,} training tokens and "
            f"{self.generated_tokens:,} generated tokens, about {self.seconds / 60:.0f} minutes on this machine"
        )


def estimate_crossval(
    db: Warehouse, folds: int, training: TrainingSettings, evaluation: EvaluationSettings
) -> CrossvalEstimate:
    """What the k folds will cost before any is run: training tokens from the fold's rows and epochs, generated
    tokens from the held-out items, each at the throughput the newest adapter trained at (or the reference
    machine's figures before any adapter)."""
    rows = dataset_rows(db)
    plans = plan_folds(rows, folds)
    words = rows["question"].str.split().str.len().fillna(0) + rows["answer"].str.split().str.len().fillna(0)
    tokens_per_row = (words * 1.3 + 30).groupby(rows["note_id"]).sum()  # about 1.3 tokens a word, plus the template
    train_tokens = sum(int(tokens_per_row[list(p.train_notes)].sum() * training.epochs) for p in plans)
    qa = int((~rows["mode"].isin(WRITING_MODES)).sum())
    passages = rows[rows["mode"] == WRITE]
    written = int((passages["answer"].str.split().str.len() * 1.3).sum())
    generated = qa * evaluation.max_new_tokens * 5 + written * 3  # five contenders answer, three write
    adapter = latest_adapter(db)
    training_rate = (
        float(adapter.train_tokens) / max(float(adapter.train_seconds), 1e-9)
        if adapter is not None
        else REFERENCE_TRAINING_TOKENS_PER_SECOND
    )
    seconds = train_tokens / training_rate + generated / REFERENCE_GENERATION_TOKENS_PER_SECOND
    return CrossvalEstimate(folds, len(set(rows["note_id"])), train_tokens, generated, seconds)


def save_results(outcome: HeldOutResults, path: Path) -> Path:
    """Written whole under a temporary name and renamed, so a fold is done exactly when its file exists."""
    data = {
        "qa": {name: frame.to_dict("records") for name, frame in outcome.qa.items()},
        "voice": {name: frame.to_dict("records") for name, frame in outcome.voice.items()},
        "written": outcome.written,
        "attributed": outcome.attributed,
        "held_out": asdict(outcome.held_out),
        "voice_prompts": outcome.voice_prompts,
        "qa_paths": outcome.qa_paths,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=list), encoding="utf-8")
    tmp.replace(path)
    return path


def load_results(path: Path) -> HeldOutResults:
    data = json.loads(path.read_text(encoding="utf-8"))
    held = data["held_out"]
    return HeldOutResults(
        {name: pd.DataFrame.from_records(rows) for name, rows in data["qa"].items()},
        {name: pd.DataFrame.from_records(rows) for name, rows in data["voice"].items()},
        data["written"],
        data["attributed"],
        HeldOut(held["voice_notes"], held["qa_notes"], held["written_notes"]),
        data["voice_prompts"],
        data["qa_paths"],
    )


def pooled(outcomes: list[HeldOutResults]) -> HeldOutResults:
    """The folds' items side by side, as if one evaluation had held out every note: each note appears in one
    fold only, so resampling notes over the pool is still the clustered bootstrap."""
    names = list(outcomes[0].qa)

    def frames(kind: str) -> dict[str, pd.DataFrame]:
        return {name: pd.concat([getattr(o, kind)[name] for o in outcomes], ignore_index=True) for name in names}

    return HeldOutResults(
        frames("qa"),
        frames("voice"),
        {name: [t for o in outcomes for t in o.written.get(name, [])] for name in outcomes[0].written},
        {name: [a for o in outcomes for a in o.attributed.get(name, [])] for name in outcomes[0].attributed},
        HeldOut(
            [n for o in outcomes for n in o.held_out.voice_notes],
            [n for o in outcomes for n in o.held_out.qa_notes],
            [n for o in outcomes for n in o.held_out.written_notes],
        ),
        [p for o in outcomes for p in o.voice_prompts],
        [p for o in outcomes for p in o.qa_paths],
    )


def run_fold(
    db: Warehouse,
    layout: DataLayout,
    base: ResolvedModel,
    fold: int,
    folds: int,
    training: TrainingSettings,
    evaluation: EvaluationSettings,
    log: Log,
) -> dict[str, Any]:
    """Train on the other folds' notes, evaluate every contender on this fold's; skipped when already done for
    this dataset and these settings. Returns the metadata."""
    rows = dataset_rows(db)
    if rows.empty:
        raise StageError("the dataset is empty: materialize qa_pairs and dataset_splits first")
    version = str(rows["dataset_version"].iloc[0])
    plan = plan_folds(rows, folds)[fold]
    folder = crossval_folder(layout, version, training) / plan.key
    results = folder / RESULTS_FILE
    facts = {"fold": plan.key, "held_out_notes": list(plan.test_notes), "train_notes": len(plan.train_notes)}
    if results.exists():
        log.info(f"{plan.key} was already run for dataset {version} with these settings: kept as it is")
        return {**facts, "results": results, "resumed": True}
    log.info(f"the whole cross-validation: {estimate_crossval(db, folds, training, evaluation).text}")
    split, train = fold_split(rows, plan)
    conversations, mix = mixed_conversations(
        train, mix_weights(training), training.seed, training.retrieval_distractors
    )
    log.info(f"{plan.key}: training on {len(plan.train_notes)} notes ({len(conversations)} examples)")

    def log_step(metrics: dict[str, float], total: int) -> None:
        log.info(f"{plan.key} step {metrics['step']}/{total} loss={metrics['loss']:.4f} ({metrics['elapsed_s']:.0f}s)")

    run = train_lora(base.path, conversations, training, on_log=log_step, checkpoint_dir=folder / "checkpoint")
    provenance = {"base_model": base.reference, "base_model_path": str(base.path), "dataset_version": version}
    adapter = save_adapter(run, folder, "adapter", provenance)
    device = select_device(evaluation.device)
    model = with_adapters(load_causal_lm(base.path, device, select_dtype(evaluation.dtype, device)), {"tuned": adapter})
    # retrieval searches all the notes, as it does for a user; a writing task never retrieves its own note
    contenders, test, voice_items = held_out_contenders(split, evaluation, load_index(layout, log), champion=False)
    classifier, _ = authorship_classifier(split.train_writing, evaluation, log)
    tokenizer = load_tokenizer(adapter)
    engine = contender_engine(base.path, {"tuned": adapter}, tokenizer, evaluation, device, model, log)
    outcome = run_contenders(model, tokenizer, contenders, test, voice_items, classifier, evaluation, log, engine)
    engine.close()
    save_results(outcome, results)
    return {
        **facts,
        "results": results,
        "resumed": False,
        "training_mix": mix,
        "train_seconds": round(run.seconds, 1),
        "held_out": outcome.held_out.text,
    }


def crossval_verdict(
    db: Warehouse,
    layout: DataLayout,
    folds: int,
    training: TrainingSettings,
    evaluation: EvaluationSettings,
    policy: PromotionPolicy,
    log: Log,
) -> dict[str, Any]:
    """Pool every fold's items, compare every contender paired and clustered by note, and write the verdict."""
    rows = dataset_rows(db)
    if rows.empty:
        raise StageError("the dataset is empty: materialize qa_pairs and dataset_splits first")
    version = str(rows["dataset_version"].iloc[0])
    folder = crossval_folder(layout, version, training)
    plans = plan_folds(rows, folds)
    missing = [p.key for p in plans if not (folder / p.key / RESULTS_FILE).exists()]
    if missing:
        raise StageError(f"folds not run yet for dataset {version}: {', '.join(missing)} (materialize crossval_folds)")
    outcome = pooled([load_results(folder / p.key / RESULTS_FILE) for p in plans])
    calibration = authorship_classifier(rows[rows["mode"] == WRITE], evaluation, log)[1]
    summary, efficacy = outcome_summary(outcome, rows, policy, evaluation.seed, calibration)
    gate = judge_challenger(summary, policy)
    verdict = recommendation(summary, gate, outcome.held_out.notes, evaluation.min_held_out_notes)
    facts = {
        "dataset version": version,
        "folds": f"{folds}, by note hash; each trained on the other folds' notes and held out its own",
        "notes": f"{len(set(rows['note_id']))}: " + "; ".join(f"{p.key}: {', '.join(p.test_notes)}" for p in plans),
        "training settings": json.dumps(asdict(training), sort_keys=True),
        "the folds' adapters": "judge the method only; never registered or promoted",
    }
    files = write_verdict_report(
        folder,
        f"Cross-validated verdict on {facts['notes'].split(':')[0]} notes ({folds} folds)",
        summary,
        efficacy,
        gate,
        verdict,
        calibration,
        facts,
        evaluation.min_held_out_notes,
    )
    record_crossval_verdict(
        db,
        version,
        notes_key(db, version),
        folds,
        outcome.held_out.notes,
        verdict.choice,
        verdict.text,
        gate.passed,
        str(files.markdown),
    )
    log.info(f"cross-validated verdict: {verdict.text}")
    return {
        "report": files.markdown,
        "report_html": files.html,
        "verdict": verdict.text,
        "choice": verdict.choice or "undecided",
        "gate": gate.text,
        "held_out": outcome.held_out.text,
        "voice_perplexity": {
            name: round(values["voice_perplexity"], 3)
            for name, values in summary.items()
            if not math.isnan(values["voice_perplexity"])
        },
    }
