"""retrain_schedule: the nightly catch-up for growth below the automatic retraining threshold."""

import dagster as dg

from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.automation.conditions import training_data_growth
from fine_tune_dag.automation.jobs import TRAINING_JOBS, retrain_job

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def training_in_flight(instance: dg.DagsterInstance) -> str | None:
    """The id of an active run that trains an adapter, if any."""
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE)):
        if lora_adapter.key in (run.asset_selection or ()) or run.job_name in {job.name for job in TRAINING_JOBS}:
            return run.run_id
    return None


def build_retrain_schedule(cron: str, timezone: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="retrain_schedule",
        job=retrain_job,
        cron_schedule=cron,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Train, evaluate and maybe promote a new adapter when the train split grew at all since "
        "the last training; skips with the reason otherwise.",
    )
    def retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        in_flight = training_in_flight(context.instance)
        if in_flight:
            return dg.SkipReason(f"training already in flight (run {in_flight})")
        growth = training_data_growth(context.instance)
        if growth.new_examples <= 0:
            return dg.SkipReason(f"the data did not grow: {growth.describe()}")
        return dg.RunRequest(
            tags={"fine_tune_dag/trigger": "retrain_schedule", "fine_tune_dag/growth": str(growth.new_examples)},
        )

    return retrain_schedule
