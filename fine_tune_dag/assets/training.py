"""lora_adapter: a new, versioned LoRA adapter trained on the current train split."""

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import TrainingConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.training.sft_config import TrainingSettings
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    deps=[dataset_splits, base_model],
    group_name="training",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch"},
    code_version=f"training-2+{fingerprint(TrainingSettings())}",
)
@loads_its_own_model
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    models: ModelsResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """A new adapter version trained on the current train split with the configured settings."""
    from fine_tune_dag.core.workflows.adapters import train_and_register

    with stage_failures():
        metadata = train_and_register(
            config.settings(),
            paths.layout,
            warehouse.get(),
            models.resolve(),
            artifacts.get(),
            context.run_id,
            context.log,
        )
    return dg.MaterializeResult(metadata=as_metadata(metadata))
