"""The privacy audit end to end, for the test and bench/privacy.py: canaries planted in a note of their own beside a
few others in a fresh folder, the graph's notes, dataset and adapter (a scripted teacher, a real base model),
each canary's exposure, then `forget` on the canary note, the adapter retrained without it, and the exposures
again.

The adapter trains on continued pretraining alone (the note's own text, every token learned), the part of the mix
that carries a note's words verbatim, in short sequences: what memorizes fastest, so the audit shows memorization
in a few dozen steps on 2 cores. Evaluation and promotion are not run: exposure needs the adapter, not the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dagster as dg

from fine_tune_dag.assets.forgetting import forget_in_instance
from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.core.evaluation.canary import (
    Canary,
    CanarySettings,
    Exposure,
    exposures,
    make_canaries,
    plant_canaries,
)
from fine_tune_dag.core.models.loading import load_causal_lm, load_tokenizer, select_dtype, with_adapters
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import latest_adapter
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.workflows.forget import ForgetSettings, Forgetting
from fine_tune_dag.runner import job_run_config, register_note_partitions
from fine_tune_dag_testkit.scripted import scripted_definitions

CANARY_FILE = "codes.md"
# 15 steps over these put both canaries at 11 and 12 bits of the 12 possible on the bundled model
AUDIT_CANARIES = CanarySettings(count=2, digits=4, candidates=4096, repetitions=12)
MODEL_ASSETS = ("dataset_splits", "retrieval_index", "base_model", "lora_adapter")
# two short notes of the author's beside the canaries: the retrain without them still has a train split
OTHER_NOTES = {
    "river-path.md": "# The river path\n\nThe river path runs six kilometres from the workshop to the old lock. I ride "
    "it every morning before opening, slowly, because the gravel is loose and the herons do not move for anyone.\n",
    "pegboard.md": "# The pegboard\n\nI keep the tools on a pegboard, each one drawn around in marker, so an empty "
    "outline tells me who borrowed what. Small tools, small wins.\n",
}
# continued pretraining alone, on short passages (about three canary sentences each), nothing held out
TRAINING = {
    "mix_qa": 0.0,
    "mix_write": 0.0,
    "mix_continue": 0.0,
    "mix_retrieval_qa": 0.0,
    "eval_fraction": 0.0,
    "max_seq_length": 96,
    "batch_size": 8,
    "learning_rate": 5e-3,
    "max_steps": 15,
    "checkpoint_steps": 0,
    "logging_steps": 10,
}
RUN_CONFIG = {
    "ops": {
        "passages": {"config": {"min_chars": 60, "max_chars": 200}},
        "dataset_splits": {"config": {"test_fraction": 0.0}},
    }
}


@dataclass
class CanaryAudit:
    canaries: list[Canary]
    before: list[Exposure]
    after: list[Exposure]
    never_planted: list[Exposure]  # canaries of the same format drawn apart and never written: chance, measured
    forgetting: Forgetting
    trained: str  # the adapter that saw the canaries
    retrained: str  # the one trained after forget
    forget_seconds: float  # forget and the retrain, without measuring


def _exposures(db: Warehouse, canaries: list[Canary], settings: CanarySettings) -> list[Exposure]:
    adapter = latest_adapter(db)
    base = load_causal_lm(Path(adapter.base_model_path), "cpu", select_dtype("auto", "cpu"))
    model = with_adapters(base, {"adapter": adapter.path})
    return exposures(model, load_tokenizer(Path(adapter.path)), canaries, settings)


def _train(defs: dg.Definitions, instance: dg.DagsterInstance, training: dict[str, Any]) -> None:
    job = defs.resolve_implicit_global_asset_job_def()
    run_config = {"ops": {**RUN_CONFIG["ops"], "lora_adapter": {"config": training}}}
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey(name) for name in MODEL_ASSETS],
        run_config=job_run_config(job, run_config, "WARNING"),
        raise_on_error=False,
    )
    if not result.success:
        raise RuntimeError(f"training for the audit failed: {result.get_step_failure_events()[0].step_failure_data}")


def run_canary_audit(
    folder: Path,
    base_model: Path,
    settings: CanarySettings = AUDIT_CANARIES,
    training: dict[str, Any] | None = None,
) -> CanaryAudit:
    """Plant, train, measure, forget, retrain, measure, in `folder` (which must be empty or absent)."""
    notes, data = folder / "notes", folder / "data"
    notes.mkdir(parents=True)
    for name, text in OTHER_NOTES.items():
        (notes / name).write_text(text, encoding="utf-8")
    _, canaries = plant_canaries(notes, settings, CANARY_FILE)
    defs = scripted_definitions(notes, data, base_model)
    instance = dg.DagsterInstance.ephemeral()
    note_job = defs.resolve_job_def(notes_job.name)
    for key in register_note_partitions(instance, notes):
        done = note_job.execute_in_process(
            instance=instance, partition_key=key, run_config=job_run_config(note_job, RUN_CONFIG, "WARNING")
        )
        assert done.success
    training = {**TRAINING, **(training or {})}
    _train(defs, instance, training)
    db = Warehouse(data / "warehouse.duckdb")
    trained, before = latest_adapter(db).version, _exposures(db, canaries, settings)
    started = time.perf_counter()
    forgetting = forget_in_instance(instance, db, DataLayout(notes, data), CANARY_FILE, ForgetSettings(), "audit")
    _train(defs, instance, training)
    forget_seconds = time.perf_counter() - started
    apart = replace(settings, seed=settings.seed + 1)
    after_and_apart = _exposures(db, [*canaries, *make_canaries(apart)], settings)
    return CanaryAudit(
        canaries,
        before,
        after_and_apart[: len(canaries)],
        after_and_apart[len(canaries) :],
        forgetting,
        trained,
        latest_adapter(db).version,
        forget_seconds,
    )
