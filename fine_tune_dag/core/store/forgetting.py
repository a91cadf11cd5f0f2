"""What `forget` reads and removes in the warehouse, and the forgetting records it leaves.

Every table of the schema is in exactly one of the groups below, so a table added later has to be placed
(fine_tune_dag_tests/test_forget.py checks it): rows found by the note's id, rows found by the note's words in
their text or by the keys of rows removed with them, and tables that hold none of a note's data.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime, timezone

import duckdb
import pandas as pd

from fine_tune_dag.core.store.warehouse import Warehouse

# the note's own rows, by note_id
BY_NOTE_ID = ("raw_notes", "rejected_notes", "passages", "qa_pairs", "dataset_notes", "privacy_findings")
# table → (key column, text columns): rows whose text carries the note's words, or that belong to removed rows
BY_TEXT_OR_KEY: dict[str, tuple[str, tuple[str, ...]]] = {
    "dataset_splits": ("pair_id", ("question", "answer")),
    "llm_cache": ("cache_key", ("messages", "response")),
    "llm_requests": ("request_id", ("variables",)),
    "request_log_pairs": ("pair_id", ("question", "answer")),
    "prompt_completion_pairs": ("pair_id", ("question", "answer")),
    "edge_cases": ("case_id", ("question", "reference")),
    "edge_case_answers": ("case_id", ("answer",)),
    "preference_candidates": ("candidate_id", ("question", "reference", "answer_a", "answer_b")),
    "preference_labels": ("candidate_id", ()),
    "preference_pairs": ("candidate_id", ("question", "chosen", "rejected")),
    "blind_trials": ("trial_id", ("prompt", "author_text", "model_text")),
    "blind_labels": ("trial_id", ()),
    "pair_labels": ("label_id", ("question", "answer")),
}
# table → why it holds none of a note's text (what it points at is handled elsewhere)
HOLDS_NO_NOTE_TEXT = {
    "dataset_versions": "counts and the paths of the exports, whose files are scrubbed",
    "llm_quota_slots": "request times and token counts",
    "sweep_results": "metrics per configuration",
    "adapters": "adapters are marked in adapter_marks, not deleted: their lineage stays",
    "evaluations": "metrics and the report's path, whose files are scrubbed",
    "evaluation_metrics": "numbers",
    "crossval_verdicts": "a fingerprint of the notes, the verdict and the report's path",
    "champion_history": "versions: a marked champion is replaced by a new row",
    "forgetting_records": "the note's key and a hash of its path, never its text",
    "adapter_marks": "versions and the note's key",
}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def note_for_path(db: Warehouse, relative_path: str) -> str | None:
    """The key of the note once read from this file (relative to the notes folder), deleted or not."""
    found = db.query(
        "SELECT note_id FROM raw_notes WHERE path = ? UNION SELECT note_id FROM rejected_notes WHERE path = ? "
        "UNION SELECT note_id FROM dataset_notes WHERE path = ? LIMIT 1",
        [relative_path] * 3,
    )
    return None if found.empty else str(found["note_id"].iloc[0])


def note_path(db: Warehouse, note_id: str) -> str | None:
    """The file the warehouse knows this note by, relative to the notes folder."""
    found = db.query(
        "SELECT path FROM raw_notes WHERE note_id = ? AND path IS NOT NULL UNION "
        "SELECT path FROM rejected_notes WHERE note_id = ? AND path IS NOT NULL UNION "
        "SELECT path FROM dataset_notes WHERE note_id = ? AND path IS NOT NULL LIMIT 1",
        [note_id] * 3,
    )
    return None if found.empty else str(found["path"].iloc[0])


def note_is_known(db: Warehouse, note_id: str) -> bool:
    """Whether any table holds rows of this note."""
    tables = (*BY_NOTE_ID, "dataset_splits", "blind_trials")
    counts = db.query(
        " UNION ALL ".join(f"SELECT count(*) AS n FROM {t} WHERE note_id = ?" for t in tables), [note_id] * len(tables)
    )
    return bool(counts["n"].sum())


def note_texts(db: Warehouse, note_id: str) -> list[str]:
    """Everything written from or about the note: its text, passages, Q&A pairs and training rows."""
    frames = [
        db.query("SELECT text FROM raw_notes WHERE note_id = ?", [note_id])["text"],
        db.query("SELECT text FROM passages WHERE note_id = ?", [note_id])["text"],
        db.query("SELECT question || ' ' || answer AS text FROM qa_pairs WHERE note_id = ?", [note_id])["text"],
        db.query("SELECT question || ' ' || answer AS text FROM dataset_splits WHERE note_id = ?", [note_id])["text"],
    ]
    return [text for frame in frames for text in frame.dropna()]


def other_note_texts(db: Warehouse, note_id: str) -> list[str]:
    """The text of every other note: words they share with the forgotten one are no evidence of it."""
    return db.query("SELECT text FROM raw_notes WHERE note_id <> ? AND text IS NOT NULL", [note_id])["text"].tolist()


def note_pairs(db: Warehouse, note_id: str) -> pd.DataFrame:
    """The note's Q&A and training pairs: their ids and questions."""
    return db.query(
        "SELECT pair_id, question FROM qa_pairs WHERE note_id = ? UNION "
        "SELECT pair_id, question FROM dataset_splits WHERE note_id = ?",
        [note_id, note_id],
    )


