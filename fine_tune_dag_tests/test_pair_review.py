"""People's decisions on pairs and the data-quality steps, on the real graph (scripted teacher, tiny model, DuckDB):
edits replace, rejections drop, acceptances mark reviewed (and bring back a pair the filters rejected);
near-duplicate passages across notes leave the dataset with counts in metadata; the mix weighs reviewed pairs and
source kinds; a new decision is an upstream change the automation picks up; the pairs page's API saves each
decision with who and when."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from fine_tune_dag_testkit.scripted import scripted_definitions
from starlette.testclient import TestClient

from fine_tune_dag.annotate import annotation_app
from fine_tune_dag.automation.sensors import pair_labels_sensor
from fine_tune_dag.cli import register_note_partitions
from fine_tune_dag.core.store.pair_labels import record_pair_decision
from fine_tune_dag.core.store.splits import train_split
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.text.mixing import mixed_conversations
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource

CHAIN = (
    "I oil the chain every Sunday and wipe it on Monday. A clean chain lasts three thousand kilometres, a dirty "
    "one barely a thousand. The stretch shows first on the small cogs, where the teeth start to hook."
)
WHEEL = (
    "Truing a wheel wants patience more than tools. Quarter turns on the spoke key, never more, and a pause to "
    "listen to each spoke ring before the next one. A wheel trued in a hurry goes out by the weekend."
)
BEES = (
    "The bees were heavy on the lime tree in June. I counted forty on one branch and lost count on the next. "
    "By evening the hive hummed like a kettle left on a low flame, and the porch smelled of wax."
)
QUOTED = CHAIN.replace("every Sunday", "each Sunday").upper()
NOTES = {
    "chain-wear.md": f"{CHAIN}\n\n{WHEEL}\n",
    # the chain paragraph as a reply quotes it, one word changed: later by path, so its copy leaves the dataset
    "mail-to-sam.txt": f"{QUOTED}\n\n{BEES}\n",
    # the scripted teacher answers with the first sentence: "Honey jars." only restates its question (rejected)
    "honey.md": "Honey jars. They go on the top shelf by the door, where the light is low and the air stays cool.\n",
}
RUN_CONFIG = {"ops": {"passages": {"config": {"strategy": "heuristic", "min_chars": 20, "max_chars": 240}}}}
SPLITS = {"test_fraction": 0.0}


@pytest.fixture
def graph(tmp_path: Path, tiny_model_dir: Path, scripted_llm):
    notes, data = tmp_path / "notes", tmp_path / "data"
    notes.mkdir()
    for name, text in NOTES.items():
        (notes / name).write_text(text, encoding="utf-8")
    defs = scripted_definitions(notes, data, tiny_model_dir, llm=scripted_llm)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("notes_job")
    for key in register_note_partitions(instance, notes):
        assert job.execute_in_process(instance=instance, partition_key=key, run_config=RUN_CONFIG).success
    return defs, instance, Warehouse(data / "warehouse.duckdb")


def build_dataset(defs: dg.Definitions, instance: dg.DagsterInstance, **config) -> dict:
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("dataset_splits")],
        run_config={"ops": {"dataset_splits": {"config": {**SPLITS, **config}}}},
    )
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("dataset_splits")[0].metadata.items()}


def dataset(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM dataset_splits WHERE mode IN ('grounded', 'back_translation')").set_index("pair_id")


def test_decisions_are_applied_to_the_dataset_and_counted(graph) -> None:
    defs, instance, db = graph
    build_dataset(defs, instance)
    before = dataset(db)
    pairs = db.query("SELECT * FROM qa_pairs ORDER BY pair_id")
    kept = pairs[(pairs["status"] == "kept") & pairs["pair_id"].isin(before.index)]["pair_id"].tolist()
    rejected = pairs[pairs["status"] == "rejected"]["pair_id"].tolist()
    assert len(kept) >= 3 and rejected and not before["reviewed"].any()
    edited, dropped, accepted, restored = kept[0], kept[1], kept[2], rejected[0]
    record_pair_decision(db, edited, "ann", "edit", "How often do you oil the chain?", "Every Sunday, and I wipe it on Monday.")
    record_pair_decision(db, dropped, "ann", "reject")
    record_pair_decision(db, accepted, "bob", "reject")
    record_pair_decision(db, accepted, "ann", "accept")  # the latest decision wins
    record_pair_decision(db, restored, "ann", "accept")

    metadata = build_dataset(defs, instance)
    after = dataset(db)
    assert (after.loc[edited, "question"], after.loc[edited, "answer"]) == (
        "How often do you oil the chain?",
        "Every Sunday, and I wipe it on Monday.",
    )
    assert dropped not in after.index
    assert restored in after.index and restored not in before.index
    assert after.loc[[edited, accepted, restored], "reviewed"].all()
    assert not after.drop(index=[edited, accepted, restored])["reviewed"].any()
    assert set(after.index) == set(before.index) - {dropped} | {restored}
    assert (metadata["accepted"], metadata["edited"], metadata["rejected_by_people"]) == (2, 1, 1)
    assert (metadata["restored_by_people"], metadata["reviewed"], metadata["reviewed_train_pairs"]) == (1, 3, 3)
    exported = Path(db.query("SELECT train_path FROM dataset_versions ORDER BY created_at DESC LIMIT 1").iloc[0, 0])
    assert "Every Sunday, and I wipe it on Monday." in exported.read_text(encoding="utf-8")


def test_a_passage_another_note_already_has_leaves_the_dataset_with_its_pairs(graph) -> None:
    defs, instance, db = graph
    metadata = build_dataset(defs, instance)
    passages = db.query("SELECT note_id, passage_index, text FROM passages ORDER BY note_id, passage_index")
    copy = passages[passages["text"].str.contains(QUOTED, regex=False)].iloc[0]
    assert copy["note_id"].startswith("mail-to-sam")  # the later file by path keeps none of it
    rows = db.query("SELECT s.note_id, q.passage_index, s.mode, s.answer FROM dataset_splits s LEFT JOIN qa_pairs q USING (pair_id)")
    from_notes = rows[rows["mode"].isin(["grounded", "back_translation"])]
    assert not ((from_notes["note_id"] == copy["note_id"]) & (from_notes["passage_index"] == copy["passage_index"])).any()
    assert from_notes["note_id"].nunique() == 3  # every note's other passages stay
    assert not rows["answer"].str.contains(QUOTED, regex=False).any()
    assert rows["answer"].str.contains(CHAIN, regex=False).any()  # the first copy stays
    assert metadata["near_duplicate_passages"] == 1
    # its writing tasks (three per passage) and its Q&A pairs
    assert metadata["near_duplicate_examples_dropped"] == 3 + int(
        db.query(
            "SELECT count(*) FROM qa_pairs WHERE status = 'kept' AND note_id = ? AND passage_index = ?",
            [copy["note_id"], int(copy["passage_index"])],
        ).iloc[0, 0]
    )
    strict = build_dataset(defs, instance, near_duplicate_passages=0.95)
    assert (strict["near_duplicate_passages"], strict["near_duplicate_examples_dropped"]) == (0, 0)
    assert db.query("SELECT answer FROM dataset_splits")["answer"].str.contains(QUOTED, regex=False).any()
