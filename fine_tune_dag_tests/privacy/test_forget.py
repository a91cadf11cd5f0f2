"""`forget` on the whole graph with a tiny model: a note of random canaries is planted beside the sample notes,
trained on, forgotten and retrained without; and the champion's replacement and the refusals on a warehouse made
by hand. That the model no longer knows the canaries is measured on the bundled model (test_canary_audit.py): the
tiny random model never memorizes them in the first place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from fine_tune_dag_testkit.notes import write_sample_notes
from fine_tune_dag_testkit.scripted import ScriptedLLM, scripted_definitions

from fine_tune_dag.assets.forgetting import forget_in_instance
from fine_tune_dag.automation.jobs import notes_job, train_and_evaluate_job
from fine_tune_dag.cli import materialize_graph
from fine_tune_dag.core.evaluation.canary import CanarySettings, plant_canaries
from fine_tune_dag.core.ingest.notes import note_partition_key
from fine_tune_dag.core.store.forgetting import BY_NOTE_ID, BY_TEXT_OR_KEY, HOLDS_NO_NOTE_TEXT
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import current_champion, latest_adapter, main_line_versions
from fine_tune_dag.core.store.warehouse import CREATE_SCHEMA, Warehouse
from fine_tune_dag.core.workflows.forget import ForgetSettings, UnknownNote, forget_note
from fine_tune_dag.definitions import build_definitions
from fine_tune_dag.resources.policy import AutomationPolicy

CANARY_FILE = "codes.md"  # lands on the train side at the test fraction below
CANARIES = CanarySettings(count=2, digits=4, repetitions=24)
RUN_CONFIG = {
    "ops": {
        "passages": {"config": {"min_chars": 60, "max_chars": 200}},
        "dataset_splits": {"config": {"test_fraction": 0.6}},
        "lora_adapter": {
            "config": {"max_steps": 24, "learning_rate": 1e-2, "batch_size": 8, "logging_steps": 12, "dtype": "float32"}
        },
        "eval_report": {"config": {"max_new_tokens": 4, "dtype": "float32"}},
    }
}
# rows put where the graph run writes nothing, each carrying a canary sentence ("theirs") or another note's text
HAND_MADE_TABLES = (
    "request_log_pairs",
    "prompt_completion_pairs",
    "preference_candidates",
    "preference_labels",
    "preference_pairs",
    "edge_cases",
    "edge_case_answers",
    "blind_labels",
)


def _now():
    return pd.Timestamp.now()


def _hand_made_rows(db: Warehouse, note_id: str, canary: str, other: str) -> None:
    """Comparisons, teacher pairs, a served request, an old blind trial (no note id) and an edge case: one row
    of each that carries the canary note and one that does not."""
    pair_id = db.query("SELECT pair_id FROM qa_pairs WHERE note_id = ? LIMIT 1", [note_id])["pair_id"].iloc[0]
    for name, text in (("theirs", canary), ("other", other)):
        db.insert_rows(
            "request_log_pairs",
            pd.DataFrame(
                [{"pair_id": f"r-{name}", "question": "what did I write?", "answer": text, "created_at": _now()}]
            ),
        )
        db.insert_rows(
            "prompt_completion_pairs",
            pd.DataFrame([{"pair_id": f"p-{name}", "question": text, "answer": "yes", "created_at": _now()}]),
        )
        candidate = {
            "candidate_id": f"c-{name}",
            "prompt_id": pair_id if name == "theirs" else "unrelated",
            "question": "q",
            "reference": text,
            "answer_a": "a",
            "answer_b": "b",
            "created_at": _now(),
        }
        db.insert_rows("preference_candidates", pd.DataFrame([candidate]))
        db.insert_rows("preference_labels", pd.DataFrame([{"label_id": f"l-{name}", "candidate_id": f"c-{name}"}]))
        db.insert_rows(
            "preference_pairs", pd.DataFrame([{"candidate_id": f"c-{name}", "question": "q", "chosen": text}])
        )
        db.insert_rows("edge_cases", pd.DataFrame([{"case_id": f"e-{name}", "question": "q", "reference": text}]))
        db.insert_rows("edge_case_answers", pd.DataFrame([{"case_id": f"e-{name}", "model": "base", "answer": "x"}]))
        db.insert_rows(
            "blind_trials", pd.DataFrame([{"trial_id": f"t-{name}", "author_text": text, "model_text": "m"}])
        )
        db.insert_rows("blind_labels", pd.DataFrame([{"label_id": f"b-{name}", "trial_id": f"t-{name}"}]))
        db.insert_rows(
            "llm_requests",
            pd.DataFrame(
                [
                    {
                        "request_id": f"q-{name}",
                        "template": "served",
                        "variables": json.dumps({"prompt": text}),
                        "prompt_hash": f"k-{name}",
                        "partition": "",
                    }
                ]
            ),
        )
        db.insert_rows(
            "llm_cache", pd.DataFrame([{"cache_key": f"k-{name}", "messages": json.dumps([{"content": text}])}])
        )


def _cells_with(db: Warehouse, needle: str) -> dict[str, int]:
    """Table → rows with `needle` in any text column, over every table of the schema."""
    found = {}
    for table in CREATE_SCHEMA:
        frame = db.query(f"SELECT * FROM {table}")
        hits = frame.astype(str).apply(lambda column: column.str.contains(needle, regex=False)).any(axis=1)
        if hits.any():
            found[table] = int(hits.sum())
    return found


def _files_with(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def audit(tmp_path_factory, tiny_model_dir):
    """The audit end to end, with what each test asserts recorded on the way."""
    folder = tmp_path_factory.mktemp("forget")
    notes, data = folder / "notes", folder / "data"
    write_sample_notes(notes)
    _, canaries = plant_canaries(notes, CANARIES, CANARY_FILE)
    defs = scripted_definitions(notes, data, tiny_model_dir, llm=ScriptedLLM())
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_graph(defs, instance, notes, RUN_CONFIG)
    assert first.success, first.model_failure
    db, layout, note_id = Warehouse(data / "warehouse.duckdb"), DataLayout(notes, data), note_partition_key(CANARY_FILE)
    other = db.query("SELECT text FROM passages WHERE note_id <> ? LIMIT 1", [note_id])["text"].iloc[0]
    _hand_made_rows(db, note_id, canaries[0].text, other)
    secret = canaries[0].secret
    state = {
        "canaries": canaries,
        "db": db,
        "note_id": note_id,
        "other": other,
        "trained": latest_adapter(db).version,
        "champion_before": current_champion(db),
        "tables_before": _cells_with(db, secret),
        "other_before": _cells_with(db, other[:60]),
        "files_before": _files_with(data, secret),
    }
    state["forgot"] = forget_in_instance(instance, db, layout, CANARY_FILE, ForgetSettings(), "test")
    state["partition_left"] = instance.has_dynamic_partition("notes", note_id)
    state["record"] = db.query("SELECT * FROM forgetting_records").iloc[0]
    state["again"] = forget_in_instance(instance, db, layout, CANARY_FILE, ForgetSettings(), "test")
    state["tables_after"] = _cells_with(db, secret)
    state["hanging"] = {
        table: set(db.query(f"SELECT {column} FROM {table}")[column])
        for table, column in (
            ("preference_labels", "candidate_id"),
            ("edge_case_answers", "case_id"),
            ("blind_labels", "trial_id"),
        )
    }
    state["other_after"] = _cells_with(db, other[:60])
    state["files_after"] = _files_with(data, secret)
    state["champion_after"] = current_champion(db)
    state["served"] = main_line_versions(db)["version"].tolist()
    job = defs.resolve_job_def(train_and_evaluate_job.name)
    ops = {k: v for k, v in RUN_CONFIG["ops"].items() if k in {n.name for n in job.graph.nodes}}
    retrained = job.execute_in_process(instance=instance, run_config={"ops": ops}, raise_on_error=False)
    state["retrained"] = retrained.success or latest_adapter(db).version != state["trained"]
    instance.add_dynamic_partitions("notes", [note_id])  # as the sensor does for a file still in the folder
    state["reread"] = defs.resolve_job_def(notes_job.name).execute_in_process(
        instance=instance, partition_key=note_id, raise_on_error=False
    )
    return state


def test_every_table_is_placed_in_the_forget_survey():
    placed = [*BY_NOTE_ID, *BY_TEXT_OR_KEY, *HOLDS_NO_NOTE_TEXT]
    assert sorted(placed) == sorted(CREATE_SCHEMA) and len(placed) == len(set(placed))


def test_forget_removes_the_note_from_every_table_the_index_and_the_files(audit):
    # before: the canary's secret was in the note's own tables, the cache and log, the index and the exports
    assert {"raw_notes", "passages", "qa_pairs", "dataset_splits", "llm_cache", "llm_requests"} <= set(
        audit["tables_before"]
    )
    assert set(HAND_MADE_TABLES) - {"preference_labels", "edge_case_answers", "blind_labels"} <= set(
        audit["tables_before"]
    )
    assert any("/index/" in f for f in audit["files_before"]) and any("/exports/" in f for f in audit["files_before"])
    # after: nowhere, and the rows hanging off removed rows went with them
    assert audit["tables_after"] == {} and audit["files_after"] == []
    for table, keys in audit["hanging"].items():
        assert not any(key.endswith("-theirs") for key in keys) and any(key.endswith("-other") for key in keys), table
    assert not audit["partition_left"]
    removed = audit["forgot"].removed
    assert removed["retrieval index"] > 0 and removed["passages"] > 0 and removed["llm_cache"] > 0
    # what is not the note's stays: another note's passage is still everywhere it was
    assert audit["other_after"] == audit["other_before"]


def test_adapters_trained_on_the_note_are_marked_and_the_base_model_serves(audit):
    forgot = audit["forgot"]
    assert forgot.adapters_marked == [audit["trained"]]
    assert audit["champion_before"].version == audit["trained"]
    assert audit["champion_after"] is None and forgot.champion_after == "none (the base model serves)"
    assert audit["trained"] not in audit["served"]


def test_a_second_forget_finds_nothing_and_the_record_holds_no_note_text(audit):
    again = audit["again"]
    assert again.nothing_removed and "already forgotten" in again.text
    record = audit["record"]
    assert record.note_key == audit["note_id"]
    assert record.path_sha256 == hashlib.sha256(CANARY_FILE.encode()).hexdigest()
    assert json.loads(record.removed)["passages"] == audit["forgot"].removed["passages"]
    text = " ".join(map(str, record.values))
    assert all(c.secret not in text and c.prefix not in text for c in audit["canaries"])


def test_a_forgotten_note_still_in_the_folder_is_not_read_again(audit):
    assert not audit["reread"].success
    failure = audit["reread"].get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "was forgotten on" in failure and "move its file out" in failure


def test_the_retrain_after_forget_trains_a_new_adapter(audit):
    assert audit["retrained"]


def test_an_unknown_note_is_refused_and_nothing_is_recorded(tmp_path):
    db = Warehouse(tmp_path / "warehouse.duckdb")
    with pytest.raises(UnknownNote, match="no note 'nowhere.md' in the warehouse"):
        forget_note(db, DataLayout(tmp_path / "notes", tmp_path), "nowhere.md", ForgetSettings())
    assert db.query("SELECT count(*) AS n FROM forgetting_records")["n"].iloc[0] == 0


def _dataset(instance, version: str, lost: int) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "dataset_splits", metadata={"train_pairs": 10, "dataset_version": version, "train_notes_lost": lost}
        )
    )


def _adapter(instance, dataset_version: str) -> None:
    metadata = {"dataset_train_pairs": 10, "version": f"a-{dataset_version}", "dataset_version": dataset_version}
    instance.report_runless_asset_event(dg.AssetMaterialization("lora_adapter", metadata=metadata))


@pytest.mark.parametrize("on_deletion", [True, False])
def test_a_train_split_that_lost_a_note_retrains_once_unless_turned_off(tmp_path, on_deletion):
    policy = AutomationPolicy(retrain_min_new_examples=1000, retrain_on_deletion=on_deletion)
    defs = build_definitions(str(tmp_path / "notes"), str(tmp_path / "data"), policy=policy)
    training = dg.AssetKey("lora_adapter")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))
        _dataset(instance, "d1", 0)
        _adapter(instance, "d1")
        cursor = dg.evaluate_automation_conditions(defs, instance).cursor
        _dataset(instance, "d2", 1)  # a note the adapter trained on left the train split, and nothing grew
        result = dg.evaluate_automation_conditions(defs, instance, cursor=cursor)
        assert bool(result.get_num_requested(training)) == on_deletion
        _adapter(instance, "d2")  # retrained on the split without it: nothing more to do
        result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
        assert not result.get_num_requested(training)


def test_the_best_unmarked_adapter_replaces_a_marked_champion(tmp_path):
    """Three adapters: the champion and a better one trained on the note, a worse one not: the worse one leads."""
    db = Warehouse(tmp_path / "warehouse.duckdb")
    db.insert_rows("raw_notes", pd.DataFrame([{"note_id": "n-1", "path": "n.md", "text": "a note"}]))
    db.insert_rows(
        "dataset_notes",
        pd.DataFrame(
            [
                {"dataset_version": "with", "note_id": "n-1", "path": "n.md", "split": "train", "pairs": 2},
                {"dataset_version": "without", "note_id": "n-2", "path": "m.md", "split": "train", "pairs": 2},
            ]
        ),
    )
    adapters = [("champ", "with", 0.9), ("better", "with", 0.5), ("left", "without", 1.2)]
    db.insert_rows(
        "adapters",
        pd.DataFrame(
            [
                {"version": v, "path": v, "dataset_version": d, "test_nll": nll, "created_at": _now()}
                for v, d, nll in adapters
            ]
        ),
    )
    db.insert_rows("champion_history", pd.DataFrame([{"promoted_at": _now(), "version": "champ", "reason": "gate"}]))
    forgot = forget_note(db, DataLayout(tmp_path / "notes", tmp_path), "n.md", ForgetSettings())
    assert forgot.adapters_marked == ["better", "champ"]
    assert (forgot.champion_before, forgot.champion_after) == ("champ", "left")
    assert current_champion(db).version == "left" and main_line_versions(db)["version"].tolist() == ["left"]
    assert (
        "trained on a forgotten note"
        in db.query("SELECT reason FROM champion_history ORDER BY promoted_at DESC")["reason"].iloc[0]
    )
