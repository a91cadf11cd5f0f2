"""Training examples in the author's own words, built from the passages without an LLM.

Synthetic Q&A teaches a model to answer questions tersely; the author's voice and world are in the passages
themselves. Three kinds of example carry them:

- `pretrain`: the verbatim passage on its own, loss on every token (continued pretraining);
- `write`: "write a note about <heading>" (or, for a passage without one, "write the note that begins
  “<its first words>…”") → the verbatim passage;
- `continue`: the first sentences → the rest of the passage.

Every answer runs to the end of its passage, so the EOS learned after it stands where the author stopped: a
`continue` cut after the next few sentences put EOS mid-passage in two answers of three, and the adapter
learned to stop after any sentence (a fifth of the time), writing two or three sentences for a passage of ten.

Prompt phrasings and system prompts are drawn per passage with a seeded generator, so the model learns the
voice rather than one template. The `write` items of test notes are also the evaluation's voice items: every
passage of a held-out note gets one, whatever synthesis kept.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

import pandas as pd

from fine_tune_dag.core.common.chat import DEFAULT_SYSTEM_PROMPT
from fine_tune_dag.core.common.text_metrics import words
from fine_tune_dag.core.synthesis.qa_pairs import pair_id

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
OPENING_PROMPTS = (  # as many as WRITE_PROMPTS: choosing one draws the same numbers, so the `continue` cut stays
    "Write a note that begins: “{opening}”",
    "Write the note that opens with “{opening}”, the way you would in your notes.",
    "Put down the note that starts “{opening}”.",
    "In your own words, the note that begins “{opening}”.",
)
CONTINUE_PROMPTS = (
    "Continue this note:\n\n{start}",
    "Carry on from here, in the same voice:\n\n{start}",
    "Here is the beginning of one of your notes. Finish it.\n\n{start}",
)

MAX_TOPIC_WORDS = 10  # a longer "topic" is a sentence an LLM chunker returned, not a subject
OPENING_WORDS = 6  # enough to tell a note's passages apart, too few to give the passage away
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)")
OUTPUT_COLUMNS = ["pair_id", "note_id", "passage_index", "mode", "system", "question", "answer"]


def passage_topic(text: str, topic: str | None) -> str | None:
    """What a "write a note about …" prompt names: the passage's own heading, else a short chunker topic; None
    when it has neither."""
    heading = _HEADING.search(text)
    if heading:
        return heading.group(1).strip()
    if topic and 0 < len(words(topic)) <= MAX_TOPIC_WORDS:
        return topic.strip()
    return None


def opening(text: str) -> str:
    """The passage's first `OPENING_WORDS` words, with an ellipsis where the passage goes on."""
    tokens = text.split()
    return " ".join(tokens[:OPENING_WORDS]) + ("…" if len(tokens) > OPENING_WORDS else "")


def write_prompt(text: str, topic: str | None, rng: random.Random) -> str:
    """A seeded phrasing of "write a note about <topic>", or of "write the note that begins …" for a passage
    without a topic."""
    named = passage_topic(text, topic)
    if named is None:
        return rng.choice(OPENING_PROMPTS).format(opening=opening(text))
    return rng.choice(WRITE_PROMPTS).format(topic=named)


def sentence_ends(text: str) -> list[int]:
    """Where each sentence (or heading or list line) of a passage ends."""
    return [m.end() for m in _SENTENCE.finditer(text) if m.group().strip()]


def continuation(text: str, rng: random.Random) -> tuple[str, str] | None:
    """(start, rest of the passage) cut at a seeded sentence boundary in the first half, both verbatim; None for
    a passage of one sentence."""
    ends = sentence_ends(text)
    if len(ends) < 2:
        return None
    index = rng.randint(1, max(1, len(ends) // 2))
    cut = ends[index - 1]
    return text[:cut].strip(), text[cut:].strip()


def writing_examples(passages: pd.DataFrame, seed: int = 0, modes: Iterable[str] = WRITING_MODES) -> pd.DataFrame:
    """One example per passage and mode (a passage of one sentence has no `continue`).

    `passages` holds note_id, passage_index, text and topic. A topic that other passages of the note share does
    not name this one (the heuristic chunker gives a passage without a heading the heading above it, or the
    note's title): such passages are asked for by their first words. The draws depend only on the seed and the
    passage, so an unchanged note keeps its examples (and their ids) when other notes change.
    """
    unknown = set(modes) - set(WRITING_MODES)
    if unknown:
        raise ValueError(f"unknown writing modes {sorted(unknown)}; choose from {WRITING_MODES}")
    rows = []
    shared = passages.duplicated(["note_id", "topic"], keep=False).tolist()
    for passage, alike in zip(passages.itertuples(index=False), shared):
        text = passage.text.strip()
        if not text:
            continue
        rng = random.Random(f"{seed}:{passage.note_id}:{passage.passage_index}")
        system = rng.choice(WRITING_SYSTEM_PROMPTS)
        drafts = {
            PRETRAIN: ("", "", text),
            WRITE: (system, write_prompt(text, None if alike else passage.topic, rng), text),
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
