import json

import pandas as pd
import pytest

from fine_tune_dag.core.dataset.splits import (
    assign_splits,
    dataset_version,
    records_of,
    split_by_note_hash,
    write_jsonl,
)


def pairs_for(note_ids, per_note=3) -> pd.DataFrame:
    rows = [
        {"pair_id": f"{n}-{i}", "note_id": n, "mode": "grounded", "question": f"q {n} {i}?", "answer": f"a {n} {i}"}
        for n in note_ids
        for i in range(per_note)
    ]
    return pd.DataFrame(rows)


def test_adding_notes_never_moves_an_existing_note():
    before = assign_splits(pairs_for([f"note-{i}" for i in range(50)]), 0.2, "sys")
    after = assign_splits(pairs_for([f"note-{i}" for i in range(120)]), 0.2, "sys")
    sides_before = dict(zip(before["pair_id"], before["split"]))
    sides_after = dict(zip(after["pair_id"], after["split"]))
    assert all(sides_after[k] == v for k, v in sides_before.items())


def test_all_pairs_of_a_note_share_a_side_and_the_fraction_is_close():
    splits = assign_splits(pairs_for([f"note-{i}" for i in range(2000)], per_note=2), 0.2, "sys")
    assert splits.groupby("note_id")["split"].nunique().max() == 1
    test_share = (splits.drop_duplicates("note_id")["split"] == "test").mean()
    assert 0.17 < test_share < 0.23


# note id → side at a test fraction of 0.2 and of 0.5, computed once with SPLIT_SALT "fine_tune_dag/split/v1".
# A change here moves existing notes between train and test (old test items leak into training): it
# must come with a new salt version, never silently.
PINNED_SIDES = {
    "chain-care-md-2707f847": ("train", "test"),
    "bees-april-md-b0c89edc": ("train", "train"),
    "river-path-txt-33535f6f": ("train", "train"),
    "essays-on-rivers-pdf-e042d8f6": ("train", "train"),
    "workshop-docx-66ffcb7d": ("train", "test"),
    "rain-uber-cafe-notes-md-656495e4": ("train", "train"),
    "the-workshop-md-bd9eee8b": ("test", "test"),
    "a-md-5d48a79a": ("test", "test"),
    "note-00-md-0a1b2c3d": ("train", "test"),
    "x": ("train", "train"),
}


def test_split_of_each_note_id_is_pinned():
    assert {n: (split_by_note_hash(n, 0.2), split_by_note_hash(n, 0.5)) for n in PINNED_SIDES} == PINNED_SIDES
    assert all(split_by_note_hash(n, 0.0) == "train" for n in PINNED_SIDES)
    with pytest.raises(ValueError):
        split_by_note_hash("x", 1.0)


def test_dataset_version_depends_on_content_not_order():
    splits = assign_splits(pairs_for(["a", "b", "c"]), 0.5, "sys")
    assert dataset_version(splits) == dataset_version(splits.iloc[::-1])
    changed = splits.copy()
    changed.loc[0, "answer"] = "different"
    assert dataset_version(changed) != dataset_version(splits)


def test_empty_input_gives_empty_splits():
    assert assign_splits(pd.DataFrame(columns=["pair_id", "note_id", "mode", "question", "answer"]), 0.2, "s").empty


def test_jsonl_export_is_chat_format(tmp_path):
    splits = assign_splits(pairs_for(["a"]), 0.2, "You are me.")
    path = write_jsonl(tmp_path / "x" / "train.jsonl", records_of(splits))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    assert lines[0]["messages"][0]["content"] == "You are me."
    assert not list(tmp_path.glob("x/*.tmp"))
