"""The champion trained further on people's choices (DPO): a new adapter version, registered like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.evaluation.preferences import pair_conversations
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.labels import preference_pairs
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.dpo import train_dpo
from fine_tune_dag.core.training.dpo_config import DpoSettings
from fine_tune_dag.core.training.loop import next_adapter_version, save_adapter
from fine_tune_dag.core.workflows.adapters import Log, register_adapter


def train_dpo_adapter(
    db: Warehouse, settings: DpoSettings, layout: DataLayout, store: ArtifactStore, run_id: str, log: Log
) -> dict[str, Any]:
    """The current champion after DPO on the preference pairs, saved as a new version whose parent is the
    champion and registered; returns the metadata. eval_report then judges it against that champion."""
    champion = current_champion(db)
    pairs = preference_pairs(db)
    if champion is None:
        raise StageError("no champion yet: DPO starts from the promoted adapter")
    if pairs.empty:
        raise StageError(
            "no preference pairs: label comparisons with `fine-tune-dag annotate` (or let the LLM judge "
            "pre-label them), then materialize preference_pairs"
        )
    store.fetch(f"adapters/{champion.version}", Path(champion.path))

    def log_step(metrics: dict[str, float], total: int) -> None:
        log.info(
            f"step {metrics['step']}/{total} loss={metrics['loss']:.4f} margin={metrics['rewards/margins']:.3f} "
            f"accuracy={metrics['rewards/accuracies']:.2f} ({metrics['elapsed_s']:.0f}s)"
        )

    run = train_dpo(Path(champion.base_model_path), Path(champion.path), pair_conversations(pairs), settings, log_step)
    provenance = {
        "base_model": champion.base_model,
        "base_model_path": champion.base_model_path,
        "dataset_version": champion.dataset_version,
        "parent_version": champion.version,
        "method": "dpo",
    }
    version = next_adapter_version(layout.adapters, champion.dataset_version, kind="dpo")
    folder = save_adapter(run, layout.adapters, version, provenance)
    registered = {**provenance, "dataset_train_pairs": int(champion.dataset_train_pairs)}
    last = run.steps[-1]
    return {
        **register_adapter(db, store, run, folder, registered, run_id),
        "parent_version": champion.version,
        "preference_pairs": len(pairs),
        "pairs_by_source": pairs["label_source"].value_counts().to_dict(),
        "dropped_too_long": run.dropped_too_long,
        "final_reward_margin": round(last["rewards/margins"], 4),
        "final_reward_accuracy": round(last["rewards/accuracies"], 4),
    }
