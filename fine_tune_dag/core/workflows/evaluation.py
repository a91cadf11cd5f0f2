"""Evaluate one registered adapter against the base model, the best-prompted base, retrieval and the champion
on the held-out notes, write its report and record it: the step eval_report and each sweep configuration share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from peft import PeftModel

from fine_tune_dag.core.common.chat import chat_messages
from fine_tune_dag.core.common.llm_types import LLMRequest
from fine_tune_dag.core.common.markdown import Markdown, table
from fine_tune_dag.core.common.text_metrics import SharedRuns, words
from fine_tune_dag.core.dataset.splits import records_of
from fine_tune_dag.core.evaluation.authorship import AuthorshipClassifier, Calibration, calibrate, reference_writing
from fine_tune_dag.core.evaluation.canary import CanarySettings, Exposure, exposures, make_canaries
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.edge_cases import side_by_side
from fine_tune_dag.core.evaluation.efficacy import (
    ADAPTER_CONTENDERS,
    AUTHORSHIP_DECIDES,
    METRIC_LABELS,
    Efficacy,
    HeldOut,
    Verdict,
    measure_efficacy,
    recommendation,
)
from fine_tune_dag.core.evaluation.gate import CROSSVAL_TUNE_NOTES, PromotionPolicy, interval_metrics, judge_challenger
from fine_tune_dag.core.evaluation.measures import (
    Contender,
    best_prompt_conversations,
    compare_contenders,
    contender_weights,
    judged_win_rates,
    pick_examples,
    retrieval_conversations,
    summarize,
    voice_scores,
    win_rates,
    written_notes,
)
from fine_tune_dag.core.evaluation.report import write_report
from fine_tune_dag.core.generation.base import EngineChoice, EngineSettings, GenerationEngine, engine_precision
from fine_tune_dag.core.generation.engines import open_engine
from fine_tune_dag.core.models.generation_config import GenerationSettings
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_device, select_dtype, with_adapters
from fine_tune_dag.core.privacy.findings import report_line as privacy_report_line
from fine_tune_dag.core.retrieval.index import PassageIndex
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.blind import BlindTrial, blind_results, save_blind_trials
from fine_tune_dag.core.store.crossval import crossval_verdict_for
from fine_tune_dag.core.store.edge_cases import edge_case_answers, edge_cases, versions_up_to
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.pair_labels import reviewed_train_pairs
from fine_tune_dag.core.store.registry import current_champion, record_evaluation
from fine_tune_dag.core.store.splits import notes_key, split_items, train_split, writing_items
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.workflows.adapters import Log

SHOWN_VERSIONS = 4  # newest adapter versions side by side with the base model
FEW_SHOT_MAX_WORDS = 150  # the best prompt shows whole passages of the author, but not the longest ones
Judge = Callable[[Sequence[LLMRequest]], list[str]]


def tracked_edge_cases(db: Warehouse, version: str) -> str:
    """The edge cases side by side: the base model and the newest versions up to this one."""
    cases = edge_cases(db)
    if cases.empty:
        return ""
    return side_by_side(cases, edge_case_answers(db), ["base", *versions_up_to(db, version)[-SHOWN_VERSIONS:]])


def method_text(adapter: pd.Series) -> str:
    """How the contender "tuned" was made, for the report."""
    if adapter.method == "dpo":
        return f"DPO (preference optimization) of champion {adapter.parent_version} on people's choices"
    return "supervised fine-tuning (LoRA) on the train split"


def reviewed_text(reviewed: tuple[int, int] | None) -> str:
    """How many of the train pairs a person accepted or edited (`fine-tune-dag annotate --pairs`)."""
    if reviewed is None:
        return "unknown (dataset version not recorded)"
    done, total = reviewed
    return f"{done} of {total} train pairs (accepted or edited on fine-tune-dag annotate --pairs)"


def contender_costs(results: dict[str, pd.DataFrame], adapter: pd.Series, champion: pd.Series | None) -> dict[str, str]:
    """Seconds per answer on this machine, plus the training an adapter took."""
    trained = {"tuned": adapter.train_seconds, "tuned+rag": adapter.train_seconds}
    if champion is not None:
        trained["champion"] = champion.train_seconds
    return {
        name: f"{frame.attrs['seconds']['generation'] / max(len(frame), 1):.2f} s/answer"
        + (f" + {trained[name]:.0f} s training" if name in trained else "")
        for name, frame in results.items()
    }


def written_side_by_side(voice: list[list[dict[str, str]]], written: dict[str, list[str]], count: int = 4) -> str:
    """The author's held-out passages beside what each contender wrote on the same prompt."""
    if not written:
        return ""
    rows = [
        [messages[-2]["content"], messages[-1]["content"], *(notes[i] for notes in written.values())]
        for i, messages in enumerate(voice[: min(count, *(len(notes) for notes in written.values()))])
    ]
    return table(rows, ["prompt", "you wrote", *written], limit=400)


