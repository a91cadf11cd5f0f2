"""People's decisions on synthetic Q&A pairs (`fine-tune-dag annotate --pairs`): accept, edit, reject.

Every decision is its own row of `pair_labels` (who, when, and for an edit the new question and answer): nothing
is overwritten, and the latest decision on a pair is the one the dataset applies (`core.dataset.review`).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from fine_tune_dag.core.dataset.review import DECISIONS, EDIT
from fine_tune_dag.core.store.warehouse import Warehouse

# The latest decision on each pair, whoever made it (ties on the clock broken by id, as preference labels are).
_LATEST_LABELS_SQL = """
    SELECT pair_id, decision, question AS edited_question, answer AS edited_answer, labeler, labeled_at
    FROM pair_labels
    QUALIFY row_number() OVER (PARTITION BY pair_id ORDER BY labeled_at DESC, label_id DESC) = 1
"""


def record_pair_decision(
    db: Warehouse, pair_id: str, labeler: str, decision: str, question: str = "", answer: str = ""
) -> str:
    """Save a person's decision at once; an edit carries the whole new question and answer (neither empty).
    Returns the stored decision."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if not labeler.strip():
        raise ValueError("a decision needs the name of who made it")
    if decision == EDIT and not (question.strip() and answer.strip()):
        raise ValueError("an edit needs both a question and an answer")
    if db.query("SELECT 1 FROM qa_pairs WHERE pair_id = ?", [pair_id]).empty:
        raise KeyError(f"no pair {pair_id!r}")
    row = {
        "label_id": uuid.uuid4().hex,
        "pair_id": pair_id,
        "labeler": labeler,
        "decision": decision,
        "question": question.strip() if decision == EDIT else None,
        "answer": answer.strip() if decision == EDIT else None,
        "labeled_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }
    db.insert_rows("pair_labels", pd.DataFrame([row]))
    return decision


def review_progress(db: Warehouse, labeler: str = "") -> tuple[int, int]:
    """Pairs with a decision (by anyone: a decision is about the data, not a person's taste) and pairs in all.
    `labeler` is unused: it keeps the signature every labelling page's progress has."""
    counts = db.query(
        "SELECT (SELECT count(DISTINCT l.pair_id) FROM pair_labels l JOIN qa_pairs q USING (pair_id)) AS done, "
        "(SELECT count(*) FROM qa_pairs) AS total"
    )
    return int(counts["done"].iloc[0]), int(counts["total"].iloc[0])


def next_pair_to_review(db: Warehouse, labeler: str = "") -> dict[str, Any] | None:
    """The first pair nobody has decided on, by file, passage and pair (kept ones of a passage first), with its
    passage and why the filters or the judge kept or rejected it; None when every pair has a decision."""
    rows = db.query(
        "SELECT q.pair_id, n.path, q.passage_index, p.text AS passage, q.mode, q.question, q.answer, q.status, "
        "q.reason, q.judge_score, q.judge_reason FROM qa_pairs q "
        "JOIN passages p USING (note_id, passage_index) LEFT JOIN raw_notes n USING (note_id) "
        "WHERE NOT EXISTS (SELECT 1 FROM pair_labels l WHERE l.pair_id = q.pair_id) "
        "ORDER BY n.path, q.passage_index, q.status, q.pair_id LIMIT 1"
    )
    if rows.empty:
        return None
    row = rows.iloc[0]
    verdict = f"{row.status}: {row.reason}" if row.reason else row.status
    if pd.notna(row.judge_score):
        verdict += f" · judge {int(row.judge_score)}/5: {row.judge_reason}"
    return {
        "pair_id": row.pair_id,
        "note": f"{row.path} · passage {int(row.passage_index) + 1} · {row['mode']}",
        "passage": row.passage,
        "question": row.question,
        "answer": row.answer,
        "verdict": verdict,
    }


def note_pairs_with_decisions(db: Warehouse, note_ids: list[str]) -> pd.DataFrame:
    """Every pair of these notes, kept or rejected, with its passage and the latest decision on it (null columns
    where there is none): what `core.dataset.review.apply_reviews` turns into the dataset's pairs."""
    return db.query(
        "SELECT q.pair_id, q.note_id, q.passage_index, q.mode, NULL::VARCHAR AS system, q.question, q.answer, "
        f"q.status, l.decision, l.edited_question, l.edited_answer FROM qa_pairs q LEFT JOIN ({_LATEST_LABELS_SQL}) l "
        "USING (pair_id) WHERE q.note_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY q.note_id, q.pair_id",
        [note_ids],
    )


def pair_labels_state(db: Warehouse) -> tuple[int, str]:
    """How many decisions there are and when the latest was made: what the sensor compares between ticks
    (decisions are only ever added, so any new one changes it)."""
    row = db.query("SELECT count(*) AS labels, max(labeled_at) AS latest FROM pair_labels").iloc[0]
    return int(row["labels"]), "" if pd.isna(row["latest"]) else str(row["latest"])


def reviewed_train_pairs(db: Warehouse, dataset_version: str) -> tuple[int, int] | None:
    """Train pairs of a dataset version that a person accepted or edited, and its train pairs; None for a version
    the warehouse has no record of."""
    rows = db.query(
        "SELECT reviewed_train_pairs, train_pairs FROM dataset_versions WHERE dataset_version = ?", [dataset_version]
    )
    return None if rows.empty else (int(rows.iloc[0, 0] or 0), int(rows.iloc[0, 1]))
