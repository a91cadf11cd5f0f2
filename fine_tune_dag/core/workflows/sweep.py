"""A sweep: each named training configuration trained and evaluated like the main line, then ranked on the
newest dataset version, the winner promoted through the same gate when asked.

Importing it loads no torch: the leaderboard step reads the warehouse only, and training and evaluation are
imported by the step that runs them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.markdown import Markdown
from fine_tune_dag.core.evaluation.config import EvaluationSettings
from fine_tune_dag.core.evaluation.gate import PromotionPolicy
from fine_tune_dag.core.evaluation.sweep import leaderboard, leaderboard_markdown, sweep_settings
from fine_tune_dag.core.models.resolution import ResolvedModel
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import adapter_by_version, newest_sweep_results, record_sweep_result
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.sft_config import TrainingSettings
from fine_tune_dag.core.workflows.champion import gate_verdict, promote_through_gate

if TYPE_CHECKING:
    from fine_tune_dag.core.workflows.adapters import Log
    from fine_tune_dag.core.workflows.evaluation import Judge


def run_configuration(
    name: str,
    configuration: dict[str, Any],
    base: TrainingSettings,
    evaluation: EvaluationSettings,
    device_hour_usd: float,
    layout: DataLayout,
    db: Warehouse,
    model: ResolvedModel,
    store: ArtifactStore,
    policy: PromotionPolicy,
    run_id: str,
    log: Log,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Train `configuration` (its settings over `base`), evaluate it and record its row of the leaderboard;
    returns the metadata."""
    from fine_tune_dag.core.workflows.adapters import train_and_register
    from fine_tune_dag.core.workflows.evaluation import evaluate_adapter

    trained = train_and_register(sweep_settings(configuration, base), layout, db, model, store, run_id, log, name)
    adapter = adapter_by_version(db, trained["version"])
    summary, evaluated = evaluate_adapter(db, adapter, evaluation, layout, policy, store, log, judge)
    tuned = summary["tuned"]
    record_sweep_result(
        db,
        {
            "configuration": name,
            "adapter_version": adapter.version,
            "dataset_version": adapter.dataset_version,
            "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
            "nll": tuned["nll"],
            "rouge_l": tuned["rouge_l"],
            "token_f1": tuned["token_f1"],
            "train_seconds": float(adapter.train_seconds),
            "train_tokens": int(adapter.train_tokens),
            "cost_usd": float(adapter.train_seconds) / 3600 * device_hour_usd,
        },
    )
    return {"configuration": configuration, **trained, **evaluated}


def rank_configurations(
    db: Warehouse, promote_winner: bool, policy: PromotionPolicy, reports: Path, run_id: str, log: Log
) -> dict[str, Any]:
    """The configurations of the newest dataset version, best test NLL first, written to the reports folder;
    the winner promoted through the gate when `promote_winner`. Returns the metadata."""
    rows = newest_sweep_results(db)
    if rows.empty:
        raise StageError("no sweep results yet: materialize sweep_adapters partitions first")
    board = leaderboard(rows)
    winner = board.iloc[0]
    promotion = "not asked (promote_winner: false)"
    if promote_winner:
        promotion = promote_through_gate(db, gate_verdict(db, winner.adapter_version, policy), run_id).text
        log.info(promotion)
    markdown = leaderboard_markdown(board)
    report = reports / "sweeps" / f"{winner.dataset_version}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        f"# Sweep leaderboard, dataset {winner.dataset_version}\n\n{markdown}\n\nPromotion: {promotion}\n",
        encoding="utf-8",
    )
    return {
        "winner": winner.configuration,
        "winner_adapter": winner.adapter_version,
        "winner_test_nll": round(float(winner.nll), 4),
        "configurations": len(board),
        "promotion": promotion,
        "report": report,
        "leaderboard": Markdown(markdown),
    }
