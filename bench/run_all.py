"""`make bench`: every benchmark in bench/, one table, and bench/RESULTS.md with the machine it ran on.

Each script runs in its own process (so its peak memory is its own) with the sizes below; `--quick`
uses small sizes for a smoke run, `--only` picks scripts. A script that fails is reported and the
others still run. With `--only`, the rows of the scripts not rerun are carried over from the results
file as it was, and its Commands list says which scripts ran when; a run of all scripts rewrites it.

    python bench/run_all.py [--quick] [--only training generation]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from results import Row, format_row, machine, table_header

BENCH = Path(__file__).resolve().parent
# README.md and RELIABILITY.md quote benchmark rows between markers (`<!-- NAME rows from bench/RESULTS.md -->`, or
# `…RESULTS.md: TEXT -->` for the rows whose metric holds TEXT, up to `<!-- end of NAME rows -->`); run_all writes
# them there from the table it records, and fine_tune_dag_tests/project/test_docs.py checks the two agree.
DOCUMENTS = (BENCH.parent / "README.md", BENCH.parent / "RELIABILITY.md")
QUOTE = re.compile(r"<!-- (\w+) rows from bench/RESULTS\.md(?:: (.+?))? -->\n.*?<!-- end of \1 rows -->", re.DOTALL)

# script → (full sizes, quick sizes)
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    # four sides (ours, TRL like for like, TRL at its defaults, ours checkpointed) take turns: sized for 2 cores
    "training": (["--examples", "32", "--steps", "6"], ["--examples", "16", "--steps", "3"]),
    "generation": (
        ["--prompts", "32", "--batch-size", "16", "--max-new-tokens", "120"],
        ["--prompts", "16", "--max-new-tokens", "16", "--invariance-prompts", "4"],
    ),
    # short answers, and 96 items batched / 8 one at a time, keep it near 15 minutes on 2 cores
    "evaluation": (
        ["--items", "96", "--max-new-tokens", "32", "--sample", "8"],
        ["--items", "16", "--max-new-tokens", "16", "--sample", "4"],
    ),
    "incremental": (["--notes", "50"], ["--notes", "10"]),
    "gemini_throughput": (["--calls", "200", "--latency", "0.3"], ["--calls", "40", "--latency", "0.1"]),
    "load": (["--notes", "200"], ["--notes", "30"]),  # under 25 notes no note lands in the test split
    "demo": ([], []),
    # the whole graph as make demo runs it, then every contender's voice, authorship, grounding and loops
    "efficacy": ([], []),
    "dpo": (["--pairs", "16", "--steps", "6"], ["--pairs", "8", "--steps", "3"]),
    # 16 requests alone and at 8 clients, then 200 with the champion swapped halfway
    "serve": (
        ["--requests", "16", "--clients", "8", "--max-tokens", "48", "--swap-requests", "200"],
        ["--requests", "4", "--clients", "2", "--max-tokens", "8", "--swap-requests", "8"],
    ),
    "training_mfu": (["--steps", "4"], ["--steps", "2", "--batch-size", "4"]),  # on a GPU also the 1.2B model
    # 3 rounds of 16 notes at 1, 2, 4, 8 concurrent runs in turns against a 1–2 s stub; then 1,000 and 10,000
    # notes with 200 of them run (the rest projected): near 20 minutes on 2 cores
    "scale": (
        ["--notes-per-level", "16", "--rounds", "3", "--notes-scale", "1000", "10000", "--processed", "200"],
        ["--notes-per-level", "4", "--rounds", "2", "--levels", "1", "4", "--notes-scale", "100", "--processed", "8"],
    ),
    # the graph on N and 2N notes (scripted teacher), generate, --help, a 1B random model; quick: N only, no 1B
    "memory": (["--notes", "30"], ["--notes", "26", "--skip-1b", "--single"]),
    # the shipped notes synthesized with the judge off and on (the bundled teacher), an adapter on each
    "pair_judge": (["--steps", "24", "--items", "16"], ["--steps", "4", "--items", "4"]),
    # Q&A synthesis on the shipped notes by the local teacher, as written and through the egress step's redaction
    "privacy_redaction": ([], ["--passages", "6", "--max-new-tokens", "48"]),
    # four canaries planted, trained on, forgotten and measured (about 5 minutes), then the demo's graph and
    # `forget` on one of its train notes: near 40 minutes on 2 cores
    "privacy": (["--canaries", "4"], ["--quick"]),
    # a 10,000-message mailbox beside 10 notes: the sensor's ticks, registering it, parsing it (about 2 minutes)
    "mailbox_scale": (["--messages", "10000"], ["--messages", "1000"]),
}
# The benchmark a script's rows are named by, the first word of their table lines, where it is not the script's
# name: how rows read back from RESULTS.md are told apart by script.
TABLE_NAMES = {"gemini_throughput": "gemini", "privacy_redaction": "redaction", "mailbox_scale": "mailbox"}

DATE = r"\d{4}-\d{2}-\d{2}"
COMMAND = re.compile(rf"^- (?P<command>`python bench/(?P<script>\w+)\.py[^`]*` \(\d+ s\))(?:, run (?P<date>{DATE}))?")
FAILED = re.compile(rf"^- (?P<script>\w+): (?P<error>.*?)(?: \(run (?P<date>{DATE})(?:, carried over)?\))?$")


@dataclass
class Section:
    """One script's part of RESULTS.md: its table lines, its entry in the Commands list, its failure if any."""

    script: str
    lines: list[str]
    command: str  # "`python bench/NAME.py ARGS` (SECONDS s)"
    date: str  # the day it ran, YYYY-MM-DD (UTC)
    error: str | None = None
    carried: bool = False  # read back from an earlier RESULTS.md, not rerun

    def command_entry(self) -> str:
        return f"- {self.command}, run {self.date}" + ("; rows carried over, not rerun" if self.carried else "")

    def failure_entry(self) -> str:
        return f"- {self.script}: {self.error} (run {self.date}{', carried over' if self.carried else ''})"


