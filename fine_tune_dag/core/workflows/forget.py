"""`forget`: a note's derived data removed everywhere, the adapters trained on it retired, and a record of it.

A note's data is found two ways. By key: its own rows (note id), the LLM requests made for its partition and
their cached answers, its pairs' comparisons, edge cases and blind trials, and every row hanging off those. By
its words: any row, and any line of an export or report, that shares a run of `min_shared_words` words with the
note, its passages or its pairs and no other note has that run (served requests, a judge's prompts, a copy in a
teacher pair). The warehouse then keeps no text of it; the record says what went from where, without the text.

Nothing here retrains: the caller does (the CLI at once, the Dagster job through the run it requests), because
training is the graph's work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.text_metrics import words
from fine_tune_dag.core.evaluation.edge_cases import case_id
from fine_tune_dag.core.ingest.notes import note_partition_key
from fine_tune_dag.core.retrieval.index import drop_notes
from fine_tune_dag.core.store.forgetting import (
    BY_TEXT_OR_KEY,
    adapters_trained_on,
    forgetting_record,
    mark_adapters,
    marked_versions,
    note_for_path,
    note_is_known,
    note_pairs,
    note_path,
    note_texts,
    other_note_texts,
    remove_rows,
    rows_to_search,
    save_forgetting_record,
)
from fine_tune_dag.core.store.layout import DataLayout
from fine_tune_dag.core.store.registry import best_unmarked_adapter, clear_champion, current_champion, promote
from fine_tune_dag.core.store.warehouse import Warehouse

SCRUBBED_SUFFIXES = (".md", ".html", ".txt", ".csv", ".jsonl")  # text files of exports and reports, line by line
REMOVED_LINE = "(removed: this line quoted a forgotten note)"
NO_CHAMPION = "none (the base model serves)"


@dataclass(frozen=True)
class ForgetSettings:
    min_shared_words: int = field(
        default=10,
        metadata={
            "help": "a row or line of a report carries the note when it shares this many consecutive words with it "
            "(words other notes also have do not count)"
        },
    )
    retrain: bool = field(default=True, metadata={"help": "train and evaluate a new adapter without the note"})

    def __post_init__(self) -> None:
        if self.min_shared_words < 3:
            raise ValueError(f"min_shared_words must be at least 3, got {self.min_shared_words}")


class UnknownNote(StageError):
    """Neither a note file the warehouse has read nor a note key: nothing to forget, and nothing is done."""


def path_sha256(relative_path: str) -> str:
    """What the record keeps of the note's file name."""
    return hashlib.sha256(relative_path.encode("utf-8", "surrogateescape")).hexdigest()


def _runs(text: str, length: int) -> set[str]:
    found = words(text)
    return {" ".join(found[i : i + length]) for i in range(len(found) - length + 1)}


def _plain(value: Any) -> str:
    """The text of a cell: JSON (chat messages, template variables) read down to its strings."""
    if not isinstance(value, str):
        return ""
    try:
        decoded = json.loads(value)
    except ValueError:
        return value

    def leaves(item: Any) -> Iterable[str]:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for inner in item.values():
                yield from leaves(inner)
        elif isinstance(item, list):
            for inner in item:
                yield from leaves(inner)

    return "\n".join(leaves(decoded)) if isinstance(decoded, (dict, list)) else value


@dataclass(frozen=True)
class NoteTrace:
    """The note's distinctive runs of words: runs its texts have and no other note has."""

    runs: frozenset[str]
    length: int

    @classmethod
    def of(cls, texts: Iterable[str], other_texts: Iterable[str], length: int) -> NoteTrace:
        runs: set[str] = set()
        for text in texts:
            runs |= _runs(text, length)
        for text in other_texts:
            runs -= _runs(text, length)
        return cls(frozenset(runs), length)

    def carries(self, value: Any) -> bool:
        return bool(self.runs) and not self.runs.isdisjoint(_runs(_plain(value), self.length))


def rows_to_remove(
    note_id: str, pairs: pd.DataFrame, trace: NoteTrace, rows: Mapping[str, pd.DataFrame]
) -> dict[str, set[str]]:
    """The keys to delete in each table of BY_TEXT_OR_KEY: rows of the note's keys, rows carrying its words,
    and rows that hang off either."""

    def carrying(table: str) -> set[str]:
        key, texts = BY_TEXT_OR_KEY[table]
        frame = rows[table]
        return {str(k) for k, *cells in frame[[key, *texts]].itertuples(index=False) if any(map(trace.carries, cells))}

    def where(table: str, column: str, values: Iterable[Any]) -> set[str]:
        frame = rows[table]
        return set(frame.loc[frame[column].isin(set(values)), BY_TEXT_OR_KEY[table][0]].astype(str))

    pair_ids = set(pairs["pair_id"])
    requests = where("llm_requests", "partition", [note_id]) | carrying("llm_requests")
    cache = set(rows["llm_requests"].loc[rows["llm_requests"]["request_id"].isin(requests), "prompt_hash"]) | carrying(
        "llm_cache"
    )
    requests |= where("llm_requests", "prompt_hash", cache)
    teacher = {table: carrying(table) for table in ("request_log_pairs", "prompt_completion_pairs")}
    teacher_ids = {f"{table.removesuffix('_pairs')}:{pair}" for table, found in teacher.items() for pair in found}
    cases = (set(map(case_id, pairs["question"].dropna())) & set(rows["edge_cases"]["case_id"])) | carrying(
        "edge_cases"
    )
    prompts = pair_ids | {f"edge:{case}" for case in cases}
    candidates = where("preference_candidates", "prompt_id", prompts) | carrying("preference_candidates")
    trials = where("blind_trials", "note_id", [note_id]) | carrying("blind_trials")
    return {
        "dataset_splits": where("dataset_splits", "note_id", [note_id, *teacher_ids]) | carrying("dataset_splits"),
        "llm_requests": requests,
        "llm_cache": cache,
        **teacher,
        "edge_cases": cases,
        "edge_case_answers": cases | carrying("edge_case_answers"),
        "preference_candidates": candidates,
        "preference_labels": candidates,
        "preference_pairs": candidates | carrying("preference_pairs"),
        "blind_trials": trials,
        "blind_labels": trials,
        "pair_labels": where("pair_labels", "pair_id", pair_ids) | carrying("pair_labels"),  # people's edits too
    }


