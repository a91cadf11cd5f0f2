"""lora_adapter: a new, versioned LoRA adapter trained on the current train split."""

import base64
import json
import shutil
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.modeling.loop import TrainingRun, next_adapter_version, save_adapter
from fine_tune_dag.core.modeling.report import plot_loss_curve
from fine_tune_dag.core.modeling.sft import TrainingSettings, train_lora
from fine_tune_dag.core.store.fingerprint import fingerprint
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.text.markdown import preview
from fine_tune_dag.core.text.splits import records_of
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource

_DEFAULTS = TrainingSettings()


class TrainingConfig(dg.Config):
    epochs: float = _DEFAULTS.epochs
    max_steps: int = Field(default=_DEFAULTS.max_steps, description="> 0 overrides epochs")
    learning_rate: float = _DEFAULTS.learning_rate
    lr_scheduler: str = _DEFAULTS.lr_scheduler
    warmup_ratio: float = _DEFAULTS.warmup_ratio
    lora_r: int = _DEFAULTS.lora_r
    lora_alpha: int = _DEFAULTS.lora_alpha
    lora_dropout: float = _DEFAULTS.lora_dropout
    target_modules: list[str] = Field(
        default=list(_DEFAULTS.target_modules), description="module names or 'all-linear'"
    )
    batch_size: int = _DEFAULTS.batch_size
    gradient_accumulation_steps: int = _DEFAULTS.gradient_accumulation_steps
    max_seq_length: int = _DEFAULTS.max_seq_length
    seed: int = _DEFAULTS.seed
    device: str = Field(default=_DEFAULTS.device, description="auto, cuda, mps or cpu")
    dtype: str = Field(default=_DEFAULTS.dtype, description="base weights: auto, bfloat16 or float32")
    logging_steps: int = _DEFAULTS.logging_steps
    eval_fraction: float = Field(default=_DEFAULTS.eval_fraction, description="share of train held out; 0: none")
    eval_steps: int = Field(default=_DEFAULTS.eval_steps, description="evaluate every n steps; 0: every epoch")
    early_stopping_patience: int = Field(
        default=_DEFAULTS.early_stopping_patience, description="evaluations without gain before stopping; 0: off"
    )
    checkpoint_steps: int = Field(
        default=_DEFAULTS.checkpoint_steps, description="save resumable state every n steps; 0: never"
    )
    gradient_checkpointing: bool = Field(
        default=_DEFAULTS.gradient_checkpointing,
        description="recompute activations in backward: less memory for longer sequences, slower steps",
    )

    def settings(self) -> TrainingSettings:
        values = {f.name: getattr(self, f.name) for f in fields(TrainingSettings) if hasattr(self, f.name)}
        return TrainingSettings(**{**values, "target_modules": tuple(self.target_modules)})


