"""Evaluate one registered adapter against the base model, the best-prompted base, retrieval and the champion
on the held-out notes, write its report and record it: the step eval_report and each sweep configuration share."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from fine_tune_dag.core.errors import StageError
from fine_tune_dag.core.llm.types import LLMRequest
from fine_tune_dag.core.modeling.chat import chat_messages
from fine_tune_dag.core.modeling.edge_cases import side_by_side
from fine_tune_dag.core.modeling.efficacy import measure_efficacy, recommendation
from fine_tune_dag.core.modeling.evaluation import (
    Contender,
    EvaluationSettings,
    best_prompt_conversations,
    compare_contenders,
    contender_weights,
    judged_win_rates,
    pick_examples,
    retrieval_conversations,
    summarize,
    voice_scores,
    win_rates,
    write_notes,
    written_notes,
)
from fine_tune_dag.core.modeling.generation_settings import GenerationSettings
from fine_tune_dag.core.modeling.models import (
    load_causal_lm,
    load_tokenizer,
    select_device,
    select_dtype,
    with_adapters,
)
from fine_tune_dag.core.modeling.report import write_report
from fine_tune_dag.core.retrieval.index import PassageIndex
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.blind import blind_results, save_blind_trials
from fine_tune_dag.core.store.edge_cases import edge_case_answers, edge_cases, versions_up_to
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.promotion import PromotionPolicy, judge_challenger
from fine_tune_dag.core.store.registry import current_champion, record_evaluation
from fine_tune_dag.core.store.splits import split_items, train_split, writing_items
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.text.authorship import AuthorshipClassifier, reference_writing
from fine_tune_dag.core.text.markdown import Markdown, table
from fine_tune_dag.core.text.metrics import SharedRuns
from fine_tune_dag.core.text.splits import records_of
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
    model: Any, tokenizer: Any, train_writing: pd.DataFrame, settings: EvaluationSettings, log: Log
) -> AuthorshipClassifier | None:
    """Trained on the author's train passages against the base model's writing on the same kind of prompts
    (train notes only) and the shipped reference writing of other authors."""
    if train_writing.empty:
        log.warning("no train passages: authorship not measured")
        return None
    prompts = [chat_messages(r.system, r.question, r.answer) for r in train_writing.itertuples(index=False)]
    with contender_weights(model, None):
        imitations = write_notes(
            model, tokenizer, prompts[: settings.max_written_notes], settings, GenerationSettings()
        )
    return AuthorshipClassifier.fit(
        train_writing["answer"].tolist(), imitations + reference_writing(), seed=settings.seed
    )


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
    itself with retrieval; write and record its report. `judge` (an LLM's `complete`) adds judged win rates.
    Returns the summary and the metadata."""
    test = split_items(db, "test")
    voice_items = writing_items(db, "test")
    if test.empty and voice_items.empty:
        raise StageError("the test split is empty: add notes or raise dataset_splits.test_fraction")
    store.fetch(f"adapters/{adapter.version}", Path(adapter.path))  # trained in another pod: from object storage
    device = select_device(settings.device)
    base = load_causal_lm(Path(adapter.base_model_path), device, select_dtype(settings.dtype, device))
    adapter_paths = {"tuned": adapter.path}
    conversations = [r["messages"] for r in records_of(test)]
    voice = [chat_messages(r.system, r.question, r.answer) for r in voice_items.itertuples(index=False)]
    voice = voice[: settings.max_voice_items]
    train_writing = writing_items(db, "train")
    examples = pick_examples(
        list(zip(train_writing["question"], train_writing["answer"])),
        count=settings.few_shot_passages,
        seed=settings.seed,
        max_words=FEW_SHOT_MAX_WORDS,
    )
    contenders = [
        Contender("base", None, conversations, voice, writes=True),
        Contender(
            "prompted",
            None,
            best_prompt_conversations(conversations, examples),
            best_prompt_conversations(voice, examples),
            writes=True,
        ),
    ]
    index = load_index(layout, log)
    retrieval: tuple[list, list, list] | None = None
    if index is not None:
        asked, cited = retrieval_conversations(conversations, index, settings.retrieval_top_k)
        own_notes = voice_items["note_id"].tolist()[: len(voice)]
        voice_asked, _ = retrieval_conversations(voice, index, settings.retrieval_top_k, own_notes)
        retrieval = (asked, voice_asked, cited)
        contenders.append(Contender("base+rag", None, asked, voice_asked, cited=cited))
    versions = {"tuned": adapter.version}
    champion = current_champion(db)
    if champion is not None and champion.version != adapter.version:
        if champion.base_model_path == adapter.base_model_path:
            store.fetch(f"adapters/{champion.version}", Path(champion.path))
            adapter_paths["champion"] = champion.path
            contenders.append(Contender("champion", "champion", conversations, voice, writes=True))
            versions["champion"] = champion.version
        else:
            log.warning(
                f"champion {champion.version} was trained on {champion.base_model}, not {adapter.base_model}: "
                "the newcomer is judged against the base model"
            )
    contenders.append(Contender("tuned", "tuned", conversations, voice, writes=True))
    if retrieval is not None:
        contenders.append(Contender("tuned+rag", "tuned", retrieval[0], retrieval[1], cited=retrieval[2]))
    model = with_adapters(base, adapter_paths)
    tokenizer = load_tokenizer(Path(adapter.path))

    def log_progress(contender: str, count: int) -> None:
        log.info(f"{contender}: generated {count} more answers")

    results = compare_contenders(
        model, tokenizer, contenders, test["source"].tolist(), test["note_id"].tolist(), settings, log_progress
    )
    log.info(f"voice: scoring {len(voice)} held-out passages under each of {len(contenders)} contenders")
    voice_nll = voice_scores(model, tokenizer, contenders, settings)
    log.info(f"writing up to {settings.max_written_notes} notes per contender for authorship, loops and memorization")
    written = written_notes(model, tokenizer, contenders, settings, GenerationSettings(seed=settings.seed))
    classifier = authorship_classifier(model, tokenizer, train_writing, settings, log)
    train = train_split(db)
    shared = SharedRuns([*train["answer"].dropna().unique(), *train["passage"].dropna().unique()])
    efficacy = measure_efficacy(
        results, voice_nll, written, test["path"].tolist()[: settings.max_examples], voice_items["note_id"].tolist()[: len(voice)], classifier, shared, policy.max_shared_words, settings.seed
    )
    summary = {name: summarize(frame) | efficacy.metrics[name] for name, frame in results.items()}
    save_blind_trials(
        db,
        adapter.version,
        [(messages[-2]["content"], messages[-1]["content"], text) for messages, text in zip(voice, written["tuned"])],
    )
    head_to_head = win_rates(results, "tuned", seed=settings.seed)
    if judge is not None:
        head_to_head += judged_win_rates(results, "tuned", judge, seed=settings.seed)
    gate = judge_challenger(summary, policy)
    advice = recommendation(summary)
    steps = pd.read_csv(Path(adapter.path) / "metrics.csv")
    facts = {
        "adapter": adapter.version,
        "base model": adapter.base_model,
        "dataset version": adapter.dataset_version,
        "champion": versions.get("champion", "none yet"),
        "method": method_text(adapter),
        "trained on": f"{adapter.train_examples} {'preference pairs' if adapter.method == 'dpo' else 'examples'}, "
        f"{adapter.train_tokens} tokens, {adapter.train_seconds:.0f} s on {adapter.device}",
        "test items evaluated": f"{len(results['base'])} Q&A items, {len(voice)} held-out passages (voice)",
        "evaluated on": str(device),
    }
    files = write_report(
        layout.reports / adapter.version,
        f"Evaluation of {'DPO ' if adapter.method == 'dpo' else ''}adapter {adapter.version}",
        summary,
        results,
        steps,
        facts,
        promotion=("passes" if gate.passed else "does not pass") + f" — {gate.text}",
        head_to_head=head_to_head,
        edge_cases=tracked_edge_cases(db, adapter.version),
        efficacy=efficacy,
        advice=advice,
        uncertain=gate.uncertain,
        blind=blind_results(db, versions.get("champion")) if "champion" in versions else None,
        costs=contender_costs(results, adapter, champion),
        written=written_side_by_side(voice, written),
    )
    evaluation = {
        "adapter_version": adapter.version,
        "dataset_version": str(test["dataset_version"].iloc[0]),
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "report_path": str(files.markdown),
        "test_examples": len(results["base"]),
        "champion_version": versions.get("champion"),
        "device": str(device),
    }
    record_evaluation(db, evaluation, summary, versions)
    published = store.publish(files.markdown.parent, f"reports/{adapter.version}")
    headline = {
        f"{name}_{metric}": round(value, 4) for name, values in summary.items() for metric, value in values.items()
    }
    return summary, {
        "report": files.markdown,
        "report_html": files.html,
        "published_to": published,
        "loss_curve": files.loss_curve,
        "adapter_version": adapter.version,
        "method": adapter.method,
        "champion_version": versions.get("champion", "none"),
        "device": str(device),
        "test_examples": len(results["base"]),
        "recommendation": advice,
        "promotion_gate": gate.text,
        "voice_perplexity": {name: round(values["voice_perplexity"], 3) for name, values in summary.items()},
        "win_rates": Markdown(
            table([[f"tuned vs {n}", basis, str(rate)] for n, basis, rate in head_to_head], ["", "on", "win rate"])
        ),
        **headline,
        "report_markdown": Markdown(files.with_inline_images()),
    }
