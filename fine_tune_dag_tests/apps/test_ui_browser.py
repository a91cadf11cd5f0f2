"""The Dagster UI as a person uses it: a real headless Chromium on `dagster dev` (webserver + daemon).

Both tests share one `dagster dev`: starting it (webserver, daemon, code server) takes 20-30 s on 2 cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from dagster_graphql import DagsterGraphQLClient
from fine_tune_dag_testkit.models import build_tiny_model
from fine_tune_dag_testkit.notes import write_sample_notes
from selenium.common.exceptions import TimeoutException
from selenium.webdriver import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from fine_tune_dag_tests import browser
from fine_tune_dag_tests.apps.test_webserver import EXPECTED
from fine_tune_dag_tests.browser import (
    REPO,
    SKIP_BROWSER_TESTS,
    DagsterUI,
    chromium_driver,
    dagster_dev,
    free_port,
    require_chromium,
)

LOCATION = "fine_tune_dag"
NOTES = 3
WAIT_SECONDS = 60
RUN_SECONDS = 180
T = TypeVar("T")

# in_process: each run is one process; the default multiprocess executor re-imports torch for every step.
DEFINITIONS = """\
import os
from pathlib import Path

from fine_tune_dag_testkit.scripted import scripted_definitions

defs = scripted_definitions(
    Path(os.environ["FINE_TUNE_DAG_NOTES_DIR"]),
    Path(os.environ["FINE_TUNE_DAG_DATA_DIR"]),
    Path({model!r}),
    sweep_file={sweep!r},
    executor="in_process",
)
"""


def test_a_missing_browser_fails_the_tests_unless_skipped_on_purpose(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.delenv(SKIP_BROWSER_TESTS, raising=False)
    with pytest.raises(
        pytest.fail.Exception, match=f"chromium missing: run `sudo make browser`.*{SKIP_BROWSER_TESTS}=1"
    ):
        require_chromium()
    monkeypatch.setenv(SKIP_BROWSER_TESTS, "0")  # only "1" opts out
    with pytest.raises(pytest.fail.Exception):
        require_chromium()
    monkeypatch.setenv(SKIP_BROWSER_TESTS, "1")
    with pytest.raises(pytest.skip.Exception, match="skipped on purpose"):
        require_chromium()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    """`dagster dev` over three sample notes, the scripted LLM and a tiny model, all in a tmp folder."""
    require_chromium()  # before paying for the server
    root = tmp_path_factory.mktemp("ui")
    model = build_tiny_model(root / "tiny-model")
    write_sample_notes(root / "notes", NOTES)
    (root / "ui_definitions.py").write_text(DEFINITIONS.format(model=str(model), sweep=str(REPO / "sweeps.yaml")))
    workspace = root / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_file:\n"
        "      relative_path: ui_definitions.py\n"
        f"      working_directory: {root}\n"
        f"      location_name: {LOCATION}\n"
    )
    env = {"FINE_TUNE_DAG_NOTES_DIR": str(root / "notes"), "FINE_TUNE_DAG_DATA_DIR": str(root / "data")}
    with dagster_dev(workspace, root / "dagster_home", free_port(), env) as server:
        yield server


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    with chromium_driver() as browser:
        yield browser


def visible_lines(driver: WebDriver) -> set[str]:
    """The page's rendered text, line by line (asset nodes and tags each render as their own line)."""
    return {line.strip() for line in driver.find_element(By.TAG_NAME, "body").text.splitlines()}


def shows(label: str, name: str) -> bool:
    """The zoomed-out graph middle-truncates long names ("prompt_comp…_pairs")."""
    head, ellipsis, tail = label.partition("…")
    return label == name or (bool(ellipsis) and name.startswith(head) and name.endswith(tail))


def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], T], what: str, ui: DagsterUI, seconds: float = WAIT_SECONDS
) -> T:
    """WebDriverWait, failing with what the page and `dagster dev` showed instead."""
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.5).until(condition)
    except TimeoutException:
        pytest.fail(
            f"{what} not shown at {driver.current_url} after {seconds} s; page shows {sorted(visible_lines(driver))}\n"
            f"dagster dev log:\n{ui.log_tail()}"
        )


def dismiss_community_dialog(driver: WebDriver, ui: DagsterUI) -> None:
    """A fresh DAGSTER_HOME greets the first visitor with a newsletter dialog that covers the page."""
    if not ui.graphql("{ shouldShowNux }")["data"]["shouldShowNux"]:
        return
    skip = (By.XPATH, "//button[normalize-space()='Skip']")
    wait_for(driver, lambda d: d.find_elements(*skip), "the community dialog", ui)[0].click()
    wait_for(driver, lambda d: not d.find_elements(*skip), "the page without the community dialog", ui)