def train_and_register(
    context: dg.AssetExecutionContext,
    settings: TrainingSettings,
    paths: ProjectPaths,
    db: Warehouse,
    models: ModelsResource,
    artifacts: ArtifactStoreResource,
    sweep_configuration: str = "",
) -> dict:
    """Train on the current train split, save a new version, register it; returns the metadata.

    Answer-only loss, EOS learned, prompts from the one chat renderer; never overwrites a version.
    """
    train = db.query("SELECT * FROM dataset_splits WHERE split = 'train' ORDER BY pair_id")
    if train.empty:
        raise dg.Failure(
            description="the train split is empty: materialize qa_pairs and dataset_splits first", allow_retries=False
        )
    data_version = str(train["dataset_version"].iloc[0])
    resolved = models.resolve()

    def log_step(metrics: dict[str, float], total: int) -> None:
        context.log.info(
            f"step {metrics['step']}/{total} loss={metrics['loss']:.4f} "
            f"token_accuracy={metrics['mean_token_accuracy']:.3f} lr={metrics['learning_rate']:.2e} "
            f"({metrics['elapsed_s']:.0f}s)"
        )

    # keyed by everything that shapes the run, so only the same training is ever resumed
    checkpoints = (
        paths.adapters
        / ".checkpoints"
        / fingerprint({"dataset_version": data_version, "base_model": resolved.reference, "settings": asdict(settings)})
    )
    if checkpoints.exists():
        context.log.info(f"resuming an interrupted training from its checkpoint in {checkpoints}")
    conversations = [r["messages"] for r in records_of(train)]
    run = train_lora(resolved.path, conversations, settings, on_log=log_step, checkpoint_dir=checkpoints)
    version = next_adapter_version(paths.adapters, data_version)
    provenance = {
        "base_model": resolved.reference,
        "base_model_path": str(resolved.path),
        "dataset_version": data_version,
    }
    folder = save_adapter(run, paths.adapters, version, provenance)
    shutil.rmtree(checkpoints, ignore_errors=True)
    registered = {
        **provenance,
        "dataset_train_pairs": len(train),
        "sweep_configuration": sweep_configuration,
        "method": "sft",
    }
    return {
        **register_adapter(context, db, artifacts, run, folder, registered),
        "held_out_examples": run.eval_examples,
        "best_eval_loss": run.best_eval_loss if run.eval_examples else "n/a",
        "stopped_early_at_step": run.stopped_early_at or "no",
        "resumed_from_step": run.resumed_from_step,
        "dropped_too_long": run.dropped_too_long,
    }


def register_adapter(
    context: dg.AssetExecutionContext,
    db: Warehouse,
    artifacts: ArtifactStoreResource,
    run: TrainingRun,
    folder: Path,
    registered: dict,
) -> dict:
    """Loss curve, object-storage copy and registry row of a saved adapter (supervised or DPO); returns the
    metadata every adapter asset shows. `registered` holds the registry columns that depend on how it was
    trained (base model, dataset version, method, parent)."""
    steps = pd.DataFrame(run.steps)
    loss_curve = plot_loss_curve(steps, folder / "loss_curve.png")
    published = artifacts.get().publish(folder, f"adapters/{folder.name}")
    db.insert_rows(
        "adapters",
        pd.DataFrame(
            [
                {
                    "version": folder.name,
                    "path": str(folder),
                    "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
                    "device": run.device,
                    "train_examples": run.examples,
                    "train_tokens": run.tokens,
                    "train_seconds": run.seconds,
                    "final_loss": run.final_loss,
                    "hyperparameters": json.dumps(asdict(run.settings)),
                    "run_id": context.run_id,
                    **registered,
                }
            ]
        ),
    )
    inline_curve = base64.b64encode(loss_curve.read_bytes()).decode("ascii")
    return {
        "version": folder.name,
        "path": dg.MetadataValue.path(str(folder)),
        "published_to": published,
        "dataset_version": registered["dataset_version"],
        "dataset_train_pairs": registered["dataset_train_pairs"],
        "base_model": registered["base_model"],
        "device": run.device,
        "dtype": run.dtype,
        "train_examples": run.examples,
        "optimizer_steps": int(steps["step"].iloc[-1]),
        "first_loss": float(steps["loss"].iloc[0]),
        "final_loss": run.final_loss,
        "tokens": run.tokens,
        "train_seconds": round(run.seconds, 1),
        "tokens_per_second": round(run.tokens_per_second, 1),
        "hyperparameters": dg.MetadataValue.json(asdict(run.settings)),
        "loss_curve": dg.MetadataValue.md(f"![training curves](data:image/png;base64,{inline_curve})"),
        "steps": dg.MetadataValue.md(preview(steps.round(4), list(steps.columns), rows=len(steps))),
    }


@dg.asset(
    deps=[dataset_splits, base_model],
    group_name="training",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch"},
    code_version=f"training-1+{fingerprint(_DEFAULTS)}",
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    paths: ProjectPaths,
    warehouse: WarehouseResource,
    models: ModelsResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """A new adapter version trained on the current train split with the configured settings."""
    metadata = train_and_register(context, config.settings(), paths, warehouse.get(), models, artifacts)
    return dg.MaterializeResult(metadata=metadata)
