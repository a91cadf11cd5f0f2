"""Use a trained adapter outside Dagster: load it, stream answers, export a merged model, share it on the Hub.

Prompts go through `chat.render_prompt_ids`, as in training and evaluation, so an answer streamed here
is the answer the evaluation scored.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any, Iterable, Iterator, Sequence

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT, render_prompt_ids
from fine_tune_dag.core.generation.base import Decoding, GenerationRequest
from fine_tune_dag.core.generation.batch import as_engine
from fine_tune_dag.core.retrieval.index import RetrievedPassage
from fine_tune_dag.core.retrieval.prompt import retrieval_messages


def _strip_outer_whitespace(pieces: Iterable[str]) -> Iterator[str]:
    """`generate_batch` strips its answers; trailing whitespace is held back until more text follows, so the
    stream joins to exactly the same string."""
    held, started = "", False
    for piece in pieces:
        text = held + (piece if started else piece.lstrip())
        body = text.rstrip()
        held = text[len(body) :]
        if body:
            started = True
            yield body


def stream_answer(
    model: Any,
    tokenizer: Any,
    question: str,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    no_repeat_ngram_size: int = 0,
    seed: int = 0,
    passages: Sequence[RetrievedPassage] = (),
    adapter: str | None = None,
) -> Iterator[str]:
    """Answer text piece by piece as it is generated, for a terminal or chat UI, from an engine (`adapter` names
    the adapter that answers) or a loaded model.

    Same prompt ids and engine as `generate_batch` (`**asdict(GenerationSettings(...))` fills the same
    arguments), so with the same settings and seed the pieces join to its answer. Closing this iterator
    early stops the generation. With `passages` (retrieval), they are in context before the question.
    """
    prompt = render_prompt_ids(tokenizer, retrieval_messages(system_prompt, question, passages))
    decoding = Decoding(temperature, top_p, no_repeat_ngram_size, seed)
    engine = as_engine(model, tokenizer, 1)
    pieces = engine.stream(GenerationRequest(tuple(prompt), max_new_tokens, decoding, adapter=adapter))
    with closing(pieces):
        yield from _strip_outer_whitespace(_new_text(tokenizer, (token for piece in pieces for token in piece)))


def _new_text(tokenizer: Any, tokens: Iterable[int]) -> Iterator[str]:
    """The text each token adds, up to EOS; held back while it ends in half a character (a byte-level
    token can carry part of one) unless the answer ends there."""
    ids: list[int] = []
    sent = ""
    for token in tokens:
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            yield text[len(sent) :]
            sent = text
    yield tokenizer.decode(ids, skip_special_tokens=True)[len(sent) :]