def load_index(layout: DataLayout, log: Log) -> PassageIndex | None:
    """The retrieval index, or None (and a warning) when retrieval_index was never materialized."""
    try:
        return PassageIndex.load(layout.index)
    except FileNotFoundError as missing:
        log.warning(f"no retrieval contenders: {missing}")
        return None


def authorship_classifier(
    train_writing: pd.DataFrame, settings: EvaluationSettings, log: Log
) -> tuple[AuthorshipClassifier | None, Calibration | None]:
    """Trained on the author's train passages against the shipped writing of other authors only, never on a
    contender's output; calibrated by cross-validation over the author's train notes."""
    if len(train_writing) < 2:
        log.warning(f"{len(train_writing)} train passages: too few to learn the author from, authorship not measured")
        return None, None
    others = reference_writing()
    passages, notes = train_writing["answer"].tolist(), train_writing["note_id"].tolist()
    classifier = AuthorshipClassifier.fit(passages, [p.text for p in others], seed=settings.seed)
    return classifier, calibrate(passages, notes, others, seed=settings.seed)


@dataclass
class HeldOutResults:
    """Everything the contenders produced on the held-out notes, item by item: what the report, the gate and a
    cross-validated verdict (which pools several of these) are computed from."""

    qa: dict[str, pd.DataFrame]
    voice: dict[str, pd.DataFrame]
    written: dict[str, list[str]]
    attributed: dict[str, list[float]]
    held_out: HeldOut
    voice_prompts: list[list[dict[str, str]]]
    qa_paths: list[str]


@dataclass(frozen=True)
class HeldOutSplit:
    """What one evaluation holds out and what it may learn from: Q&A items and writing items (voice) of the
    held-out notes, and the writing items of the train notes (few-shot examples, the authorship classifier)."""

    qa: pd.DataFrame
    voice: pd.DataFrame
    train_writing: pd.DataFrame

    @classmethod
    def of_dataset(cls, db: Warehouse) -> HeldOutSplit:
        return cls(split_items(db, "test"), writing_items(db, "test"), writing_items(db, "train"))


def outcome_summary(
    outcome: HeldOutResults,
    train: pd.DataFrame,
    policy: PromotionPolicy,
    seed: int,
    calibration: Calibration | None,
) -> tuple[dict[str, dict[str, float]], Efficacy]:
    """Every contender's figures and paired comparisons, the classifier's calibration and how long the written
    notes run against the author's; `train` (rows with `answer` and `passage`) is what a generation must not
    regurgitate."""
    shared = SharedRuns([*train["answer"].dropna().unique(), *train["passage"].dropna().unique()])
    efficacy = measure_efficacy(
        outcome.qa,
        outcome.voice,
        outcome.written,
        outcome.attributed,
        outcome.held_out,
        outcome.qa_paths,
        shared,
        policy.max_shared_words,
        seed,
    )
    summary = {name: summarize(frame) | efficacy.metrics[name] for name, frame in outcome.qa.items()}
    for name, texts in outcome.written.items():
        summary[name]["written_words"] = float(np.median([len(words(t)) for t in texts])) if texts else math.nan
    passages = [messages[-1]["content"] for messages in outcome.voice_prompts[: len(outcome.held_out.written_notes)]]
    summary["tuned"]["author_words"] = float(np.median([len(words(p)) for p in passages])) if passages else math.nan
    if calibration is not None:
        summary["tuned"][AUTHORSHIP_DECIDES] = float(calibration.decides)
        summary["tuned"] |= interval_metrics("calibration_recall", calibration.recall)
        summary["tuned"] |= interval_metrics("calibration_false_positives", calibration.false_positive_rate)
    return summary, efficacy


