"""Dagster definitions: the asset graph, its checks, resources, jobs, sensor and schedule.

`build_definitions` takes the folders, models and automation policy so tests and other
deployments can point the same graph elsewhere; the module-level `defs` reads them from the environment.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dagster as dg

from fine_tune_dag.assets.champion import beats_champion, champion_adapter
from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.dpo import dpo_adapter
from fine_tune_dag.assets.edge_cases import edge_cases
from fine_tune_dag.assets.evaluation import eval_report
from fine_tune_dag.assets.ingest import raw_notes
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.assets.preferences import preference_candidates, preference_pairs
from fine_tune_dag.assets.sweep import build_sweep_assets
from fine_tune_dag.assets.synthesis import qa_pairs
from fine_tune_dag.assets.teacher import prompt_completion_pairs, request_log_pairs
from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.automation.conditions import retrain_condition
from fine_tune_dag.automation.schedules import build_retrain_schedule
from fine_tune_dag.automation.sensors import build_new_notes_sensor
from fine_tune_dag.core.modeling.models import BUNDLED_MODEL
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import DEFAULT_GEMINI_MODEL, LLMResource
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource
from fine_tune_dag.scale_out import executor_for

NOTE_ASSETS = [raw_notes, passages, qa_pairs]
TEACHER_ASSETS = [request_log_pairs, prompt_completion_pairs]
MODEL_ASSETS = [dataset_splits, base_model, lora_adapter, edge_cases, eval_report, champion_adapter]
PREFERENCE_ASSETS = [preference_candidates, preference_pairs, dpo_adapter]

notes_job = dg.define_asset_job(
    "notes_job",
    selection=dg.AssetSelection.assets(*NOTE_ASSETS),
    partitions_def=notes_partitions,
    description="Parse, chunk and synthesize Q&A for one note partition.",
)
dataset_job = dg.define_asset_job(
    "dataset_job",
    selection=dg.AssetSelection.assets(dataset_splits),
    description="Rebuild the train/test splits from the notes that exist now.",
)
retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(lora_adapter, edge_cases, eval_report, champion_adapter),
    description="Train a new adapter on the current splits, evaluate it, promote it if it passes the gate.",
)
train_and_evaluate_job = dg.define_asset_job(
    "train_and_evaluate_job",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Build the dataset from every note, train a new adapter, evaluate it and maybe promote it.",
)

comparisons_job = dg.define_asset_job(
    "comparisons_job",
    selection=dg.AssetSelection.assets(preference_candidates),
    description="New answer pairs for people to compare (fine-tune-dag annotate), from the champion and other sources.",
)
preference_job = dg.define_asset_job(
    "preference_job",
    selection=dg.AssetSelection.assets(preference_pairs, dpo_adapter, eval_report, champion_adapter),
    description="Learn from people's choices: preference pairs, a DPO adapter from the champion, its evaluation "
    "and promotion if it passes the gate.",
)


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
) -> dg.Definitions:
    """The graph over the given folders; `llm` replaces the default local LLM (another provider, a test double).

    `executor` ("", "multiprocess", "in_process" or "k8s") and `artifacts_url` (an fsspec URL that
    adapters and reports are mirrored to) are what changes on a cluster (deploy/README.md). The sweep
    assets exist when `sweep_file` does.
    """
    paths = ProjectPaths(notes_dir=notes_dir, data_dir=data_dir)
    policy = policy or AutomationPolicy()
    training = lora_adapter.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=retrain_condition(policy.retrain_min_new_examples))
    )
    return dg.Definitions(
        assets=[
            *NOTE_ASSETS,
            *TEACHER_ASSETS,
            dataset_splits,
            base_model,
            training,
            edge_cases,
            eval_report,
            champion_adapter,
            *PREFERENCE_ASSETS,
            *(build_sweep_assets(Path(sweep_file)) if Path(sweep_file).is_file() else []),
        ],
        asset_checks=[beats_champion],
        jobs=[notes_job, dataset_job, retrain_job, train_and_evaluate_job, comparisons_job, preference_job],
        sensors=[
            build_new_notes_sensor(notes_job, dataset_job),
            automation_sensor(),
        ],
        schedules=[build_retrain_schedule(retrain_job, policy.retrain_cron, policy.retrain_timezone)],
        executor=executor_for(executor),
        resources={
            "paths": paths,
            "warehouse": WarehouseResource(path=os.path.join(data_dir, "warehouse.duckdb")),
            "models": ModelsResource(base_model=base_model_ref, paths=paths),
            "llm": llm or LLMResource(model=llm_model_ref, paths=paths),
            "policy": policy,
            "artifacts": ArtifactStoreResource(url=artifacts_url),
        },
    )


def llm_from_environment(notes_dir: str, data_dir: str) -> LLMResource:
    """`FINE_TUNE_DAG_LLM_PROVIDER=gemini` reads the key from GEMINI_API_KEY (or GOOGLE_API_KEY) at run time."""
    paths = ProjectPaths(notes_dir=notes_dir, data_dir=data_dir)
    if os.environ.get("FINE_TUNE_DAG_LLM_PROVIDER", "local") != "gemini":
        return LLMResource(model=os.environ.get("FINE_TUNE_DAG_LLM_MODEL", BUNDLED_MODEL), paths=paths)
    key_variable = (
        "GOOGLE_API_KEY" if "GOOGLE_API_KEY" in os.environ and "GEMINI_API_KEY" not in os.environ else "GEMINI_API_KEY"
    )
    return LLMResource(
        provider="gemini",
        model=os.environ.get("FINE_TUNE_DAG_LLM_MODEL", DEFAULT_GEMINI_MODEL),
        api_key=dg.EnvVar(key_variable),
        requests_per_minute=int(os.environ.get("FINE_TUNE_DAG_GEMINI_RPM", "10")),
        paths=paths,
    )


def _policy_from_environment() -> AutomationPolicy:
    defaults = AutomationPolicy()
    return AutomationPolicy(
        retrain_min_new_examples=int(
            os.environ.get("FINE_TUNE_DAG_RETRAIN_MIN_NEW_EXAMPLES", defaults.retrain_min_new_examples)
        ),
        retrain_cron=os.environ.get("FINE_TUNE_DAG_RETRAIN_CRON", defaults.retrain_cron),
    )


_NOTES_DIR = os.environ.get("FINE_TUNE_DAG_NOTES_DIR", "data/notes")
_DATA_DIR = os.environ.get("FINE_TUNE_DAG_DATA_DIR", "data")
defs = build_definitions(
    notes_dir=_NOTES_DIR,
    data_dir=_DATA_DIR,
    base_model_ref=os.environ.get("FINE_TUNE_DAG_BASE_MODEL", BUNDLED_MODEL),
    llm=llm_from_environment(_NOTES_DIR, _DATA_DIR),
    policy=_policy_from_environment(),
    executor=os.environ.get("FINE_TUNE_DAG_EXECUTOR", ""),
    artifacts_url=os.environ.get("FINE_TUNE_DAG_ARTIFACTS_URL", ""),
    sweep_file=os.environ.get("FINE_TUNE_DAG_SWEEP_FILE", "sweeps.yaml"),
)
