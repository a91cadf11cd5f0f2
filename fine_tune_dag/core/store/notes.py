"""Queries over the notes' tables: parsed notes, rejections, passages, Q&A pairs and the pairs that make a dataset."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.dataset.review import DEFAULT_SOURCE_KIND
from fine_tune_dag.core.dataset.writing import writing_examples
from fine_tune_dag.core.ingest import notes as ingest
from fine_tune_dag.core.ingest.notes import ParsedNote
from fine_tune_dag.core.ingest.watch import file_sha256
from fine_tune_dag.core.store.warehouse import Warehouse

PAIR_SOURCES = ("notes", "writing", "request_log", "prompt_completion")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def rows_for_note(db: Warehouse, table: str, note_id: str, upstream: str, order_by: str = "note_id") -> pd.DataFrame:
    """The note's rows of an upstream table; missing rows mean the upstream partition was never built."""
    rows = db.query(f"SELECT * FROM {table} WHERE note_id = ? ORDER BY {order_by}", [note_id])
    if rows.empty:
        raise StageError(f"no {table} rows for note '{note_id}': materialize {upstream} for this partition first")
    return rows


def save_parsed_note(db: Warehouse, note: ParsedNote) -> None:
    """The note's one row, replacing an earlier version; a note that parses is no longer rejected."""
    row = {
        "note_id": note.note_id,
        "path": note.path,
        "title": note.title,
        "format": note.format,
        "text": note.text,
        "metadata": json.dumps(note.metadata, ensure_ascii=False),
        "sha256": note.sha256,
        "encoding": note.encoding,
        "char_count": note.char_count,
        "parsed_at": _now(),
        "source_kind": note.source_kind,
        "context": json.dumps(note.context, ensure_ascii=False),
    }
    db.replace_rows("raw_notes", pd.DataFrame([row]), {"note_id": note.note_id})
    db.execute("DELETE FROM rejected_notes WHERE note_id = ?", [note.note_id])


def reject_note(
    db: Warehouse, note_id: str, relative: str | None, reason: str, run_id: str, path: Path | None = None
) -> None:
    """One row per rejected note, replaced on each attempt and removed once the note parses.

    Only a regular file within the size limit is hashed: a link may lead out of the notes folder, a pipe
    would block the read, and a huge file is refused precisely so it is never read whole.
    """
    size, digest = None, None
    try:
        if path is not None:
            status = path.lstat()
            size = status.st_size
            if stat.S_ISREG(status.st_mode) and size <= ingest.MAX_NOTE_BYTES:
                digest = file_sha256(path)
    except OSError:
        digest = None
    row = {
        "note_id": note_id,
        "path": relative,
        "reason": reason,
        "size_bytes": size,
        "sha256": digest,
        "rejected_at": _now(),
        "run_id": run_id,
    }
    db.insert_rows("rejected_notes", pd.DataFrame([row]))


def rejected_notes(db: Warehouse) -> pd.DataFrame:
    return db.query("SELECT coalesce(path, note_id) AS file, reason, rejected_at FROM rejected_notes ORDER BY file")


def rejected_listing(db: Warehouse, notes_dir: Path) -> tuple[list[str], list[str]]:
    """A line per rejected note and why, and a line per file in the notes folder of a type that is not read:
    what `fine-tune-dag rejected` prints, so no file is left out silently."""
    rejected = [
        f"{row.file}: {row.reason}  ({row.rejected_at:%Y-%m-%d %H:%M} UTC)" for row in rejected_notes(db).itertuples()
    ]
    unsupported = ingest.survey_notes(notes_dir)[1] if notes_dir.is_dir() else {}
    return rejected, [f"{path}: {reason}  (not read)" for path, reason in unsupported.items()]


def note_source_kinds(db: Warehouse, note_ids: list[str]) -> dict[str, str]:
    """Note id → the kind of source it came from (note, mail, chat, web, ebook), to weight the kinds in a mix."""
    rows = db.query(
        "SELECT note_id, coalesce(source_kind, ?) AS kind FROM raw_notes WHERE note_id IN (SELECT unnest(?::VARCHAR[]))",
        [DEFAULT_SOURCE_KIND, note_ids],
    )
    return dict(zip(rows["note_id"], rows["kind"]))


def synthesized_note_hashes(db: Warehouse) -> dict[str, str]:
    """Note id → content hash of every note whose Q&A pairs were synthesized."""
    done = db.query("SELECT note_id, sha256 FROM raw_notes WHERE note_id IN (SELECT note_id FROM qa_pairs)")
    return dict(zip(done["note_id"], done["sha256"]))


def paths_outside(db: Warehouse, note_ids: list[str]) -> list[str]:
    """Files parsed once whose partition is gone (deleted notes): they leave the dataset."""
    return db.query(
        "SELECT DISTINCT path FROM raw_notes WHERE note_id NOT IN (SELECT unnest(?::VARCHAR[])) ORDER BY path",
        [note_ids],
    )["path"].tolist()


