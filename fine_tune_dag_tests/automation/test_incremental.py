"""End to end without the UI: the notes sensor and the automation tick in-process (LocalDaemon)
over real files, a real DuckDB and a tiny model. A new note costs only its own LLM calls; the
dataset follows; training waits until the train split grew by the threshold."""

import dagster as dg
import pytest
from fine_tune_dag_testkit.daemon import LocalDaemon
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import scripted_definitions

from fine_tune_dag.core.ingest.notes import note_partition_key
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.resources.policy import AutomationPolicy

THRESHOLD = 30  # a sample note brings about 18 train rows (Q&A and writing tasks): two train notes cross it
RUN_CONFIG = {
    "ops": {
        "passages": {"config": {"min_chars": 60, "max_chars": 200}},
        "dataset_splits": {"config": {"test_fraction": 0.5}},
        "lora_adapter": {"config": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "dtype": "float32"}},
        "eval_report": {"config": {"max_new_tokens": 4, "max_examples": 4, "dtype": "float32"}},
    }
}


@pytest.fixture
def daemon(tmp_path, tiny_model_dir, scripted_llm):
    notes, data = tmp_path / "notes", tmp_path / "data"
    write_sample_notes(notes, 6)
    # every challenger passes the gate here: promotion has its own tests (test_champion.py)
    policy = AutomationPolicy(
        retrain_min_new_examples=THRESHOLD, settle_seconds=0, promote_always=True
    )
    defs = scripted_definitions(notes, data, tiny_model_dir, policy, llm=scripted_llm)
    with dg.instance_for_test() as instance:
        yield LocalDaemon(defs, instance, RUN_CONFIG), notes, Warehouse(data / "warehouse.duckdb")


def train_pairs(db: Warehouse) -> int:
    return int(db.query("SELECT count(*) AS n FROM dataset_splits WHERE split = 'train'")["n"].iloc[0])


def assets_run(runs) -> list[str]:
    return [asset for run in runs for asset in run.assets]


def test_new_notes_flow_through_and_training_waits_for_the_threshold(daemon, scripted_llm):
    daemon, notes, db = daemon
    first = daemon.settle()
    assert all(run.success for run in first), [(r.assets, r.success) for r in first]
    assert len([r for r in first if r.trigger == "new_notes_sensor"]) == 6
    assert assets_run(first).count("dataset_splits") == 1  # one rebuild after the whole burst
    assert assets_run(first).count("lora_adapter") == 1 and "champion_adapter" in assets_run(first)
    baseline = train_pairs(db)
    assert baseline >= THRESHOLD

    # one note at a time until the train split has grown by the threshold
    added = 0
    while True:
        added += 1
        (path,) = write_sample_notes(notes, 1, start=5 + added)
        before = scripted_llm.total_calls
        runs = daemon.settle()
        note_runs = [r for r in runs if r.trigger == "new_notes_sensor"]
        assert [r.partition for r in note_runs] == [note_partition_key(path.name)]  # only the new note
        calls = db.query(
            "SELECT count(*) AS n FROM llm_cache WHERE created_at >= (SELECT parsed_at FROM raw_notes WHERE note_id = ?)",
            [note_runs[0].partition],
        )["n"].iloc[0]
        assert scripted_llm.total_calls - before == calls > 0  # every call was for the new note, each paid once
        assert assets_run(runs).count("dataset_splits") == 1
        grown = train_pairs(db) - baseline
        trained = assets_run(runs).count("lora_adapter")
        assert trained == (1 if grown >= THRESHOLD else 0), (grown, runs)
        if trained:
            break
        assert added < 8, "the train split never grew by the threshold"
    assert added > 1  # at least one new note grew the split by less than the threshold and trained nothing
    assert len(db.query("SELECT * FROM adapters")) == 2

    # unchanged notes: ticking again costs nothing and runs nothing
    before = scripted_llm.total_calls
    assert daemon.settle() == [] and scripted_llm.total_calls == before


def test_deleting_a_note_takes_its_pairs_out_of_the_dataset(daemon):
    daemon, notes, db = daemon
    daemon.settle()
    gone = sorted(notes.iterdir())[0]
    gone_key = note_partition_key(gone.name)
    assert gone_key in set(db.query("SELECT note_id FROM dataset_splits")["note_id"])
    gone.unlink()
    runs = daemon.settle()
    # the dataset and the retrieval index, so the deleted note is neither trained on nor retrieved
    assert [sorted(r.assets) for r in runs if r.trigger == "new_notes_sensor"] == [
        ["dataset_splits", "retrieval_index"]
    ]
    assert gone_key not in set(db.query("SELECT note_id FROM dataset_splits")["note_id"])
    assert gone_key in set(db.query("SELECT note_id FROM raw_notes")["note_id"])  # nothing else is touched
    assert gone_key not in daemon.instance.get_dynamic_partitions("notes")
