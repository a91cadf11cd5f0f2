"""A command line that starts at once: each command imports what it uses, so `--help` and the commands that only
read the warehouse (report, requests, rejected, lineage, estimate, privacy) load neither torch nor transformers, nor peft
or Dagster. Each case runs in a fresh interpreter, as a user's terminal would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "peft", "dagster")

# Runs the command line in this interpreter, then prints which of HEAVY it imported as the last line.
PROBE = f"""
import json, sys
from fine_tune_dag.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # --help leaves through argparse
    code = stop.code
loaded = sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r}))
print("\\n" + json.dumps({{"code": code, "loaded": loaded}}))
"""


def hermetic_environment() -> dict[str, str]:
    """This machine's environment without the project's settings: the DuckDB file, the local LLM."""
    return {name: value for name, value in os.environ.items() if not name.startswith("FINE_TUNE_DAG_")}


def run_probe(args: list[str], cwd: Path) -> tuple[str, int, list[str]]:
    """The command's output, its exit status, and the heavy libraries it imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=hermetic_environment(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    output, _, last = done.stdout.rstrip().rpartition("\n")
    probe = json.loads(last)
    return output, probe["code"], probe["loaded"]


@pytest.fixture
def folders(tmp_path: Path) -> list[str]:
    """One note to estimate, an empty data folder."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "workshop.md").write_text(
        "# The workshop\n\n" + "The bench holds the vice, and the chisels hang above it. " * 20, encoding="utf-8"
    )
    return ["--notes-dir", str(notes), "--data-dir", str(tmp_path / "data")]


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["serve", "--help"]])
def test_help_imports_no_model_library(args: list[str], tmp_path: Path) -> None:
    output, code, loaded = run_probe(args, tmp_path)
    assert code == 0
    assert output.startswith("usage: fine-tune-dag")
    assert loaded == []


@pytest.mark.parametrize(
    ("command", "status", "says"),
    [
        ("report", 1, "no evaluation report yet"),
        ("requests", 0, "0 requests: 0 calls"),
        ("rejected", 0, "no rejected notes"),
        ("lineage", 0, "no adapter trained yet"),
        ("estimate", 0, "1 notes to synthesize with local model"),
        ("privacy", 0, "no note scanned yet"),
    ],
)
def test_warehouse_commands_import_no_model_library(
    command: str, status: int, says: str, folders: list[str], tmp_path: Path
) -> None:
    output, code, loaded = run_probe([*folders, command], tmp_path)
    assert (code, says in output) == (status, True), output
    assert loaded == []  # not even Dagster: these read the warehouse alone


def test_help_answers_at_once(tmp_path: Path) -> None:
    """The target itself: under 1 s (the old start-up imported every library first: 5-15 s on two cores; the
    benchmark's median is in bench/RESULTS.md's memory rows)."""
    command = [sys.executable, "-m", "fine_tune_dag.cli", "--help"]
    seconds = []
    for _ in range(3):  # the best of three: a busy machine slows one run, not all
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        seconds.append(time.perf_counter() - started)
        assert done.returncode == 0 and done.stdout.startswith("usage: fine-tune-dag"), done.stderr
    assert min(seconds) < 1.0, seconds
