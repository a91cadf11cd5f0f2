"""The pairs a dataset is built from: each source's pairs, people's decisions applied, near-duplicate passages
across notes dropped, and each row's weight in the training mix. The step dataset_splits calls.

Why passages are de-duplicated here and not per note: a note's partition cannot know which copy of a text is the
first without reading every other note, which would make each partition's work grow with the corpus; the
dataset is built from every note anyway, in one pass (MinHash over all passages: about 0.3 s per 2,000). The
teacher calls already spent on a dropped copy are cached, so rebuilding costs none. Near-duplicate questions
are removed within each note at synthesis (`core.synthesis.qa_pairs.filter_pairs`), before the judge sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from fine_tune_dag.core.dataset.config import DatasetSettings
from fine_tune_dag.core.dataset.review import apply_reviews, mix_weight, repeated_passages, without_passages
from fine_tune_dag.core.store.notes import kept_pairs, note_passages, note_source_kinds
from fine_tune_dag.core.store.pair_labels import note_pairs_with_decisions
from fine_tune_dag.core.store.warehouse import Warehouse


def dataset_pairs(db: Warehouse, note_ids: list[str], settings: DatasetSettings) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every pair of the chosen sources with `reviewed`, `source_kind` and `weight`, and counts of what the
    decisions and the de-duplication changed."""
    repeats = repeated_passages(note_passages(db, note_ids), settings.near_duplicate_passages)
    frames: list[pd.DataFrame] = []
    counts = {"accepted": 0, "edited": 0, "rejected_by_people": 0, "restored_by_people": 0}
    for source in settings.sources:
        if source == "notes":
            pairs, counts = apply_reviews(note_pairs_with_decisions(db, note_ids))
        else:
            pairs = kept_pairs(db, source, note_ids, settings.writing_seed).assign(reviewed=False)
        frames.append(pairs)
    combined = _concat(frames)
    kept = without_passages(combined, repeats)
    kinds = note_source_kinds(db, note_ids)
    rows = kept.assign(source_kind=kept["note_id"].map(kinds).fillna(kept["mode"]))
    rows = rows.assign(weight=mix_weight(rows, settings.mix_reviewed, settings.source_weights))
    return rows.drop(columns="passage_index"), {
        **counts,
        "near_duplicate_passages": len(repeats),
        "near_duplicate_examples_dropped": len(combined) - len(kept),
        "reviewed": int(rows["reviewed"].sum()),
    }


def _concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    columns = ["pair_id", "note_id", "passage_index", "mode", "system", "question", "answer", "reviewed"]
    non_empty = [frame for frame in frames if not frame.empty]
    if not non_empty:
        return pd.DataFrame(columns=columns).astype({"reviewed": bool})
    return pd.concat(non_empty, ignore_index=True).reindex(columns=columns)  # teacher pairs have no passage
