"""Stable train/test assignment by note and the chat-format export.

A note's side is a pure function of its id, so notes added later never move old test items and
all pairs of one note stay on one side (no leakage between near-identical questions).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from fine_tune_dag.core.common.chat import chat_messages, text_messages
from fine_tune_dag.core.dataset.writing import PRETRAIN

SPLIT_SALT = "fine_tune_dag/split/v1"


DEFAULT_TEST_FRACTION = 0.2
MIX_COLUMNS = ("reviewed", "source_kind", "weight")  # what the dataset records for the training mix


def split_by_note_hash(note_id: str, test_fraction: float, salt: str = SPLIT_SALT) -> str:
    """'test' for a stable `test_fraction` share of notes, else 'train'."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    digest = hashlib.sha256(f"{salt}:{note_id}".encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def folds_by_note_hash(note_ids: Iterable[str], folds: int, salt: str = SPLIT_SALT) -> dict[str, int]:
    """Each note's fold (0 … folds − 1) for cross-validation: notes ordered by their hash and dealt in turn, so
    folds differ in size by one note at most and a note's fold depends on the notes there are, not on order."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    ordered = sorted(set(note_ids), key=lambda n: hashlib.sha256(f"{salt}:{n}".encode("utf-8")).hexdigest())
    return {note: position % folds for position, note in enumerate(ordered)}


def assign_splits(kept_pairs: pd.DataFrame, test_fraction: float, system_prompt: str) -> pd.DataFrame:
    """One row per kept pair with its split and the system prompt it is trained and evaluated with.

    Pairs that bring their own `system` (a teacher's task) keep it; the others get `system_prompt`. Whether a
    person reviewed a pair, its note's source kind and its mix weight (`core.workflows.dataset`) come along.
    """
    columns = ["pair_id", "note_id", "split", "mode", "system", "question", "answer"]
    columns += [column for column in MIX_COLUMNS if column in kept_pairs]
    if kept_pairs.empty:
        return pd.DataFrame(columns=columns)
    own_system = kept_pairs["system"].fillna(system_prompt) if "system" in kept_pairs else system_prompt
    rows = kept_pairs.assign(
        split=[split_by_note_hash(n, test_fraction) for n in kept_pairs["note_id"]],
        system=own_system,
    )
    return rows.sort_values(["split", "note_id", "pair_id"]).reset_index(drop=True)[columns]


def dataset_version(splits: pd.DataFrame) -> str:
    """Content hash of the dataset: same pairs, sides, prompts and mix weights give the same version."""
    digest = hashlib.sha256()
    for row in splits.sort_values("pair_id").itertuples(index=False):
        fields = [row.pair_id, row.split, row.system, row.question, row.answer]
        weight = getattr(row, "weight", 1.0)
        fields += [repr(float(weight))] if weight != 1.0 else []  # weights of 1 hash as before weights existed
        digest.update("\x1f".join(fields).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()[:12]


def chat_record(mode: str, system: str, question: str, answer: str) -> dict[str, Any]:
    """A row as the chat records training reads and the JSONL export holds; continued-pretraining rows are
    the author's text alone."""
    if mode == PRETRAIN:
        return {"messages": text_messages(answer)}
    return {"messages": chat_messages(system, question, answer)}


def records_of(splits: pd.DataFrame) -> list[dict[str, Any]]:
    return [chat_record(r.mode, r.system, r.question, r.answer) for r in splits.itertuples(index=False)]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write to a temporary name and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def fold_key(fold: int, folds: int) -> str:
    """The name of one cross-validation fold (its partition key), counted from 1."""
    return f"fold-{fold + 1}-of-{folds}"
