"""The preference annotation page: its JSON API on a tmp warehouse, and `fine-tune-dag annotate` in a real browser."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import uvicorn
from selenium.common.exceptions import TimeoutException
from selenium.webdriver import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from starlette.testclient import TestClient

from fine_tune_dag import cli
from fine_tune_dag.apps.annotate.server import annotation_app
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag_tests.browser import chromium_driver, free_port, require_chromium, stop_group

COMPARISONS = 6
ORIGINS = ("champion@t=1.2-origin", "prompted_base-origin")  # distinctive: searched for in every response
LABELER = "ann"
STARTUP_SECONDS = 90
JSON = {"Content-Type": "application/json"}
WAIT_SECONDS = 20


def seed(db: Warehouse) -> pd.DataFrame:
    """Comparisons created a minute apart; answers carry markup that must reach the page as text."""
    start = datetime(2025, 1, 1)
    rows = pd.DataFrame(
        [
            {
                "candidate_id": f"cand-{i}",
                "prompt_id": f"prompt-{i}",
                "system": "You answer as the author.",
                "question": f"Question {i}: what did note {i} say?",
                "reference": f"Reference {i}.",
                "pairing": "champion_vs_prompted_base",
                "answer_a": f"Answer A{i} with <b>markup</b> & more.",
                "origin_a": ORIGINS[0],
                "answer_b": f"Answer B{i}, <i>plain</i> enough.",
                "origin_b": ORIGINS[1],
                "champion_version": "v-test",
                "created_at": start + timedelta(minutes=i),
            }
            for i in range(COMPARISONS)
        ]
    )
    db.insert_rows("preference_candidates", rows)
    return rows.set_index("candidate_id")


@pytest.fixture
def db(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    seed(warehouse)
    return warehouse


def client(db: Warehouse, labeler: str = LABELER, rng_seed: int = 0) -> TestClient:
    return TestClient(annotation_app(db, labeler, random.Random(rng_seed)), base_url="http://127.0.0.1:8765")


def labels(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM preference_labels ORDER BY labeled_at, label_id")


def answer(app: TestClient, state: dict[str, Any], side: str) -> dict[str, Any]:
    """Answer the comparison `state` shows; returns the state that comes back."""
    comparison = state["comparison"]
    response = app.post(
        "/api/choice",
        json={"candidate_id": comparison["candidate_id"], "side": side, "shown_left": comparison["shown_left"]},
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("side", "shown_left", "stored"),
    [
        ("left", "a", "a"),
        ("left", "b", "b"),
        ("right", "a", "b"),
        ("right", "b", "a"),
        ("tie", "b", "tie"),
        ("skip", "a", "skip"),
    ],
)
def test_a_choice_is_saved_at_once_as_the_answer_on_the_pressed_side(
    db: Warehouse, side: str, shown_left: str, stored: str
) -> None:
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    response = client(db).post("/api/choice", json={"candidate_id": "cand-0", "side": side, "shown_left": shown_left})
    assert response.status_code == 200, response.text
    rows = labels(db)
    columns = ["candidate_id", "labeler", "source", "choice", "shown_left"]
    assert rows[columns].values.tolist() == [["cand-0", LABELER, "human", stored, shown_left]]
    assert before <= rows["labeled_at"].iloc[0] <= datetime.now(timezone.utc).replace(tzinfo=None)
    assert response.json()["comparison"]["candidate_id"] == "cand-1"  # the next one comes back with the save


def choice_body(**fields: Any) -> bytes:
    return json.dumps({"candidate_id": "cand-0", "side": "left", "shown_left": "a", **fields}).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "must be JSON"),
        (b"\xc3\x28", "must be JSON"),  # not UTF-8
        (b"", "must be JSON"),
        (b'["cand-0", "left"]', "must be a JSON object"),
        (json.dumps({"candidate_id": "cand-0", "shown_left": "a"}).encode(), "missing side"),
        (json.dumps({"side": "left"}).encode(), "missing candidate_id, shown_left"),
        (choice_body(side="up"), "choice must be one of left, right, tie, skip, not 'up'"),
        (choice_body(shown_left="c"), "shown_left must be 'a' or 'b', not 'c'"),
        (choice_body(candidate_id="cand-99"), "no comparison 'cand-99'"),
        (choice_body(candidate_id=7), "candidate_id, side, shown_left must be strings"),
    ],
)
def test_a_bad_choice_is_a_400_with_the_reason_and_saves_nothing(db: Warehouse, body: bytes, reason: str) -> None:
    response = client(db).post("/api/choice", content=body, headers=JSON)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert labels(db).empty


def test_progress_counts_each_persons_answers_and_skips(db: Warehouse) -> None:
    app = client(db)
    state = app.get("/api/next").json()
    assert state["progress"] == {"done": 0, "total": COMPARISONS} and state["labeler"] == LABELER
    for done, side in enumerate(["left", "skip", "tie"], start=1):
        state = answer(app, state, side)
        assert state["progress"] == {"done": done, "total": COMPARISONS}
    assert client(db, labeler="bob").get("/api/next").json()["progress"] == {"done": 0, "total": COMPARISONS}


def test_a_restart_resumes_at_the_first_unanswered_comparison(db: Warehouse) -> None:
    app = client(db)
    state = app.get("/api/next").json()
    for side in ("left", "right"):
        state = answer(app, state, side)
    restarted = client(db, rng_seed=1).get("/api/next").json()
    assert restarted["comparison"]["candidate_id"] == "cand-2"
    assert restarted["progress"] == {"done": 2, "total": COMPARISONS}


def test_when_all_is_answered_there_is_no_comparison(db: Warehouse, tmp_path: Path) -> None:
    app = client(db)
    state = app.get("/api/next").json()
    while state["comparison"] is not None:
        state = answer(app, state, "skip")
    assert state == {"comparison": None, "progress": {"done": COMPARISONS, "total": COMPARISONS}, "labeler": LABELER}
    empty = client(Warehouse(tmp_path / "empty.duckdb")).get("/api/next").json()
    assert empty == {"comparison": None, "progress": {"done": 0, "total": 0}, "labeler": LABELER}


def test_the_left_answer_is_random_and_origins_never_leave_the_server(db: Warehouse) -> None:
    candidates = db.query("SELECT * FROM preference_candidates").set_index("candidate_id")
    app = client(db)
    bodies, shown = [app.get("/").text], set()
    for _ in range(20):
        response = app.get("/api/next")
        bodies.append(response.text)
        comparison = response.json()["comparison"]
        assert set(comparison) == {"candidate_id", "question", "left", "right", "shown_left"}
        row = candidates.loc[comparison["candidate_id"]]
        right = "b" if comparison["shown_left"] == "a" else "a"
        assert (comparison["left"], comparison["right"]) == (
            row[f"answer_{comparison['shown_left']}"],
            row[f"answer_{right}"],
        )
        shown.add(comparison["shown_left"])
    assert shown == {"a", "b"}

    state = app.get("/api/next").json()
    while state["comparison"] is not None:
        state = answer(app, state, "left")
        bodies.append(json.dumps(state))
    bodies.append(app.post("/api/choice", content=choice_body(candidate_id="cand-99"), headers=JSON).text)
    assert set(labels(db)["shown_left"]) == {"a", "b"}  # the seeded order put each answer on the left
    assert not [body for body in bodies for origin in ORIGINS if origin in body]


def test_the_page_has_its_elements_and_never_parses_answers_as_html(db: Warehouse) -> None:
    app = client(db)
    page, script = app.get("/"), app.get("/annotate.js")  # the script both pages share
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert '<script src="annotate.js">' in page.text and app.get("/annotate.css").status_code == 200
    for element in ("question", "left", "right", "progress", "labeler", "done"):
        assert f'id="{element}"' in page.text
    code = page.text + script.text
    assert not [call for call in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write") if call in code]


def test_other_websites_can_neither_save_choices_nor_read_answers(db: Warehouse) -> None:
    app = client(db)
    form = app.post("/api/choice", content=choice_body(), headers={"Content-Type": "text/plain"})  # a cross-site form
    assert form.status_code == 400 and "application/json" in form.json()["error"]
    rebound = app.get("/api/next", headers={"Host": "attacker.example:8765"})  # DNS rebinding
    assert rebound.status_code == 400 and "Answer" not in rebound.text
    assert labels(db).empty
    assert app.get("/api/next", headers={"Host": "localhost:8765"}).status_code == 200


def test_a_labeler_is_required(db: Warehouse) -> None:
    with pytest.raises(ValueError, match="who is labelling"):
        annotation_app(db, " ")


def test_the_command_serves_on_localhost_and_says_when_there_is_nothing_to_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    monkeypatch.setenv("USER", "env-user")
    assert cli.main(["--data-dir", str(tmp_path), "annotate", "--port", "9876"]) == 0
    out = capsys.readouterr().out
    assert "Annotating as env-user: http://127.0.0.1:9876  (left/right arrows" in out
    assert "preference_candidates must be materialized first" in out
    assert (served["host"], served["port"]) == ("127.0.0.1", 9876)
    assert TestClient(served["app"], base_url="http://127.0.0.1").get("/api/next").json()["labeler"] == "env-user"


@contextmanager
def annotate_command(data_dir: Path, port: int, log: Path, *options: str) -> Iterator[subprocess.Popen]:
    """The real `fine-tune-dag annotate` (with `options`, e.g. --pairs), stopped (by force if need be) however the
    test ends."""
    command = [sys.executable, "-m", "fine_tune_dag.cli", "--data-dir", str(data_dir), "annotate", *options]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--who", "tester"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_group(process)


def wait_for_server(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert process.poll() is None, f"annotate exited ({process.returncode}):\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"{url}/api/next", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, f"annotate not serving after {STARTUP_SECONDS} s:\n{log.read_text()}"
        time.sleep(0.5)


def text(driver: WebDriver, element: str) -> str:
    return driver.find_element(By.ID, element).text


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], object], what: str, log: Path) -> None:
    try:
        WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"{what} not shown after {WAIT_SECONDS} s; page shows:\n{body}\nannotate log:\n{log.read_text()}")


def test_annotating_in_a_browser_saves_each_key_and_resumes_after_a_reload(tmp_path: Path) -> None:
    require_chromium()
    db = Warehouse(tmp_path / "data" / "warehouse.duckdb")
    candidates = seed(db)
    questions = candidates["question"].tolist()
    port, log = free_port(), tmp_path / "annotate.log"
    url = f"http://127.0.0.1:{port}"
    shown: list[tuple[str, str]] = []  # (left, right) of each answered comparison, as displayed

    def showing(done: int) -> Callable[[WebDriver], bool]:
        return lambda d: text(d, "progress") == f"{done} of {COMPARISONS}"

    def press(*keys: str) -> None:
        """Press on the comparison shown, then wait for the next one (or the end)."""
        done = len(shown)
        assert text(driver, "question") == questions[done]
        shown.append((text(driver, "left"), text(driver, "right")))
        ActionChains(driver).send_keys(*keys).perform()
        wait_for(driver, showing(done + 1), f"progress {done + 1} of {COMPARISONS}", log)
        if done + 1 < COMPARISONS:
            assert text(driver, "question") == questions[done + 1]

    def check_saved(expected_sides: list[str]) -> None:
        """Every row is tester's, human, and the stored choice is the answer shown on the pressed side."""
        rows = labels(db)
        assert rows["candidate_id"].tolist() == candidates.index[: len(expected_sides)].tolist()
        assert set(rows["labeler"]) == {"tester"} and set(rows["source"]) == {"human"}
        for row, side, (left, right) in zip(rows.itertuples(), expected_sides, shown):
            answers = candidates.loc[row.candidate_id]
            assert answers[f"answer_{row.shown_left}"] == left  # shown_left records what was on the left
            if side in ("left", "right"):
                assert answers[f"answer_{row.choice}"] == (left if side == "left" else right)
            else:
                assert row.choice == side

    with annotate_command(tmp_path / "data", port, log) as process, chromium_driver() as driver:
        wait_for_server(process, url, log)
        assert f"Annotating as tester: {url}" in log.read_text()
        assert f"0 of {COMPARISONS} comparisons answered" in log.read_text()
        driver.get(url)
        wait_for(driver, showing(0), f"progress 0 of {COMPARISONS}", log)
        assert text(driver, "labeler") == "tester"

        sides = []
        for key, side in ((Keys.ARROW_LEFT, "left"), (Keys.ARROW_RIGHT, "right"), ("t", "tie")):
            press(key)
            sides.append(side)
            check_saved(sides)

        driver.refresh()
        wait_for(driver, showing(3), f"progress 3 of {COMPARISONS} after a reload", log)
        assert text(driver, "question") == questions[3]

        # A second key while the first choice is in flight (held back 0.5 s here) must not save twice.
        driver.execute_script(
            "const send = window.fetch;"
            "window.fetch = (...args) => new Promise((done) => setTimeout(done, 500)).then(() => send(...args));"
        )
        press("s", "s")
        for key in (Keys.ARROW_DOWN, Keys.ARROW_UP):
            press(key)
        check_saved([*sides, "skip", "tie", "skip"])
        assert driver.find_element(By.ID, "done").is_displayed()
        assert text(driver, "done").startswith("All comparisons answered")
        assert not driver.find_element(By.ID, "comparison").is_displayed()
