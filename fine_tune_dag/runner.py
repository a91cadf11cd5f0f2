"""Running the graph in-process on the instance the web UI reads: every note partition, then the dataset, training
and evaluation. The command line, the tests and the benches all run it through here."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg


GATE_HELD = "the promotion gate kept the current champion: the report's verdict says why (`fine-tune-dag report`)"


class _GateRefusalInOneLine(logging.Filter):
    """A refused promotion is an outcome, not a crash: the blocking check's step failure reads as one line, where
    Dagster would print its error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "DagsterAssetCheckFailedError" in message:
            record.msg, record.args, record.exc_info, record.exc_text = GATE_HELD, (), None, None
        return True


def console_logger_without_gate_tracebacks() -> dg.LoggerDefinition:
    """Dagster's console logger with `_GateRefusalInOneLine` on its handlers."""
    import dagster as dg

    @dg.logger(
        config_schema={"log_level": dg.Field(str, default_value="INFO"), "name": dg.Field(str, default_value="dagster")}
    )
    def console(init_context: dg.InitLoggerContext) -> logging.Logger:
        logger = dg.colored_console_logger.logger_fn(init_context)
        for handler in logger.handlers:
            handler.addFilter(_GateRefusalInOneLine())
        return logger

    return console


def project_instance() -> dg.DagsterInstance:
    """The persistent instance under DAGSTER_HOME when set (as `make` does), else a throwaway one."""
    import dagster as dg

    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def job_run_config(job: dg.JobDefinition, run_config: dict | None, log_level: str) -> dict:
    """The op config that belongs to this job's assets, and a console log level."""
    names = {node.name for node in job.graph.nodes}
    ops = {name: value for name, value in (run_config or {}).get("ops", {}).items() if name in names}
    return {"ops": ops, "loggers": {"console": {"config": {"log_level": log_level}}}}


def failure_reason(result: dg.ExecuteInProcessResult) -> str:
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        error = data.error
        while error is not None and error.cause is not None:  # the user's exception, not Dagster's wrapper
            error = error.cause
        if error is not None:
            return error.message.strip().splitlines()[-1]
    return "failed"


def register_note_partitions(instance: dg.DagsterInstance, notes_dir: Path) -> list[str]:
    """Add a `notes` partition for every note file not yet registered; returns all current keys."""
    from fine_tune_dag.assets.partitions import notes_partitions
    from fine_tune_dag.core.ingest.notes import discover_notes

    keys = sorted(discover_notes(notes_dir))
    known = set(instance.get_dynamic_partitions(notes_partitions.name))
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(notes_partitions.name, new)
    return keys


@dataclass
class GraphRun:
    notes: list[str]
    failed_notes: dict[str, str]
    model_failure: str | None
    promoted: bool  # False when the promotion gate kept the previous champion: an outcome, not a failure

    @property
    def success(self) -> bool:
        return self.model_failure is None


def materialize_graph(
    defs: dg.Definitions, instance: dg.DagsterInstance, notes_dir: Path, run_config: dict | None = None
) -> GraphRun:
    """Every note partition, then dataset, training and evaluation; a bad note fails only itself."""
    from tqdm import tqdm

    from fine_tune_dag.assets.champion import BEATS_CHAMPION
    from fine_tune_dag.automation.jobs import notes_job, train_and_evaluate_job

    keys = register_note_partitions(instance, notes_dir)
    notes = defs.resolve_job_def(notes_job.name)
    notes_config = job_run_config(notes, run_config, "CRITICAL")  # failures are summarized below
    failed = {}
    for key in tqdm(keys, desc="notes: parse, chunk, synthesize", unit="note"):
        result = notes.execute_in_process(
            instance=instance, partition_key=key, run_config=notes_config, raise_on_error=False
        )
        if not result.success:
            failed[key] = failure_reason(result)
    for key, reason in failed.items():
        print(f"note partition {key} failed: {reason}", file=sys.stderr)
    print("dataset, base model, training, evaluation …")
    model_job = defs.resolve_job_def(train_and_evaluate_job.name).with_logger_defs(
        {"console": console_logger_without_gate_tracebacks()}
    )
    model_run = model_job.execute_in_process(
        instance=instance, run_config=job_run_config(model_job, run_config, "INFO"), raise_on_error=False
    )
    failed_steps = {event.step_key for event in model_run.get_step_failure_events()}
    gate_steps = {
        c.node_def.name for c in defs.asset_checks or [] if any(k.name == BEATS_CHAMPION for k in c.check_keys)
    }
    held_by_gate = bool(failed_steps) and failed_steps <= gate_steps
    failure = None if model_run.success or held_by_gate else failure_reason(model_run)
    return GraphRun(keys, failed, failure, promoted=model_run.success)
