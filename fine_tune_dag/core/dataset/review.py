"""What the dataset makes of people's decisions on pairs, of near-duplicate passages, and of how much each pair
weighs in the training mix.

The person knows their notes better than any filter or judge, so their latest decision wins: an edited pair
replaces the synthetic one, a rejected pair is dropped, and an accepted pair (even one a filter had rejected)
is in and marked reviewed. Passages that repeat an earlier passage of another note (the same text in a mail and a
note) are dropped with every example drawn from them, the earliest copy by file path kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from fine_tune_dag.core.synthesis.dedup import PASSAGE_SHINGLE_WORDS, near_duplicates

ACCEPT, EDIT, REJECT = "accept", "edit", "reject"
DECISIONS = (ACCEPT, EDIT, REJECT)  # what a person can decide on a pair
DEFAULT_SOURCE_KIND = "note"


def apply_reviews(pairs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The pairs that enter the dataset, with `reviewed`, and counts of each decision applied.

    `pairs` holds every synthetic pair with its filter `status` and the latest `decision`, `edited_question` and
    `edited_answer` (null where no one decided: `core.store.pair_labels.note_pairs_with_decisions`)."""
    decision = pairs["decision"]
    edited = decision == EDIT
    counts = {
        "accepted": int((decision == ACCEPT).sum()),
        "edited": int(edited.sum()),
        "rejected_by_people": int((decision == REJECT).sum()),
        "restored_by_people": int((decision.isin([ACCEPT, EDIT]) & (pairs["status"] != "kept")).sum()),
    }
    keep = (decision.isin([ACCEPT, EDIT])) | ((pairs["status"] == "kept") & decision.isna())
    result = pairs.assign(
        question=pairs["question"].where(~edited, pairs["edited_question"]),
        answer=pairs["answer"].where(~edited, pairs["edited_answer"]),
        reviewed=decision.isin([ACCEPT, EDIT]),
    )[keep]
    return result.drop(columns=["status", "decision", "edited_question", "edited_answer"]), counts


def repeated_passages(passages: pd.DataFrame, threshold: float) -> dict[tuple[str, int], tuple[str, int]]:
    """(note, passage) → the (note, passage) it near-duplicates, for passages of a note that repeat an earlier one
    of another note. `passages` holds note_id, path, passage_index and text; the earliest by (path, passage
    index) is kept. Repeats within one note are left alone: the note is the author's, as written."""
    ordered = passages.sort_values(["path", "passage_index"]).reset_index(drop=True)
    keys = list(zip(ordered["note_id"], ordered["passage_index"].astype(int)))
    repeats = near_duplicates(ordered["text"].tolist(), threshold, PASSAGE_SHINGLE_WORDS)
    return {keys[later]: keys[first] for later, first in repeats.items() if keys[later][0] != keys[first][0]}


def without_passages(rows: pd.DataFrame, dropped: Mapping[tuple[str, int], object]) -> pd.DataFrame:
    """Rows (pairs or writing examples, with note_id and passage_index) not drawn from a dropped passage."""
    if not dropped or rows.empty:
        return rows
    drawn_from = zip(rows["note_id"], rows["passage_index"])
    return rows[[(note, int(index)) not in dropped if pd.notna(index) else True for note, index in drawn_from]]


def mix_weight(rows: pd.DataFrame, mix_reviewed: float, source_weights: Mapping[str, float]) -> pd.Series:
    """Each row's weight in the training mix (`core.dataset.mixing`): `mix_reviewed` for a pair a person accepted or
    edited, times the weight of its note's source kind (mail, chat, web, ebook, note; 1 where none is set)."""
    negative = {kind: weight for kind, weight in source_weights.items() if weight < 0}
    if mix_reviewed < 0 or negative:
        raise ValueError(f"mix weights cannot be negative: mix_reviewed={mix_reviewed}, source_weights {negative}")
    by_kind = rows["source_kind"].map(lambda kind: source_weights.get(kind, 1.0)).astype(float)
    return by_kind * rows["reviewed"].map({True: mix_reviewed, False: 1.0}).astype(float)
