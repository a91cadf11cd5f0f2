"""edge_cases: the hardest held-out questions and the user's own, answered by every adapter version."""

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import EdgeCaseConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    deps=[lora_adapter, dataset_splits],
    group_name="evaluation",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "duckdb"},
    code_version="edge-cases-2",
)
@loads_its_own_model
def edge_cases(
    context: dg.AssetExecutionContext, config: EdgeCaseConfig, paths: ProjectPaths, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Cases are kept once chosen; each model answers each case once, so every version is compared on them."""
    from fine_tune_dag.core.workflows.edge_cases import track_edge_cases

    with stage_failures():
        metadata = track_edge_cases(
            warehouse.get(), config.hardest, config.evaluation.settings(), paths.layout, context.log
        )
    return dg.MaterializeResult(metadata=as_metadata(metadata))