def held_out_contenders(
    split: HeldOutSplit,
    settings: EvaluationSettings,
    index: PassageIndex | None,
    champion: bool,
) -> tuple[list[Contender], pd.DataFrame, pd.DataFrame]:
    """The contenders and the held-out items they are asked: the Q&A items and the writing items (voice)."""
    test = split.qa.head(settings.max_examples)
    voice_items = split.voice.head(settings.max_voice_items)
    conversations = [r["messages"] for r in records_of(test)]
    voice = [chat_messages(r.system, r.question, r.answer) for r in voice_items.itertuples(index=False)]
    train_writing = split.train_writing
    examples = pick_examples(
        list(zip(train_writing["question"], train_writing["answer"])),
        count=settings.few_shot_passages,
        seed=settings.seed,
        max_words=FEW_SHOT_MAX_WORDS,
    )
    contenders = [
        # the base model writes nothing: the best-prompted base is the untuned writer to beat, and writing a
        # note beside every held-out passage is the evaluation's costliest step
        Contender("base", None, conversations, voice),
        Contender(
            "prompted",
            None,
            best_prompt_conversations(conversations, examples),
            best_prompt_conversations(voice, examples),
            writes=True,
        ),
    ]
    retrieval: tuple[list, list, list] | None = None
    if index is not None:
        asked, cited = retrieval_conversations(conversations, index, settings.retrieval_top_k)
        voice_asked, _ = retrieval_conversations(
            voice, index, settings.retrieval_top_k, voice_items["note_id"].tolist()
        )
        retrieval = (asked, voice_asked, cited)
        contenders.append(Contender("base+rag", None, asked, voice_asked, cited=cited))
    if champion:
        contenders.append(Contender("champion", "champion", conversations, voice, writes=True))
    contenders.append(Contender("tuned", "tuned", conversations, voice, writes=True))
    if retrieval is not None:
        contenders.append(Contender("tuned+rag", "tuned", retrieval[0], retrieval[1], cited=retrieval[2]))
    return contenders, test, voice_items


def run_contenders(
    model: PeftModel,
    tokenizer: Any,
    contenders: Sequence[Contender],
    test: pd.DataFrame,
    voice_items: pd.DataFrame,
    classifier: AuthorshipClassifier | None,
    settings: EvaluationSettings,
    log: Log,
    engine: GenerationEngine | None = None,
) -> HeldOutResults:
    """Answers, voice scores and written notes of every contender on the same held-out items, whatever the
    held-out split lacks (no Q&A items, no passages); generated by `engine` where given."""

    def log_progress(contender: str, count: int) -> None:
        log.info(f"{contender}: generated {count} more answers")

    qa = compare_contenders(
        model, tokenizer, contenders, test["source"].tolist(), test["note_id"].tolist(), settings, log_progress, engine
    )
    log.info(f"voice: scoring {len(voice_items)} held-out passages under each of {len(contenders)} contenders")
    voice = voice_scores(model, tokenizer, contenders, settings)
    written_count = min(len(voice_items), settings.max_written_notes)
    log.info(f"writing {written_count} notes per writing contender for authorship, loops and memorization")
    written = written_notes(model, tokenizer, contenders, settings, GenerationSettings(seed=settings.seed), engine)
    attributed = {name: classifier.attributed(texts) for name, texts in written.items()} if classifier else {}
    notes = voice_items["note_id"].tolist()
    held_out = HeldOut(notes, test["note_id"].tolist(), notes[:written_count])
    prompts = [list(c.voice) for c in contenders if c.name == "tuned"][0] if contenders else []
    return HeldOutResults(qa, voice, written, attributed, held_out, prompts, test["path"].tolist())


def contender_engine(
    base_path: Path,
    adapter_paths: dict[str, str | Path],
    tokenizer: Any,
    settings: EvaluationSettings,
    device: str,
    model: PeftModel,
    log: Log,
) -> GenerationEngine:
    """The engine the contenders generate on: the base model and the same named adapters as `model`, which
    scores, and which generates itself where the engine cannot run."""
    engine = open_engine(
        base_path,
        {name: Path(path) for name, path in adapter_paths.items()},
        tokenizer,
        EngineSettings(settings.generation_engine, engine_precision(settings.dtype), settings.batch_size),  # type: ignore[arg-type]
        device,
        lambda: model,
    )
    log.info(f"generating with {engine.choice.engine} ({engine.choice.reason}, {engine.choice.precision})")
    return engine


@dataclass(frozen=True)
class Contenders:
    """Step one's result: who is compared on which held-out items. `champion` is the champion compared against
    (None when there is none, or it was trained on another base model); `adapter_paths` and `versions` name the
    adapters the model loads ("tuned", and "champion" when compared)."""

    adapter: pd.Series
    champion: pd.Series | None
    adapter_paths: dict[str, str]
    versions: dict[str, str]
    split: HeldOutSplit
    contenders: list[Contender]
    test: pd.DataFrame
    voice_items: pd.DataFrame


@dataclass(frozen=True)
class Measurement:
    """Step two's result: what every contender produced on the held-out items, the authorship classifier's
    calibration, and where and by what engine it was generated."""

    outcome: HeldOutResults
    calibration: Calibration | None
    device: str
    engine: EngineChoice
    canaries: list[Exposure] = field(default_factory=list)  # planted on purpose, under the new adapter (opt-in)


