"""sweep_adapters and sweep_leaderboard: named training configurations, each trained and evaluated
like the main line, ranked, and the winner promoted through the same gate when asked."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.evaluation import EvaluationConfig, evaluate_adapter
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.assets.training import TrainingConfig, train_and_register
from fine_tune_dag.core.modeling.sweep import leaderboard, leaderboard_markdown, load_sweep, sweep_settings
from fine_tune_dag.core.store.promotion import judge_challenger
from fine_tune_dag.core.store.registry import adapter_by_version, current_champion, evaluation_summary, promote
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource


class SweepRunConfig(dg.Config):
    base: TrainingConfig = Field(default_factory=TrainingConfig, description="settings every configuration starts from")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    device_hour_usd: float = Field(default=0.0, description="what an hour on the training device costs, for the board")


class LeaderboardConfig(dg.Config):
    promote_winner: bool = Field(default=False, description="promote the winner if it passes the champion gate")


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
        settings = sweep_settings(configurations[name], config.base.settings())
        trained = train_and_register(context, settings, paths, db, models, artifacts, sweep_configuration=name)
        adapter = adapter_by_version(db, trained["version"])
        summary, evaluated = evaluate_adapter(context, db, adapter, config.evaluation, paths, policy, artifacts, llm)
        tuned = summary["tuned"]
        row = {
            "configuration": name,
            "adapter_version": adapter.version,
            "dataset_version": adapter.dataset_version,
            "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
            "nll": tuned["nll"],
            "rouge_l": tuned["rouge_l"],
            "token_f1": tuned["token_f1"],
            "train_seconds": float(adapter.train_seconds),
            "train_tokens": int(adapter.train_tokens),
            "cost_usd": float(adapter.train_seconds) / 3600 * config.device_hour_usd,
        }
        db.insert_rows("sweep_results", pd.DataFrame([row]))
        return dg.MaterializeResult(
            metadata={"configuration": dg.MetadataValue.json(configurations[name]), **trained, **evaluated}
        )

    @dg.asset(deps=[sweep_adapters], group_name="sweep", pool="duckdb", kinds={"duckdb"}, code_version="leaderboard-1")
    def sweep_leaderboard(
        context: dg.AssetExecutionContext,
        config: LeaderboardConfig,
        paths: ProjectPaths,
        warehouse: WarehouseResource,
        policy: AutomationPolicy,
    ) -> dg.MaterializeResult:
        """The configurations of the newest dataset version, best test NLL first."""
        db = warehouse.get()
        rows = db.query(
            "SELECT * FROM sweep_results WHERE dataset_version = "
            "(SELECT dataset_version FROM sweep_results ORDER BY created_at DESC LIMIT 1)"
        )
        if rows.empty:
            raise dg.Failure(description="no sweep results yet: materialize sweep_adapters partitions first")
        board = leaderboard(rows)
        winner = board.iloc[0]
        promotion = "not asked (promote_winner: false)"
        if config.promote_winner:
            summary = evaluation_summary(db, winner.adapter_version)
            verdict = judge_challenger(summary, policy.promotion())
            champion = current_champion(db)
            if verdict.passed:
                previous_nll = summary.get("champion", {}).get("nll")
                promote(
                    db, winner.adapter_version, float(winner.nll), champion, previous_nll, verdict.text, context.run_id
                )
                promotion = f"promoted {winner.adapter_version}: {verdict.text}"
            else:
                promotion = f"{winner.adapter_version} did not pass the gate: {verdict.text}"
            context.log.info(promotion)
        markdown = leaderboard_markdown(board)
        report = paths.reports / "sweeps" / f"{winner.dataset_version}.md"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            f"# Sweep leaderboard, dataset {winner.dataset_version}\n\n{markdown}\n\nPromotion: {promotion}\n",
            encoding="utf-8",
        )
        return dg.MaterializeResult(
            metadata={
                "winner": winner.configuration,
                "winner_adapter": winner.adapter_version,
                "winner_test_nll": round(float(winner.nll), 4),
                "configurations": len(board),
                "promotion": promotion,
                "report": dg.MetadataValue.path(str(report)),
                "leaderboard": dg.MetadataValue.md(markdown),
            }
        )

    return [sweep_adapters, sweep_leaderboard]
