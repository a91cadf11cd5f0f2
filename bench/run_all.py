"""`make bench`: every benchmark in bench/, one table, and bench/RESULTS.md with the machine it ran on.

Each script runs in its own process (so its peak memory is its own) with the sizes below; `--quick`
uses small sizes for a smoke run, `--only` picks scripts. A script that fails is reported and the
others still run.

    python bench/run_all.py [--quick] [--only training generation]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from results import Row, format_table, machine

BENCH = Path(__file__).resolve().parent

# script → (full sizes, quick sizes)
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "training": (["--examples", "64", "--steps", "12"], ["--examples", "16", "--steps", "3"]),
    "generation": (
        ["--prompts", "32", "--batch-size", "16", "--max-new-tokens", "48"],
        ["--prompts", "16", "--max-new-tokens", "16"],
    ),
    # 200 items as eval_report runs them; short answers keep it near 15 minutes on 2 cores
    "evaluation": (
        ["--items", "200", "--max-new-tokens", "32", "--sample", "4"],
        ["--items", "16", "--max-new-tokens", "16", "--sample", "2"],
    ),
    "incremental": (["--notes", "50"], ["--notes", "10"]),
    "gemini_throughput": (["--calls", "200", "--latency", "0.3"], ["--calls", "40", "--latency", "0.1"]),
    "load": (["--notes", "200"], ["--notes", "30"]),  # under 25 notes no note lands in the test split
    "demo": ([], []),
    "dpo": (["--pairs", "32", "--steps", "8"], ["--pairs", "8", "--steps", "3"]),
    "training_mfu": (["--steps", "4"], ["--steps", "2", "--batch-size", "4"]),  # on a GPU also the 1.2B model
}


def run_script(name: str, args: list[str]) -> tuple[list[Row], str | None, float]:
    """The script's rows, its error (None when it succeeded) and its wall time."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"{name}.json"
        command = [sys.executable, str(BENCH / f"{name}.py"), *args, "--json", str(out)]
        print(f"\n=== {' '.join(['bench/' + name + '.py', *args])}", flush=True)
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=BENCH.parent)
        seconds = time.perf_counter() - started
        if finished.returncode != 0 or not out.exists():
            return [], f"exit code {finished.returncode}", seconds
        rows = [Row(**{k: v for k, v in row.items() if k != "met"}) for row in json.loads(out.read_text())]
        return rows, None, seconds


def results_markdown(rows: list[Row], failures: dict[str, str], commands: list[str], quick: bool) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"Latest {'`python bench/run_all.py --quick` (smoke sizes)' if quick else '`make bench`'}: {stamp}, "
        f"on {machine()}.",
        "Ratios are measured side by side in one run; above 1× the project is ahead of the alternative.",
        "",
        "```",
        format_table(rows),
        "```",
        "",
        "Commands:",
        "",
        *[f"- {command}" for command in commands],
    ]
    if failures:
        lines += ["", "Failed:", "", *[f"- {name}: {error}" for name, error in failures.items()]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to record")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), help="run only these scripts")
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md", help="where to write the table")
    args = parser.parse_args()
    rows: list[Row] = []
    failures: dict[str, str] = {}
    commands: list[str] = []
    for name in args.only or SCRIPTS:
        sizes = SCRIPTS[name][1 if args.quick else 0]
        script_rows, error, seconds = run_script(name, sizes)
        rows += script_rows
        commands.append(f"`{' '.join(['python', f'bench/{name}.py', *sizes])}` ({seconds:.0f} s)")
        if error:
            failures[name] = error
    print("\n" + format_table(rows))
    for name, error in failures.items():
        print(f"{name}: FAILED ({error})")
    args.results.write_text(results_markdown(rows, failures, commands, args.quick))
    print(f"\nwritten to {args.results}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