def rows_to_search(db: Warehouse) -> dict[str, pd.DataFrame]:
    """Each table of BY_TEXT_OR_KEY with its key, its text columns and what links it to other rows."""
    links = {
        "dataset_splits": ["note_id"],
        "llm_requests": ["prompt_hash", '"partition"'],
        "preference_candidates": ["prompt_id"],
        "blind_trials": ["note_id"],
        "pair_labels": ["pair_id"],
    }
    return {
        table: db.query(f"SELECT {', '.join([key, *texts, *links.get(table, [])])} FROM {table}")
        for table, (key, texts) in BY_TEXT_OR_KEY.items()
    }


def remove_rows(db: Warehouse, note_id: str, keyed: Mapping[str, Collection[str]]) -> dict[str, int]:
    """Delete the note's rows (BY_NOTE_ID) and the rows of each table whose key is in `keyed[table]`, in one
    transaction; returns the rows removed per table."""
    plan = [(table, "note_id", [note_id]) for table in BY_NOTE_ID]
    plan += [(table, BY_TEXT_OR_KEY[table][0], sorted(keys)) for table, keys in keyed.items()]

    def delete(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        removed = {}
        for table, column, keys in plan:
            condition = f"{column} IN (SELECT unnest(?::VARCHAR[]))"
            removed[table] = int(con.execute(f"SELECT count(*) FROM {table} WHERE {condition}", [keys]).fetchone()[0])
            if removed[table]:
                con.execute(f"DELETE FROM {table} WHERE {condition}", [keys])
        return removed

    return db.transaction(delete)


def adapters_trained_on(db: Warehouse, note_id: str) -> list[str]:
    """Every adapter whose dataset had the note on its train side, and every adapter trained from one of them
    (a DPO adapter starts from its parent's weights)."""
    return db.query(
        "WITH RECURSIVE trained(version) AS ("
        " SELECT version FROM adapters WHERE dataset_version IN "
        "  (SELECT dataset_version FROM dataset_notes WHERE note_id = ? AND split = 'train')"
        " UNION SELECT a.version FROM adapters a JOIN trained t ON a.parent_version = t.version)"
        " SELECT version FROM trained ORDER BY version",
        [note_id],
    )["version"].tolist()


def mark_adapters(db: Warehouse, versions: Collection[str], note_key: str) -> None:
    rows = pd.DataFrame({"version": sorted(versions), "note_key": note_key, "marked_at": _now()})
    db.insert_rows("adapter_marks", rows)


def marked_versions(db: Warehouse) -> set[str]:
    return set(db.query("SELECT version FROM adapter_marks")["version"])


def forgetting_record(db: Warehouse, note_key: str) -> pd.Series | None:
    rows = db.query("SELECT * FROM forgetting_records WHERE note_key = ?", [note_key])
    return None if rows.empty else rows.iloc[0]


def save_forgetting_record(
    db: Warehouse,
    note_key: str,
    path_sha256: str,
    removed: Mapping[str, int],
    files: list[str],
    adapters_marked: list[str],
    champion_before: str,
    champion_after: str,
) -> None:
    """One record per note; a second `forget` of the same note adds what it found to the first's."""
    earlier = forgetting_record(db, note_key)
    if earlier is not None:
        counts = json.loads(earlier.removed)
        removed = {table: counts.get(table, 0) + removed.get(table, 0) for table in {*counts, *removed}}
        files = sorted({*json.loads(earlier.files), *files})
        adapters_marked = sorted({*json.loads(earlier.adapters_marked), *adapters_marked})
        champion_before = earlier.champion_before
    row = {
        "note_key": note_key,
        "path_sha256": path_sha256 or ("" if earlier is None else earlier.path_sha256),
        "forgotten_at": _now() if earlier is None else earlier.forgotten_at,
        "removed": json.dumps(dict(sorted(removed.items()))),
        "files": json.dumps(files),
        "adapters_marked": json.dumps(adapters_marked),
        "champion_before": champion_before,
        "champion_after": champion_after,
    }
    db.insert_rows("forgetting_records", pd.DataFrame([row]))

