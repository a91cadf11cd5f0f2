"""Evaluate one registered adapter against the base model, the best-prompted base and the champion on the
held-out notes, write its report and record it: the step eval_report and each sweep configuration share."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from fine_tune_dag.core.errors import StageError
from fine_tune_dag.core.llm.types import LLMRequest
from fine_tune_dag.core.modeling.edge_cases import side_by_side
from fine_tune_dag.core.modeling.evaluation import (
    Contender,
    EvaluationSettings,
    best_prompt_conversations,
    compare_contenders,
    judged_win_rates,
    pick_examples,
    summarize,
    win_rates,
)
from fine_tune_dag.core.modeling.models import (
    load_causal_lm,
    load_tokenizer,
    select_device,
    select_dtype,
    with_adapters,
)
from fine_tune_dag.core.modeling.report import write_report
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.edge_cases import edge_case_answers, edge_cases, versions_up_to
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.promotion import PromotionPolicy, judge_challenger
from fine_tune_dag.core.store.registry import current_champion, record_evaluation
from fine_tune_dag.core.store.splits import split_items, train_questions_and_answers
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.text.markdown import Markdown, table
from fine_tune_dag.core.text.splits import records_of
from fine_tune_dag.core.workflows.adapters import Log

SHOWN_VERSIONS = 4  # newest adapter versions side by side with the base model
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
    """Evaluate one registered adapter against base, best-prompted base and champion; write and record
    its report. `judge` (an LLM's `complete`) adds judged win rates. Returns the summary and the metadata."""
    test = split_items(db, "test")
    if test.empty:
        raise StageError("the test split is empty: add notes or raise dataset_splits.test_fraction")
    store.fetch(f"adapters/{adapter.version}", Path(adapter.path))  # trained in another pod: from object storage
    device = select_device(settings.device)
    base = load_causal_lm(Path(adapter.base_model_path), device, select_dtype(settings.dtype, device))
    adapter_paths = {"tuned": adapter.path}
    conversations = [r["messages"] for r in records_of(test)]
    examples = pick_examples(train_questions_and_answers(db), seed=settings.seed)
    contenders = [
        Contender("base", None, conversations),
        Contender("prompted", None, best_prompt_conversations(conversations, examples)),
    ]
    versions = {"tuned": adapter.version}
    champion = current_champion(db)
    if champion is not None and champion.version != adapter.version:
        if champion.base_model_path == adapter.base_model_path:
            store.fetch(f"adapters/{champion.version}", Path(champion.path))
            adapter_paths["champion"] = champion.path
            contenders.append(Contender("champion", "champion", conversations))
            versions["champion"] = champion.version
        else:
            log.warning(
                f"champion {champion.version} was trained on {champion.base_model}, not {adapter.base_model}: "
                "the newcomer is judged against the base model"
            )
    contenders.append(Contender("tuned", "tuned", conversations))
    model = with_adapters(base, adapter_paths)
    tokenizer = load_tokenizer(Path(adapter.path))

    def log_progress(contender: str, count: int) -> None:
        log.info(f"{contender}: generated {count} more answers")

    results = compare_contenders(model, tokenizer, contenders, test["source"].tolist(), settings, log_progress)
    summary = {name: summarize(frame) for name, frame in results.items()}
    head_to_head = win_rates(results, "tuned", seed=settings.seed)
    if judge is not None:
        head_to_head += judged_win_rates(results, "tuned", judge, seed=settings.seed)
    gate = judge_challenger(summary, policy)
    steps = pd.read_csv(Path(adapter.path) / "metrics.csv")
    facts = {
        "adapter": adapter.version,
        "base model": adapter.base_model,
        "dataset version": adapter.dataset_version,
        "champion": versions.get("champion", "none yet"),
        "method": method_text(adapter),
        "trained on": f"{adapter.train_examples} {'preference pairs' if adapter.method == 'dpo' else 'examples'}, "
        f"{adapter.train_tokens} tokens, {adapter.train_seconds:.0f} s on {adapter.device}",
        "test items evaluated": len(results["base"]),
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
        "tuned_beats_base": summary["tuned"]["nll"] < summary["base"]["nll"],
        "promotion_gate": gate.text,
        "win_rates": Markdown(
            table([[f"tuned vs {n}", basis, str(rate)] for n, basis, rate in head_to_head], ["", "on", "win rate"])
        ),
        **headline,
        "report_markdown": Markdown(files.with_inline_images()),
    }
