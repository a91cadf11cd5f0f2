"""The documents quote the benchmarks as recorded: figures in README.md and RELIABILITY.md come from bench/RESULTS.md."""

import re
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


NUMBER = r"\d[\d,]*(?:\.\d+)?"
# A measured-looking figure: a number and a unit of time, size, speed or share (× and % written against it) ...
FIGURE = re.compile(
    rf"(?<![\w.,/-]){NUMBER}(?:[×%]|\s(?:ms|s|seconds?|min|minutes?|hours?|tok/s|tokens/s|KiB|MiB|GiB|KB|MB|GB))(?![\w/])"
)
# ... or a decimal in a table's cell, where the unit sits in the header
TABLE_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
# Figures in the documents' prose that are settings, limits, targets or test thresholds, not measurements.
NOT_MEASURED = {
    "2.5 GB": "the memory budget's floor (MEMORY_BUDGET_FLOOR_GB) and the demo's memory target",
    "8 GB": "the laptop the budget's floor is sized for",
    "20.0 GiB": "an example of the budget's reason as the metadata writes it",
    "3.0 GiB": "an example of the budget's reason as the metadata writes it",
    "30%": "the tolerance of test_the_estimate_of_a_training_step_matches_what_autograd_keeps",
    "64 MiB": "the chunk held-out logits are scored in, a setting",
    "95%": "the level of every bootstrap interval",
    "1 s": "the --help start-up target",
    "10 s": "the sensor tick's budget, a target",
    "15 s": "the automation evaluation's interval, a setting",
    "120 s": "the warehouse lock's default timeout, a setting",
    "256 MiB": "the size above which a note is refused unread, a limit",
    "50 MB": "the size of the oversized test note, a test input",
    "20 MB": "trafilatura's download limit for a web page",
}


def prose(text: str) -> str:
    """A document without its quoted blocks, code blocks and inline code: what is written by hand."""
    text = QUOTE.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def figures(text: str) -> list[str]:
    """The measured-looking figures a document's prose states, as written (line breaks as spaces)."""
    written = prose(text)
    in_tables = [
        m.group(0) for line in written.splitlines() if line.startswith("|") for m in TABLE_DECIMAL.finditer(line)
    ]
    return [" ".join(m.group(0).split()) for m in FIGURE.finditer(written)] + in_tables


def recorded_numbers() -> set[str]:
    """Every number bench/RESULTS.md's table holds, thousands separators dropped."""
    table = (REPO / "bench" / "RESULTS.md").read_text().split("```")[1]
    return set(re.findall(r"\d+(?:\.\d+)?", table.replace(",", "")))


def unrecorded(found: list[str], numbers: set[str]) -> list[str]:
    """The figures that are neither a number of the recorded table nor a listed setting or target."""
    return [f for f in found if f not in NOT_MEASURED and re.match(NUMBER, f)[0].replace(",", "") not in numbers]


def test_a_figure_not_in_the_results_is_found_and_settings_and_quoted_rows_are_not():
    planted = (
        "Training ran at 27.34 tok/s (1.07×), then 31.5 tokens/s, in 12 minutes, peaking at 4,622 MiB and 7.4\n"
        "GiB; the budget's floor is 2.5 GB and `--latency 0.3 s` is code.\n| total | 455.2 | 722 |\n"
        "<!-- demo rows from bench/RESULTS.md -->\n999 s\n<!-- end of demo rows -->\n```\n888 s\n```\n"
    )
    found = figures(planted)
    assert found == ["27.34 tok/s", "1.07×", "31.5 tokens/s", "12 minutes", "4,622 MiB", "7.4 GiB", "2.5 GB", "455.2"]
    assert unrecorded(found, {"27.34", "1.07", "4622"}) == ["31.5 tokens/s", "12 minutes", "7.4 GiB", "455.2"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.name)
def test_every_measured_figure_in_the_documents_is_in_the_results(document):
    assert unrecorded(figures(document.read_text()), recorded_numbers()) == []


def test_every_setting_allowed_is_still_stated():
    stated = {f for document in DOCUMENTS for f in figures(document.read_text())}
    assert set(NOT_MEASURED) - stated == set()


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
    named = {
        path.split("/")[2] for path in map_entries() if path.startswith("fine_tune_dag/core/") and path.count("/") == 3
    }
    assert named == stages
