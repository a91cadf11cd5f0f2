"""What the privacy scan found per note: counts by kind, never the values, with the policy each note met."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse


def save_findings(
    db: Warehouse, note_id: str, sha256: str, kinds: dict[str, int], provider: str, policy: str, names: str
) -> None:
    """The note's one row, replacing the last scan's."""
    row = {
        "note_id": note_id,
        "sha256": sha256,
        "kinds": json.dumps(kinds),
        "findings": sum(kinds.values()),
        "provider": provider,
        "policy": policy,
        "names": names,
        "scanned_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }
    db.replace_rows("privacy_findings", pd.DataFrame([row]), {"note_id": note_id})


def read_findings(db: Warehouse, only_found: bool = False) -> pd.DataFrame:
    """Every scanned note with its file path (when the note is still parsed), most findings first."""
    where = "WHERE f.findings > 0" if only_found else ""
    return db.query(
        "SELECT f.*, coalesce(n.path, f.note_id) AS path FROM privacy_findings f "
        f"LEFT JOIN raw_notes n ON n.note_id = f.note_id {where} ORDER BY f.findings DESC, path"
    )


def dataset_findings(db: Warehouse, dataset_version: str, split: str | None = None) -> pd.DataFrame:
    """The notes of a dataset version (one split, or all), each with its scan row; `findings` is null for a note
    never scanned, and `scanned_sha256` tells whether the scan saw the version the dataset took."""
    params: list[str] = [dataset_version]
    split_sql = ""
    if split is not None:
        split_sql = " AND d.split = ?"
        params.append(split)
    return db.query(
        "SELECT d.note_id, d.path, d.split, d.sha256, f.sha256 AS scanned_sha256, f.kinds, f.findings, f.provider, "
        "f.policy, f.names FROM dataset_notes d LEFT JOIN privacy_findings f ON f.note_id = d.note_id "
        f"WHERE d.dataset_version = ?{split_sql} ORDER BY d.path",
        params,
    )


def note_texts(db: Warehouse, note_ids: list[str]) -> pd.DataFrame:
    """The parsed text of these notes (note_id, sha256, text), for a scan on the spot."""
    return db.query(
        "SELECT note_id, sha256, text FROM raw_notes WHERE note_id IN (SELECT unnest(?::VARCHAR[]))", [note_ids]
    )
