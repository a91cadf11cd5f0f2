"""`make demo` end to end from nothing: the whole graph on the shipped notes with the bundled model, timed.

Runs `make demo` in a child process with an empty data folder (FINE_TUNE_DAG_DATA_DIR) and an empty Dagster home
(DAGSTER_HOME), both fresh temporary folders with nothing copied in, so the time includes what a first `make demo`
does: converting the bundled model, then every asset. Make itself puts the instance settings (dagster.yaml) into
the new home, as on a first run; its `install` step is skipped (`-o install`), because the benchmarks run in the
installed environment and an install is not the demo's work. The notes are the shipped ones, only ever read.
Reports the wall time and the peak resident memory of the largest process, sampled every 50 ms (VmHWM between
samples, so a spike between two samples still counts).

    python bench/demo.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from results import LargestProcessPeak, Row, add_json_argument, report

REPO = Path(__file__).resolve().parents[1]
DEMO_WALL_LIMIT_S = 420  # issue 28's target: the demo's graph in at most 7 minutes on 2 cores
# the 2.5 GB limit is bench/memory.py's, with the budget set to 2.5 GB: the demo runs at the default budget, half the
# memory available, so its peak here follows the machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes-dir", type=Path, default=REPO / "data" / "notes")
    add_json_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data, home = Path(folder) / "data", Path(folder) / "dagster_home"
        data.mkdir()
        home.mkdir()
        env = {
            **os.environ,
            "FINE_TUNE_DAG_DATA_DIR": str(data),
            "FINE_TUNE_DAG_NOTES_DIR": str(args.notes_dir),
        }
        started = time.perf_counter()
        make = subprocess.Popen(["make", "-o", "install", "demo", f"DAGSTER_HOME={home}"], env=env, cwd=REPO)
        with LargestProcessPeak(make.pid) as peak:
            if make.wait() != 0:
                raise subprocess.CalledProcessError(make.returncode, make.args)
        wall = time.perf_counter() - started
        converted = [p.name for p in (data / "models").iterdir()]
    print(f"\nmodels converted into the empty data folder: {', '.join(converted)}\n")
    report(
        [
            Row(
                "demo",
                "make demo from empty folders: wall time, vs ≤ 7 minutes",
                wall,
                DEMO_WALL_LIMIT_S,
                DEMO_WALL_LIMIT_S / wall,
                "s",
                target=1.0,
            ),
            Row(
                "demo",
                "make demo from empty folders: peak RSS of the largest process, default budget (half the memory "
                "available)",
                peak.mib,
                None,
                None,
                "MiB",
            ),
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