def table_name(script: str) -> str:
    return TABLE_NAMES.get(script, script)


def run_script(name: str, args: list[str], date: str) -> Section:
    """Run one script and collect its rows as its section of the table."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"{name}.json"
        command = [sys.executable, str(BENCH / f"{name}.py"), *args, "--json", str(out)]
        print(f"\n=== {' '.join(['bench/' + name + '.py', *args])}", flush=True)
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=BENCH.parent)
        seconds = time.perf_counter() - started
        error = None if finished.returncode == 0 and out.exists() else f"exit code {finished.returncode}"
        rows = [] if error else [Row(**{k: v for k, v in r.items() if k != "met"}) for r in json.loads(out.read_text())]
    entry = f"`{' '.join(['python', f'bench/{name}.py', *args])}` ({seconds:.0f} s)"
    misnamed = sorted({r.benchmark for r in rows} - {table_name(name)})
    if misnamed:
        error = f"rows named {', '.join(misnamed)}, not {table_name(name)}: they would not read back"
    return Section(name, [format_row(r) for r in rows], entry, date, error)


def read_earlier(path: Path) -> dict[str, Section]:
    """The sections of an earlier RESULTS.md by script, to carry over those not rerun. A file written before
    entries had dates gives every script the date of its header."""
    if not path.exists():
        return {}
    text = path.read_text()
    stamp = re.search(rf"^Latest .*?({DATE}) \d\d:\d\d UTC", text, re.MULTILINE)
    default_date = stamp.group(1) if stamp else "an unknown date"
    script_of = {table_name(script): script for script in SCRIPTS}
    table = text.split("```")[1].strip().splitlines()[2:] if text.count("```") >= 2 else []
    lines: dict[str, list[str]] = {}
    for line in table:
        benchmark = (line.split() or [""])[0]
        if benchmark in script_of:
            lines.setdefault(script_of[benchmark], []).append(line)
    sections = {}
    for line in text.splitlines():
        found = COMMAND.match(line)
        if found and found["script"] in SCRIPTS:
            script = found["script"]
            sections[script] = Section(
                script, lines.get(script, []), found["command"], found["date"] or default_date, carried=True
            )
    failures = text.split("\nFailed:\n", 1)[1].splitlines() if "\nFailed:\n" in text else []
    for line in failures:
        found = FAILED.match(line)
        if found and found["script"] in sections:
            sections[found["script"]].error = found["error"]
    return sections


def results_markdown(sections: list[Section], stamp: str, quick: bool, only: list[str] | None) -> str:
    invocation = " ".join(
        ["python bench/run_all.py", *(["--quick"] if quick else []), *(["--only", *only] if only else [])]
    )
    ran = "`make bench`" if invocation == "python bench/run_all.py" else f"`{invocation}`"
    lines = [
        "# Benchmark results",
        "",
        f"Latest {ran}{' (smoke sizes)' if quick else ''}: {stamp}, on {machine()}.",
        *(
            ["The other scripts' rows are carried over from earlier runs: the Commands list dates every script's run."]
            if any(s.carried for s in sections)
            else []
        ),
        "A ratio's two figures come from the same run of its script (its date in the Commands list), never from two",
        "scripts' runs; where the baseline is a budget or a computed floor, the row says so. Above 1× the project is",
        "ahead of the alternative.",
        "",
        "```",
        *table_header(),
        *(line for s in sections for line in s.lines),
        "```",
        "",
        "Commands:",
        "",
        *(s.command_entry() for s in sections),
    ]
    failed = [s for s in sections if s.error]
    if failed:
        lines += ["", "Failed:", "", *(s.failure_entry() for s in failed)]
    return "\n".join(lines) + "\n"


def quoted_rows(lines: list[str], selector: str | None) -> list[str]:
    """A benchmark's recorded rows, or those whose metric holds `selector`."""
    return [line for line in lines if selector is None or selector in line]


