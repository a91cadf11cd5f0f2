"""forget_note: one note forgotten from the UI (forget_job) or the command line, its partition removed too.

Retraining follows as a run of its own: `retrain_after_forget` requests train_and_evaluate_job when a forget_job
run removed something and asked for it; the command line runs the graph at once.
"""

import dagster as dg
from pydantic import Field

from fine_tune_dag.assets.common import stage_failures
from fine_tune_dag.assets.config import settings_config
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.workflows.forget import ForgetSettings, Forgetting, forget_note
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource

RETRAIN_TAG = "fine_tune_dag/retrain_after_forget"  # set on a forget_job run whose retraining is still to come


class ForgetConfig(settings_config("ForgetSettingsConfig", ForgetSettings)):
    note: str = Field(description="the note to forget: its file (relative to the notes folder) or partition key")


def forget_in_instance(
    instance: dg.DagsterInstance, db: Warehouse, layout: DataLayout, note: str, settings: ForgetSettings, run_id: str
) -> Forgetting:
    """`forget_note`, then the note's partition leaves the instance (the sensor re-adds only new files)."""
    forgetting = forget_note(db, layout, note, settings, run_id)
    if instance.has_dynamic_partition(notes_partitions.name, forgetting.note_key):
        instance.delete_dynamic_partition(notes_partitions.name, forgetting.note_key)
    return forgetting


@dg.op(
    description="Remove one note's derived data everywhere, mark the adapters trained on it, replace a marked "
    "champion and write a forgetting record; retraining follows as its own run.",
    tags={"kind": "privacy"},
)
def forget(
    context: dg.OpExecutionContext, config: ForgetConfig, paths: ProjectPaths, warehouse: WarehouseResource
) -> dg.Output[dict]:
    settings = config.settings()
    with stage_failures():
        forgetting = forget_in_instance(
            context.instance, warehouse.get(), paths.layout, config.note, settings, context.run_id
        )
    context.log.info(forgetting.text)
    if settings.retrain and not forgetting.nothing_removed:
        context.instance.add_run_tags(context.run_id, {RETRAIN_TAG: "true"})
    return dg.Output(
        {"note": forgetting.note_key, "removed": forgetting.removed},
        metadata={
            "note": forgetting.note_key,
            "removed": dg.MetadataValue.json(forgetting.removed),
            "files_scrubbed": len(forgetting.files),
            "adapters_marked": dg.MetadataValue.json(forgetting.adapters_marked),
            "champion_before": forgetting.champion_before,
            "champion_after": forgetting.champion_after,
            "already_forgotten": forgetting.nothing_removed,
        },
    )
