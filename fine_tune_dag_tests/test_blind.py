"""The blind test (which of two texts did the author write?): its store, its JSON API, and its page in Chromium."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from starlette.testclient import TestClient

from fine_tune_dag.annotate import annotation_app
from fine_tune_dag.core.modeling.statistics import Interval
from fine_tune_dag.core.store.blind import (
    blind_progress,
    blind_results,
    blind_trial_id,
    next_blind_trial,
    record_blind_pick,
    save_blind_trials,
    side_id,
)
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag_tests.browser import app_in_thread, chromium_driver, require_chromium

# Texts avoid the words "author" and "model", so a response that names a text's role is caught by a search.
TRIALS = [
    (f"Prompt {i}: the hives in week {i}", f"Own passage {i}: checked <b>hive</b> {i}, calm.", f"Generated {i}: bees.")
    for i in range(3)
]
OLD_TRIALS = [("Prompt old", "Own old passage.", "Generated old text.")]
LABELER = "ann"
WAIT_SECONDS = 20


@pytest.fixture
def db(tmp_path: Path) -> Warehouse:
    """Trials of an older adapter version, then three of the newest."""
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    assert save_blind_trials(warehouse, "v-old", OLD_TRIALS) == 1
    assert save_blind_trials(warehouse, "v-new", TRIALS) == 3
    return warehouse


def labels(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM blind_labels ORDER BY labeled_at, label_id")


def trial_texts(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM blind_trials").set_index("trial_id")


def role_on_left(db: Warehouse, trial: dict[str, str]) -> str:
    """Whose text the page was given on the left, read from the warehouse as the page cannot."""
    row = trial_texts(db).loc[trial["trial_id"]]
    return "author" if trial["left"] == row.author_text else "model"


def test_saving_the_same_trials_again_adds_nothing(db: Warehouse) -> None:
    before = trial_texts(db)
    assert save_blind_trials(db, "v-new", [*TRIALS, TRIALS[0]]) == 0
    assert save_blind_trials(db, "v-new", [TRIALS[0], ("Prompt 9", "Own 9.", "Generated 9.")]) == 1
    after = trial_texts(db)
    assert len(after) == 5
    pd.testing.assert_frame_equal(after.loc[before.index], before)  # saved rows keep their creation time
    assert blind_trial_id("v-new", *TRIALS[0]) in before.index
    assert blind_trial_id("v-other", *TRIALS[0]) != blind_trial_id("v-new", *TRIALS[0])
    assert save_blind_trials(db, "v-new", []) == 0


def test_the_next_trial_is_of_the_newest_version_in_a_random_order_with_an_opaque_side(db: Warehouse) -> None:
    rng, rows, shown = random.Random(0), trial_texts(db), set()
    for _ in range(20):
        trial = next_blind_trial(db, LABELER, rng)
        assert trial is not None and set(trial) == {"trial_id", "prompt", "left", "right", "shown_left"}
        row = rows.loc[trial["trial_id"]]
        assert row.adapter_version == "v-new" and trial["prompt"] == row.prompt
        role = role_on_left(db, trial)
        other = "model" if role == "author" else "author"
        assert (trial["left"], trial["right"]) == (row[f"{role}_text"], row[f"{other}_text"])
        assert trial["shown_left"] == side_id(trial["trial_id"], role) and trial["shown_left"] not in (
            "author",
            "model",
        )
        shown.add(role)
    assert shown == {"author", "model"}
    assert next_blind_trial(db, LABELER, rng)["trial_id"] == sorted(rows.index[rows.adapter_version == "v-new"])[0]


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
    trial = blind_trial_id("v-new", *TRIALS[1])
    assert record_blind_pick(db, trial, LABELER, side, side_id(trial, left)) == picked
    rows = labels(db)
    assert rows[["trial_id", "labeler", "picked", "shown_left"]].values.tolist() == [[trial, LABELER, picked, left]]


def test_a_second_pick_replaces_the_first_and_progress_counts_trials(db: Warehouse) -> None:
    first, second = (blind_trial_id("v-new", *t) for t in TRIALS[:2])
    assert blind_progress(db, LABELER) == (0, 3)
    record_blind_pick(db, first, LABELER, "left", side_id(first, "author"))
    assert blind_progress(db, LABELER) == (1, 3)
    record_blind_pick(db, first, LABELER, "right", side_id(first, "author"))  # a changed mind
    assert labels(db)[["trial_id", "picked"]].values.tolist() == [[first, "model"]]
    assert blind_progress(db, LABELER) == (1, 3)
    record_blind_pick(db, second, "bob", "left", side_id(second, "model"))
    assert blind_progress(db, LABELER) == (1, 3) and blind_progress(db, "bob") == (1, 3)
    old = blind_trial_id("v-old", *OLD_TRIALS[0])
    record_blind_pick(db, old, LABELER, "left", side_id(old, "model"))  # the older version's trials are not asked
    assert blind_progress(db, LABELER) == (1, 3) and len(labels(db)) == 3
    unanswered = {blind_trial_id("v-new", *t) for t in TRIALS[1:]}
    assert next_blind_trial(db, LABELER, random.Random(0))["trial_id"] in unanswered


def test_results_are_the_share_of_picks_that_took_the_models_text_for_the_authors(db: Warehouse) -> None:
    # On the newest version: ann picks the model once in three, bob once in one; on the old one, ann the author.
    picks = [(0, LABELER, "author"), (1, LABELER, "model"), (2, LABELER, "author"), (0, "bob", "model")]
    for index, labeler, whose in picks:
        trial = blind_trial_id("v-new", *TRIALS[index])
        record_blind_pick(db, trial, labeler, "left", side_id(trial, whose))
    old = blind_trial_id("v-old", *OLD_TRIALS[0])
    record_blind_pick(db, old, LABELER, "right", side_id(old, "model"))
    assert blind_results(db) == blind_results(db, "v-new") == (4, Interval(0.5, 0.0, 1.0, 3, 4))
    picks, share = blind_results(db, "v-old")
    assert (picks, share.value, share.notes, share.decided) == (1, 0.0, 1, False)  # one trial: no interval
    count, share = blind_results(db, "v-missing")
    assert count == 0 and math.isnan(share.value)


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
    trial = blind_trial_id("v-new", *TRIALS[0])
    pick = {"trial_id": trial, "labeler": LABELER, "chosen_side": "left", "shown_left": side_id(trial, "author")}
    with pytest.raises(error, match=reason):
        record_blind_pick(db, **{**pick, **change})
    assert labels(db).empty


def client(db: Warehouse, labeler: str = LABELER) -> TestClient:
    app = annotation_app(db, labeler, random.Random(0), mode="blind")
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
    with pytest.raises(ValueError, match="mode must be one of preference, blind, not 'blnd'"):
        annotation_app(db, LABELER, mode="blnd")


@contextmanager
def blind_page(db: Warehouse, labeler: str) -> Iterator[str]:
    """The blind page served on 127.0.0.1 from a thread of this test; yields its URL, stopped however the test ends."""
    with app_in_thread(annotation_app(db, labeler, random.Random(0), mode="blind"), "the blind page") as url:
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
        assert {picked for _, picked in expected} == {"author", "model"}  # the seeded order varies the left side
        assert driver.find_element(By.ID, "done").is_displayed()
        assert text("done").startswith("All trials answered")
        assert not driver.find_element(By.ID, "trial").is_displayed()