def scrub_files(folders: Iterable[Path], trace: NoteTrace) -> list[Path]:
    """Lines that carry the note, in the text files of exports and reports: dropped from JSON Lines (a record
    each), replaced by a marker elsewhere. Returns the files changed."""
    changed = []
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if not path.is_file() or path.suffix not in SCRUBBED_SUFFIXES:
                continue
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
            kept = [
                line if not trace.carries(line) else "" if path.suffix == ".jsonl" else REMOVED_LINE + "\n"
                for line in lines
            ]
            if kept != lines:
                path.write_text("".join(kept), encoding="utf-8")
                changed.append(path)
    return changed


def resolve_note(db: Warehouse, notes_dir: Path, reference: str) -> str:
    """The note key behind a partition key or a note file (relative to the notes folder, or absolute), whether
    or not the file still exists."""
    if note_is_known(db, reference) or forgetting_record(db, reference) is not None:
        return reference
    path = Path(reference)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(notes_dir.resolve())
        except ValueError as error:
            raise UnknownNote(f"{reference} is not in the notes folder {notes_dir}") from error
    relative = path.as_posix()
    return note_for_path(db, relative) or note_partition_key(relative)


@dataclass(frozen=True)
class Forgetting:
    """What one `forget` did."""

    note_key: str
    removed: dict[str, int]  # table (or "retrieval index") → rows removed
    files: list[str]  # exports and reports scrubbed, relative to the data folder
    adapters_marked: list[str]
    champion_before: str
    champion_after: str
    first_time: bool

    @property
    def nothing_removed(self) -> bool:
        return not any(self.removed.values()) and not self.files and not self.adapters_marked

    @property
    def text(self) -> str:
        if self.nothing_removed:
            return f"note {self.note_key} is already forgotten: nothing left to remove"
        rows = ", ".join(f"{count} from {table}" for table, count in self.removed.items() if count) or "no rows"
        lines = [
            f"forgot note {self.note_key}: removed {rows}",
            f"scrubbed {len(self.files)} export and report files",
            f"marked {len(self.adapters_marked)} adapters trained on it: {', '.join(self.adapters_marked) or 'none'}",
        ]
        if self.champion_before != self.champion_after:
            lines.append(f"champion {self.champion_before} → {self.champion_after}")
        return "\n".join(lines)


def _version(adapter: pd.Series | None) -> str:
    return NO_CHAMPION if adapter is None else str(adapter.version)


def forget_note(
    db: Warehouse, layout: DataLayout, reference: str, settings: ForgetSettings, run_id: str = ""
) -> Forgetting:
    """Remove the note's derived data from the warehouse, the retrieval index, the exports and the reports; mark
    the adapters trained on it; replace a marked champion by the best unmarked adapter, or by the base model;
    record it. Safe to repeat: a second run finds nothing and says so."""
    note_id = resolve_note(db, layout.notes, reference)
    first_time = forgetting_record(db, note_id) is None
    if first_time and not note_is_known(db, note_id):
        raise UnknownNote(
            f"no note {reference!r} in the warehouse: give a note file (relative to {layout.notes}) or a partition "
            "key that has been read (`fine-tune-dag lineage` lists the notes behind each adapter)"
        )
    relative = note_path(db, note_id) or ""
    trace = NoteTrace.of(note_texts(db, note_id), other_note_texts(db, note_id), settings.min_shared_words)
    keyed = rows_to_remove(note_id, note_pairs(db, note_id), trace, rows_to_search(db))
    marked = marked_versions(db)
    trained = [v for v in adapters_trained_on(db, note_id) if v not in marked]
    champion_before = current_champion(db)
    removed = remove_rows(db, note_id, keyed)
    removed["retrieval index"] = drop_notes(layout.index, {note_id})
    files = [str(p.relative_to(layout.data)) for p in scrub_files([layout.exports, layout.reports], trace)]
    mark_adapters(db, trained, note_id)
    db.rewrite()
    if champion_before is not None and champion_before.version in trained:
        reason = f"forget: champion {champion_before.version} was trained on a forgotten note"
        best = best_unmarked_adapter(db)
        if best is None:
            clear_champion(db, champion_before, f"{reason}; no other adapter left, the base model serves", run_id)
        else:
            promote(db, best.version, float(best.test_nll), champion_before, None, f"{reason}; the best left", run_id)
    forgetting = Forgetting(
        note_id, removed, files, trained, _version(champion_before), _version(current_champion(db)), first_time
    )
    if first_time or not forgetting.nothing_removed:
        save_forgetting_record(
            db,
            note_id,
            path_sha256(relative) if relative else "",
            removed,
            files,
            trained,
            forgetting.champion_before,
            forgetting.champion_after,
        )
    return forgetting
