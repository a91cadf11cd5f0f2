"""How passages are retrieved, apart from the index itself: the command line reads these defaults without
loading the index's libraries."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("bm25", "embeddings")


@dataclass(frozen=True)
class RetrievalSettings:
    method: str = field(default="bm25", metadata={"help": "'bm25' (no model needed) or 'embeddings'"})
    embedding_model: str = field(
        default="",
        metadata={"help": "path or Hub id of a transformers model whose mean-pooled states embed passages"},
    )
    top_k: int = field(default=3, metadata={"help": "passages retrieved per question"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown retrieval method '{self.method}': use one of {METHODS}")
        if self.method == "embeddings" and not self.embedding_model:
            raise ValueError("retrieval by embeddings needs embedding_model (a model folder or Hub id)")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")
