"""Train an adapter on the current train split and register it: the step lora_adapter and each sweep
configuration share, and the registration DPO adapters share too."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.common.markdown import Markdown, preview
from fine_tune_dag.core.common.metadata_keys import ADAPTER_VERSION, DATASET_TRAIN_PAIRS, DATASET_VERSION
from fine_tune_dag.core.dataset.mixing import mixed_conversations
from fine_tune_dag.core.evaluation.report import plot_loss_curve
from fine_tune_dag.core.models.resolution import ResolvedModel
from fine_tune_dag.core.store.artifacts import ArtifactStore
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import record_adapter
from fine_tune_dag.core.store.splits import train_split
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.loop import TrainingRun, next_adapter_version, save_adapter
from fine_tune_dag.core.training.sft import mix_weights, train_lora
from fine_tune_dag.core.training.sft_config import TrainingSettings


class Log(Protocol):
    """What the workflows log through: `context.log` in an asset, a `logging.Logger` elsewhere."""

    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


def train_and_register(
    settings: TrainingSettings,
    layout: DataLayout,
    db: Warehouse,
    base: ResolvedModel,
    store: ArtifactStore,
    run_id: str,
    log: Log,
    sweep_configuration: str = "",
) -> dict[str, Any]:
    """Train on the current train split, save a new version, register it; returns the metadata.

    Answer-only loss, EOS learned, prompts from the one chat renderer; never overwrites a version.
    """
    train = train_split(db)
    if train.empty:
        raise StageError("the train split is empty: materialize qa_pairs and dataset_splits first")
    data_version = str(train["dataset_version"].iloc[0])

    def log_step(metrics: dict[str, float], total: int) -> None:
        log.info(
            f"step {metrics['step']}/{total} loss={metrics['loss']:.4f} "
            f"token_accuracy={metrics['mean_token_accuracy']:.3f} lr={metrics['learning_rate']:.2e} "
            f"({metrics['elapsed_s']:.0f}s)"
        )

    # keyed by everything that shapes the run, so only the same training is ever resumed
    checkpoints = layout.checkpoints / fingerprint(
        {"dataset_version": data_version, "base_model": base.reference, "settings": asdict(settings)}
    )
    if checkpoints.exists():
        log.info(f"resuming an interrupted training from its checkpoint in {checkpoints}")
    conversations, mix = mixed_conversations(
        train, mix_weights(settings), settings.seed, settings.retrieval_distractors
    )
    log.info("training mix: " + ", ".join(f"{count} {source}" for source, count in mix.items()))
    run = train_lora(base.path, conversations, settings, on_log=log_step, checkpoint_dir=checkpoints)
    version = next_adapter_version(layout.adapters, data_version)
    provenance = {"base_model": base.reference, "base_model_path": str(base.path), "dataset_version": data_version}
    folder = save_adapter(run, layout.adapters, version, provenance)
    shutil.rmtree(checkpoints, ignore_errors=True)
    registered = {
        **provenance,
        DATASET_TRAIN_PAIRS: len(train),
        "sweep_configuration": sweep_configuration,
        "method": "sft",
    }
    return {
        **register_adapter(db, store, run, folder, registered, run_id),
        "held_out_examples": run.eval_examples,
        "best_eval_loss": run.best_eval_loss if run.eval_examples else "n/a",
        "stopped_early_at_step": run.stopped_early_at or "no",
        "resumed_from_step": run.resumed_from_step,
        "training_mix": mix,
        "dropped_too_long": run.dropped_too_long,
    }


def register_adapter(
    db: Warehouse, store: ArtifactStore, run: TrainingRun, folder: Path, registered: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """Loss curve, object-storage copy and registry row of a saved adapter (supervised or DPO); returns the
    metadata every adapter asset shows. `registered` holds the registry columns that depend on how it was
    trained (base model, dataset version, method, parent)."""
    steps = pd.DataFrame(run.steps)
    loss_curve = plot_loss_curve(steps, folder / "loss_curve.png")
    published = store.publish(folder, f"adapters/{folder.name}")
    row = {
        "version": folder.name,
        "path": str(folder),
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "device": run.device,
        "train_examples": run.examples,
        "train_tokens": run.tokens,
        "train_seconds": run.seconds,
        "final_loss": run.final_loss,
        "hyperparameters": json.dumps(asdict(run.settings)),
        "run_id": run_id,
        **registered,
    }
    record_adapter(db, row)
    inline_curve = base64.b64encode(loss_curve.read_bytes()).decode("ascii")
    return {
        ADAPTER_VERSION: folder.name,
        "path": folder,
        "published_to": published,
        DATASET_VERSION: registered[DATASET_VERSION],
        DATASET_TRAIN_PAIRS: registered[DATASET_TRAIN_PAIRS],
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
        "memory_plan": run.memory_plan.describe() if run.memory_plan else "as configured",
        **run.memory_budget_entries(),
        "hyperparameters": asdict(run.settings),
        "loss_curve": Markdown(f"![training curves](data:image/png;base64,{inline_curve})"),
        "steps": Markdown(preview(steps.round(4), list(steps.columns), rows=len(steps))),
    }
