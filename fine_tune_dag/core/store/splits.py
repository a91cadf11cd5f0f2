"""Queries over the dataset: the train/test split rows, with the passage each answer was drawn from."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.dataset.writing import WRITE, WRITING_MODES
from fine_tune_dag.core.store.warehouse import Warehouse

# The rows of one split with the passage each answer was drawn from and its note's file (teacher pairs have
# neither: their question and answer stand in as `source`), for the unsupported-content share, the style
# comparison, the author's side of preference comparisons and retrieval-augmented training.
_SPLIT_ROWS_SQL = """
    SELECT s.*, q.passage_index, p.text AS passage, n.path,
        coalesce(p.text, s.question || ' ' || s.answer) AS source
    FROM dataset_splits s
    LEFT JOIN qa_pairs q USING (pair_id)
    LEFT JOIN passages p ON p.note_id = q.note_id AND p.passage_index = q.passage_index
    LEFT JOIN raw_notes n ON n.note_id = s.note_id
    WHERE s.split = ? AND s.mode NOT IN (SELECT unnest(?::VARCHAR[]))
    ORDER BY s.note_id, s.pair_id
"""


def _split_rows(db: Warehouse, side: str, excluded_modes: Sequence[str]) -> pd.DataFrame:
    return db.query(_SPLIT_ROWS_SQL, [side, list(excluded_modes)])


def dataset_rows(db: Warehouse) -> pd.DataFrame:
    """Every row of the current dataset, both sides, with its passage and note file: what cross-validation
    deals into folds of its own."""
    return pd.concat([_split_rows(db, side, ()) for side in ("train", "test")], ignore_index=True)


def notes_key(db: Warehouse, dataset_version: str) -> str:
    """Which notes, at which content, a dataset version was built from, whatever their split: a verdict
    cross-validated on these notes holds for an adapter trained on all of them."""
    notes = db.query(
        "SELECT path, sha256 FROM dataset_notes WHERE dataset_version = ? ORDER BY path", [dataset_version]
    )
    return fingerprint(list(zip(notes["path"], notes["sha256"])))


def split_items(db: Warehouse, side: str) -> pd.DataFrame:
    """One side's question-and-answer rows (no writing tasks) with `passage` and `source`, ordered by note."""
    return _split_rows(db, side, WRITING_MODES)


def train_split(db: Warehouse) -> pd.DataFrame:
    """Every train row, writing tasks included, with the passage each Q&A answer came from: what training mixes."""
    return _split_rows(db, "train", ())


def writing_items(db: Warehouse, side: str, mode: str = WRITE) -> pd.DataFrame:
    """One side's writing tasks of one mode, ordered by note: on the test side, the voice items."""
    return db.query("SELECT * FROM dataset_splits WHERE split = ? AND mode = ? ORDER BY note_id, pair_id", [side, mode])


def train_notes(db: Warehouse, dataset_version: str) -> set[str]:
    """The notes on the train side of a dataset version."""
    return set(
        db.query(
            "SELECT note_id FROM dataset_notes WHERE dataset_version = ? AND split = 'train'", [dataset_version]
        )["note_id"]
    )
