"""eval_report: the newest adapter against the base model and the current champion, on the held-out notes."""

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import EvaluationConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.dpo import dpo_adapter
from fine_tune_dag.assets.edge_cases import edge_cases
from fine_tune_dag.assets.retrieval import retrieval_index
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.store.registry import latest_adapter
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    deps=[lora_adapter, dpo_adapter, edge_cases, dataset_splits, retrieval_index],
    group_name="evaluation",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "markdown"},
    code_version=f"evaluation-3+{fingerprint(EvaluationSettings())}",
)
@loads_its_own_model
def eval_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    policy: AutomationPolicy,
    artifacts: ArtifactStoreResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """Was fine-tuning worth it? Voice, authorship, grounding, loops and memorization, with answer NLL, ROUGE-L
    and token F1, for the base model, the best-prompted base, base + retrieval, the champion, the newcomer and the
    newcomer + retrieval on the same held-out items, with plots, win rates and edge cases."""
    from fine_tune_dag.core.workflows.evaluation import evaluate_adapter

    db = warehouse.get()
    judge = llm.judge(config.judge, db, context)
    with stage_failures():
        adapter = latest_adapter(db)
        if adapter is None:
            raise StageError("no adapter trained yet: materialize lora_adapter first")
        _, metadata = evaluate_adapter(
            db,
            adapter,
            config.settings(),
            paths.layout,
            policy.promotion(),
            artifacts.get(),
            context.log,
            judge.complete if judge else None,
        )
    if judge is not None:
        context.log.info(f"LLM judge: {judge.usage.calls} calls, {judge.usage.cache_hits} from cache")
    return dg.MaterializeResult(metadata=as_metadata(metadata))
