"""Retrieval over the passages: BM25 finds the note that uses the question's words, excluded notes never come
back, a rebuild redoes only the notes that changed (and keeps the old index when it fails), embeddings of the
tiny model find a passage by its own text, the prompt cites the notes, and the asset runs in the real graph."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from fine_tune_dag.core.retrieval import index as retrieval
from fine_tune_dag.core.retrieval.embeddings import Encoder
from fine_tune_dag.core.retrieval.index import PassageIndex, RetrievalSettings, RetrievedPassage, build_index
from fine_tune_dag.core.retrieval.prompt import (
    RETRIEVAL_INSTRUCTION,
    cited_notes,
    context_block,
    retrieval_messages,
)
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.definitions import build_definitions

BIKES = [
    "The bicycle chain wants oil every week, or it squeaks on the climb.",
    "Derailleur cables stretch over the winter; adjust the barrel before spring.",
]
BEES = ["The bees cluster inside the hive when frost comes, humming to keep warm."]
BEES_NOW = ["Swarming bees leave the hive with their queen in late May."]
BREAD = ["Sourdough bread needs a lively starter and a long, cool rise overnight."]


def rows(*notes: tuple[str, str, list[str]]) -> pd.DataFrame:
    """Passages as `note_passages` returns them; a note's id is its file's stem."""
    return pd.DataFrame(
        [
            {"note_id": Path(path).stem, "path": path, "sha256": sha, "passage_index": i, "topic": "", "text": text}
            for path, sha, texts in notes
            for i, text in enumerate(texts)
        ]
    )


def found(index: PassageIndex, query: str, k: int = 3, **options) -> list[tuple[str, int]]:
    return [(p.path, p.passage_index) for p in index.search(query, k, **options)]


@pytest.fixture
def tokenized(monkeypatch) -> list[str]:
    """Every passage or query text BM25 tokenizes."""
    seen: list[str] = []
    real = retrieval._tokenize
    monkeypatch.setattr(retrieval, "_tokenize", lambda texts: seen.extend(texts) or real(texts))
    return seen


def test_bm25_ranks_the_passage_with_the_query_words_first(tmp_path):
    build = build_index(rows(("bikes.md", "1", BIKES), ("bees.md", "2", BEES)), tmp_path / "index", RetrievalSettings())
    assert (build.method, build.passages, build.notes) == ("bm25", 3, 2)
    index = PassageIndex.load(tmp_path / "index")
    assert len(index) == 3
    assert found(index, "how often does the chain need oil?") == [("bikes.md", 0), ("bees.md", 0), ("bikes.md", 1)]
    assert found(index, "what do bees do in frost", k=1) == [("bees.md", 0)]
    best, *rest = index.search("derailleur cables in winter", 3)
    assert (best.note_id, best.passage_index, best.text) == ("bikes", 1, BIKES[1])
    assert best.score > 0 and all(p.score == 0 for p in rest)  # no other passage shares a word: path order


def test_excluded_notes_never_come_back_and_k_passages_still_do(tmp_path):
    passages = rows(("bikes.md", "1", BIKES), ("bees.md", "2", BEES), ("bread.md", "3", BREAD))
    build_index(passages, tmp_path / "index", RetrievalSettings())
    index = PassageIndex.load(tmp_path / "index")
    assert found(index, "bicycle chain oil", k=2, exclude_notes=["bikes"]) == [("bees.md", 0), ("bread.md", 0)]
    assert found(index, "bicycle chain oil", k=5, exclude_notes={"bikes", "bread"}) == [("bees.md", 0)]


def test_a_rebuild_redoes_only_changed_and_new_notes_and_drops_removed_ones(tmp_path, tokenized):
    folder = tmp_path / "index"
    build_index(rows(("bikes.md", "1", BIKES), ("bees.md", "2", BEES)), folder, RetrievalSettings())
    assert tokenized == BEES + BIKES  # path order
    tokenized.clear()

    build = build_index(rows(("bees.md", "2b", BEES_NOW), ("bread.md", "3", BREAD)), folder, RetrievalSettings())
    assert (build.notes_reindexed, build.notes_reused, build.notes_removed) == (
        ["bees.md", "bread.md"],
        0,
        ["bikes.md"],
    )
    assert (build.passages, build.notes) == (2, 2)
    assert tokenized == BEES_NOW + BREAD
    index = PassageIndex.load(folder)
    assert found(index, "sourdough starter", k=1) == [("bread.md", 0)]
    assert found(index, "swarming queen", k=1) == [("bees.md", 0)]
    assert all(p.note_id != "bikes" for q in ("bicycle chain oil", "derailleur cables") for p in index.search(q, 5))
    assert all("frost" not in p.text for p in index.search("frost", 5))

    tokenized.clear()
    build = build_index(
        rows(("bees.md", "2b", BEES_NOW), ("bikes.md", "1", BIKES), ("bread.md", "3", BREAD)),
        folder,
        RetrievalSettings(),
    )
    assert (build.notes_reindexed, build.notes_reused, build.notes_removed) == (["bikes.md"], 2, [])
    assert tokenized == BIKES


def test_an_unchanged_rebuild_redoes_nothing_and_a_rechunked_note_is_redone(tmp_path, tokenized):
    folder = tmp_path / "index"
    passages = rows(("bikes.md", "1", BIKES), ("bees.md", "2", BEES))
    build_index(passages, folder, RetrievalSettings())
    tokenized.clear()
    build = build_index(passages, folder, RetrievalSettings())
    assert (build.notes_reindexed, build.notes_reused, build.notes_removed) == ([], 2, [])
    assert tokenized == []
    assert found(PassageIndex.load(folder), "chain oil", k=1) == [("bikes.md", 0)]

    tokenized.clear()
    rechunked = rows(("bikes.md", "1", [" ".join(BIKES)]), ("bees.md", "2", BEES))  # same file, other passages
    build = build_index(rechunked, folder, RetrievalSettings())
    assert (build.notes_reindexed, build.notes_reused, build.passages) == (["bikes.md"], 1, 2)
    assert tokenized == [" ".join(BIKES)]


def test_a_failed_build_leaves_the_previous_index_whole(tmp_path, monkeypatch):
    folder = tmp_path / "index"
    build_index(rows(("bikes.md", "1", BIKES)), folder, RetrievalSettings())

    def broken(texts: list[str]) -> list[list[str]]:
        raise RuntimeError("disk full")

    monkeypatch.setattr(retrieval, "_tokenize", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_index(rows(("bees.md", "2", BEES)), folder, RetrievalSettings())
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no staging folder left beside it
    assert found(PassageIndex.load(folder), "chain oil", k=5) == [("bikes.md", 0), ("bikes.md", 1)]


def test_no_passages_or_no_index_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="no passages to index"):
        build_index(rows(), tmp_path / "index", RetrievalSettings())
    with pytest.raises(FileNotFoundError, match="materialize retrieval_index"):
        PassageIndex.load(tmp_path / "index")
    with pytest.raises(ValueError, match="needs embedding_model"):
        RetrievalSettings(method="embeddings")
    with pytest.raises(ValueError, match="unknown retrieval method"):
        RetrievalSettings(method="tfidf")


def test_embeddings_find_a_passage_by_its_text_and_embed_only_changed_notes(tmp_path, tiny_model_dir, monkeypatch):
    embedded: list[str] = []
    real = Encoder.encode
    monkeypatch.setattr(Encoder, "encode", lambda self, texts: embedded.extend(texts) or real(self, texts))
    folder = tmp_path / "index"
    settings = RetrievalSettings(method="embeddings", embedding_model=str(tiny_model_dir))
    build_index(rows(("bikes.md", "1", BIKES), ("bees.md", "2", BEES)), folder, RetrievalSettings())

    build = build_index(rows(("bikes.md", "1", BIKES), ("bees.md", "2", BEES)), folder, settings)
    assert (build.method, build.notes_reindexed, build.notes_reused) == ("embeddings", ["bees.md", "bikes.md"], 0)
    assert embedded == BEES + BIKES  # in path order; nothing carried over from the BM25 build
    index = PassageIndex.load(folder)
    for path, number, text in (("bikes.md", 0, BIKES[0]), ("bikes.md", 1, BIKES[1]), ("bees.md", 0, BEES[0])):
        best = index.search(text, 1)[0]
        assert ((best.path, best.passage_index), best.score) == ((path, number), pytest.approx(1.0, abs=1e-4))
    assert {p.note_id for p in index.search(BEES[0], 3, exclude_notes=["bees"])} == {"bikes"}

    embedded.clear()
    build = build_index(rows(("bikes.md", "1", BIKES), ("bees.md", "2b", BEES_NOW)), folder, settings)
    assert (build.notes_reindexed, build.notes_reused, build.notes_removed) == (["bees.md"], 1, [])
    assert embedded == BEES_NOW
    assert found(PassageIndex.load(folder), BEES_NOW[0], k=1) == [("bees.md", 0)]


PASSAGES = [
    RetrievedPassage("bikes", "bikes.md", 0, "Oil the chain weekly.", 2.5),
    RetrievedPassage("bees", "garden/bees.md", 3, "Bees cluster in frost.", 1.0),
    RetrievedPassage("bikes", "bikes.md", 1, "Cables stretch.", 0.5),
]


def test_the_prompt_numbers_the_passages_and_keeps_the_system_prompt():
    block = (
        "[1] from bikes.md:\nOil the chain weekly.\n\n"
        "[2] from garden/bees.md:\nBees cluster in frost.\n\n"
        "[3] from bikes.md:\nCables stretch."
    )
    assert context_block(PASSAGES) == block
    assert retrieval_messages("You are the author.", "When do I oil it?", PASSAGES, "Weekly (bikes.md).") == [
        {"role": "system", "content": "You are the author."},
        {"role": "user", "content": f"{RETRIEVAL_INSTRUCTION}\n\n{block}\n\nWhen do I oil it?"},
        {"role": "assistant", "content": "Weekly (bikes.md)."},
    ]
    assert retrieval_messages("You are the author.", "Hi?", []) == [
        {"role": "system", "content": "You are the author."},
        {"role": "user", "content": "Hi?"},
    ]
    assert cited_notes(PASSAGES) == ["bikes.md", "garden/bees.md"]


def test_the_asset_indexes_the_registered_notes_and_drops_a_deleted_one(tmp_path):
    defs = build_definitions(notes_dir=str(tmp_path / "notes"), data_dir=str(tmp_path / "data"))
    db = Warehouse(tmp_path / "data" / "warehouse.duckdb")
    notes = rows(("bikes.md", "1", BIKES), ("bees.md", "2", BEES))
    db.insert_rows("raw_notes", notes[["note_id", "path", "sha256"]].drop_duplicates())
    db.insert_rows("passages", notes[["note_id", "passage_index", "text", "topic"]])
    job = defs.resolve_implicit_global_asset_job_def()
    key = dg.AssetKey("retrieval_index")
    with dg.instance_for_test() as instance:

        def materialize() -> dg.ExecuteInProcessResult:
            return job.execute_in_process(instance=instance, asset_selection=[key], raise_on_error=False)

        failed = materialize()
        assert not failed.success
        assert "no passages to index" in failed.get_step_failure_events()[0].step_failure_data.error.message

        instance.add_dynamic_partitions("notes", ["bikes", "bees"])
        assert materialize().success
        metadata = instance.get_latest_materialization_event(key).asset_materialization.metadata
        assert {name: metadata[name].value for name in ("passages", "notes", "notes_reindexed", "method")} == {
            "passages": 3,
            "notes": 2,
            "notes_reindexed": ["bees.md", "bikes.md"],
            "method": "bm25",
        }
        assert metadata["index"].value == str(tmp_path / "data" / "index")

        instance.delete_dynamic_partition("notes", "bikes")
        assert materialize().success
        metadata = instance.get_latest_materialization_event(key).asset_materialization.metadata
        assert (metadata["notes_removed"].value, metadata["notes_reused"].value) == (["bikes.md"], 1)
        assert found(PassageIndex.load(tmp_path / "data" / "index"), "chain oil") == [("bees.md", 0)]
