"""Privacy: is a forgotten note gone from the model, and how long does `forget` take?

1. The canary audit (`fine_tune_dag_testkit.canary_audit`, the procedure the test runs) on the bundled model:
   random canaries planted in a note of their own in a fresh folder, the adapter trained on them, each canary's
   exposure (Carlini et al.: its rank among same-format candidates, in bits), then `forget` on the note, the
   adapter retrained without it, and the exposures again. Chance is measured too: canaries of the same format
   never planted, under the retrained adapter. "Within noise" is below `chance_bound`, which that many canaries
   the model never saw all stay under with probability 95%.
2. `fine-tune-dag forget` on one train note of the shipped sample notes, as a user runs it after `make demo`: the
   demo's graph first (`fine-tune-dag demo`, every default, fresh data folder and Dagster home), then `forget`
   timed, which removes the note's data, retrains, evaluates and promotes, against issue 29's 12 minutes.

The demo alone takes 15–20 minutes on 2 cores and the forget about as long, so the whole script runs about 35–40
minutes. `--quick` plants the test's two canaries and runs the demo on three of the shipped notes: a smoke run.

    python bench/privacy.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fine_tune_dag_testkit.canary_audit import AUDIT_CANARIES, TRAINING, run_canary_audit
from results import Row, add_json_argument, report

from fine_tune_dag.core.evaluation.canary import CanarySettings, chance_bound, chance_exposure
from fine_tune_dag.core.models.resolution import BUNDLED_MODEL, resolve_model
from fine_tune_dag.core.store.registry import current_champion, latest_adapter
from fine_tune_dag.core.store.splits import train_split
from fine_tune_dag.core.store.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[1]
COMMAND = str(Path(sys.executable).parent / "fine-tune-dag")  # the installed command, as `make demo` runs it
FORGET_LIMIT_S = 12 * 60  # issue 29: forget on one note of the sample set retrains and re-promotes within 12 minutes
CLEARLY_EXPOSED_BITS = 8.0  # a canary the model never saw reaches 8 bits with probability 1/256
QUICK_NOTES = ("chain-wear.md", "moth.md", "winter-jobs.txt")


def audit_rows(folder: Path, settings: CanarySettings) -> list[Row]:
    base = resolve_model(BUNDLED_MODEL, folder / "models").path
    # as many steps per canary as the test's audit: more canaries share the same passages per step
    steps = TRAINING["max_steps"] * settings.count // AUDIT_CANARIES.count
    audit = run_canary_audit(folder / "audit", base, settings, {"max_steps": steps})
    bound, chance = chance_bound(settings.count), chance_exposure(settings.candidates)
    bits = f"bits of {math.log2(settings.candidates):.0f}"
    rows = [
        Row("privacy", f"canary {i + 1} exposure, trained on it, vs mean chance", e.bits, chance, None, bits)
        for i, e in enumerate(audit.before)
    ]
    rows += [
        Row("privacy", f"canary {i + 1} exposure, after forget + retrain, vs mean chance", e.bits, chance, None, bits)
        for i, e in enumerate(audit.after)
    ]
    highest_before = max(e.bits for e in audit.before)
    highest_after = max(e.bits for e in audit.after)
    never = max(e.bits for e in audit.never_planted)
    return [
        *rows,
        Row(
            "privacy",
            f"highest canary exposure, trained on it, vs {CLEARLY_EXPOSED_BITS:g} bits (clearly above chance)",
            highest_before,
            CLEARLY_EXPOSED_BITS,
            highest_before / CLEARLY_EXPOSED_BITS,
            "bits",
            target=1.0,
        ),
        Row(
            "privacy",
            f"highest exposure after forget + retrain, vs the 95% chance bound of {settings.count} canaries",
            highest_after,
            bound,
            bound / max(highest_after, 0.01),
            "bits",
            target=1.0,
        ),
        Row(
            "privacy",
            f"highest exposure of {settings.count} canaries never planted (chance, measured), vs that bound",
            never,
            bound,
            bound / max(never, 0.01),
            "bits",
        ),
    ]


def forget_rows(folder: Path, notes: Path) -> list[Row]:
    """The demo's graph, then `forget` on the first train note, timed, in a child process each."""
    data, home = folder / "data", folder / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "FINE_TUNE_DAG_DATA_DIR": str(data),
        "FINE_TUNE_DAG_NOTES_DIR": str(notes),
        "DAGSTER_HOME": str(home),
    }
    subprocess.run([COMMAND, "demo"], env=env, cwd=REPO, check=True)
    db = Warehouse(data / "warehouse.duckdb")
    trained_on, note = latest_adapter(db).version, sorted(train_split(db)["note_id"])[0]
    started = time.perf_counter()
    subprocess.run([COMMAND, "forget", note], env=env, cwd=REPO, check=True)
    seconds = time.perf_counter() - started
    champion, newest = current_champion(db), latest_adapter(db)
    promoted = champion is not None and champion.version == newest.version != trained_on
    return [
        Row(
            "privacy",
            "forget a train note of the sample set: remove, retrain, re-promote, vs 12 min",
            seconds,
            FORGET_LIMIT_S,
            FORGET_LIMIT_S / seconds,
            "s",
            target=1.0,
            unmet="" if promoted else "the retrained adapter was not promoted",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test's two canaries, the demo on three notes")
    parser.add_argument("--canaries", type=int, default=4, help="canaries planted (full run)")
    parser.add_argument("--notes-dir", type=Path, default=REPO / "data" / "notes", help="the sample notes")
    add_json_argument(parser)
    args = parser.parse_args()
    settings = AUDIT_CANARIES if args.quick else replace(AUDIT_CANARIES, count=args.canaries)
    with tempfile.TemporaryDirectory() as folder:
        notes = args.notes_dir
        if args.quick:
            notes = Path(folder) / "notes"
            notes.mkdir()
            for name in QUICK_NOTES:
                shutil.copy(args.notes_dir / name, notes / name)
        started = time.perf_counter()
        rows = audit_rows(Path(folder), settings)
        print(f"canary audit: {time.perf_counter() - started:.0f} s", flush=True)
        rows += forget_rows(Path(folder), notes)
    report(rows, args.json)


if __name__ == "__main__":
    main()
