"""eval_report: base model against the newest adapter on the held-out notes."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
from peft import PeftModel

from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.core.evaluation import EvaluationSettings, compare_base_and_adapter, summarize
from fine_tune_dag.core.models import load_causal_lm, load_tokenizer, select_device, select_dtype
from fine_tune_dag.core.report import write_report
from fine_tune_dag.core.splits import records_of
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource


class EvaluationConfig(dg.Config):
    max_examples: int = EvaluationSettings.max_examples
    max_new_tokens: int = EvaluationSettings.max_new_tokens
    batch_size: int = EvaluationSettings.batch_size
    device: str = "auto"
    dtype: str = "auto"


@dg.asset(
    deps=[lora_adapter, dataset_splits],
    group_name="evaluation",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "markdown"},
    code_version="evaluation-1",
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvaluationConfig, paths: ProjectPaths, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """NLL, perplexity, ROUGE-L and token F1 for base and tuned, with plots and side-by-side answers."""
    db = warehouse.get()
    adapters = db.query("SELECT * FROM adapters ORDER BY created_at DESC, version DESC LIMIT 1")
    if adapters.empty:
        raise dg.Failure(description="no adapter trained yet: materialize lora_adapter first", allow_retries=False)
    adapter = adapters.iloc[0]
    test = db.query("SELECT * FROM dataset_splits WHERE split = 'test' ORDER BY note_id, pair_id")
    if test.empty:
        raise dg.Failure(
            description="the test split is empty: add notes or raise dataset_splits.test_fraction", allow_retries=False
        )
    settings = EvaluationSettings(config.max_examples, config.max_new_tokens, config.batch_size)
    device = select_device(config.device)
    base = load_causal_lm(Path(adapter.base_model_path), device, select_dtype(config.dtype, device))
    model = PeftModel.from_pretrained(base, adapter.path).eval()
    tokenizer = load_tokenizer(Path(adapter.path))
    conversations = [r["messages"] for r in records_of(test)]

    def log_progress(contender: str, count: int) -> None:
        context.log.info(f"{contender}: generated {count} more answers")

    results = compare_base_and_adapter(model, tokenizer, conversations, settings, log_progress)
    summary = {name: summarize(frame) for name, frame in results.items()}
    steps = pd.read_csv(Path(adapter.path) / "metrics.csv")
    facts = {
        "adapter": adapter.version,
        "base model": adapter.base_model,
        "dataset version": adapter.dataset_version,
        "trained on": f"{adapter.train_examples} examples, {adapter.train_tokens} tokens, {adapter.train_seconds:.0f} s on {adapter.device}",
        "test items evaluated": len(results["base"]),
        "evaluated on": f"{device}",
    }
    files = write_report(
        paths.reports / adapter.version,
        f"Evaluation of adapter {adapter.version}",
        summary,
        results,
        steps,
        facts,
    )
    headline = {
        f"{name}_{metric}": round(value, 4) for name, values in summary.items() for metric, value in values.items()
    }
    db.insert_rows(
        "eval_reports",
        pd.DataFrame(
            [
                {
                    "adapter_version": adapter.version,
                    "dataset_version": adapter.dataset_version,
                    "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
                    "report_path": str(files.markdown),
                    "test_examples": len(results["base"]),
                    "base_nll": summary["base"]["nll"],
                    "tuned_nll": summary["tuned"]["nll"],
                    "base_perplexity": summary["base"]["perplexity"],
                    "tuned_perplexity": summary["tuned"]["perplexity"],
                    "base_rouge_l": summary["base"]["rouge_l"],
                    "tuned_rouge_l": summary["tuned"]["rouge_l"],
                    "base_token_f1": summary["base"]["token_f1"],
                    "tuned_token_f1": summary["tuned"]["token_f1"],
                }
            ]
        ),
    )
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(files.markdown)),
            "loss_curve": dg.MetadataValue.path(str(files.loss_curve)),
            "adapter_version": adapter.version,
            "test_examples": len(results["base"]),
            "tuned_beats_base": summary["tuned"]["nll"] < summary["base"]["nll"],
            **headline,
            "report_markdown": dg.MetadataValue.md(files.with_inline_images()),
        }
    )
