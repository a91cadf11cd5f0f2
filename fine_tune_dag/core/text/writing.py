"""Training examples in the author's own words, built from the passages without an LLM.

Synthetic Q&A teaches a model to answer questions tersely; the author's voice and world are in the passages
themselves. Three kinds of example carry them:

- `pretrain`: the verbatim passage on its own, loss on every token (continued pretraining);
- `write`: "write a note about <heading>" → the verbatim passage;
- `continue`: the first sentences → the sentences that follow.

Prompt phrasings and system prompts are drawn per passage with a seeded generator, so the model learns the
voice rather than one template. The `write` items of test notes are also the evaluation's voice items: every
passage of a held-out note gets one, whatever synthesis kept.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

import pandas as pd

from fine_tune_dag.core.modeling.chat import DEFAULT_SYSTEM_PROMPT
from fine_tune_dag.core.text.metrics import words
from fine_tune_dag.core.text.synthesis import pair_id

PRETRAIN, WRITE, CONTINUE = "pretrain", "write", "continue"
WRITING_MODES = (PRETRAIN, WRITE, CONTINUE)

WRITING_SYSTEM_PROMPTS = (
    DEFAULT_SYSTEM_PROMPT,
    "You keep notes about your work and your days. Write the way you always write.",
    "You are writing in your own notebook, in your own words.",
)
WRITE_PROMPTS = (
    "Write a note about {topic}.",
    "Write a short piece about {topic}, the way you would in your notes.",
    "Put down what you know about {topic}.",
    "In your own words: {topic}.",
)
CONTINUE_PROMPTS = (
    "Continue this note:\n\n{start}",
    "Carry on from here, in the same voice:\n\n{start}",
    "Here is the beginning of one of your notes. Finish it.\n\n{start}",
)

CONTINUED_SENTENCES = 4  # "continue this" asks for the next few sentences, not the rest of an essay
MAX_TOPIC_WORDS = 10  # a longer "topic" is a sentence an LLM chunker returned, not a subject
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)")
OUTPUT_COLUMNS = ["pair_id", "note_id", "passage_index", "mode", "system", "question", "answer"]


def passage_topic(text: str, topic: str | None, title: str) -> str:
    """What a "write a note about …" prompt names: the passage's own heading, else a short chunker topic,
    else the note's title."""
    heading = _HEADING.search(text)
    if heading:
        return heading.group(1).strip()
    if topic and 0 < len(words(topic)) <= MAX_TOPIC_WORDS:
        return topic.strip()
    return title.strip()


def sentence_ends(text: str) -> list[int]:
    """Where each sentence (or heading or list line) of a passage ends."""
    return [m.end() for m in _SENTENCE.finditer(text) if m.group().strip()]


def continuation(text: str, rng: random.Random) -> tuple[str, str] | None:
    """(start, next sentences) cut at a seeded sentence boundary in the first half, both verbatim; None for a
    passage of one sentence."""
    ends = sentence_ends(text)
    if len(ends) < 2:
        return None
    index = rng.randint(1, max(1, len(ends) // 2))
    cut, stop = ends[index - 1], ends[min(index + CONTINUED_SENTENCES, len(ends)) - 1]
    return text[:cut].strip(), text[cut:stop].strip()


def writing_examples(passages: pd.DataFrame, seed: int = 0, modes: Iterable[str] = WRITING_MODES) -> pd.DataFrame:
    """One example per passage and mode (a passage of one sentence has no `continue`).

    `passages` holds note_id, passage_index, text, topic and title. The draws depend only on the seed and the
    passage, so an unchanged note keeps its examples (and their ids) when other notes change.
    """
    unknown = set(modes) - set(WRITING_MODES)
    if unknown:
        raise ValueError(f"unknown writing modes {sorted(unknown)}; choose from {WRITING_MODES}")
    rows = []
    for passage in passages.itertuples(index=False):
        text = passage.text.strip()
        if not text:
            continue
        rng = random.Random(f"{seed}:{passage.note_id}:{passage.passage_index}")
        system = rng.choice(WRITING_SYSTEM_PROMPTS)
        topic = passage_topic(text, passage.topic, passage.title)
        drafts = {
            PRETRAIN: ("", "", text),
            WRITE: (system, rng.choice(WRITE_PROMPTS).format(topic=topic), text),
        }
        split = continuation(text, rng)
        if split is not None:
            drafts[CONTINUE] = (system, rng.choice(CONTINUE_PROMPTS).format(start=split[0]), split[1])
        for mode in modes:
            if mode not in drafts:
                continue
            system_prompt, question, answer = drafts[mode]
            rows.append(
                {
                    "pair_id": pair_id(passage.note_id, passage.passage_index, mode, 0, question + answer),
                    "note_id": passage.note_id,
                    "passage_index": passage.passage_index,
                    "mode": mode,
                    "system": system_prompt,
                    "question": question,
                    "answer": answer,
                }
            )
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