def trainable_notes(db: Warehouse, note_ids: list[str]) -> tuple[list[str], pd.DataFrame, dict[str, str]]:
    """Registered notes that parse now, one per distinct content; plus the rejected and the copies.

    A rejected note's rows from an earlier good version stay in the warehouse but out of training,
    and a copy of another note would put the same pairs on both sides of the split.
    """
    rejected = db.query(
        "SELECT note_id, path, reason FROM rejected_notes WHERE note_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY path",
        [note_ids],
    )
    parsed = db.query(
        "SELECT note_id, path, sha256 FROM raw_notes WHERE note_id IN (SELECT unnest(?::VARCHAR[])) "
        "AND note_id NOT IN (SELECT note_id FROM rejected_notes) ORDER BY path",
        [note_ids],
    )
    first_path = parsed.drop_duplicates("sha256").set_index("sha256")["path"]
    copies = parsed[parsed.duplicated("sha256")]
    duplicates = {row.path: first_path[row.sha256] for row in copies.itertuples()}
    return parsed[~parsed.duplicated("sha256")]["note_id"].tolist(), rejected, duplicates


def note_passages(db: Warehouse, note_ids: list[str]) -> pd.DataFrame:
    """These notes' passages with each note's file, title and content hash (what lets the retrieval index reuse
    an unchanged note's entries), in file and passage order."""
    return db.query(
        "SELECT p.note_id, n.path, n.sha256, n.title, p.passage_index, p.topic, p.text "
        "FROM passages p JOIN raw_notes n USING (note_id) "
        "WHERE p.note_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY n.path, p.passage_index",
        [note_ids],
    )


def kept_pairs(db: Warehouse, source: str, note_ids: list[str], writing_seed: int = 0) -> pd.DataFrame:
    """Pairs of one source other than the synthesized ones (`core.store.pair_labels.note_pairs_with_decisions`);
    teacher pairs are split one by one (their group is the pair), notes by note.

    'writing' is the author's own text as training examples (`core.dataset.writing`), drawn with `writing_seed`, each
    with the passage it came from."""
    if source not in PAIR_SOURCES:
        raise StageError(f"unknown source {source!r}; choose from {PAIR_SOURCES}")
    if source == "notes":
        raise ValueError("synthesized pairs come with people's decisions: note_pairs_with_decisions")
    if source == "writing":
        return writing_examples(note_passages(db, note_ids), writing_seed)
    return db.query(
        f"SELECT pair_id, '{source}:' || pair_id AS note_id, '{source}' AS mode, system, question, answer "
        f"FROM {source}_pairs"
    )


def note_files(db: Warehouse) -> pd.DataFrame:
    """Every parsed note's file and content hash, for lineage."""
    return db.query("SELECT note_id, path, sha256 FROM raw_notes")


def synthesis_history(db: Warehouse, provider: str) -> tuple[pd.DataFrame, int, int, float | None]:
    """What earlier runs of this provider produced: mean output tokens per template, candidate and kept pairs,
    and mean tokens per training pair."""
    means = db.query(
        "SELECT template, avg(output_tokens) AS tokens FROM llm_requests "
        "WHERE provider = ? AND NOT cache_hit AND status = 'ok' GROUP BY template",
        [provider],
    )
    pairs = db.query("SELECT count(*) AS total, count(*) FILTER (WHERE status = 'kept') AS kept FROM qa_pairs")
    tokens = db.query("SELECT avg(prompt_tokens + answer_tokens) AS tokens FROM dataset_splits")
    mean_tokens = tokens["tokens"].iloc[0]
    return (
        means,
        int(pairs["total"].iloc[0]),
        int(pairs["kept"].iloc[0]),
        float(mean_tokens) if pd.notna(mean_tokens) else None,
    )


def save_passages(db: Warehouse, note_id: str, passages: pd.DataFrame) -> None:
    """The note's passages, replacing those of its earlier version."""
    db.replace_rows("passages", passages, {"note_id": note_id})


def save_qa_pairs(db: Warehouse, note_id: str, pairs: pd.DataFrame) -> None:
    """The note's kept and rejected Q&A pairs, replacing those of its earlier version."""
    db.replace_rows("qa_pairs", pairs, {"note_id": note_id})


def save_request_log_pairs(db: Warehouse, pairs: pd.DataFrame) -> None:
    """The teacher's logged answers as training pairs, rebuilt whole and stamped now."""
    db.replace_rows("request_log_pairs", pairs.assign(created_at=_now()))


def save_prompt_completion_pairs(db: Warehouse, pairs: pd.DataFrame) -> None:
    """The user's prompts answered by the teacher, rebuilt whole and stamped now."""
    db.replace_rows("prompt_completion_pairs", pairs.assign(created_at=_now()))