def assemble_contenders(
    db: Warehouse, adapter: pd.Series, settings: EvaluationSettings, layout: DataLayout, store: ArtifactStore, log: Log
) -> Contenders:
    """The adapter (and the champion, when one was trained on the same base model) fetched from object storage,
    the held-out split, and the contenders asked: base, best-prompted base, base + retrieval, the champion, the
    adapter and the adapter + retrieval (retrieval only when the index was built)."""
    store.fetch(f"adapters/{adapter.version}", Path(adapter.path))  # trained in another pod: from object storage
    adapter_paths = {"tuned": str(adapter.path)}
    versions = {"tuned": str(adapter.version)}
    champion = current_champion(db)
    if champion is not None and champion.version != adapter.version:
        if champion.base_model_path == adapter.base_model_path:
            store.fetch(f"adapters/{champion.version}", Path(champion.path))
            adapter_paths["champion"] = str(champion.path)
            versions["champion"] = str(champion.version)
        else:
            log.warning(
                f"champion {champion.version} was trained on {champion.base_model}, not {adapter.base_model}: "
                "the newcomer is judged against the base model"
            )
    split = HeldOutSplit.of_dataset(db)
    contenders, test, voice_items = held_out_contenders(
        split, settings, load_index(layout, log), "champion" in versions
    )
    if test.empty and voice_items.empty:
        log.warning("nothing is held out: the report can judge nothing (add notes or raise test_fraction)")
    compared = champion if "champion" in versions else None
    return Contenders(adapter, compared, adapter_paths, versions, split, contenders, test, voice_items)


def measure_contenders(assembled: Contenders, settings: EvaluationSettings, log: Log) -> Measurement:
    """The base model loaded once with the compared adapters (in the evaluation's dtype, on its device), every
    contender's answers, voice scores and written notes on the held-out items, and the authorship classifier's
    attribution of those notes."""
    adapter = assembled.adapter
    device = select_device(settings.device)
    base = load_causal_lm(Path(adapter.base_model_path), device, select_dtype(settings.dtype, device))
    model = with_adapters(base, assembled.adapter_paths)
    tokenizer = load_tokenizer(Path(adapter.path))
    classifier, calibration = authorship_classifier(assembled.split.train_writing, settings, log)
    paths = assembled.adapter_paths
    engine = contender_engine(Path(adapter.base_model_path), paths, tokenizer, settings, device, model, log)
    outcome = run_contenders(
        model, tokenizer, assembled.contenders, assembled.test, assembled.voice_items, classifier, settings, log, engine
    )
    engine.close()
    canaries = []
    if settings.canary_audit:
        with contender_weights(model, "tuned"):
            canaries = exposures(model, tokenizer, make_canaries(CanarySettings()), CanarySettings())
    return Measurement(outcome, calibration, str(device), engine.choice, canaries)


