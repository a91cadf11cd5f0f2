"""Cross-validated verdicts: what k folds by note said of fine-tuning on a set of notes, kept so an adapter later
trained on every one of those notes can point to the evidence it was kept on."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse


def record_crossval_verdict(
    db: Warehouse,
    dataset_version: str,
    notes_key: str,
    folds: int,
    notes: int,
    choice: str | None,
    verdict: str,
    gate_passed: bool,
    report_path: str,
) -> None:
    row = {
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "dataset_version": dataset_version,
        "notes_key": notes_key,
        "folds": folds,
        "notes": notes,
        "choice": choice or "",
        "verdict": verdict,
        "gate_passed": gate_passed,
        "report_path": report_path,
    }
    db.insert_rows("crossval_verdicts", pd.DataFrame([row]))


def crossval_verdict_for(db: Warehouse, notes_key: str) -> pd.Series | None:
    """The newest cross-validated verdict on exactly these notes, or None."""
    rows = db.query("SELECT * FROM crossval_verdicts WHERE notes_key = ? ORDER BY created_at DESC LIMIT 1", [notes_key])
    return None if rows.empty else rows.iloc[0]
