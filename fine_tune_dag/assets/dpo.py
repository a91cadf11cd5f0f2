"""dpo_adapter: the champion trained further on people's choices, a new adapter version like any other."""

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import DpoConfig
from fine_tune_dag.assets.preferences import preference_pairs
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.training.dpo_config import DpoSettings
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    deps=[preference_pairs],  # and the current champion, from the registry (see preference_candidates)
    group_name="preferences",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch"},
    code_version=f"dpo-1+{fingerprint(DpoSettings())}",
)
@loads_its_own_model
def dpo_adapter(
    context: dg.AssetExecutionContext,
    config: DpoConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """A new adapter version: the supervised champion after DPO on the preference pairs. eval_report then
    judges it against that champion, and it is promoted through the same gate."""
    from fine_tune_dag.core.workflows.dpo import train_dpo_adapter

    with stage_failures():
        metadata = train_dpo_adapter(
            warehouse.get(), config.settings(), paths.layout, artifacts.get(), context.run_id, context.log
        )
    return dg.MaterializeResult(metadata=as_metadata(metadata))
