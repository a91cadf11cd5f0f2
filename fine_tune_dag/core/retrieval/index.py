"""A search index over the author's passages: BM25 (offline, no model) or embeddings of a configured model.

The index folder keeps, per passage, the note's content hash and the work done on the passage (its BM25
tokens, or its row of `embeddings.npy`). A rebuild re-tokenizes or re-embeds only the notes whose content
changed, carries the others over, and drops the notes that are gone; BM25 statistics depend on the whole
corpus, so they are recomputed from the stored tokens on load, which takes milliseconds.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bm25s
import numpy as np
import pandas as pd

from fine_tune_dag.core.retrieval.settings import RetrievalSettings

if TYPE_CHECKING:
    from fine_tune_dag.core.retrieval.embeddings import Encoder

INDEX_FORMAT = 1  # bump when the stored layout changes: an index of another format is rebuilt whole
MANIFEST, ENTRIES, VECTORS = "manifest.json", "passages.jsonl", "embeddings.npy"


@dataclass(frozen=True)
class RetrievedPassage:
    note_id: str
    path: str  # the note's file, relative to the notes folder
    passage_index: int
    text: str
    score: float


@dataclass(frozen=True)
class IndexBuild:
    folder: Path
    method: str
    passages: int
    notes: int
    notes_reindexed: list[str]  # note paths whose passages were (re)tokenized or embedded in this build
    notes_reused: int  # notes whose entries were carried over unchanged
    notes_removed: list[str]  # note paths in the previous index but not in this one


@dataclass(frozen=True)
class _Entry:
    """One indexed passage as stored, beside its work: BM25 tokens, or a row of the embeddings."""

    note_id: str
    path: str
    sha256: str
    passage_index: int
    text: str


def _tokenize(texts: list[str]) -> list[list[str]]:
    """bm25s's word splitter with English stopwords and no stemmer: the same for passages and queries."""
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


@functools.lru_cache(maxsize=1)
def _encoder(model: str) -> Encoder:
    """Loaded once per process, and only when embeddings are asked for: BM25 never imports torch."""
    from fine_tune_dag.core.retrieval.embeddings import Encoder

    return Encoder(model)


def _compute(texts: list[str], settings: RetrievalSettings) -> list[Any]:
    """The work on new passages: their tokens, or their embeddings."""
    if not texts:
        return []
    if settings.method == "bm25":
        return _tokenize(texts)
    return list(_encoder(settings.embedding_model).encode(texts))


def _read_build(folder: Path) -> tuple[dict[str, Any], list[_Entry], list[Any]]:
    """The manifest, the entries and their work (token lists, or embedding rows)."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    entries, tokens = [], []
    with (folder / ENTRIES).open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            tokens.append(row.pop("tokens", None))
            entries.append(_Entry(**row))
    work = list(np.load(folder / VECTORS)) if manifest["method"] == "embeddings" else tokens
    return manifest, entries, work


def _write_build(folder: Path, manifest: dict[str, Any], entries: list[_Entry], work: list[Any]) -> None:
    """Written into a temporary sibling, then swapped in by renames: a reader never sees a half-written index."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    bm25 = manifest["method"] == "bm25"
    try:
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        with (staging / ENTRIES).open("w", encoding="utf-8") as handle:
            for entry, done in zip(entries, work):
                row = {**asdict(entry), "tokens": done} if bm25 else asdict(entry)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if not bm25:
            np.save(staging / VECTORS, np.stack(work).astype(np.float32))
        retired = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        if folder.exists():
            folder.rename(retired)
        staging.rename(folder)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _previous(folder: Path, settings: RetrievalSettings) -> tuple[dict[str, list[tuple[_Entry, Any]]], dict[str, str]]:
    """The previous build's entries and work per note id, when it was made the same way; and each of its note
    ids' path (to report the notes removed)."""
    if not (folder / MANIFEST).is_file():
        return {}, {}
    manifest, entries, work = _read_build(folder)
    paths = {e.note_id: e.path for e in entries}
    same_way = manifest.get("format") == INDEX_FORMAT and manifest["method"] == settings.method
    if settings.method == "embeddings":
        same_way = same_way and manifest.get("embedding_model") == settings.embedding_model
    by_note: dict[str, list[tuple[_Entry, Any]]] = {}
    for entry, done in zip(entries, work) if same_way else ():
        by_note.setdefault(entry.note_id, []).append((entry, done))
    return by_note, paths


