"""`make demo` end to end: the whole graph on the shipped notes with the bundled model, timed.

Runs `fine-tune-dag demo` in a child process on a fresh data folder and Dagster home (the
converted bundled model is reused from `data/models` when it is there, as on a second run of
`make demo`) and reports its wall time and peak resident memory.

    python bench/demo.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import Row, add_json_argument, peak_rss_mib, report

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes-dir", type=Path, default=REPO / "data" / "notes")
    add_json_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data, home = Path(folder) / "data", Path(folder) / "dagster_home"
        data.mkdir()
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        models = REPO / "data" / "models"
        if models.exists():
            (data / "models").symlink_to(models, target_is_directory=True)
        cli = Path(sys.executable).parent / "fine-tune-dag"
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        started = time.perf_counter()
        subprocess.run(
            [str(cli), "--notes-dir", str(args.notes_dir), "--data-dir", str(data), "demo"],
            env=env,
            check=True,
            cwd=REPO,
        )
        wall = time.perf_counter() - started
    print()
    report(
        [
            Row("demo", "make demo: wall time", wall, None, None, "s"),
            Row("demo", "make demo: peak resident memory", peak_rss_mib(children=True), None, None, "MiB"),
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
