"""Dagster definitions: the asset graph, its checks, resources, jobs, sensors and schedule.

`build_definitions` takes the folders, models and automation policy so tests and other deployments can
point the same graph elsewhere; `defs` builds it lazily from `ProjectSettings.from_environment()`, the same
settings the CLI reads, so importing this module does no work.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from fine_tune_dag.assets.crossval import build_crossval_assets
from fine_tune_dag.assets.review import pair_labels
from fine_tune_dag.assets.sweep import build_sweep_assets
from fine_tune_dag.automation.conditions import with_automation
from fine_tune_dag.automation.jobs import ALL_ASSETS, JOBS
from fine_tune_dag.automation.schedules import build_retrain_schedule
from fine_tune_dag.automation.sensors import (
    automation_sensor,
    new_notes_sensor,
    pair_labels_sensor,
    retrain_after_forget,
)
from fine_tune_dag.core.models.bundled import BUNDLED_MODEL
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.sources import SourcesResource
from fine_tune_dag.resources.warehouse import WarehouseResource
from fine_tune_dag.settings import ProjectSettings

# Which Dagster executor runs the steps of a run: one process, subprocesses, or one Kubernetes pod per step. The
# graph is the same everywhere; only this choice (FINE_TUNE_DAG_EXECUTOR) and the instance's `dagster.yaml` change
# between a laptop and a cluster (see deploy/README.md).
LOCAL_EXECUTORS: dict[str, dg.ExecutorDefinition] = {
    "": dg.multi_or_in_process_executor,
    "multiprocess": dg.multiprocess_executor,
    "in_process": dg.in_process_executor,
}
EXECUTOR_NAMES = (*LOCAL_EXECUTORS, "k8s")


def executor_for(name: str) -> dg.ExecutorDefinition:
    """`dagster_k8s` is imported only when asked for, so installs without the `deploy` extra still load."""
    if name in LOCAL_EXECUTORS:
        return LOCAL_EXECUTORS[name]
    if name != "k8s":
        raise ValueError(f"unknown executor {name!r}; expected one of {', '.join(map(repr, EXECUTOR_NAMES))}")
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as error:
        raise ImportError(
            "the k8s executor needs dagster-k8s: pip install 'fine_tune_dag[deploy]'",
            name=error.name,
        ) from error
    return k8s_job_executor


def build_definitions(
    notes_dir: str = "data/notes",
    data_dir: str = "data",
    base_model_ref: str = BUNDLED_MODEL,
    llm_model_ref: str = BUNDLED_MODEL,
    llm: LLMResource | None = None,
    policy: AutomationPolicy | None = None,
    executor: str = "",
    artifacts_url: str = "",
    sweep_file: str = "sweeps.yaml",
    warehouse_url: str | dg.EnvVar = "",
    crossval_folds: int = 5,
    sources: SourcesResource | None = None,
) -> dg.Definitions:
    """The graph over the given folders; `llm` replaces the default local LLM (another provider, a test double).

    `executor` ("", "multiprocess", "in_process" or "k8s") and `artifacts_url` (an fsspec URL that
    adapters and reports are mirrored to) and `warehouse_url` (a PostgreSQL database in place of the DuckDB
    file) are what changes on a cluster (deploy/README.md). The sweep
    assets exist when `sweep_file` does; `crossval_folds` partitions the cross-validated verdict. `sources` says
    who the author is in mailboxes and chat exports.
    """
    paths = ProjectPaths(notes_dir=notes_dir, data_dir=data_dir)
    policy = policy or AutomationPolicy()
    assets, checks = with_automation(ALL_ASSETS, policy.retrain_min_new_examples, policy.retrain_on_deletion)
    sweeps = build_sweep_assets(Path(sweep_file)) if Path(sweep_file).is_file() else []
    return dg.Definitions(
        assets=[*assets, pair_labels, *sweeps, *build_crossval_assets(crossval_folds)],
        asset_checks=checks,
        jobs=JOBS,
        sensors=[new_notes_sensor, pair_labels_sensor, automation_sensor(), retrain_after_forget],
        schedules=[build_retrain_schedule(policy.retrain_cron, policy.retrain_timezone)],
        executor=executor_for(executor),
        resources={
            "paths": paths,
            "warehouse": WarehouseResource(paths=paths, url=warehouse_url),
            "models": ModelsResource(base_model=base_model_ref, paths=paths),
            "llm": llm or LLMResource(model=llm_model_ref, paths=paths),
            "policy": policy,
            "artifacts": ArtifactStoreResource(url=artifacts_url),
            "sources": sources or SourcesResource(),
        },
    )


def llm_from_settings(settings: ProjectSettings) -> LLMResource:
    """The local model, Gemini, or an OpenAI-compatible server, keys read from the environment at run time
    (never stored)."""
    paths = ProjectPaths(notes_dir=settings.notes_dir, data_dir=settings.data_dir)
    provider, model = settings.llm_choice()
    privacy = {
        "privacy_policy": settings.privacy_policy,
        "private_words_file": settings.private_words_file,
        "spacy_model": settings.spacy_model,
    }
    if provider == "openai":
        return LLMResource(
            provider="openai",
            model=model,
            base_url=settings.llm_base_url,
            api_key=dg.EnvVar("OPENAI_API_KEY") if settings.openai_key_set else "",
            paths=paths,
            **privacy,
        )
    if provider == "local":
        return LLMResource(model=model, generation_engine=settings.generation_engine, paths=paths, **privacy)
    return LLMResource(
        provider="gemini",
        model=model,
        api_key=dg.EnvVar(settings.gemini_key_variable),
        requests_per_minute=settings.gemini_requests_per_minute,
        paths=paths,
        **privacy,
    )


def definitions_from_settings(settings: ProjectSettings) -> dg.Definitions:
    return build_definitions(
        notes_dir=settings.notes_dir,
        data_dir=settings.data_dir,
        base_model_ref=settings.base_model,
        llm=llm_from_settings(settings),
        policy=AutomationPolicy(**settings.policy_overrides()),
        executor=settings.executor,
        artifacts_url=settings.artifacts_url,
        sweep_file=settings.sweep_file,
        crossval_folds=settings.crossval_folds,
        # read at run time, so the URL never lands in the run's configuration
        warehouse_url=dg.EnvVar("FINE_TUNE_DAG_WAREHOUSE_URL") if settings.warehouse_url else "",
        # read at run time too: the author's addresses and names never land in a run's configuration
        sources=SourcesResource(
            author_addresses=dg.EnvVar("FINE_TUNE_DAG_AUTHOR_ADDRESSES") if settings.author_addresses else "",
            author_names=dg.EnvVar("FINE_TUNE_DAG_AUTHOR_NAMES") if settings.author_names else "",
            conversation_gap_minutes=settings.conversation_gap_minutes,
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return definitions_from_settings(ProjectSettings.from_environment())
