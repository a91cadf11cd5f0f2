"""The blind test (which of two texts did the author write?): its store, its JSON API, and its page in Chromium."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from starlette.testclient import TestClient

from fine_tune_dag.apps.annotate.server import annotation_app
from fine_tune_dag.core.common.statistics import Interval
from fine_tune_dag.core.store.blind import (
    BlindTrial,
    SavedTrials,
    blind_progress,
    blind_results,
    blind_trial_id,
    drawn_author_side,
    matched_pair,
    next_blind_trial,
    record_blind_pick,
    save_blind_trials,
    side_id,
)
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag_tests.browser import app_in_thread, chromium_driver, require_chromium

# Texts avoid the words "author" and "model", so a response that names a text's role is caught by a search.
TRIALS = [
    BlindTrial(
        f"note-{i % 2}",
        f"Prompt {i}: the hives in week {i}",
        f"# Week {i}\n\nOwn passage {i}: checked <b>hive</b> {i}, calm and slow.",
        f"Generated {i}: bees,\n<i>many</i> bees.",
    )
    for i in range(3)
]
OLD_TRIALS = [BlindTrial("note-old", "Prompt old", "Own old passage.", "Generated old text.")]
LABELER = "ann"
WAIT_SECONDS = 20


@pytest.fixture
def db(tmp_path: Path) -> Warehouse:
    """Trials of an older adapter version, then three of the newest."""
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    assert save_blind_trials(warehouse, "v-old", OLD_TRIALS) == SavedTrials(new=1, left_out=0)
    assert save_blind_trials(warehouse, "v-new", TRIALS) == SavedTrials(new=3, left_out=0)
    return warehouse


def labels(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM blind_labels ORDER BY labeled_at, label_id")


def trial_texts(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM blind_trials").set_index("trial_id")


def role_on_left(db: Warehouse, trial: dict[str, str]) -> str:
    """Whose text the page was given on the left, read from the warehouse as the page cannot."""
    row = trial_texts(db).loc[trial["trial_id"]]
    return "author" if trial["left"] == row.author_text else "model"


def pick(db: Warehouse, adapter_version: str, trial: BlindTrial, whose: str, labeler: str = LABELER) -> None:
    """A pick of `whose` text, made by pressing the left side with that text on it."""
    trial_id = blind_trial_id(adapter_version, trial)
    record_blind_pick(db, trial_id, labeler, "left", side_id(trial_id, whose))


@pytest.mark.parametrize(
    ("author_text", "model_text", "matched"),
    [
        (  # headings, rules, list and quote markers go; paragraphs join; the longer text is cut to the shorter
            "# Chain wear\n\nHere is the thing: a chain\ndoes not stretch.\n\n## How I check it\n\n"
            "1. Three readings.\n2) Always three.\n> - quoted point\n---\n* last, with **stars**",
            "A chain\n\nstretches, they say,   and I do not agree; no.",
            (
                "Here is the thing: a chain does not stretch. Three readings.",
                "A chain stretches, they say, and I do not agree; no.",
            ),
        ),
        (  # the model's text is cut when it is the longer one, by whole words
            "Short one, this.",
            "Title\n=====\n\nThe machine went on and on.",
            ("Short one, this.", "Title The machine"),
        ),
        ("Something.", "## Only a heading", ("", "")),  # nothing but markup: no words
        ("Something.", "  \n ", ("", "")),
        ("#hashtag and 2024 stay", "words, four of them", ("#hashtag and 2024 stay", "words, four of them")),
    ],
    ids=["markup-and-longer-author", "longer-model", "only-a-heading", "no-words", "text-like-markup-stays"],
)
def test_a_pair_loses_its_headings_and_markers_and_both_keep_the_shorters_word_count(
    author_text: str, model_text: str, matched: tuple[str, str]
) -> None:
    assert matched_pair(author_text, model_text) == matched
    author, model = matched
    assert len(author.split()) == len(model.split())


def test_saving_stores_matched_pairs_and_leaves_out_trials_the_model_wrote_nothing_for(tmp_path: Path) -> None:
    db = Warehouse(tmp_path / "warehouse.duckdb")
    silent = BlindTrial("note-2", "Prompt 2", "Own passage.", "# \n")
    assert save_blind_trials(db, "v", [*TRIALS[:2], silent]) == SavedTrials(new=2, left_out=1)
    rows = trial_texts(db)
    assert sorted(rows.index) == sorted(blind_trial_id("v", trial) for trial in TRIALS[:2])
    row = rows.loc[blind_trial_id("v", TRIALS[0])]
    assert (row.note_id, row.prompt) == ("note-0", "Prompt 0: the hives in week 0")
    assert (row.author_text, row.model_text) == (
        "Own passage 0: checked <b>hive</b>",
        "Generated 0: bees, <i>many</i> bees.",
    )


def test_saving_the_same_trials_again_adds_nothing_and_keeps_their_sides(db: Warehouse) -> None:
    before = trial_texts(db)
    assert save_blind_trials(db, "v-new", [*TRIALS, TRIALS[0]], seed=1) == SavedTrials(new=0, left_out=0)
    new = BlindTrial("note-9", "Prompt 9", "Own 9.", "Generated 9.")
    assert save_blind_trials(db, "v-new", [TRIALS[0], new], seed=1) == SavedTrials(new=1, left_out=0)
    after = trial_texts(db)
    assert len(after) == 5
    pd.testing.assert_frame_equal(after.loc[before.index], before)  # saved rows keep their side and creation time
    assert blind_trial_id("v-new", TRIALS[0]) in before.index
    assert blind_trial_id("v-other", TRIALS[0]) != blind_trial_id("v-new", TRIALS[0])
    assert save_blind_trials(db, "v-new", []) == SavedTrials(new=0, left_out=0)


def test_the_author_side_is_drawn_from_the_trial_id_and_seed_and_stored(tmp_path: Path) -> None:
    assert [drawn_author_side(f"t{i}") for i in range(6)] == ["right", "right", "right", "left", "left", "left"]
    assert [drawn_author_side(f"t{i}", seed=1) for i in range(6)] == ["left", "right", "right", "left", "right", "left"]
    trials = [BlindTrial(f"note-{i}", f"Prompt {i}", f"Own {i}.", f"Generated {i}.") for i in range(8)]
    for seed in (0, 1):
        db = Warehouse(tmp_path / f"seed-{seed}.duckdb")
        save_blind_trials(db, "v", trials, seed=seed)
        stored = trial_texts(db)["author_side"]
        assert stored.to_dict() == {trial_id: drawn_author_side(trial_id, seed) for trial_id in stored.index}
        assert set(stored) == {"left", "right"}
    sides = [trial_texts(Warehouse(tmp_path / f"seed-{seed}.duckdb"))["author_side"].sort_index() for seed in (0, 1)]
    assert not sides[0].equals(sides[1])  # the seed changes the draw


def test_the_next_trial_shows_the_authors_text_on_its_stored_side_with_an_opaque_id(db: Warehouse) -> None:
    rows, shown = trial_texts(db), set()
    newest = sorted(rows.index[rows.adapter_version == "v-new"])
    for trial_id in newest:
        for author_side in ("left", "right"):  # the page follows the stored side, whichever it is
            db.execute("UPDATE blind_trials SET author_side = ? WHERE trial_id = ?", [author_side, trial_id])
            trial = next_blind_trial(db, LABELER)
            assert trial == next_blind_trial(db, LABELER)  # nothing is drawn as it is shown
            assert trial is not None and set(trial) == {"trial_id", "prompt", "left", "right", "shown_left"}
            assert trial["trial_id"] == trial_id
            row = rows.loc[trial_id]
            assert row.adapter_version == "v-new" and trial["prompt"] == row.prompt
            role = "author" if author_side == "left" else "model"
            texts = (row.author_text, row.model_text) if role == "author" else (row.model_text, row.author_text)
            assert (trial["left"], trial["right"]) == texts
            assert trial["shown_left"] == side_id(trial_id, role) and trial["shown_left"] not in ("author", "model")
            shown.add(role_on_left(db, trial))
        record_blind_pick(db, trial_id, LABELER, "left", trial["shown_left"])
    assert shown == {"author", "model"}
    assert next_blind_trial(db, LABELER) is None


def test_a_warehouse_from_before_the_stored_side_opens_and_serves_its_trials(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as old:  # the table as the first blind test shipped it
        old.execute(
            "CREATE TABLE blind_trials (trial_id VARCHAR PRIMARY KEY, adapter_version VARCHAR, prompt VARCHAR, "
            "author_text VARCHAR, model_text VARCHAR, created_at TIMESTAMP)"
        )
        old.execute(
            "INSERT INTO blind_trials VALUES ('t0', 'v', 'Prompt', '# Own\n\nown text', 'machine text', now()), "
            "('t3', 'v', 'Prompt', 'own text', 'machine text', now())"
        )
    db = Warehouse(path)
    assert drawn_author_side("t0") == "right" and drawn_author_side("t3") == "left"
    first = next_blind_trial(db, LABELER)
    assert (first["trial_id"], first["left"], first["right"]) == ("t0", "machine text", "# Own\n\nown text")
    record_blind_pick(db, "t0", LABELER, "right", first["shown_left"])
    second = next_blind_trial(db, LABELER)
    assert (second["trial_id"], second["left"], second["right"]) == ("t3", "own text", "machine text")
    record_blind_pick(db, "t3", LABELER, "right", second["shown_left"])
    reading = blind_results(db)
    assert (reading.picks, reading.trials, reading.share.value, reading.share.notes) == (2, 2, 0.5, 2)


@pytest.mark.parametrize(
    ("left", "side", "picked"),
    [
        ("author", "left", "author"),
        ("author", "right", "model"),
        ("model", "left", "model"),
        ("model", "right", "author"),
    ],
)
def test_a_pick_is_stored_as_whose_text_was_on_the_pressed_side(
    db: Warehouse, left: str, side: str, picked: str
) -> None:
    trial = blind_trial_id("v-new", TRIALS[1])
    assert record_blind_pick(db, trial, LABELER, side, side_id(trial, left)) == picked
    rows = labels(db)
    assert rows[["trial_id", "labeler", "picked", "shown_left"]].values.tolist() == [[trial, LABELER, picked, left]]


def test_a_second_pick_replaces_the_first_and_progress_counts_trials(db: Warehouse) -> None:
    first, second = (blind_trial_id("v-new", t) for t in TRIALS[:2])
    assert blind_progress(db, LABELER) == (0, 3)
    record_blind_pick(db, first, LABELER, "left", side_id(first, "author"))
    assert blind_progress(db, LABELER) == (1, 3)
    record_blind_pick(db, first, LABELER, "right", side_id(first, "author"))  # a changed mind
    assert labels(db)[["trial_id", "picked"]].values.tolist() == [[first, "model"]]
    assert blind_progress(db, LABELER) == (1, 3)
    record_blind_pick(db, second, "bob", "left", side_id(second, "model"))
    assert blind_progress(db, LABELER) == (1, 3) and blind_progress(db, "bob") == (1, 3)
    old = blind_trial_id("v-old", OLD_TRIALS[0])
    record_blind_pick(db, old, LABELER, "left", side_id(old, "model"))  # the older version's trials are not asked
    assert blind_progress(db, LABELER) == (1, 3) and len(labels(db)) == 3
    unanswered = {blind_trial_id("v-new", t) for t in TRIALS[1:]}
    assert next_blind_trial(db, LABELER)["trial_id"] in unanswered


def test_results_are_the_share_of_picks_that_took_the_models_text_resampling_notes(db: Warehouse) -> None:
    # Eight trials, two per note; ann takes the model's text for hers on both of note 0's and one of note 1's.
    trials = [BlindTrial(f"note-{i // 2}", f"Prompt {i}", f"Own passage {i}.", f"Generated {i}.") for i in range(8)]
    save_blind_trials(db, "v-eight", trials)
    for index, trial in enumerate(trials):
        pick(db, "v-eight", trial, "model" if index < 3 else "author")
    pick(db, "v-old", OLD_TRIALS[0], "author")
    reading = blind_results(db)
    assert reading == blind_results(db, "v-eight")  # the newest version's trials
    assert (reading.picks, reading.trials) == (8, 8)
    assert reading.share == Interval(0.375, 0.0, 0.75, notes=4, items=8)  # resampled by note: 4 clusters, not 8
    assert reading.text == (
        "readers took the model's text for yours in 0.375 [0.000, 0.750] of 8 picks over 8 trials from 4 notes; "
        "0.5 means they cannot tell"
    )
    old = blind_results(db, "v-old")
    assert (old.picks, old.trials, old.share.value, old.share.notes, old.share.decided) == (1, 1, 0.0, 1, False)
    assert old.text == (
        "readers took the model's text for yours in 0.000 [no interval: 1 note] of 1 pick over 1 trial from 1 note; "
        "0.5 means they cannot tell"
    )


def test_results_with_no_picks_say_there_are_no_readings_yet(db: Warehouse) -> None:
    for version in ("v-new", "v-missing"):
        reading = blind_results(db, version)
        assert (reading.picks, reading.trials, reading.share.notes) == (0, 0, 0) and math.isnan(reading.share.value)
        assert reading.text == (
            "no readings yet — run `fine-tune-dag annotate --blind` to see if readers can tell yours from the model's"
        )


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        ({"trial_id": "nope"}, KeyError, "no blind trial 'nope'"),
        ({"chosen_side": "up"}, ValueError, "side must be one of left, right, not 'up'"),
        ({"shown_left": "author"}, ValueError, "names neither text of trial"),
        ({"labeler": " "}, ValueError, "needs the name of who made it"),
    ],
)
def test_a_bad_pick_says_why_and_saves_nothing(db: Warehouse, change: dict[str, str], error: type, reason: str) -> None:
    trial = blind_trial_id("v-new", TRIALS[0])
    pick = {"trial_id": trial, "labeler": LABELER, "chosen_side": "left", "shown_left": side_id(trial, "author")}
    with pytest.raises(error, match=reason):
        record_blind_pick(db, **{**pick, **change})
    assert labels(db).empty


def client(db: Warehouse, labeler: str = LABELER) -> TestClient:
    app = annotation_app(db, labeler, mode="blind")
    return TestClient(app, base_url="http://127.0.0.1:8765")


def test_the_blind_api_serves_trials_and_saves_picks_without_naming_whose_text_is_whose(db: Warehouse) -> None:
    app = client(db)
    page, script = app.get("/"), app.get("/annotate.js")  # the script both pages share
    assert page.status_code == 200 and "Which of these two did the author write?" in page.text
    assert script.status_code == 200 and '<script src="annotate.js">' in page.text
    for element in ("prompt", "left", "right", "progress", "labeler", "done"):
        assert f'id="{element}"' in page.text
    code = page.text + script.text
    assert not [call for call in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write") if call in code]

    state, bodies, stored = app.get("/api/next").json(), [], []
    assert state["progress"] == {"done": 0, "total": 3} and state["labeler"] == LABELER
    while state["trial"] is not None:
        trial = state["trial"]
        author_side = trial_texts(db).loc[trial["trial_id"], "author_side"]
        assert role_on_left(db, trial) == ("author" if author_side == "left" else "model")  # the stored order
        stored.append("model" if role_on_left(db, trial) == "author" else "author")  # whose text is on the right
        pick = {"trial_id": trial["trial_id"], "side": "right", "shown_left": trial["shown_left"]}
        response = app.post("/api/choice", json=pick)
        assert response.status_code == 200, response.text
        bodies.append(response.text)
        state = response.json()
    assert state == {"trial": None, "progress": {"done": 3, "total": 3}, "labeler": LABELER}
    assert labels(db)["picked"].tolist() == stored
    assert not [body for body in bodies if "author" in body or "model" in body]


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"{}", {"Content-Type": "text/plain"}, "application/json"),
        (b"{not json", {"Content-Type": "application/json"}, "must be JSON: {trial_id, side, shown_left}"),
        (json.dumps({"side": "left"}).encode(), {"Content-Type": "application/json"}, "missing trial_id, shown_left"),
        (json.dumps({"trial_id": "x", "side": "left", "shown_left": "y"}).encode(), {}, "application/json"),
        (
            json.dumps({"trial_id": "nope", "side": "left", "shown_left": "y"}).encode(),
            {"Content-Type": "application/json"},
            "no blind trial 'nope'",
        ),
    ],
)
def test_a_bad_blind_choice_is_a_400_with_the_reason(
    db: Warehouse, body: bytes, headers: dict[str, str], reason: str
) -> None:
    response = client(db).post("/api/choice", content=body, headers=headers)
    assert response.status_code == 400 and reason in response.json()["error"]
    assert labels(db).empty


def test_other_websites_cannot_read_trials_and_an_unknown_mode_is_refused(db: Warehouse) -> None:
    rebound = client(db).get("/api/next", headers={"Host": "attacker.example:8765"})
    assert rebound.status_code == 400 and "Own passage" not in rebound.text
    with pytest.raises(ValueError, match="mode must be one of preference, blind, pairs, not 'blnd'"):
        annotation_app(db, LABELER, mode="blnd")


@contextmanager
def blind_page(db: Warehouse, labeler: str) -> Iterator[str]:
    """The blind page served on 127.0.0.1 from a thread of this test; yields its URL, stopped however the test ends."""
    with app_in_thread(annotation_app(db, labeler, mode="blind"), "the blind page") as url:
        yield url


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> None:
    try:
        WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition)
    except TimeoutException:
        pytest.fail(
            f"{what} not shown after {WAIT_SECONDS} s; page shows:\n{driver.find_element(By.TAG_NAME, 'body').text}"
        )


def test_picking_in_a_browser_saves_whose_text_was_clicked_and_ends_when_all_are_answered(db: Warehouse) -> None:
    require_chromium()
    texts = trial_texts(db)
    with blind_page(db, "tester") as url, chromium_driver() as driver:

        def text(element: str) -> str:
            return driver.find_element(By.ID, element).text

        def showing(done: int) -> Callable[[WebDriver], bool]:
            return lambda d: d.find_element(By.ID, "progress").text == f"{done} of 3"

        driver.get(url)
        wait_for(driver, showing(0), "progress 0 of 3")
        assert text("labeler") == "tester"
        expected = []
        for done, side in enumerate(("left", "right", "left")):
            shown = {"left": text("left"), "right": text("right")}
            row = texts[texts.prompt == text("prompt")].iloc[0]
            assert {shown["left"], shown["right"]} == {row.author_text, row.model_text}  # markup shown as text
            expected.append((row.name, "author" if shown[side] == row.author_text else "model"))
            driver.find_element(By.CSS_SELECTOR, f'button[data-side="{side}"]').click()
            wait_for(driver, showing(done + 1), f"progress {done + 1} of 3")
            saved = labels(db)
            assert list(zip(saved["trial_id"], saved["picked"])) == expected and set(saved["labeler"]) == {"tester"}
        assert {picked for _, picked in expected} == {"author", "model"}  # the stored sides vary
        assert driver.find_element(By.ID, "done").is_displayed()
        assert text("done").startswith("All trials answered")
        assert not driver.find_element(By.ID, "trial").is_displayed()
