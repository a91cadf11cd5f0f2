"""Queries over the dataset: the train/test split rows, with the passage each answer was drawn from."""

from __future__ import annotations

import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse

# The items of one split with the passage each answer was drawn from (teacher pairs have none: their question
# and answer stand in as `source`), for the unsupported-content share, the style comparison and the author's
# side of preference comparisons.
_SPLIT_ITEMS_SQL = """
    SELECT s.*, p.text AS passage, coalesce(p.text, s.question || ' ' || s.answer) AS source
    FROM dataset_splits s
    LEFT JOIN qa_pairs q USING (pair_id)
    LEFT JOIN passages p ON p.note_id = q.note_id AND p.passage_index = q.passage_index
    WHERE s.split = ?
    ORDER BY s.note_id, s.pair_id
"""


def split_items(db: Warehouse, side: str) -> pd.DataFrame:
    """One side's rows with `passage` and `source`, ordered by note."""
    return db.query(_SPLIT_ITEMS_SQL, [side])


def train_split(db: Warehouse) -> pd.DataFrame:
    """The train rows in pair order: the order training reads them in."""
    return db.query("SELECT * FROM dataset_splits WHERE split = 'train' ORDER BY pair_id")


def test_split(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM dataset_splits WHERE split = 'test' ORDER BY note_id, pair_id")


def train_questions_and_answers(db: Warehouse) -> list[tuple[str, str]]:
    """The few-shot pool of the best-prompted base model."""
    train = db.query("SELECT question, answer FROM dataset_splits WHERE split = 'train'")
    return list(zip(train["question"], train["answer"]))
