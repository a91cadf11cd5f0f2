"""dpo_adapter: the champion trained further on people's choices, a new adapter version like any other."""

from pathlib import Path

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import DpoConfig
from fine_tune_dag.assets.preferences import preference_pairs
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.store.labels import preference_pairs as stored_preference_pairs
from fine_tune_dag.core.store.registry import current_champion
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
    from fine_tune_dag.core.evaluation.preferences import pair_conversations
    from fine_tune_dag.core.training.dpo import train_dpo
    from fine_tune_dag.core.training.loop import next_adapter_version, save_adapter
    from fine_tune_dag.core.workflows.adapters import register_adapter

    db = warehouse.get()
    champion = current_champion(db)
    pairs = stored_preference_pairs(db)
    with stage_failures():
        if champion is None:
            raise StageError("no champion yet: DPO starts from the promoted adapter")
        if pairs.empty:
            raise StageError(
                "no preference pairs: label comparisons with `fine-tune-dag annotate` (or let the LLM judge "
                "pre-label them), then materialize preference_pairs"
            )
    store = artifacts.get()
    store.fetch(f"adapters/{champion.version}", Path(champion.path))

    def log_step(metrics: dict[str, float], total: int) -> None:
        context.log.info(
            f"step {metrics['step']}/{total} loss={metrics['loss']:.4f} margin={metrics['rewards/margins']:.3f} "
            f"accuracy={metrics['rewards/accuracies']:.2f} ({metrics['elapsed_s']:.0f}s)"
        )

    run = train_dpo(
        Path(champion.base_model_path), Path(champion.path), pair_conversations(pairs), config.settings(), log_step
    )
    provenance = {
        "base_model": champion.base_model,
        "base_model_path": champion.base_model_path,
        "dataset_version": champion.dataset_version,
        "parent_version": champion.version,
        "method": "dpo",
    }
    version = next_adapter_version(paths.adapters, champion.dataset_version, kind="dpo")
    folder = save_adapter(run, paths.adapters, version, provenance)
    registered = {**provenance, "dataset_train_pairs": int(champion.dataset_train_pairs)}
    last = run.steps[-1]
    metadata = {
        **register_adapter(db, store, run, folder, registered, context.run_id),
        "parent_version": champion.version,
        "preference_pairs": len(pairs),
        "pairs_by_source": pairs["label_source"].value_counts().to_dict(),
        "dropped_too_long": run.dropped_too_long,
        "final_reward_margin": round(last["rewards/margins"], 4),
        "final_reward_accuracy": round(last["rewards/accuracies"], 4),
    }
    return dg.MaterializeResult(metadata=as_metadata(metadata))
