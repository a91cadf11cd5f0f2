"""Dagster definitions: the asset graph, its resources and jobs.

`build_definitions` takes the folders and models so tests and other deployments can point the
same graph elsewhere; the module-level `defs` reads them from the environment.
"""

from __future__ import annotations

import os

import dagster as dg

from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.evaluation import eval_report
from fine_tune_dag.assets.ingest import raw_notes
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.partitions import notes_partitions
from fine_tune_dag.assets.synthesis import qa_pairs
from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.core.models import BUNDLED_MODEL
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.models import ModelsResource
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource

NOTE_ASSETS = [raw_notes, passages, qa_pairs]
MODEL_ASSETS = [dataset_splits, base_model, lora_adapter, eval_report]

notes_job = dg.define_asset_job(
    "notes_job",
    selection=dg.AssetSelection.assets(*NOTE_ASSETS),
    partitions_def=notes_partitions,
    description="Parse, chunk and synthesize Q&A for one note partition.",
)
train_and_evaluate_job = dg.define_asset_job(
    "train_and_evaluate_job",
    selection=dg.AssetSelection.assets(*MODEL_ASSETS),
    description="Build the dataset from every note, train a new adapter and evaluate it.",
)


def build_definitions(
    notes_dir: str = "data/notes",
    data_dir: str = "data",
    base_model_ref: str = BUNDLED_MODEL,
    llm_model_ref: str = BUNDLED_MODEL,
    llm: LLMResource | None = None,
) -> dg.Definitions:
    """The graph over the given folders; `llm` replaces the default local LLM (another provider, a test double)."""
    paths = ProjectPaths(notes_dir=notes_dir, data_dir=data_dir)
    return dg.Definitions(
        assets=[*NOTE_ASSETS, *MODEL_ASSETS],
        jobs=[notes_job, train_and_evaluate_job],
        resources={
            "paths": paths,
            "warehouse": WarehouseResource(path=os.path.join(data_dir, "warehouse.duckdb")),
            "models": ModelsResource(base_model=base_model_ref, paths=paths),
            "llm": llm or LLMResource(model=llm_model_ref, paths=paths),
        },
    )


defs = build_definitions(
    notes_dir=os.environ.get("FINE_TUNE_DAG_NOTES_DIR", "data/notes"),
    data_dir=os.environ.get("FINE_TUNE_DAG_DATA_DIR", "data"),
    base_model_ref=os.environ.get("FINE_TUNE_DAG_BASE_MODEL", BUNDLED_MODEL),
    llm_model_ref=os.environ.get("FINE_TUNE_DAG_LLM_MODEL", BUNDLED_MODEL),
)
