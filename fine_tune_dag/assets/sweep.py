"""sweep_adapters and sweep_leaderboard: named training configurations, each trained and evaluated
like the main line, ranked, and the winner promoted through the same gate when asked."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from fine_tune_dag.assets.common import as_metadata, stage_failures
from fine_tune_dag.assets.config import LeaderboardConfig, SweepRunConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.evaluation.gate import judge_challenger
from fine_tune_dag.core.evaluation.sweep import leaderboard, leaderboard_markdown, load_sweep, sweep_settings
from fine_tune_dag.core.store.registry import (
    adapter_by_version,
    current_champion,
    evaluation_summary,
    newest_sweep_results,
    promote,
)
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
        from fine_tune_dag.core.workflows.adapters import train_and_register
        from fine_tune_dag.core.workflows.evaluation import evaluate_adapter

        name = context.partition_key
        db = warehouse.get()
        store = artifacts.get()
        settings = sweep_settings(configurations[name], config.base.settings())
        judge = llm.judge(config.evaluation.judge, db, context)
        with stage_failures():
            trained = train_and_register(
                settings, paths.layout, db, models.resolve(), store, context.run_id, context.log, name
            )
            adapter = adapter_by_version(db, trained["version"])
            summary, evaluated = evaluate_adapter(
                db,
                adapter,
                config.evaluation.settings(),
                paths.layout,
                policy.promotion(),
                store,
                context.log,
                judge.complete if judge else None,
            )
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
            metadata=as_metadata({"configuration": configurations[name], **trained, **evaluated})
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
        rows = newest_sweep_results(db)
        with stage_failures():
            if rows.empty:
                raise StageError("no sweep results yet: materialize sweep_adapters partitions first")
        board = leaderboard(rows)
        winner = board.iloc[0]
        promotion = "not asked (promote_winner: false)"
        if config.promote_winner:
            summary = evaluation_summary(db, winner.adapter_version)
            verdict = judge_challenger(summary, policy.promotion())
            champion = current_champion(db)
            if verdict.promotes:
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
