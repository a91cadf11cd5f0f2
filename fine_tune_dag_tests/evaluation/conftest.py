"""A warehouse with six notes split, a retrieval index and one tiny adapter trained, nothing evaluated: what the
evaluation's steps and the edge cases start from, built once per session."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.automation.jobs import notes_job
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.runner import job_run_config, register_note_partitions

TRAINED_ASSETS = ("dataset_splits", "retrieval_index", "base_model", "lora_adapter")
RUN_CONFIG = {
    "ops": {
        "passages": {"config": {"min_chars": 60, "max_chars": 200}},
        "dataset_splits": {"config": {"test_fraction": 0.5}},
        "lora_adapter": {"config": {"max_steps": 2, "batch_size": 4, "warmup_ratio": 0.0, "dtype": "float32"}},
    }
}


@dataclass(frozen=True)
class TrainedProject:
    layout: DataLayout

    def copy(self, folder: Path) -> tuple[Warehouse, DataLayout]:
        """A warehouse of its own (the same adapter and index files), for a test that writes to it."""
        layout = DataLayout(notes=self.layout.notes, data=folder)
        shutil.copytree(self.layout.data, folder, dirs_exist_ok=True)
        return Warehouse(folder / "warehouse.duckdb"), layout


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> TrainedProject:
    root = tmp_path_factory.mktemp("trained-project")
    notes, data = root / "notes", root / "data"
    write_sample_notes(notes, 6)
    defs = scripted_definitions(notes, data, tiny_model_dir)
    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def(notes_job.name)
        for key in register_note_partitions(instance, notes):
            run_config = job_run_config(job, RUN_CONFIG, "CRITICAL")
            assert job.execute_in_process(instance=instance, partition_key=key, run_config=run_config).success
        trained = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(name) for name in TRAINED_ASSETS], run_config=RUN_CONFIG
        )
        assert trained.success
    return TrainedProject(DataLayout(notes=notes, data=data))
