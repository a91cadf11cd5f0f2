"""The training mix: how much of each source one adapter learns from, as conversations for the one renderer.

Sources are the synthesized Q&A pairs (`qa`, with teacher pairs), the author's text for continued
pretraining (`pretrain`), the writing tasks (`write`, `continue`) and, as an option, retrieval-augmented Q&A
(`retrieval_qa`: the pair's own passage among distractors in context, so a tuned model learns to use what
retrieval hands it). A weight of 2 takes every row of a source twice, 0.5 a seeded half, 0 none; each row's own
weight from the dataset (a pair a person reviewed, its note's source kind) multiplies its source's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import pandas as pd

from fine_tune_dag.core.dataset.splits import chat_record
from fine_tune_dag.core.dataset.writing import WRITING_MODES
from fine_tune_dag.core.retrieval.index import RetrievedPassage
from fine_tune_dag.core.retrieval.prompt import retrieval_messages

QA, RETRIEVAL_QA = "qa", "retrieval_qa"
MIX_SOURCES = (QA, *WRITING_MODES, RETRIEVAL_QA)


def source_of(mode: str) -> str:
    """The mix source a dataset row belongs to: its writing mode, else Q&A."""
    return mode if mode in WRITING_MODES else QA


def weighted(rows: list[Any], weight: float, rng: random.Random) -> list[Any]:
    """Every row `floor(weight)` times, plus a seeded sample of the fractional rest."""
    if weight < 0:
        raise ValueError(f"a mix weight cannot be negative, got {weight}")
    whole = math.floor(weight)
    extra = round((weight - whole) * len(rows))
    return rows * whole + rng.sample(rows, extra)


def weighted_rows(rows: pd.DataFrame, weight: float, rng: random.Random) -> list[Any]:
    """The rows (as tuples) by `weight` times each row's own `weight` column (a reviewed pair, a source kind:
    `core.dataset.review.mix_weight`); rows of one weight are drawn together, so rows all of weight 1 draw as
    `weighted` alone would."""
    own = rows["weight"].fillna(1.0) if "weight" in rows else pd.Series(1.0, index=rows.index)
    chosen: list[Any] = []
    for row_weight in sorted(own.unique()):
        chosen += weighted(list(rows[own == row_weight].itertuples(index=False)), weight * row_weight, rng)
    return chosen


def retrieval_conversation(row: Any, pool: pd.DataFrame, distractors: int, rng: random.Random) -> list[dict[str, str]]:
    """The pair's own passage among `distractors` passages of other notes, in a seeded order."""
    others = pool[pool["note_id"] != row.note_id]
    chosen = others.iloc[rng.sample(range(len(others)), min(distractors, len(others)))]
    passages = [
        RetrievedPassage(p.note_id, p.path, int(p.passage_index), p.passage, 0.0)
        for p in [row, *chosen.itertuples(index=False)]
    ]
    rng.shuffle(passages)
    return retrieval_messages(row.system, row.question, passages, row.answer)


def mixed_conversations(
    train: pd.DataFrame, weights: Mapping[str, float], seed: int, distractors: int = 2
) -> tuple[list[list[dict[str, str]]], dict[str, int]]:
    """The conversations to train on and how many came from each source.

    `train` is the train split (`core.store.splits.train_split`): distractors come from it alone, so nothing
    of a test note enters training through the context either."""
    unknown = set(weights) - set(MIX_SOURCES)
    if unknown:
        raise ValueError(f"unknown mix sources {sorted(unknown)}; choose from {MIX_SOURCES}")
    rng = random.Random(seed)
    sources = train["mode"].map(source_of)
    conversations: list[list[dict[str, str]]] = []
    counts: dict[str, int] = {}
    for source in MIX_SOURCES[:-1]:
        chosen = weighted_rows(train[sources == source], weights.get(source, 0.0), rng)
        conversations += [chat_record(r.mode, r.system, r.question, r.answer)["messages"] for r in chosen]
        counts[source] = len(chosen)
    grounded = train[(sources == QA) & train["passage"].notna()]
    pool = grounded.drop_duplicates(["note_id", "passage_index"])
    chosen_rows = weighted_rows(grounded, weights.get(RETRIEVAL_QA, 0.0), rng)
    conversations += [retrieval_conversation(row, pool, distractors, rng) for row in chosen_rows]
    counts[RETRIEVAL_QA] = len(chosen_rows)
    return conversations, counts
