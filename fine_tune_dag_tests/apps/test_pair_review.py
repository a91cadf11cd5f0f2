"""People's decisions on pairs and the data-quality steps, on the real graph (scripted teacher, tiny model, DuckDB):
edits replace, rejections drop, acceptances mark reviewed (and bring back a pair the filters rejected);
near-duplicate passages across notes leave the dataset with counts in metadata; the mix weighs reviewed pairs and
source kinds; a new decision is an upstream change the automation picks up; the pairs page's API saves each
decision with who and when."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from fine_tune_dag_testkit.scripted import scripted_definitions
from selenium.webdriver import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from starlette.testclient import TestClient

from fine_tune_dag.apps.annotate.server import annotation_app
from fine_tune_dag.automation.sensors import pair_labels_sensor
from fine_tune_dag.cli import register_note_partitions
from fine_tune_dag.core.dataset.mixing import mixed_conversations
from fine_tune_dag.core.store.pair_labels import record_pair_decision, reviewed_train_pairs
from fine_tune_dag.core.store.splits import train_split
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.workflows.evaluation import reviewed_text
from fine_tune_dag.resources.paths import ProjectPaths
from fine_tune_dag.resources.warehouse import WarehouseResource
from fine_tune_dag_tests.apps.test_annotate import annotate_command, text, wait_for, wait_for_server
from fine_tune_dag_tests.browser import chromium_driver, free_port, require_chromium

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
    for name, content in NOTES.items():
        (notes / name).write_text(content, encoding="utf-8")
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
    version = db.query("SELECT dataset_version FROM dataset_versions ORDER BY created_at DESC LIMIT 1").iloc[0, 0]
    assert reviewed_train_pairs(db, version) == (3, len(db.query("SELECT 1 FROM dataset_splits WHERE split = 'train'")))
    assert reviewed_text(reviewed_train_pairs(db, version)).startswith("3 of ")  # the report's line
    assert reviewed_train_pairs(db, "no-such-version") is None
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


def test_reviewed_pairs_and_source_kinds_are_weighted_in_the_training_mix(graph) -> None:
    defs, instance, db = graph
    build_dataset(defs, instance)
    reviewed = dataset(db).index[0]
    record_pair_decision(db, reviewed, "ann", "accept")
    # the notes table of a warehouse whose parser records each file's kind (mail, chat, web, ebook, note)
    db.execute("ALTER TABLE raw_notes ADD COLUMN IF NOT EXISTS source_kind VARCHAR")
    db.execute("UPDATE raw_notes SET source_kind = CASE WHEN path LIKE 'mail%' THEN 'mail' ELSE 'note' END")
    metadata = build_dataset(defs, instance, mix_reviewed=3.0, source_weights={"mail": 0.5})
    rows = db.query("SELECT pair_id, note_id, mode, reviewed, source_kind, weight FROM dataset_splits").set_index("pair_id")
    mail = rows["note_id"].str.startswith("mail-to-sam")
    assert set(rows.loc[mail, "source_kind"]) == {"mail"} and set(rows.loc[~mail, "source_kind"]) == {"note"}
    expected = rows["source_kind"].map({"mail": 0.5, "note": 1.0}) * rows["reviewed"].map({True: 3.0, False: 1.0})
    assert rows["weight"].tolist() == expected.tolist()
    assert rows.loc[reviewed, "weight"] == 3.0 * (0.5 if mail[reviewed] else 1.0)
    assert metadata["weight_by_source_kind"] == pytest.approx(rows.groupby("source_kind")["weight"].sum().to_dict())

    train = train_split(db)
    qa = train[train["mode"].isin(["grounded", "back_translation"])]
    _, counts = mixed_conversations(train, {"qa": 1.0}, seed=0)
    # a weight of 3 takes a row three times; 0.5 a seeded half of the rows of that weight (rounded)
    by_weight = qa.groupby("weight").size()
    assert counts["qa"] == sum(int(w) * n + round((w - int(w)) * n) for w, n in by_weight.items())
    _, doubled = mixed_conversations(train, {"qa": 2.0}, seed=0)
    assert doubled["qa"] == sum(int(2 * w) * n + round((2 * w - int(2 * w)) * n) for w, n in by_weight.items())


def test_weights_of_one_mix_as_before_and_negative_weights_are_refused() -> None:
    from fine_tune_dag.core.dataset.review import mix_weight

    rows = pd.DataFrame({"source_kind": ["note", "mail"], "reviewed": [True, False]})
    assert mix_weight(rows, 2.0, {"mail": 0.25}).tolist() == [2.0, 0.25]
    with pytest.raises(ValueError, match="cannot be negative"):
        mix_weight(rows, 1.0, {"mail": -1.0})


def test_a_new_decision_is_an_upstream_change_that_rebuilds_the_dataset(tmp_path: Path) -> None:
    paths = ProjectPaths(notes_dir=str(tmp_path / "notes"), data_dir=str(tmp_path / "data"))
    warehouse = WarehouseResource(paths=paths)
    db = warehouse.get()
    db.insert_rows(
        "qa_pairs",
        pd.DataFrame([{"pair_id": "p1", "note_id": "n", "passage_index": 0, "mode": "grounded", "question": "Q?",
                       "answer": "A.", "status": "kept"}]),
    )
    from fine_tune_dag.definitions import build_definitions

    defs = build_definitions(notes_dir=paths.notes_dir, data_dir=paths.data_dir)
    dataset_key = dg.AssetKey("dataset_splits")
    with dg.instance_for_test() as instance:
        cursor = None

        def tick(sensor_cursor: str | None) -> tuple[bool, str | None, bool]:
            """One sensor tick (its events recorded as the daemon records them), then one automation tick."""
            nonlocal cursor
            resources = {"warehouse": warehouse}
            with dg.build_sensor_context(instance=instance, cursor=sensor_cursor, resources=resources) as context:
                result = pair_labels_sensor(context)
            for event in result.asset_events:
                instance.report_runless_asset_event(event)
            evaluation = dg.evaluate_automation_conditions(defs, instance, cursor=cursor)
            cursor = evaluation.cursor
            return bool(result.asset_events), result.cursor, evaluation.get_num_requested(dataset_key) > 0

        dataset = dg.AssetMaterialization("dataset_splits", metadata={"train_pairs": 1, "dataset_version": "d1"})
        instance.report_runless_asset_event(dataset)
        assert tick(None) == (False, None, False)  # no decisions yet: nothing to record
        record_pair_decision(db, "p1", "ann", "reject")
        recorded, state, rebuilt = tick(None)
        assert recorded and rebuilt
        instance.report_runless_asset_event(dataset)
        assert tick(state) == (False, state, False)  # unchanged decisions: no update, no rebuild
        record_pair_decision(db, "p1", "ann", "accept")
        recorded, newer, rebuilt = tick(state)
        assert recorded and rebuilt and newer != state
        latest = instance.get_latest_materialization_event(dg.AssetKey("pair_labels")).asset_materialization
        assert latest.metadata["decisions"].value == 2


@pytest.fixture
def review_db(tmp_path: Path) -> Warehouse:
    db = Warehouse(tmp_path / "warehouse.duckdb")
    db.insert_rows("raw_notes", pd.DataFrame([{"note_id": "n", "path": "chain-wear.md", "text": CHAIN}]))
    db.insert_rows(
        "passages", pd.DataFrame([{"note_id": "n", "passage_index": 0, "start_char": 0, "end_char": 1, "text": CHAIN}])
    )
    pairs = [
        ("p1", "kept", None, "When do you oil the chain?", "I oil the chain every Sunday.", 5, "in the writer's words"),
        ("p2", "rejected", "answer only restates the question", "Does a chain stretch?", "A chain stretches.", None, None),
    ]
    db.insert_rows(
        "qa_pairs",
        pd.DataFrame(
            [
                {"pair_id": i, "note_id": "n", "passage_index": 0, "mode": "grounded", "question": q, "answer": a,
                 "status": s, "reason": r, "judge_score": score, "judge_reason": why}
                for i, s, r, q, a, score, why in pairs
            ]
        ),
    )
    return db


def test_the_pairs_page_shows_each_pair_beside_its_passage_and_saves_who_decided_what_and_when(review_db) -> None:
    app = TestClient(annotation_app(review_db, "ann", mode="pairs"), base_url="http://127.0.0.1:8765")
    state = app.get("/api/next").json()
    assert state["progress"] == {"done": 0, "total": 2} and state["labeler"] == "ann"
    assert state["pair"] == {
        "pair_id": "p1",
        "note": "chain-wear.md · passage 1 · grounded",
        "passage": CHAIN,
        "question": "When do you oil the chain?",
        "answer": "I oil the chain every Sunday.",
        "verdict": "kept · judge 5/5: in the writer's words",
    }
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    body = {"pair_id": "p1", "side": "edit", "question": " How often do you oil it? ", "answer": "Every Sunday."}
    state = app.post("/api/choice", json=body).json()
    assert state["pair"]["pair_id"] == "p2" and state["progress"] == {"done": 1, "total": 2}
    assert state["pair"]["verdict"] == "rejected: answer only restates the question"
    assert app.post("/api/choice", json={"pair_id": "p2", "side": "accept", "question": "x", "answer": "y"}).json() == {
        "pair": None, "progress": {"done": 2, "total": 2}, "labeler": "ann"
    }
    labels = review_db.query("SELECT * FROM pair_labels ORDER BY labeled_at, label_id").astype(object)
    assert labels.where(labels.notna(), None)[["pair_id", "labeler", "decision", "question", "answer"]].values.tolist() == [
        ["p1", "ann", "edit", "How often do you oil it?", "Every Sunday."],
        ["p2", "ann", "accept", None, None],  # only an edit stores text
    ]
    assert (labels["labeled_at"] >= before).all()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"pair_id": "p1", "side": "keep", "question": "", "answer": ""}, "decision must be one of accept, edit, reject"),
        ({"pair_id": "p1", "side": "edit", "question": "Q?", "answer": " "}, "an edit needs both a question and an answer"),
        ({"pair_id": "p9", "side": "accept", "question": "", "answer": ""}, "no pair 'p9'"),
        ({"pair_id": "p1", "side": "accept"}, "missing question, answer"),
        ({"pair_id": "p1", "side": "accept", "question": 1, "answer": ""}, "pair_id, side, question, answer must be strings"),
    ],
)
def test_a_bad_decision_is_a_400_with_the_reason_and_saves_nothing(review_db, body: dict, reason: str) -> None:
    app = TestClient(annotation_app(review_db, "ann", mode="pairs"), base_url="http://127.0.0.1:8765")
    response = app.post("/api/choice", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and reason in response.json()["error"]
    assert review_db.query("SELECT * FROM pair_labels").empty


def test_reviewing_in_a_browser_accepts_edits_and_rejects_with_one_key_each(tmp_path: Path) -> None:
    require_chromium()
    db = Warehouse(tmp_path / "data" / "warehouse.duckdb")
    passages = [CHAIN, WHEEL, BEES]
    db.insert_rows("raw_notes", pd.DataFrame([{"note_id": "n", "path": "notes.md", "text": "\n\n".join(passages)}]))
    db.insert_rows(
        "passages",
        pd.DataFrame(
            [{"note_id": "n", "passage_index": i, "start_char": 0, "end_char": 1, "text": t} for i, t in enumerate(passages)]
        ),
    )
    questions = ["When do you oil the chain?", "How do you true a wheel?", "Where were the bees?"]
    answers = ["I oil the chain every <b>Sunday</b>.", "Quarter turns on the spoke key.", "Heavy on the lime tree."]
    db.insert_rows(
        "qa_pairs",
        pd.DataFrame(
            [
                {"pair_id": f"p{i}", "note_id": "n", "passage_index": i, "mode": "grounded", "question": q,
                 "answer": a, "status": "kept"}
                for i, (q, a) in enumerate(zip(questions, answers))
            ]
        ),
    )
    port, log = free_port(), tmp_path / "annotate.log"
    url = f"http://127.0.0.1:{port}"

    def decisions() -> list[list]:
        rows = db.query("SELECT * FROM pair_labels ORDER BY labeled_at, label_id").astype(object)
        return rows.where(rows.notna(), None)[["pair_id", "labeler", "decision", "question", "answer"]].values.tolist()

    def reviewed(done: int) -> Callable[[WebDriver], bool]:
        return lambda d: text(d, "progress") == f"{done} of 3"

    with annotate_command(tmp_path / "data", port, log, "--pairs") as process, chromium_driver() as driver:
        wait_for_server(process, url, log)
        assert "a: accept, e: edit (ctrl+enter saves), r: reject" in log.read_text()
        driver.get(url)
        wait_for(driver, reviewed(0), "progress 0 of 3", log)
        assert text(driver, "passage") == CHAIN and text(driver, "note") == "notes.md · passage 1 · grounded"
        assert driver.find_element(By.ID, "answer").get_attribute("value") == answers[0]  # markup as text

        ActionChains(driver).send_keys("a").perform()
        wait_for(driver, reviewed(1), "progress 1 of 3", log)
        assert decisions() == [["p0", "tester", "accept", None, None]]
        assert text(driver, "passage") == WHEEL

        ActionChains(driver).send_keys("e").perform()  # opens the editor on the answer; "e" is not typed
        answer = driver.find_element(By.ID, "answer")
        assert answer.get_attribute("readonly") is None and driver.switch_to.active_element == answer
        answer.send_keys(Keys.CONTROL, "a")
        answer.send_keys("Quarter turns, never more, and listen to each spoke ring.")  # "a" and "r" typed, not keys
        ActionChains(driver).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
        wait_for(driver, reviewed(2), "progress 2 of 3", log)
        assert decisions()[1] == ["p1", "tester", "edit", questions[1], "Quarter turns, never more, and listen to each spoke ring."]
        assert driver.find_element(By.ID, "answer").get_attribute("readonly") is not None

        ActionChains(driver).send_keys("r").perform()
        wait_for(driver, reviewed(3), "progress 3 of 3", log)
        assert decisions()[2] == ["p2", "tester", "reject", None, None]
        assert text(driver, "done").startswith("Every pair reviewed")
        assert not driver.find_element(By.ID, "pair").is_displayed()
