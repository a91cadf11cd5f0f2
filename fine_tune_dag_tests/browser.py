"""Browser-test helpers: Debian's headless Chromium driven by its own chromedriver, and `dagster dev` in a tmp home.

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver so selenium-manager never downloads a
browser; `make browser` installs both from Debian packages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from fine_tune_dag_tests.test_webserver import graphql

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
STARTUP_SECONDS = 180

# The machine's network is closed: without these Chromium waits on background connections that never answer.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)


def require_chromium() -> None:
    """Skip (rather than fail) where the Debian browser is absent; in CI `make test` installs it first."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: run `make browser` (apt packages chromium, chromium-driver)")


@contextmanager
def chromium_driver(page_load_seconds: float = 60) -> Iterator[WebDriver]:
    """A headless Chromium WebDriver with a throwaway profile, quit (and the profile removed) on exit."""
    require_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        try:
            driver.set_page_load_timeout(page_load_seconds)
            yield driver
        finally:
            driver.quit()


@dataclass
class DagsterUI:
    """A running `dagster dev`: where it listens, its home, and its log for failure messages."""

    port: int
    home: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else "(no log)"

    def graphql(self, query: str) -> dict:
        return graphql(self.port, query)


def stop_group(process: subprocess.Popen) -> None:
    """`dagster dev` starts a webserver, a daemon, code servers and runs: end its whole session, by force if need be."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children may outlive the leader
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def _wait_until(
    ui: DagsterUI, process: subprocess.Popen, ready: Callable[[], bool], what: str, deadline: float
) -> None:
    while True:
        assert process.poll() is None, f"dagster dev exited ({process.returncode}) before {what}:\n{ui.log_tail()}"
        try:
            if ready():
                return
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, f"no {what} after {STARTUP_SECONDS} s:\n{ui.log_tail()}"
        time.sleep(1)


@contextmanager
def dagster_dev(workspace: Path, home: Path, port: int, env: dict[str, str] | None = None) -> Iterator[DagsterUI]:
    """`dagster dev` (webserver + daemon, as `make ui` runs it) with the repo's dagster.yaml in `home`.

    Yields once the UI answers and the code location has loaded its assets; always stops every process it started.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    ui = DagsterUI(port=port, home=home, log=home / "dagster-dev.log")
    dagster = Path(sys.executable).parent / "dagster"
    with ui.log.open("w") as log:
        process = subprocess.Popen(
            [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
            cwd=workspace.parent,
            env={**os.environ, **(env or {}), "DAGSTER_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS

        def serving() -> bool:
            with urllib.request.urlopen(f"{ui.url}/server_info", timeout=5) as response:
                return response.status == 200

        def loaded() -> bool:
            return bool((ui.graphql("{ assetNodes { id } }").get("data") or {}).get("assetNodes"))

        _wait_until(ui, process, serving, "webserver", deadline)
        _wait_until(ui, process, loaded, "loaded code location", deadline)
        yield ui
    finally:
        stop_group(process)
