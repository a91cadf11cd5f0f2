"""The dataset's settings, apart from the work itself: torch-free, so Dagster config reads them without loading the
dataset's queries."""

from __future__ import annotations

from dataclasses import dataclass, field

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
