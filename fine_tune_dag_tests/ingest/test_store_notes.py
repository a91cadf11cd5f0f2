"""The rejected-notes record never reads what the sensor may not read: a huge file, a pipe, a link."""

from __future__ import annotations

import os

from fine_tune_dag.core.ingest import notes as ingest
from fine_tune_dag.core.store import notes as store_notes
from fine_tune_dag.core.store.warehouse import Warehouse


def rejected(db: Warehouse) -> dict[str, tuple]:
    rows = db.query("SELECT note_id, size_bytes, coalesce(sha256, 'none') AS sha256 FROM rejected_notes")
    return {r.note_id: (r.size_bytes, r.sha256) for r in rows.itertuples()}


def test_a_rejected_note_is_hashed_only_when_it_is_a_small_regular_file(tmp_path, monkeypatch):
    db = Warehouse(tmp_path / "warehouse.duckdb")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "small.md").write_text("# fine\n", encoding="utf-8")
    (notes / "huge.md").write_text("x" * 500, encoding="utf-8")
    os.mkfifo(notes / "pipe.md")
    (notes / "link.md").symlink_to(notes / "small.md")
    monkeypatch.setattr(ingest, "MAX_NOTE_BYTES", 100)
    hashed = []
    real = store_notes.file_sha256
    monkeypatch.setattr(store_notes, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    for name in ("small.md", "huge.md", "pipe.md", "link.md"):
        store_notes.reject_note(db, name, name, "test", "run-1", notes / name)
    rows = rejected(db)
    assert hashed == ["small.md"]
    assert len(rows["small.md"][1]) == 64 and rows["huge.md"] == (500, "none")
    assert rows["pipe.md"][1] == "none" and rows["link.md"][1] == "none"