def quote_in_documents(documents: tuple[Path, ...], sections: list[Section]) -> None:
    """Every quoted benchmark's rows, as recorded, between their markers in each document."""
    rows = {table_name(s.script): s.lines for s in sections}

    def block(match: re.Match[str]) -> str:
        name, selector = match.group(1), match.group(2)
        if name not in rows:
            return match.group(0)
        table = "\n".join(["```", *table_header(), *quoted_rows(rows[name], selector), "```"])
        opening = match.group(0).split("\n", 1)[0]
        return f"{opening}\n{table}\n<!-- end of {name} rows -->"

    for document in documents:
        document.write_text(QUOTE.sub(block, document.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to record")
    parser.add_argument(
        "--only", nargs="+", choices=list(SCRIPTS), help="run only these scripts, keep the others' rows"
    )
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md", help="where to write the table")
    args = parser.parse_args()
    now = datetime.now(timezone.utc)
    ran = {
        name: run_script(name, SCRIPTS[name][1 if args.quick else 0], now.strftime("%Y-%m-%d"))
        for name in SCRIPTS
        if args.only is None or name in args.only
    }
    # read once the scripts are done, so rows another `--only` run wrote meanwhile are carried, not overwritten
    earlier = read_earlier(args.results) if args.only else {}
    sections = [ran[name] if name in ran else earlier[name] for name in SCRIPTS if name in ran or name in earlier]
    rerun = [s for s in sections if not s.carried]
    print("\n" + "\n".join([*table_header(), *(line for s in rerun for line in s.lines)]))
    for s in rerun:
        if s.error:
            print(f"{s.script}: FAILED ({s.error})")
    args.results.write_text(results_markdown(sections, now.strftime("%Y-%m-%d %H:%M UTC"), args.quick, args.only))
    if not args.quick:
        quote_in_documents(DOCUMENTS, sections)
    print(
        f"\nwritten to {args.results}"
        + (f", {len(sections) - len(rerun)} scripts' rows carried over" if args.only else "")
    )
    return 1 if any(s.error for s in rerun) else 0


if __name__ == "__main__":
    sys.exit(main())
