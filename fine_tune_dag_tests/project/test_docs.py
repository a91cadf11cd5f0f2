"""The documents quote the benchmarks as recorded: figures in README.md come from bench/RESULTS.md."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def recorded_rows(benchmark: str) -> list[str]:
    results = (REPO / "bench" / "RESULTS.md").read_text()
    table = results.split("```")[1].strip().splitlines()
    return [line for line in table[2:] if line.split()[0] == benchmark]


def quoted_rows(benchmark: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    begin, end = f"<!-- {benchmark} rows from bench/RESULTS.md -->", f"<!-- end of {benchmark} rows -->"
    block = readme[readme.index(begin) + len(begin) : readme.index(end)]
    return [line for line in block.splitlines() if line and line.split()[0] == benchmark]


@pytest.mark.parametrize("benchmark", ["efficacy", "generation", "demo"])
def test_the_readme_quotes_the_recorded_benchmark_rows(benchmark):
    assert quoted_rows(benchmark) == recorded_rows(benchmark) != []


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