def asset_groups(ui: DagsterUI) -> dict[str, set[str]]:
    """Asset names by group, as the server reports them: what the browser should find on each group's page."""
    groups: dict[str, set[str]] = {}
    for node in ui.graphql("{ assetNodes { assetKey { path } groupName } }")["data"]["assetNodes"]:
        groups.setdefault(node["groupName"], set()).add(node["assetKey"]["path"][-1])
    return groups


def test_asset_graph_shows_every_asset(ui: DagsterUI, driver: WebDriver, tmp_path: Path) -> None:
    groups = asset_groups(ui)
    driver.get(f"{ui.url}/asset-groups")  # "Lineage" in the sidebar: the global graph, one box per group
    dismiss_community_dialog(driver, ui)
    wait_for(driver, lambda d: set(groups) <= visible_lines(d), f"groups {sorted(groups)}", ui)

    # The global graph starts with its groups collapsed; a right-click on the background opens its menu.
    graph = driver.find_element(By.XPATH, "//div[contains(@class, 'SVGViewport_zoomSliderContainer')]/..")
    corner = (30 - graph.size["width"] // 2, 120 - graph.size["height"] // 2)  # below the toolbar, left of the groups
    ActionChains(driver).move_to_element_with_offset(graph, *corner).context_click().perform()
    expand = (By.XPATH, "//*[@role='menuitem'][contains(., 'Expand all groups')]")
    wait_for(driver, lambda d: d.find_elements(*expand), "the graph's context menu", ui)[0].click()
    wait_for(
        driver,
        lambda d: all(any(shows(line, name) for line in visible_lines(d)) for name in EXPECTED),
        f"every asset node of {sorted(EXPECTED)} in the global graph",
        ui,
    )
    screenshot = tmp_path / "ui-asset-graph.png"
    driver.save_screenshot(str(screenshot))
    print(f"asset graph screenshot: {screenshot}")

    # Each group's own graph is roomier: its nodes carry their full names.
    shown: set[str] = set()
    for group, names in sorted(groups.items()):
        driver.get(f"{ui.url}/locations/{LOCATION}/asset-groups/{group}")
        wait_for(
            driver, lambda d, names=names: names <= visible_lines(d), f"group {group}'s assets {sorted(names)}", ui
        )
        shown |= visible_lines(driver) & EXPECTED
    assert shown == EXPECTED


def test_materialization_launched_over_graphql_succeeds_in_ui(ui: DagsterUI, driver: WebDriver, tmp_path: Path) -> None:
    # The notes sensor registers one partition per settled note (and queues its own runs for them).
    query = '{ assetNodeOrError(assetKey: {path: ["raw_notes"]}) { ... on AssetNode { partitionKeys } } }'
    deadline = time.monotonic() + RUN_SECONDS
    while len(keys := ui.graphql(query)["data"]["assetNodeOrError"]["partitionKeys"]) < NOTES:
        assert time.monotonic() < deadline, f"the notes sensor added partitions {keys} only:\n{ui.log_tail()}"
        time.sleep(1)

    partition = min(keys)
    client = DagsterGraphQLClient("127.0.0.1", port_number=ui.port)
    run_id = client.submit_job_execution(
        "notes_job",
        asset_selection=["raw_notes"],
        # Priority puts this run ahead of the sensor's in the queue, so the wait stays short on 2 cores.
        tags={"dagster/partition": partition, "dagster/priority": "10"},
    )
    while (status := client.get_run_status(run_id).value) != "SUCCESS":
        assert status not in {"FAILURE", "CANCELED"}, f"run {run_id} ended {status}:\n{ui.log_tail()}"
        assert time.monotonic() < deadline, f"run {run_id} still {status} after {RUN_SECONDS} s:\n{ui.log_tail()}"
        time.sleep(1)

    driver.get(f"{ui.url}/runs/{run_id}")
    dismiss_community_dialog(driver, ui)
    expected = {"Success", f"partition: {partition}", "RUN_SUCCESS"}  # status tag, partition tag, event log
    wait_for(driver, lambda d: expected <= visible_lines(d), f"run {run_id} with {sorted(expected)}", ui)
    screenshot = tmp_path / "ui-run.png"
    driver.save_screenshot(str(screenshot))
    print(f"run page screenshot: {screenshot}")
