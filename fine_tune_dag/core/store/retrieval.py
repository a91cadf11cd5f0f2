"""The query the retrieval index is built from: passages with their note's file and content hash."""

from __future__ import annotations

import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse


def indexable_passages(db: Warehouse, note_ids: list[str]) -> pd.DataFrame:
    """These notes' passages; the content hash is what lets a rebuild reuse an unchanged note's index entries."""
    return db.query(
        "SELECT p.note_id, n.path, n.sha256, p.passage_index, p.topic, p.text "
        "FROM passages p JOIN raw_notes n USING (note_id) "
        "WHERE p.note_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY n.path, p.passage_index",
        [note_ids],
    )
