"""People's (and the judge's) choices between two answers, and the comparisons they choose from.

Every choice is its own row of `preference_labels` (who, when, what was on the left): nothing is overwritten,
and a reload or a crash loses at most the click in flight.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse

SIDES = ("left", "right", "tie", "skip")  # what a person can answer on the page
HUMAN, JUDGE = "human", "judge"


def label_row(candidate_id: str, labeler: str, source: str, choice: str, shown_left: str) -> dict[str, Any]:
    return {
        "label_id": uuid.uuid4().hex,
        "candidate_id": candidate_id,
        "labeler": labeler,
        "source": source,
        "choice": choice,
        "shown_left": shown_left,
        "labeled_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }


def record_choice(db: Warehouse, candidate_id: str, labeler: str, side: str, shown_left: str) -> str:
    """Save a person's choice at once; `side` is what they pressed, `shown_left` which answer (a or b) the
    page put on the left. Returns the stored choice: a, b, tie or skip."""
    if side not in SIDES:
        raise ValueError(f"choice must be one of {', '.join(SIDES)}, not {side!r}")
    if shown_left not in ("a", "b"):
        raise ValueError(f"shown_left must be 'a' or 'b', not {shown_left!r}")
    if not labeler.strip():
        raise ValueError("a choice needs the name of who made it")
    if db.query("SELECT 1 FROM preference_candidates WHERE candidate_id = ?", [candidate_id]).empty:
        raise KeyError(f"no comparison {candidate_id!r}")
    shown_right = "b" if shown_left == "a" else "a"
    choice = {"left": shown_left, "right": shown_right}.get(side, side)
    add_labels(db, pd.DataFrame([label_row(candidate_id, labeler, HUMAN, choice, shown_left)]))
    return choice


def add_labels(db: Warehouse, labels: pd.DataFrame) -> None:
    """Choices as `label_row` makes them, a person's or the judge's; none replaces an earlier one."""
    db.insert_rows("preference_labels", labels)


def add_candidates(db: Warehouse, candidates: pd.DataFrame) -> None:
    """New comparisons for people to label, each with the champion version it came from."""
    db.insert_rows("preference_candidates", candidates)


def replace_preference_pairs(db: Warehouse, pairs: pd.DataFrame) -> None:
    """The chosen/rejected pairs, rebuilt whole from every comparison's latest label."""
    db.replace_rows("preference_pairs", pairs)


def progress(db: Warehouse, labeler: str) -> tuple[int, int]:
    """Comparisons this person has answered (skips included) and comparisons in all."""
    counts = db.query(
        "SELECT (SELECT count(DISTINCT candidate_id) FROM preference_labels WHERE labeler = ? AND source = ?) AS done,"
        " (SELECT count(*) FROM preference_candidates) AS total",
        [labeler, HUMAN],
    )
    return int(counts["done"].iloc[0]), int(counts["total"].iloc[0])


def next_comparison(db: Warehouse, labeler: str, rng: random.Random) -> dict[str, str] | None:
    """The oldest comparison this person has not answered, its answers in a random order; None when done.
    Origins stay on the server: the page is blind to where an answer came from."""
    rows = db.query(
        "SELECT candidate_id, question, answer_a, answer_b FROM preference_candidates c WHERE NOT EXISTS "
        "(SELECT 1 FROM preference_labels l WHERE l.candidate_id = c.candidate_id AND l.labeler = ? AND l.source = ?)"
        " ORDER BY created_at, candidate_id LIMIT 1",
        [labeler, HUMAN],
    )
    if rows.empty:
        return None
    row = rows.iloc[0]
    shown_left = rng.choice(("a", "b"))
    left, right = (row.answer_a, row.answer_b) if shown_left == "a" else (row.answer_b, row.answer_a)
    return {
        "candidate_id": row.candidate_id,
        "question": row.question,
        "left": left,
        "right": right,
        "shown_left": shown_left,
    }


def prompts_compared(db: Warehouse, champion_version: str) -> set[str]:
    """Prompts that already have a comparison for this champion."""
    return set(
        db.query("SELECT prompt_id FROM preference_candidates WHERE champion_version = ?", [champion_version])[
            "prompt_id"
        ]
    )


def labelling_counts(db: Warehouse) -> dict[str, int]:
    """Comparisons in all, and how many people and the judge have labelled."""
    counts = db.query(
        "SELECT (SELECT count(*) FROM preference_candidates) AS comparisons, "
        f"(SELECT count(DISTINCT candidate_id) FROM preference_labels WHERE source = '{HUMAN}') AS labelled_by_people, "
        f"(SELECT count(DISTINCT candidate_id) FROM preference_labels WHERE source = '{JUDGE}') AS prelabelled"
    ).iloc[0]
    return {name: int(value) for name, value in counts.items()}


def candidates_and_labels(db: Warehouse) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        db.query("SELECT * FROM preference_candidates ORDER BY created_at, candidate_id"),
        db.query("SELECT * FROM preference_labels"),
    )


def preference_pairs(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT * FROM preference_pairs ORDER BY candidate_id")
