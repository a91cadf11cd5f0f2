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
