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
from dataclasses import dataclass, field

import pandas as pd

from fine_tune_dag.core.dataset.review import apply_reviews, mix_weight, repeated_passages, without_passages
from fine_tune_dag.core.store.notes import kept_pairs, note_passages, note_source_kinds
from fine_tune_dag.core.store.pair_labels import note_pairs_with_decisions
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.core.synthesis.dedup import DEFAULT_PASSAGE_THRESHOLD


@dataclass(frozen=True)
class DatasetSettings:
    sources: tuple[str, ...] = field(
        default=("notes", "writing"),
        metadata={
            "help": "where pairs come from: 'notes' (synthesized Q&A), 'writing' (the passages themselves: continued "
            "pretraining and writing tasks, no LLM), 'request_log' (request_log_pairs), 'prompt_completion' "
            "(prompt_completion_pairs), or a mix"
        },
    )
    writing_seed: int = field(
        default=0, metadata={"help": "draws the writing tasks' prompt phrasings and system prompts"}
    )
    near_duplicate_passages: float = field(
        default=DEFAULT_PASSAGE_THRESHOLD,
        metadata={
            "help": "MinHash estimate of word-trigram Jaccard at which a passage repeats an earlier note's (by "
            "path): its pairs and writing tasks leave the dataset (1.0: only identical texts)"
        },
    )
    mix_reviewed: float = field(
        default=1.0,
        metadata={"help": "training-mix weight of a pair a person accepted or edited (2: twice, 0.5: a seeded half)"},
    )
    source_weights: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "training-mix weight per source kind of the note (note, mail, chat, web, ebook; teacher pairs "
            "by their source), e.g. {'mail': 0.5}; 1 where unset"
        },
    )


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
