"""Browser-test helpers: Debian's headless Chromium driven by its own chromedriver, and `dagster dev` in a tmp home.

Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver so selenium-manager never downloads a
browser; `make browser` installs both from Debian packages. Where they are missing the browser tests fail,
unless FINE_TUNE_DAG_SKIP_BROWSER_TESTS=1 opts out of them on purpose (`make browser` honours it too).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
STARTUP_SECONDS = 180
SKIP_BROWSER_TESTS = "FINE_TUNE_DAG_SKIP_BROWSER_TESTS"

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
    """Fail where the Debian browser is absent: a silent skip would let `make test` pass without these tests.

    FINE_TUNE_DAG_SKIP_BROWSER_TESTS=1 is the one way to skip them, on purpose.
    """
    if os.environ.get(SKIP_BROWSER_TESTS) == "1":
        pytest.skip(f"{SKIP_BROWSER_TESTS}=1: browser tests skipped on purpose")
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run `sudo make browser` (apt packages chromium, chromium-driver), "
            f"or set {SKIP_BROWSER_TESTS}=1 to skip the browser tests on purpose",
            pytrace=False,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_in_thread(app: Any, what: str, wait_seconds: float = 60) -> Iterator[str]:
    """An ASGI app served by uvicorn on 127.0.0.1 from a thread of this test; yields its URL, stopped however
    the test ends."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + wait_seconds
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=wait_seconds)


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def make_ui_command(port: int, workspace: Path | None = None) -> list[str]:
    """The `dagster dev` command line `make ui` runs, on `port` (and `workspace`) instead of its fixed ones.

    Read from `make -n ui`, so the tests start what people start, host flags included; only the
    executable is this environment's `dagster`, so the tests run wherever pytest runs.
    """
    recipe = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    argv = shlex.split(next(line for line in recipe.splitlines() if "dagster dev" in line))
    assert Path(argv[0]).name == "dagster" and argv[1] == "dev" and "-p" in argv, argv
    replaced = {"-p": str(port), **({"-w": str(workspace)} if workspace else {})}
    options = [replaced.get(flag, value) for flag, value in zip(argv[1:], argv[2:])]
    return [str(Path(sys.executable).parent / "dagster"), "dev", *options]


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
    """`dagster dev` (webserver + daemon), as `make ui` runs it, with the repo's dagster.yaml in `home`.

    Yields once the UI answers and the code location has loaded its assets; always stops every process it started.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    ui = DagsterUI(port=port, home=home, log=home / "dagster-dev.log")
    with ui.log.open("w") as log:
        process = subprocess.Popen(
            make_ui_command(port, workspace),
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
