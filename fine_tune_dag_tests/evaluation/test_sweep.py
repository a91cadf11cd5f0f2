"""Sweeps: the YAML file is validated up front; two tiny configurations are trained and evaluated
in-process, ranked on the leaderboard, and the winner promoted through the champion gate."""

from pathlib import Path

import dagster as dg
import pytest
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.core.evaluation.sweep import SweepFileError, load_sweep, sweep_settings
from fine_tune_dag.core.store.registry import current_champion
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.training.sft import TrainingSettings
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.runner import materialize_graph


def test_the_shipped_sweep_file_is_valid_and_typos_are_named(tmp_path):
    assert len(load_sweep(Path("sweeps.yaml"))) >= 8
    bad = tmp_path / "s.yaml"
    bad.write_text("configurations:\n  fast: {learning_rate: 1.0e-3, lora_rank: 4}\n")
    with pytest.raises(SweepFileError, match=r"s.yaml: configuration 'fast': unknown setting 'lora_rank'"):
        load_sweep(bad)
    bad.write_text("configurations:\n  fast: {epochs: many}\n")
    with pytest.raises(SweepFileError, match="'epochs' should be float"):
        load_sweep(bad)
    bad.write_text("configurations:\n  roomy: {memory_budget_gb: 6}\n")  # set, where its default follows the machine
    assert load_sweep(bad) == {"roomy": {"memory_budget_gb": 6}}
    bad.write_text("configurations:\n  roomy: {memory_budget_gb: lots}\n")
    with pytest.raises(SweepFileError, match="'memory_budget_gb' should be float"):
        load_sweep(bad)
    bad.write_text("configurations:\n  Fast Run: {}\n")
    with pytest.raises(SweepFileError, match="must use a-z"):
        load_sweep(bad)
    settings = sweep_settings({"target_modules": ["q_proj"], "lora_r": 4}, TrainingSettings())
    assert settings.target_modules == ("q_proj",) and settings.lora_r == 4


def test_two_configurations_trained_ranked_and_the_winner_promoted(tmp_path, tiny_model_dir):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 6)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("configurations:\n  still: {learning_rate: 1.0e-9}\n  moving: {learning_rate: 5.0e-2}\n")
    policy = AutomationPolicy(promote_always=True)
    defs = scripted_definitions(notes, data, tiny_model_dir, policy, sweep_file=str(sweep))
    base = {"max_steps": 8, "batch_size": 4, "warmup_ratio": 0.0, "eval_fraction": 0.0, "dtype": "float32"}
    evaluation = {"max_new_tokens": 4, "max_examples": 4, "dtype": "float32"}
    config = {
        "ops": {
            "passages": {"config": {"min_chars": 60, "max_chars": 200}},
            "dataset_splits": {"config": {"test_fraction": 0.5}},
            "sweep_adapters": {"config": {"base": base, "evaluation": evaluation, "device_hour_usd": 3.6}},
            "sweep_leaderboard": {"config": {"promote_winner": True}},
        }
    }
    db = Warehouse(data / "warehouse.duckdb")
    with dg.instance_for_test() as instance:
        notes_config = {"ops": {k: v for k, v in config["ops"].items() if k in ("passages", "dataset_splits")}}
        run = materialize_graph(defs, instance, notes, run_config=notes_config)
        assert run.success
        job = defs.resolve_implicit_global_asset_job_def()
        for name in ("still", "moving"):
            result = job.execute_in_process(
                instance=instance,
                partition_key=name,
                asset_selection=[dg.AssetKey("sweep_adapters")],
                run_config={"ops": {"sweep_adapters": config["ops"]["sweep_adapters"]}},
            )
            assert result.success
        board = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("sweep_leaderboard")],
            run_config={"ops": {"sweep_leaderboard": config["ops"]["sweep_leaderboard"]}},
        )
        assert board.success
        metadata = instance.get_latest_materialization_event(dg.AssetKey("sweep_leaderboard")).asset_materialization
    results = db.query("SELECT * FROM sweep_results ORDER BY nll")
    assert list(results["configuration"]) == ["moving", "still"]
    assert results["cost_usd"].tolist() == pytest.approx((results["train_seconds"] / 1000).tolist())  # 3.6 USD/h
    assert metadata.metadata["winner"].value == "moving"
    assert metadata.metadata["promotion"].value.startswith("promoted")
    assert current_champion(db).version == results["adapter_version"].iloc[0]
    assert "| 1 | moving |" in metadata.metadata["leaderboard"].value
