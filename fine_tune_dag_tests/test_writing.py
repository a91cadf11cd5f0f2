"""Training on the author's own words: writing tasks, continued pretraining, the mix, and the test quarantine."""

import random

import pandas as pd
import pytest

from fine_tune_dag.core.modeling.chat import render_training_example, text_messages
from fine_tune_dag.core.modeling.sft import TrainingSettings, mix_weights
from fine_tune_dag.core.text.mixing import mixed_conversations, weighted
from fine_tune_dag.core.text.splits import assign_splits, records_of
from fine_tune_dag.core.text.writing import (
    CONTINUE_PROMPTS,
    WRITE_PROMPTS,
    WRITING_SYSTEM_PROMPTS,
    continuation,
    passage_topic,
    writing_examples,
)

PASSAGE = "## Winter jobs\n\nThe hives are heavy in October. I heft each one from the back. A light hive gets fondant."


def passages(count: int = 1, note: str = "n1") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"note_id": note, "passage_index": i, "text": PASSAGE + f" Day {i}.", "topic": None, "title": "Bees"}
            for i in range(count)
        ]
    )


def test_a_write_task_names_the_heading_and_answers_with_the_verbatim_passage():
    examples = writing_examples(passages())
    assert examples["mode"].tolist() == ["pretrain", "write", "continue"]
    pretrain, write, cont = (examples.iloc[i] for i in range(3))
    assert pretrain["system"] == pretrain["question"] == "" and pretrain["answer"] == PASSAGE + " Day 0."
    assert write["answer"] == PASSAGE + " Day 0."
    assert "Winter jobs" in write["question"] and write["system"] in WRITING_SYSTEM_PROMPTS
    assert any(write["question"] == p.format(topic="Winter jobs") for p in WRITE_PROMPTS)
    assert any(cont["question"].startswith(p.split("{start}")[0]) for p in CONTINUE_PROMPTS)
    # the start and the continuation are both the author's words, in order
    start = cont["question"].split("\n\n", 1)[1]
    assert PASSAGE.startswith(start) or (PASSAGE + " Day 0.").startswith(start)
    assert (start + " " + cont["answer"]).replace("\n\n", " ") in (PASSAGE + " Day 0.").replace("\n\n", " ")


def test_topics_prefer_the_heading_then_a_short_topic_then_the_title():
    assert passage_topic("# Moth\n\nShe sleeps.", "dogs", "File") == "Moth"
    assert passage_topic("She sleeps.", "the shop dog", "File") == "the shop dog"
    assert passage_topic("She sleeps.", "a long sentence an LLM returned as a topic for this passage", "Moth") == "Moth"


def test_continuation_cuts_at_a_sentence_boundary_and_needs_two_sentences():
    assert continuation("One sentence only.", random.Random(0)) is None
    start, rest = continuation("First. Second. Third. Fourth.", random.Random(0))
    assert (start, rest) == ("First. Second.", "Third. Fourth.")  # a seeded cut in the first half


def test_phrasings_vary_with_the_seed_and_stay_put_for_an_unchanged_passage():
    many = passages(40)
    first, again = writing_examples(many, seed=0), writing_examples(many, seed=0)
    pd.testing.assert_frame_equal(first, again)
    writes = first[first["mode"] == "write"]
    assert writes["question"].nunique() >= 3 and writes["system"].nunique() >= 2
    other_seed = writing_examples(many, seed=1)
    assert (other_seed["question"] != first["question"]).any()
    # one passage's examples do not depend on the other passages
    alone = writing_examples(many.iloc[[7]], seed=0)
    assert alone["pair_id"].tolist() == first[first["passage_index"] == 7]["pair_id"].tolist()


def test_continued_pretraining_learns_every_token_without_a_template(tiny_tokenizer):
    example = render_training_example(tiny_tokenizer, text_messages("The hives are heavy."))
    expected = tiny_tokenizer("The hives are heavy.", add_special_tokens=False)["input_ids"] + [
        tiny_tokenizer.eos_token_id
    ]
    assert example.input_ids == expected and example.labels == expected and example.prompt_length == 0


def test_pretrain_rows_export_as_the_authors_text_alone():
    rows = writing_examples(passages()).assign(note_id="n1")
    records = records_of(assign_splits(rows, 0.0, "sys"))
    by_length = sorted(len(r["messages"]) for r in records)
    assert by_length == [1, 3, 3] and any(r["messages"] == text_messages(PASSAGE + " Day 0.") for r in records)


def test_weights_repeat_and_sample_rows():
    rng = random.Random(0)
    assert weighted([1, 2, 3, 4], 2.0, rng) == [1, 2, 3, 4, 1, 2, 3, 4]
    assert len(weighted([1, 2, 3, 4], 0.5, rng)) == 2 and weighted([1, 2], 0.0, rng) == []
    with pytest.raises(ValueError, match="negative"):
        weighted([1], -1.0, rng)


def train_rows() -> pd.DataFrame:
    """A train split as `train_split` returns it: writing rows and Q&A rows with their passages."""
    writing = pd.concat([writing_examples(passages(2, note)).assign(note_id=note) for note in ("a", "b", "c")])
    qa = pd.DataFrame(
        [
            {
                "pair_id": f"q{note}",
                "note_id": note,
                "mode": "grounded",
                "system": "sys",
                "question": f"What about {note}?",
                "answer": f"Answer {note}.",
                "passage_index": 0,
                "passage": f"Passage of note {note}.",
                "path": f"{note}.md",
            }
            for note in ("a", "b", "c")
        ]
    )
    return pd.concat([writing, qa], ignore_index=True)


def test_the_mix_counts_each_source_by_its_weight():
    settings = TrainingSettings(mix_qa=2.0, mix_pretrain=1.0, mix_write=0.5, mix_continue=0.0, mix_retrieval_qa=1.0)
    conversations, counts = mixed_conversations(train_rows(), mix_weights(settings), seed=0)
    assert counts == {"qa": 6, "pretrain": 6, "write": 3, "continue": 0, "retrieval_qa": 3}
    assert len(conversations) == sum(counts.values())
    retrieval = [c for c in conversations if len(c) > 1 and "Passage of note" in c[-2]["content"]]
    assert len(retrieval) == 3
    for conversation in retrieval:  # its own passage and two distractors from other notes
        asked = conversation[-2]["content"]
        assert sum(f"Passage of note {n}." in asked for n in "abc") == 3
    with pytest.raises(ValueError, match="unknown mix sources"):
        mixed_conversations(train_rows(), {"poetry": 1.0}, seed=0)
