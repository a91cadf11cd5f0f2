"""eval_report: the newest adapter against the base model and the current champion, on the held-out notes."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.edge_cases import SHOWN_VERSIONS, edge_cases
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.assets.training import lora_adapter
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
from fine_tune_dag.core.store.fingerprint import fingerprint
from fine_tune_dag.core.store.promotion import judge_challenger
from fine_tune_dag.core.store.registry import current_champion, latest_adapter, record_evaluation
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.text.markdown import table
from fine_tune_dag.core.text.splits import records_of
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource

# The items of one split with the passage each answer was drawn from (teacher pairs have none: their question
# and answer stand in as `source`), for the unsupported-content share, the style comparison and the author's
# side of preference comparisons.
SPLIT_ITEMS_SQL = """
    SELECT s.*, p.text AS passage, coalesce(p.text, s.question || ' ' || s.answer) AS source
    FROM dataset_splits s
    LEFT JOIN qa_pairs q USING (pair_id)
    LEFT JOIN passages p ON p.note_id = q.note_id AND p.passage_index = q.passage_index
    WHERE s.split = ?
    ORDER BY s.note_id, s.pair_id
"""


DPO_ADAPTER = dg.AssetKey("dpo_adapter")  # by key: the preference stage imports this module


class EvaluationConfig(dg.Config):
    max_examples: int = EvaluationSettings.max_examples
    max_new_tokens: int = EvaluationSettings.max_new_tokens
    batch_size: int = EvaluationSettings.batch_size
    device: str = "auto"
    dtype: str = "auto"
    seed: int = Field(default=0, description="few-shot examples and bootstrap resampling")
    judge: str = Field(
        default="auto", description="pairwise LLM judge: 'auto' (when the LLM is Gemini), 'llm', or 'metrics' only"
    )


def tracked_edge_cases(db: Warehouse, version: str) -> str:
    """The edge cases side by side: the base model and the newest versions up to this one."""
    cases = db.query("SELECT * FROM edge_cases ORDER BY added_at, case_id")
    if cases.empty:
        return ""
    created = db.query("SELECT created_at FROM adapters WHERE version = ?", [version])["created_at"].iloc[0]
    versions = db.query("SELECT version FROM adapters WHERE created_at <= ? ORDER BY created_at, version", [created])[
        "version"
    ].tolist()
    answers = db.query("SELECT case_id, model, answer FROM edge_case_answers")
    return side_by_side(cases, answers, ["base", *versions[-SHOWN_VERSIONS:]])


def method_text(adapter: pd.Series) -> str:
    """How the contender "tuned" was made, for the report."""
    if adapter.method == "dpo":
        return f"DPO (preference optimization) of champion {adapter.parent_version} on people's choices"
    return "supervised fine-tuning (LoRA) on the train split"


def evaluate_adapter(
    context: dg.AssetExecutionContext,
    db: Warehouse,
    adapter: pd.Series,
    config: EvaluationConfig,
    paths: ProjectPaths,
    policy: AutomationPolicy,
    artifacts: ArtifactStoreResource,
    llm: LLMResource,
) -> tuple[dict[str, dict[str, float]], dict]:
    """Evaluate one registered adapter against base, best-prompted base and champion; write and record
    its report. Returns the summary and the materialization metadata."""
    test = db.query(SPLIT_ITEMS_SQL, ["test"])
    if test.empty:
        raise dg.Failure(
            description="the test split is empty: add notes or raise dataset_splits.test_fraction", allow_retries=False
        )
    settings = EvaluationSettings(config.max_examples, config.max_new_tokens, config.batch_size)
    store = artifacts.get()
    store.fetch(f"adapters/{adapter.version}", Path(adapter.path))  # trained in another pod: from object storage
    device = select_device(config.device)
    base = load_causal_lm(Path(adapter.base_model_path), device, select_dtype(config.dtype, device))
    adapter_paths = {"tuned": adapter.path}
    conversations = [r["messages"] for r in records_of(test)]
    train = db.query("SELECT question, answer FROM dataset_splits WHERE split = 'train'")
    examples = pick_examples(list(zip(train["question"], train["answer"])), seed=config.seed)
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
            context.log.warning(
                f"champion {champion.version} was trained on {champion.base_model}, not {adapter.base_model}: "
                "the newcomer is judged against the base model"
            )
    contenders.append(Contender("tuned", "tuned", conversations))
    model = with_adapters(base, adapter_paths)
    tokenizer = load_tokenizer(Path(adapter.path))

    def log_progress(contender: str, count: int) -> None:
        context.log.info(f"{contender}: generated {count} more answers")

    results = compare_contenders(model, tokenizer, contenders, test["source"].tolist(), settings, log_progress)
    summary = {name: summarize(frame) for name, frame in results.items()}
    head_to_head = win_rates(results, "tuned", seed=config.seed)
    if config.judge == "llm" or (config.judge == "auto" and llm.provider == "gemini"):
        judge = llm.cached(db, context)
        head_to_head += judged_win_rates(results, "tuned", judge.complete, seed=config.seed)
        context.log.info(f"LLM judge: {judge.usage.calls} calls, {judge.usage.cache_hits} from cache")
    gate = judge_challenger(summary, policy.promotion())
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
        paths.reports / adapter.version,
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
        "report": dg.MetadataValue.path(str(files.markdown)),
        "report_html": dg.MetadataValue.path(str(files.html)),
        "published_to": published,
        "loss_curve": dg.MetadataValue.path(str(files.loss_curve)),
        "adapter_version": adapter.version,
        "method": adapter.method,
        "champion_version": versions.get("champion", "none"),
        "device": str(device),
        "test_examples": len(results["base"]),
        "tuned_beats_base": summary["tuned"]["nll"] < summary["base"]["nll"],
        "promotion_gate": gate.text,
        "win_rates": dg.MetadataValue.md(
            table([[f"tuned vs {n}", basis, str(rate)] for n, basis, rate in head_to_head], ["", "on", "win rate"])
        ),
        **headline,
        "report_markdown": dg.MetadataValue.md(files.with_inline_images()),
    }


@dg.asset(
    deps=[lora_adapter, DPO_ADAPTER, edge_cases, dataset_splits],
    group_name="evaluation",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "markdown"},
    code_version=f"evaluation-2+{fingerprint(EvaluationSettings())}",
    automation_condition=dg.AutomationCondition.eager()
    .replace(
        "any_deps_updated",
        dg.AutomationCondition.any_deps_updated().allow(
            dg.AssetSelection.assets(lora_adapter, DPO_ADAPTER, edge_cases)
        ),
    )
    .replace(  # most people never train a DPO adapter; its absence must not hold evaluation back
        "any_deps_missing",
        dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets(DPO_ADAPTER)),
    ),
)
def eval_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    policy: AutomationPolicy,
    artifacts: ArtifactStoreResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """NLL, perplexity, ROUGE-L, token F1, grounding and style for base, best-prompted base, champion and
    newcomer on the same items, with plots, win rates and edge cases."""
    db = warehouse.get()
    adapter = latest_adapter(db)
    if adapter is None:
        raise dg.Failure(description="no adapter trained yet: materialize lora_adapter first", allow_retries=False)
    _, metadata = evaluate_adapter(context, db, adapter, config, paths, policy, artifacts, llm)
    return dg.MaterializeResult(metadata=metadata)
