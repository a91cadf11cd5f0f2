"""crossval_folds and crossval_verdict: a verdict for a small corpus, from k folds by note, each training and
evaluating an adapter on the notes the others hold; the pooled comparison decides. Never promoted."""

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import CrossvalConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.retrieval import retrieval_index
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.dataset.splits import fold_key
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource

CROSSVAL_FOLDS, CROSSVAL_VERDICT = "crossval_folds", "crossval_verdict"


def build_crossval_assets(folds: int) -> list[dg.AssetsDefinition]:
    """One partition per fold, so each can be launched, retried and watched on its own in the UI."""
    partitions = dg.StaticPartitionsDefinition([fold_key(fold, folds) for fold in range(folds)])

    @dg.asset(
        name=CROSSVAL_FOLDS,
        partitions_def=partitions,
        deps=[dataset_splits, base_model, retrieval_index],
        group_name="crossval",
        pool="gpu",
        op_tags=GPU_STEP_TAGS,
        kinds={"pytorch"},
        code_version="crossval-1",
    )
    @loads_its_own_model
    def crossval_folds(
        context: dg.AssetExecutionContext,
        config: CrossvalConfig,
        paths: ProjectPaths,
        warehouse: WarehouseResource,
        models: ModelsResource,
    ) -> dg.MaterializeResult:
        """Train on every other fold's notes and evaluate every contender on this fold's (done once per dataset
        and settings: a rerun keeps what a fold already measured)."""
        from fine_tune_dag.core.workflows.crossval import run_fold

        fold = partitions.get_partition_keys().index(context.partition_key)
        with stage_failures():
            metadata = run_fold(
                warehouse.get(),
                paths.layout,
                models.resolve(),
                fold,
                folds,
                config.training.settings(),
                config.evaluation.settings(),
                context.log,
            )
        return dg.MaterializeResult(metadata=as_metadata(metadata))

    @dg.asset(
        name=CROSSVAL_VERDICT,
        deps=[dg.AssetDep(crossval_folds, partition_mapping=dg.AllPartitionMapping())],
        group_name="crossval",
        kinds={"markdown"},
        code_version="crossval-1",
    )
    def crossval_verdict_asset(
        context: dg.AssetExecutionContext,
        config: CrossvalConfig,
        paths: ProjectPaths,
        warehouse: WarehouseResource,
        policy: AutomationPolicy,
    ) -> dg.MaterializeResult:
        """Every fold's items pooled, every contender compared paired and clustered by note: the verdict."""
        from fine_tune_dag.core.workflows.crossval import crossval_verdict

        with stage_failures():
            metadata = crossval_verdict(
                warehouse.get(),
                paths.layout,
                folds,
                config.training.settings(),
                config.evaluation.settings(),
                policy.promotion(),
                context.log,
            )
        return dg.MaterializeResult(metadata=as_metadata(metadata))

    return [crossval_folds, crossval_verdict_asset]
