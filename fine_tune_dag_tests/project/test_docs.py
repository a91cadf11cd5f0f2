"""The documents quote the benchmarks as recorded: figures in README.md come from bench/RESULTS.md."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from run_all import DOCUMENTS, QUOTE, quoted_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def recorded_rows(benchmark: str) -> list[str]:
    results = (REPO / "bench" / "RESULTS.md").read_text()
    table = results.split("```")[1].strip().splitlines()
    return [line for line in table[2:] if line.split()[0] == benchmark]


def quoted_blocks() -> list[tuple[str, str, str | None, list[str]]]:
    """(document, benchmark, selector, rows) of every block of rows README.md and RELIABILITY.md quote."""
    found = []
    for document in DOCUMENTS:
        for match in QUOTE.finditer((REPO / document).read_text()):
            rows = [line for line in match.group(0).splitlines() if line and line.split()[0] == match.group(1)]
            found.append((document, match.group(1), match.group(2), rows))
    return found


def test_the_documents_quote_the_benchmarks():
    assert {name for _, name, _, _ in quoted_blocks()} >= {"efficacy", "generation", "demo"}


@pytest.mark.parametrize("document, benchmark, selector, rows", quoted_blocks(), ids=lambda v: str(v)[:40])
def test_every_quoted_block_is_the_recorded_rows(document, benchmark, selector, rows):
    assert rows == quoted_rows(recorded_rows(benchmark), selector) != []


def map_entries() -> list[str]:
    """The paths README's newcomer map names, from the tree's indentation (two spaces a level)."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("### Where things live") :].split("```")[1]
    stack: list[tuple[int, str]] = []
    paths = []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        name = line.strip().split(" ")[0] if line.strip() else ""
        if not name or indent > 20 or not (name.endswith("/") or name.endswith(".py")):
            continue
        stack = [(level, part) for level, part in stack if level < indent]
        path = "".join(part for _, part in stack) + name
        paths.append(path)
        if name.endswith("/"):
            stack.append((indent, name))
    return paths


def test_every_folder_and_module_the_architecture_map_names_exists():
    entries = map_entries()
    assert "fine_tune_dag/core/evaluation/" in entries and "fine_tune_dag/runner.py" in entries
    assert [path for path in entries if not (REPO / path).exists()] == []


def test_the_architecture_map_names_every_core_stage():
    stages = {p.name for p in (REPO / "fine_tune_dag" / "core").iterdir() if (p / "__init__.py").is_file()}
    named = {path.split("/")[2] for path in map_entries() if path.startswith("fine_tune_dag/core/") and path.count("/") == 3}
    assert named == stages
