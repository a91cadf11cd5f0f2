"""new_notes_sensor: notes dropped into the folder become partitions and runs, with no parsing here;
pair_labels_sensor: people's decisions on pairs become an upstream change of the dataset; and the sensor that
evaluates the automation conditions."""

import warnings

import dagster as dg

from fine_tune_dag.assets.forgetting import RETRAIN_TAG
from fine_tune_dag.assets.ingest import raw_notes
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.assets.review import pair_labels
from fine_tune_dag.assets.tags import NOTE_PATH_TAG
from fine_tune_dag.automation.jobs import dataset_job, forget_job, notes_job, train_and_evaluate_job
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.ingest.watch import NoteChange, WatchCursor, scan_notes
from fine_tune_dag.core.store.pair_labels import pair_labels_state
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource

_DATA_VERSION_TAG = "dagster/data_version"


def _already_materialized(context: dg.SensorEvaluationContext, notes: list[NoteChange]) -> set[str]:
    """Notes whose current content raw_notes already holds (a fresh cursor must not rerun them)."""
    registered = set(context.instance.get_dynamic_partitions(notes_partitions.name))
    keys = [n.note_id for n in notes if n.note_id in registered]
    if not keys:
        return set()
    tags = context.instance.event_log_storage.get_latest_tags_by_partition(
        raw_notes.key, dg.DagsterEventType.ASSET_MATERIALIZATION, [_DATA_VERSION_TAG], asset_partitions=keys
    )
    return {n.note_id for n in notes if tags.get(n.note_id, {}).get(_DATA_VERSION_TAG) == n.sha256}


@dg.sensor(
    name="new_notes_sensor",
    jobs=[notes_job, dataset_job],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the notes folder: a new or changed file runs its own partition; a deleted one "
    "leaves the dataset. Hidden, temporary and still-growing files wait; a file of a type not read is named with the "
    "reason in the tick's log and summary.",
)
def new_notes_sensor(
    context: dg.SensorEvaluationContext, paths: ProjectPaths, policy: AutomationPolicy
) -> dg.SensorResult:
    if not paths.notes.is_dir():
        return dg.SensorResult(skip_reason=f"the notes folder {paths.notes} does not exist (or is not a folder)")
    scan = scan_notes(
        paths.notes,
        WatchCursor.from_json(context.cursor),
        max_files=policy.notes_per_tick,
        settle_seconds=policy.settle_seconds,
    )
    current = _already_materialized(context, scan.added)
    requested = [n for n in scan.added if n.note_id not in current] + scan.changed
    registered = set(context.instance.get_dynamic_partitions(notes_partitions.name))
    new_keys = sorted({n.note_id for n in scan.added} - registered)
    gone = sorted({n.note_id for n in scan.deleted} & registered)
    partition_requests = []
    if new_keys:
        partition_requests.append(notes_partitions.build_add_request(new_keys))
    if gone:
        partition_requests.append(notes_partitions.build_delete_request(gone))
    runs = [
        dg.RunRequest(
            job_name=notes_job.name,
            partition_key=n.note_id,
            tags={NOTE_PATH_TAG: n.path},
        )
        for n in requested
    ]
    if gone:
        runs.append(
            dg.RunRequest(
                job_name=dataset_job.name,
                tags={"fine_tune_dag/deleted_notes": ",".join(n.path for n in scan.deleted)[:200]},
            )
        )
    context.log.info(f"{paths.notes}: {scan.summary}")
    for relative in scan.newly_unsupported:
        context.log.warning(f"{relative} is not read: {scan.unsupported[relative]}")
    for note in scan.deleted:
        context.log.info(f"{note.path} was deleted: partition {note.note_id} leaves the dataset")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=partition_requests,
        cursor=scan.cursor.to_json(),
        skip_reason=None if runs or partition_requests else f"no new notes: {scan.summary}",
    )


@dg.run_status_sensor(
    name="retrain_after_forget",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[forget_job],
    request_job=train_and_evaluate_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a forget_job run that removed a note (and asked to retrain): the dataset without it, a new "
    "adapter, its evaluation and the promotion gate.",
)
def retrain_after_forget(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    run = context.dagster_run
    if run.tags.get(RETRAIN_TAG) != "true":
        return dg.SkipReason(f"forget run {run.run_id} removed nothing or asked for no retraining")
    return dg.RunRequest(run_key=run.run_id, tags={"fine_tune_dag/after_forget_run": run.run_id})
@dg.sensor(
    name="pair_labels_sensor",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches people's decisions on pairs (fine-tune-dag annotate --pairs): when they change, "
    "pair_labels is recorded as updated and the automation rebuilds the dataset.",
)
def pair_labels_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
    """One small query a tick; the cursor is the decisions' count and latest time, so a tick with none new
    records nothing."""
    labels, latest = pair_labels_state(warehouse.get())
    state = fingerprint([labels, latest])
    if labels == 0 or state == context.cursor:
        return dg.SensorResult(skip_reason=f"no new decisions on pairs ({labels} in all)", cursor=context.cursor)
    update = dg.AssetMaterialization(
        pair_labels.key, metadata={"decisions": labels, "latest": latest}, tags={"dagster/data_version": state}
    )
    return dg.SensorResult(asset_events=[update], cursor=state)


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluated in the code server (not the daemon) because the retraining condition reads metadata in Python."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # use_user_code_server is beta; we opt in knowingly
        return dg.AutomationConditionSensorDefinition(
            "automation_sensor",
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=15,
            use_user_code_server=True,
            description="Carries changes downstream: note partitions → dataset → (when grown enough) "
            "training → evaluation → champion.",
        )
