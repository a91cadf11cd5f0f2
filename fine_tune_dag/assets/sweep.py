"""sweep_adapters and sweep_leaderboard: named training configurations, each trained and evaluated
like the main line, ranked, and the winner promoted through the same gate when asked."""

from pathlib import Path

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, stage_failures
from fine_tune_dag.assets.config import LeaderboardConfig, SweepRunConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.evaluation.sweep import load_sweep
from fine_tune_dag.core.workflows.sweep import rank_configurations, run_configuration
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource


def build_sweep_assets(sweep_file: Path) -> list[dg.AssetsDefinition]:
    """One partition per configuration in `sweep_file` (validated now, so a typo fails at load, not mid-sweep)."""
    configurations = load_sweep(sweep_file)
    partitions = dg.StaticPartitionsDefinition(list(configurations))

    @dg.asset(
        partitions_def=partitions,
        deps=[dataset_splits, base_model],
        group_name="sweep",
        pool="gpu",
        op_tags=GPU_STEP_TAGS,
        kinds={"pytorch"},
        code_version="sweep-1",
        description=f"One adapter per configuration of {sweep_file.name}, trained and evaluated like lora_adapter.",
    )
    def sweep_adapters(
        context: dg.AssetExecutionContext,
        config: SweepRunConfig,
        paths: ProjectPaths,
        warehouse: WarehouseResource,
        models: ModelsResource,
        artifacts: ArtifactStoreResource,
        policy: AutomationPolicy,
        llm: LLMResource,
    ) -> dg.MaterializeResult:
        name = context.partition_key
        db = warehouse.get()
        judge = llm.judge(config.evaluation.judge, db, context)
        with stage_failures():
            metadata = run_configuration(
                name,
                configurations[name],
                config.base.settings(),
                config.evaluation.settings(),
                config.device_hour_usd,
                paths.layout,
                db,
                models.resolve(),
                artifacts.get(),
                policy.promotion(),
                context.run_id,
                context.log,
                judge.complete if judge else None,
            )
        return dg.MaterializeResult(metadata=as_metadata(metadata))

    @dg.asset(deps=[sweep_adapters], group_name="sweep", pool="duckdb", kinds={"duckdb"}, code_version="leaderboard-1")
    def sweep_leaderboard(
        context: dg.AssetExecutionContext,
        config: LeaderboardConfig,
        paths: ProjectPaths,
        warehouse: WarehouseResource,
        policy: AutomationPolicy,
    ) -> dg.MaterializeResult:
        """The configurations of the newest dataset version, best test NLL first."""
        with stage_failures():
            metadata = rank_configurations(
                warehouse.get(), config.promote_winner, policy.promotion(), paths.reports, context.run_id, context.log
            )
        return dg.MaterializeResult(metadata=as_metadata(metadata))

    return [sweep_adapters, sweep_leaderboard]