def build_index(passages: pd.DataFrame, folder: Path, settings: RetrievalSettings) -> IndexBuild:
    """Index `passages` (note_id, path, sha256, passage_index, topic, text) into `folder`, reusing the previous
    build's work for each note whose content hash and passages are unchanged.

    The passages are compared too: a note rechunked with other settings keeps its hash but not its passages.
    The topic is not indexed: passages are verbatim spans, so their heading is already in their text.
    """
    if passages.empty:
        raise ValueError("no passages to index: materialize passages for at least one note first")
    previous, previous_paths = _previous(folder, settings)
    rows = passages.sort_values(["path", "passage_index"], kind="stable")
    entries: list[_Entry] = []
    work: list[Any] = []
    reindexed: list[str] = []
    for note_id, note in rows.groupby("note_id", sort=False):
        fresh = [
            _Entry(str(note_id), r.path, r.sha256, int(r.passage_index), r.text) for r in note.itertuples(index=False)
        ]
        old = previous.get(str(note_id), [])
        if [entry for entry, _ in old] == fresh:
            work += [done for _, done in old]
        else:
            reindexed.append(fresh[0].path)
            work += [None] * len(fresh)
        entries += fresh
    missing = [row for row, done in enumerate(work) if done is None]
    for row, done in zip(missing, _compute([entries[row].text for row in missing], settings)):
        work[row] = done
    note_ids = {e.note_id for e in entries}
    manifest = {
        "format": INDEX_FORMAT,
        "method": settings.method,
        "embedding_model": settings.embedding_model if settings.method == "embeddings" else "",
        "passages": len(entries),
        "notes": len(note_ids),
    }
    _write_build(folder, manifest, entries, work)
    return IndexBuild(
        folder=folder,
        method=settings.method,
        passages=len(entries),
        notes=len(note_ids),
        notes_reindexed=reindexed,
        notes_reused=len(note_ids) - len(reindexed),
        notes_removed=sorted(path for note_id, path in previous_paths.items() if note_id not in note_ids),
    )


def drop_notes(folder: Path, note_ids: Collection[str]) -> int:
    """Remove these notes' passages, with their tokens or embeddings, from a built index and keep the rest as
    built (the next build reuses it); returns how many passages went. An index left empty is removed whole."""
    if not (folder / MANIFEST).is_file():
        return 0
    manifest, entries, work = _read_build(folder)
    kept = [(entry, done) for entry, done in zip(entries, work) if entry.note_id not in note_ids]
    if len(kept) == len(entries):
        return 0
    if not kept:
        shutil.rmtree(folder)
        return len(entries)
    notes = len({entry.note_id for entry, _ in kept})
    _write_build(
        folder, {**manifest, "passages": len(kept), "notes": notes}, [e for e, _ in kept], [d for _, d in kept]
    )
    return len(entries) - len(kept)


def _bm25_scorer(tokens: list[list[str]]) -> Callable[[str], np.ndarray]:
    """BM25 statistics over the whole corpus, from the stored tokens."""
    if not any(tokens):  # only stopwords everywhere: bm25s cannot index an empty vocabulary, and nothing matches
        return lambda query: np.zeros(len(tokens))
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)

    def score(query: str) -> np.ndarray:
        ids = retriever.get_tokens_ids(_tokenize([query])[0])  # words the corpus never uses are dropped
        return retriever.get_scores_from_ids(ids) if ids else np.zeros(len(tokens))

    return score


def _embedding_scorer(model: str, vectors: np.ndarray) -> Callable[[str], np.ndarray]:
    """Cosine similarity: the stored vectors and the query's are L2-normalised by the same encoder."""
    return lambda query: vectors @ _encoder(model).encode([query])[0]


class PassageIndex:
    """A built index, loaded for search."""

    def __init__(self, entries: list[_Entry], score: Callable[[str], np.ndarray]) -> None:
        self._entries = entries
        self._score = score

    @classmethod
    def load(cls, folder: Path) -> PassageIndex:
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"no retrieval index in {folder}: materialize retrieval_index first")
        manifest, entries, work = _read_build(folder)
        if manifest["method"] == "bm25":
            return cls(entries, _bm25_scorer(work))
        return cls(entries, _embedding_scorer(manifest["embedding_model"], np.stack(work)))

    def __len__(self) -> int:
        return len(self._entries)

    def search(self, query: str, k: int = 3, exclude_notes: Collection[str] = ()) -> list[RetrievedPassage]:
        """The `k` best passages, best first. Passages of `exclude_notes` (note ids) are dropped from the whole
        ranking, not from its top k, so k still come back when enough others exist; ties keep path order."""
        scores = self._score(query)
        excluded = set(exclude_notes)
        ranked = [row for row in np.argsort(-scores, kind="stable") if self._entries[row].note_id not in excluded]
        best = [(self._entries[row], float(scores[row])) for row in ranked[:k]]
        return [RetrievedPassage(e.note_id, e.path, e.passage_index, e.text, score) for e, score in best]
