"""dpo_adapter: the champion trained further on people's choices, a new adapter version like any other."""

from dataclasses import fields
from pathlib import Path

import dagster as dg
from pydantic import Field

from fine_tune_dag.assets.preferences import preference_pairs
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.assets.training import register_adapter
from fine_tune_dag.core.modeling.dpo import DpoSettings, train_dpo
from fine_tune_dag.core.modeling.loop import next_adapter_version, save_adapter
from fine_tune_dag.core.modeling.preferences import pair_conversations
from fine_tune_dag.core.store.fingerprint import fingerprint
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource

_DEFAULTS = DpoSettings()


class DpoConfig(dg.Config):
    beta: float = Field(default=_DEFAULTS.beta, description="how far from the champion the adapter may move")
    learning_rate: float = _DEFAULTS.learning_rate
    epochs: float = _DEFAULTS.epochs
    batch_size: int = Field(default=_DEFAULTS.batch_size, description="preference pairs per optimizer step")
    warmup_ratio: float = _DEFAULTS.warmup_ratio
    max_grad_norm: float = _DEFAULTS.max_grad_norm
    max_seq_length: int = _DEFAULTS.max_seq_length
    seed: int = _DEFAULTS.seed
    device: str = Field(default=_DEFAULTS.device, description="auto, cuda, mps or cpu")
    dtype: str = Field(default=_DEFAULTS.dtype, description="base weights: auto, bfloat16 or float32")
    logging_steps: int = _DEFAULTS.logging_steps

    def settings(self) -> DpoSettings:
        return DpoSettings(**{f.name: getattr(self, f.name) for f in fields(DpoSettings)})


@dg.asset(
    deps=[preference_pairs],  # and the current champion, from the registry (see preference_candidates)
    group_name="preferences",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch"},
    code_version=f"dpo-1+{fingerprint(_DEFAULTS)}",
)
def dpo_adapter(
    context: dg.AssetExecutionContext,
    config: DpoConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """A new adapter version: the supervised champion after DPO on the preference pairs. eval_report then
    judges it against that champion, and it is promoted through the same gate."""
    db = warehouse.get()
    champion = current_champion(db)
    if champion is None:
        raise dg.Failure(description="no champion yet: DPO starts from the promoted adapter", allow_retries=False)
    pairs = db.query("SELECT * FROM preference_pairs ORDER BY candidate_id")
    if pairs.empty:
        raise dg.Failure(
            description="no preference pairs: label comparisons with `fine-tune-dag annotate` (or let the LLM judge "
            "pre-label them), then materialize preference_pairs",
            allow_retries=False,
        )
    artifacts.get().fetch(f"adapters/{champion.version}", Path(champion.path))

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
    metadata = register_adapter(context, db, artifacts, run, folder, registered)
    last = run.steps[-1]
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "parent_version": champion.version,
            "preference_pairs": len(pairs),
            "pairs_by_source": dg.MetadataValue.json(pairs["label_source"].value_counts().to_dict()),
            "dropped_too_long": run.dropped_too_long,
            "final_reward_margin": round(last["rewards/margins"], 4),
            "final_reward_accuracy": round(last["rewards/accuracies"], 4),
        }
    )
