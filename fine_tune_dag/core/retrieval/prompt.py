"""Retrieved passages in a conversation, through the one chat message builder.

The passages and the instruction go in the user turn, before the question: the system prompt stays the one
the adapter was trained with, so retrieval changes what the model reads, never who it is told it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from fine_tune_dag.core.common.chat import Message, chat_messages
from fine_tune_dag.core.retrieval.index import RetrievedPassage

RETRIEVAL_INSTRUCTION = "Answer the question at the end from the notes below, and say which note you used."


def context_block(passages: Sequence[RetrievedPassage]) -> str:
    """Numbered passages, each with its note's file, so an answer can cite the note it drew on."""
    return "\n\n".join(f"[{number}] from {p.path}:\n{p.text}" for number, p in enumerate(passages, start=1))


def retrieval_messages(
    system: str, question: str, passages: Sequence[RetrievedPassage], answer: str | None = None
) -> list[Message]:
    """The question with the passages before it; with no passages it is the plain question."""
    if not passages:
        return chat_messages(system, question, answer)
    user = f"{RETRIEVAL_INSTRUCTION}\n\n{context_block(passages)}\n\n{question}"
    return chat_messages(system, user, answer)


def cited_notes(passages: Sequence[RetrievedPassage]) -> list[str]:
    """The notes' files in the order they first appear, each once: the sources an answer can name."""
    return list(dict.fromkeys(p.path for p in passages))
