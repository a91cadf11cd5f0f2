"""MinHash near-duplicates: copies of a text that differ in wrapping, case and punctuation are found, reworded or
other texts are not, the threshold decides, the first copy is kept; questions within a note and passages across
notes."""

from __future__ import annotations

import pandas as pd
import pytest

from fine_tune_dag.core.dataset.review import repeated_passages, without_passages
from fine_tune_dag.core.synthesis.chunking import Passage
from fine_tune_dag.core.synthesis.dedup import PASSAGE_SHINGLE_WORDS, QUESTION_SHINGLE_WORDS, near_duplicates
from fine_tune_dag.core.synthesis.qa_pairs import (
    NEAR_DUPLICATE_QUESTION,
    SynthesisSettings,
    candidate_pairs,
    filter_pairs,
)

NOTE = (
    "I oil the chain every Sunday and wipe it on Monday. A clean chain lasts three thousand kilometres, a dirty "
    "one barely a thousand. The stretch shows first on the small cogs, where the teeth start to hook."
)
# the same text as a mail quotes it: wrapped, a ">" on every line, different case and punctuation
QUOTED = "> i oil the chain every sunday, and wipe it on monday!\n> A clean chain lasts three thousand\n> kilometres - a dirty one barely a thousand. The stretch shows first on the small cogs where the teeth start to hook"
OTHER = "The bees were heavy on the lime tree in June. I counted forty on one branch and lost count on the next."


def test_a_rewrapped_quoted_copy_is_a_near_duplicate_and_the_first_copy_stays():
    assert near_duplicates([NOTE, OTHER, QUOTED], 0.8, PASSAGE_SHINGLE_WORDS) == {2: 0}
    assert near_duplicates([QUOTED, NOTE], 0.8, PASSAGE_SHINGLE_WORDS) == {1: 0}


def test_the_threshold_decides_how_near_is_a_duplicate():
    edited = NOTE.replace("every Sunday", "each Saturday").replace("three thousand", "four thousand")
    assert near_duplicates([NOTE, edited], 0.3, PASSAGE_SHINGLE_WORDS) == {1: 0}
    assert near_duplicates([NOTE, edited], 0.9, PASSAGE_SHINGLE_WORDS) == {}
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        near_duplicates([NOTE], 0.0, PASSAGE_SHINGLE_WORDS)


def test_texts_without_words_are_never_duplicates():
    assert near_duplicates(["", "...", "", NOTE], 0.5, PASSAGE_SHINGLE_WORDS) == {}


def test_a_reordered_question_within_a_note_is_dropped_by_minhash_where_rouge_l_lets_it_through():
    passage = Passage("n", 0, 0, len(NOTE), NOTE, None, "whole")
    output = (
        "Q: Why does a chain stretch when it wears?\nA: The stretch shows first on the small cogs.\n"
        "Q: When it wears, why does a chain stretch?\nA: The stretch shows first on the small cogs, where the teeth start to hook.\n"
        "Q: How long does a clean chain last?\nA: A clean chain lasts three thousand kilometres."
    )
    pairs = filter_pairs([(p, passage) for p in candidate_pairs(passage, "grounded", output, 3)], SynthesisSettings())
    assert [(p.status, p.reason) for p in pairs] == [
        ("kept", None),
        ("rejected", NEAR_DUPLICATE_QUESTION),
        ("kept", None),
    ]
    strict = filter_pairs(
        [(p, passage) for p in candidate_pairs(passage, "grounded", output, 3)],
        SynthesisSettings(near_duplicate_questions=1.0),
    )
    assert [p.status for p in strict] == ["kept", "rejected", "kept"]  # same word set: Jaccard 1
    assert near_duplicates(
        ["How long does a clean chain last?", "How long does a dirty chain last on the small cogs?"],
        0.7,
        QUESTION_SHINGLE_WORDS,
    ) == {}


def test_passages_repeated_across_notes_keep_the_earliest_file_and_leave_repeats_within_a_note():
    passages = pd.DataFrame(
        [
            {"note_id": "mail-1", "path": "mail/2024.mbox/1", "passage_index": 0, "text": QUOTED},
            {"note_id": "chain", "path": "chain-wear.md", "passage_index": 0, "text": NOTE},
            {"note_id": "chain", "path": "chain-wear.md", "passage_index": 1, "text": NOTE},  # the author's own repeat
            {"note_id": "bees", "path": "bees.md", "passage_index": 0, "text": OTHER},
        ]
    )
    repeats = repeated_passages(passages, 0.8)
    assert repeats == {("mail-1", 0): ("chain", 0)}
    rows = pd.DataFrame(
        {"note_id": ["mail-1", "chain", "bees", "teacher:1"], "passage_index": [0, 0, 0, None], "pair_id": list("abcd")}
    )
    assert without_passages(rows, repeats)["pair_id"].tolist() == ["b", "c", "d"]
