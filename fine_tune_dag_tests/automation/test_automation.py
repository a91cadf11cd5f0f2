"""Declarative automation on an ephemeral instance: retraining exactly at the threshold, never while
training is in flight; the dataset follows note partitions; evaluation and champion follow training;
the nightly schedule skips with a reason unless the data grew."""

import dagster as dg
import pytest

from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.policy import AutomationPolicy

THRESHOLD = 5
TRAINING = dg.AssetKey("lora_adapter")


@pytest.fixture
def setup(tmp_path):
    defs = build_definitions(
        notes_dir=str(tmp_path / "notes"),
        data_dir=str(tmp_path / "data"),
        policy=AutomationPolicy(retrain_min_new_examples=THRESHOLD),
    )
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))
        yield defs, instance


class Ticks:
    def __init__(self, defs, instance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def requested(self) -> set[dg.AssetKey]:
        result = dg.evaluate_automation_conditions(self.defs, self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {key for key in self.defs.resolve_asset_graph().get_all_asset_keys() if result.get_num_requested(key)}


def dataset_built(instance, train_pairs: int, version: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization("dataset_splits", metadata={"train_pairs": train_pairs, "dataset_version": version})
    )


def adapter_trained(instance, train_pairs: int, version: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization("lora_adapter", metadata={"dataset_train_pairs": train_pairs, "version": version})
    )


def test_training_is_requested_exactly_at_the_threshold(setup):
    defs, instance = setup
    ticks = Ticks(defs, instance)
    ticks.requested()
    dataset_built(instance, THRESHOLD - 1, "d1")
    assert TRAINING not in ticks.requested()
    dataset_built(instance, THRESHOLD, "d2")
    # one run: train, evaluate, and promote if the blocking check on the evaluation passes
    assert {TRAINING, dg.AssetKey("eval_report"), dg.AssetKey("champion_adapter")} <= ticks.requested()

    adapter_trained(instance, THRESHOLD, "a1")
    assert TRAINING not in ticks.requested()
    dataset_built(instance, 2 * THRESHOLD - 1, "d3")
    assert TRAINING not in ticks.requested()
    dataset_built(instance, 2 * THRESHOLD, "d4")
    assert TRAINING in ticks.requested()


def test_the_champion_data_counts_as_the_baseline(setup):
    defs, instance = setup
    ticks = Ticks(defs, instance)
    instance.report_runless_asset_event(
        dg.AssetMaterialization("champion_adapter", metadata={"dataset_train_pairs": 20, "version": "c1"})
    )
    dataset_built(instance, 20 + THRESHOLD - 1, "d1")
    assert TRAINING not in ticks.requested()
    dataset_built(instance, 20 + THRESHOLD, "d2")
    assert TRAINING in ticks.requested()


def test_no_training_while_one_is_in_flight_and_no_retry_loop_after_a_failure(setup):
    defs, instance = setup
    ticks = Ticks(defs, instance)
    dataset_built(instance, 3 * THRESHOLD, "d1")
    run = start_training_run(defs, instance)
    assert TRAINING not in ticks.requested()
    instance.delete_run(run.run_id)
    assert TRAINING in ticks.requested()  # it was the run in flight that held it back

    failed = start_training_run(defs, instance)
    instance.report_run_failed(instance.get_run_by_id(failed.run_id))
    assert TRAINING not in ticks.requested()  # a failed training waits for the nightly schedule or a person


def start_training_run(defs, instance) -> dg.DagsterRun:
    return instance.create_run_for_job(
        job_def=defs.resolve_job_def("retrain_job"),
        status=dg.DagsterRunStatus.STARTED,
        asset_selection=frozenset({TRAINING}),
    )


def test_dataset_follows_any_note_partition_even_when_another_note_failed(setup):
    defs, instance = setup
    instance.add_dynamic_partitions("notes", ["good", "broken"])
    ticks = Ticks(defs, instance)
    ticks.requested()
    instance.report_runless_asset_event(dg.AssetMaterialization("qa_pairs", partition="good"))
    assert dg.AssetKey("dataset_splits") in ticks.requested()  # "broken" stays missing, the dataset goes on
    assert dg.AssetKey("dataset_splits") not in ticks.requested()  # handled: not requested again


def test_retrain_schedule_skips_unless_the_data_grew(setup):
    defs, instance = setup
    schedule = defs.resolve_schedule_def("retrain_schedule")
    adapter_trained(instance, 12, "a1")
    dataset_built(instance, 12, "d1")
    with dg.build_schedule_context(instance=instance) as context:
        skipped = schedule.evaluate_tick(context)
    assert not skipped.run_requests and "did not grow" in skipped.skip_message
    dataset_built(instance, 13, "d2")
    with dg.build_schedule_context(instance=instance) as context:
        assert len(schedule.evaluate_tick(context).run_requests) == 1
    start_training_run(defs, instance)
    with dg.build_schedule_context(instance=instance) as context:
        in_flight = schedule.evaluate_tick(context)
    assert not in_flight.run_requests and "in flight" in in_flight.skip_message


def test_prompt_templates_and_default_settings_are_part_of_code_versions():
    from dataclasses import replace

    from fine_tune_dag.assets.chunking import BOUNDARY_TEMPLATE, passages
    from fine_tune_dag.assets.synthesis import TEMPLATES, qa_pairs
    from fine_tune_dag.core.common.fingerprint import fingerprint
    from fine_tune_dag.core.synthesis.chunking import ChunkingSettings

    assert BOUNDARY_TEMPLATE.tag in passages.code_versions_by_key[passages.key]
    assert fingerprint(ChunkingSettings()) in passages.code_versions_by_key[passages.key]
    assert all(t.tag in qa_pairs.code_versions_by_key[qa_pairs.key] for t in TEMPLATES.values())
    assert fingerprint(replace(ChunkingSettings(), max_chars=999)) != fingerprint(ChunkingSettings())
