"""The web UI serves the project's graph: the webserver `make ui` runs, on 127.0.0.1, started here."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "raw_notes",
    "passages",
    "qa_pairs",
    "dataset_splits",
    "base_model",
    "lora_adapter",
    "eval_report",
    "champion_adapter",
    "edge_cases",
    "sweep_adapters",
    "sweep_leaderboard",
    "request_log_pairs",
    "preference_candidates",
    "preference_pairs",
    "dpo_adapter",
    "prompt_completion_pairs",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def webserver(tmp_path):
    port = free_port()
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FINE_TUNE_DAG_DATA_DIR": str(tmp_path / "data")}
    webserver_bin = Path(sys.executable).parent / "dagster-webserver"
    process = subprocess.Popen(
        [str(webserver_bin), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert process.poll() is None, "webserver exited"
                time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_ui_shows_every_asset_with_its_group(webserver):
    deadline = time.monotonic() + 60
    while True:
        data = graphql(webserver, "{ assetNodes { assetKey { path } groupName } }")
        nodes = data.get("data", {}).get("assetNodes") or []
        if nodes or time.monotonic() > deadline:
            break
        time.sleep(1)  # the code location is still loading
    groups = {node["assetKey"]["path"][-1]: node["groupName"] for node in nodes}
    assert set(groups) == EXPECTED
    assert groups["raw_notes"] == "ingest" and groups["qa_pairs"] == "dataset"
    assert groups["lora_adapter"] == "training" and groups["eval_report"] == "evaluation"
    assert groups["dpo_adapter"] == "preferences"


def test_make_ui_listens_on_loopback_only():
    recipe = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    command = next(line for line in recipe.splitlines() if "dagster dev" in line)
    assert "-h 127.0.0.1" in command and "0.0.0.0" not in recipe
