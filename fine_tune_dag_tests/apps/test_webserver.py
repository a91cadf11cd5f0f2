"""The web UI serves the project's graph: the webserver `make ui` runs, on 127.0.0.1, started here."""

import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fine_tune_dag_tests.browser import REPO, STARTUP_SECONDS, free_port, graphql, make_ui_command, stop_group

EXPECTED = {
    "raw_notes",
    "passages",
    "qa_pairs",
    "dataset_splits",
    "retrieval_index",
    "base_model",
    "lora_adapter",
    "eval_report",
    "champion_adapter",
    "edge_cases",
    "sweep_adapters",
    "sweep_leaderboard",
    "crossval_folds",
    "crossval_verdict",
    "request_log_pairs",
    "preference_candidates",
    "preference_pairs",
    "dpo_adapter",
    "prompt_completion_pairs",
    "pair_labels",  # external: people's decisions on pairs, recorded by pair_labels_sensor
}


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
    assert groups["dpo_adapter"] == "preferences" and groups["retrieval_index"] == "retrieval"


def other_addresses() -> list[str]:
    """This machine's addresses but loopback and link-local ones (`hostname -I`, else the host name's)."""
    try:
        listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    addresses = {ipaddress.ip_address(a) for a in listed}
    return sorted(str(a) for a in addresses if not (a.is_loopback or a.is_link_local))


def accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=5):
            return True
    except OSError:
        return False


@contextmanager
def listening_everywhere(address: str) -> Iterator[int]:
    """A socket on every address of `address`'s family: proof that a connection to `address` can arrive at all."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as server:
        server.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        server.listen()
        yield server.getsockname()[1]


def test_make_ui_listens_on_loopback_only(tmp_path):
    """`make ui`'s own command line, started on a free port: it answers on 127.0.0.1 and on no other address."""
    others = other_addresses()
    if not others:
        pytest.skip("this machine has no address but loopback, so there is no other address to probe")
    port = free_port()
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FINE_TUNE_DAG_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "dagster-dev.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            make_ui_command(port), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not accepts("127.0.0.1", port):
            assert process.poll() is None, f"make ui's command exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"nothing on 127.0.0.1:{port}:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=30) as response:
            assert response.status == 200  # the Dagster webserver, not some other listener
        for address in others:
            with listening_everywhere(address) as control:
                assert accepts(address, control), f"cannot reach {address} from here at all: nothing to conclude"
            assert not accepts(address, port), f"the UI answers on {address}:{port}, not only on 127.0.0.1"
    finally:
        stop_group(process)