def report_and_record(
    db: Warehouse,
    assembled: Contenders,
    measured: Measurement,
    settings: EvaluationSettings,
    layout: DataLayout,
    policy: PromotionPolicy,
    store: ArtifactStore,
    judge: Judge | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """The figures, the gate and the recommendation (or a cross-validated verdict, when nothing was held out),
    the blind trials, the report written and published, and the evaluation recorded in the registry. `judge`
    (an LLM's `complete`) adds judged win rates. Returns the summary and the metadata."""
    adapter, outcome, versions = assembled.adapter, measured.outcome, assembled.versions
    summary, efficacy = outcome_summary(outcome, train_split(db), policy, settings.seed, measured.calibration)
    evidence = "the held-out notes of this dataset"
    crossval = crossval_verdict_for(db, notes_key(db, adapter.dataset_version)) if outcome.held_out.notes == 0 else None
    if crossval is not None and crossval.choice in ADAPTER_CONTENDERS and crossval.gate_passed:
        summary["tuned"][CROSSVAL_TUNE_NOTES] = float(crossval.notes)
        evidence = f"a cross-validated verdict on every note ({crossval.report_path}): {crossval.verdict}"
    saved = save_blind_trials(
        db,
        adapter.version,
        [
            BlindTrial(note, messages[-2]["content"], messages[-1]["content"], text)
            for note, messages, text in zip(
                outcome.held_out.written_notes, outcome.voice_prompts, outcome.written.get("tuned", [])
            )
        ],
        seed=settings.seed,
    )
    blind = blind_results(db, adapter.version)
    head_to_head = win_rates(outcome.qa, "tuned", seed=settings.seed)
    if judge is not None:
        head_to_head += judged_win_rates(outcome.qa, "tuned", judge, seed=settings.seed)
    gate = judge_challenger(summary, policy)
    verdict = recommendation(summary, gate, outcome.held_out.notes, settings.min_held_out_notes, blind.picks)
    if CROSSVAL_TUNE_NOTES in summary["tuned"]:
        verdict = Verdict(
            str(crossval.choice),
            f"{crossval.verdict}\n\nThis adapter was trained on every note after that cross-validated verdict: "
            "nothing is held out from it, so the tables below have nothing to show.",
        )
    steps = pd.read_csv(Path(adapter.path) / "metrics.csv")
    engine, calibration, test = measured.engine, measured.calibration, assembled.test
    facts = {
        "adapter": adapter.version,
        "base model": adapter.base_model,
        "dataset version": adapter.dataset_version,
        "champion": versions.get("champion", "none yet"),
        "method": method_text(adapter),
        "trained on": f"{adapter.train_examples} {'preference pairs' if adapter.method == 'dpo' else 'examples'}, "
        f"{adapter.train_tokens} tokens, {adapter.train_seconds:.0f} s on {adapter.device}",
        "held out": outcome.held_out.text,
        "pairs reviewed by people": reviewed_text(reviewed_train_pairs(db, str(adapter.dataset_version))),
        "judged on": evidence,
        "evaluated on": measured.device,
        "generated by": f"{engine.engine} ({engine.precision}): {engine.reason}",
        "personal data": privacy_report_line(db, str(adapter.dataset_version)),
    }
    files = write_report(
        layout.reports / adapter.version,
        f"Evaluation of {'DPO ' if adapter.method == 'dpo' else ''}adapter {adapter.version}",
        summary,
        outcome.qa,
        steps,
        facts,
        gate=gate,
        verdict=verdict,
        head_to_head=head_to_head,
        edge_cases=tracked_edge_cases(db, adapter.version),
        efficacy=efficacy,
        calibration=calibration,
        blind=blind,
        costs=contender_costs(outcome.qa, adapter, assembled.champion),
        written=written_side_by_side(outcome.voice_prompts, outcome.written),
        min_held_out_notes=settings.min_held_out_notes,
        canaries=measured.canaries,
    )
    evaluation = {
        "adapter_version": adapter.version,
        "dataset_version": str(adapter.dataset_version),
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "report_path": str(files.markdown),
        "test_examples": len(test),
        "champion_version": versions.get("champion"),
        "device": measured.device,
        "recommendation": verdict.text,
    }
    record_evaluation(db, evaluation, summary, versions)
    published = store.publish(files.markdown.parent, f"reports/{adapter.version}")
    headline = {
        f"{name}_{metric}": round(value, 4)
        for name, values in summary.items()
        for metric, value in values.items()
        if metric in METRIC_LABELS
    }
    return summary, {
        "report": files.markdown,
        "report_html": files.html,
        "published_to": published,
        "loss_curve": files.loss_curve,
        "adapter_version": adapter.version,
        "method": adapter.method,
        "champion_version": versions.get("champion", "none"),
        "device": measured.device,
        **engine.metadata(),
        "test_examples": len(test),
        "held_out": outcome.held_out.text,
        "recommendation": verdict.text,
        "promotion_gate": gate.text,
        "blind_trials": f"{saved.new} new, {saved.left_out} left out (the model wrote nothing)",
        "authorship_calibration": calibration.text if calibration else "not measured",
        "voice_perplexity": {name: round(values["voice_perplexity"], 3) for name, values in summary.items()},
        "win_rates": Markdown(
            table([[f"tuned vs {n}", basis, str(rate)] for n, basis, rate in head_to_head], ["", "on", "win rate"])
        ),
        **headline,
        "report_markdown": Markdown(files.with_inline_images()),
    }


def evaluate_adapter(
    db: Warehouse,
    adapter: pd.Series,
    settings: EvaluationSettings,
    layout: DataLayout,
    policy: PromotionPolicy,
    store: ArtifactStore,
    log: Log,
    judge: Judge | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Evaluate one registered adapter against base, best-prompted base, base + retrieval, the champion and
    itself with retrieval; write and record its report. Three steps, each callable alone: assemble the
    contenders, measure them, report and record. Returns the summary and the metadata."""
    assembled = assemble_contenders(db, adapter, settings, layout, store, log)
    measured = measure_contenders(assembled, settings, log)
    return report_and_record(db, assembled, measured, settings, layout, policy, store, judge)
