"""Training on the author's own words: writing tasks, continued pretraining, the mix, and the test quarantine."""

import random

import pandas as pd
import pytest

from fine_tune_dag.core.common.chat import chat_messages, render_training_example, text_messages
from fine_tune_dag.core.dataset.mixing import mixed_conversations, weighted
from fine_tune_dag.core.dataset.splits import assign_splits, records_of
from fine_tune_dag.core.dataset.writing import (
    CONTINUE_PROMPTS,
    OPENING_PROMPTS,
    WRITE_PROMPTS,
    WRITING_SYSTEM_PROMPTS,
    continuation,
    opening,
    passage_topic,
    writing_examples,
)
from fine_tune_dag.core.training.sft import TrainingSettings, mix_weights

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


ESSAY = [  # passages of a note without headings, as a PDF essay is chunked
    "Slowness is not the old term for patience. It is the new one. I learned it at the bench, truing wheels.",
    "The wind carries everything out of the yard. Sawdust, bees, the smell of degreaser. Moth watches it go.",
]


def essay(topics: list[str | None], title: str = "On Slowness") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"note_id": "essay", "passage_index": i, "text": f"{text} Part {i}.", "topic": topic, "title": title}
            for i, (text, topic) in enumerate(zip(ESSAY * len(topics), topics))
        ]
    )


def write_questions(passages: pd.DataFrame) -> list[str]:
    return writing_examples(passages).query("mode == 'write'")["question"].tolist()


def test_topics_prefer_the_heading_then_a_short_topic():
    assert passage_topic("# Moth\n\nShe sleeps.", "dogs") == "Moth"
    assert passage_topic("She sleeps.", "the shop dog") == "the shop dog"
    assert passage_topic("She sleeps.", "a long sentence an LLM returned as a topic for this passage") is None
    assert passage_topic("She sleeps.", None) is None


def test_a_passage_without_heading_or_topic_is_asked_for_by_its_own_first_words():
    assert write_questions(essay([None, None])) == [
        "Put down the note that starts “Slowness is not the old term…”.",
        "In your own words, the note that begins “The wind carries everything out of…”.",
    ]
    assert any(q.format(opening="x") == "Put down the note that starts “x”." for q in OPENING_PROMPTS)
    assert opening("Three words only.") == "Three words only."  # no ellipsis where nothing follows


def test_passages_of_one_note_without_headings_get_prompts_of_their_own():
    """The chunker labels every heading-less passage of a PDF essay with the note's title, which named them all
    alike ("… On Slowness" in seven prompts of eight)."""
    titled = write_questions(essay(["On Slowness"] * 6))
    assert len(set(titled)) == 6 and not any("On Slowness" in q for q in titled)
    assert all("Slowness is not" in q or "The wind carries" in q for q in titled)
    assert "wind" in write_questions(essay(["wind", "slowness"]))[0]  # a topic of its own still names a passage
    assert "Market day" in write_questions(essay(["Market day"], title="Market day"))[0]  # so does a lone note's
    section = essay(["Swarming", "Swarming"]).assign(text=["## Swarming\n\nThey go in June.", "Then they settle."])
    assert [q.count("Swarming") for q in write_questions(section)] == [1, 0]  # its own heading; the inherited one


def test_the_opening_prompt_changes_only_the_write_ids_of_a_passage_without_a_heading():
    """Ids as the title prompts gave them: pretrain and continue stay, write is new; with a heading none changes."""
    ids = writing_examples(essay(["On Slowness"] * 2)).set_index(["passage_index", "mode"])["pair_id"].to_dict()
    assert ids[0, "pretrain"] == "bcecd519ad299d44" and ids[0, "continue"] == "eaeb4a16dc2862e6"
    assert ids[1, "pretrain"] == "43a441d267589006" and ids[1, "continue"] == "2aa611d8ad63e147"
    assert (ids[0, "write"], ids[1, "write"]) == ("0cec8acd772a9981", "4ce6bf96bd35a1f5")  # were bdbc…, c4fc…
    headed = writing_examples(passages().assign(text=PASSAGE))
    assert headed["pair_id"].tolist() == ["14949a099ebcffde", "d956f959050a5a31", "8d33633777e5df1a"]


def test_continuation_cuts_at_a_sentence_boundary_and_needs_two_sentences():
    assert continuation("One sentence only.", random.Random(0)) is None
    start, rest = continuation("First. Second. Third. Fourth.", random.Random(0))
    assert (start, rest) == ("First. Second.", "Third. Fourth.")  # a seeded cut in the first half


def test_a_continuation_runs_to_the_end_of_the_passage():
    """Not the next few sentences: a cut mid-passage put EOS where the author had not stopped."""
    text = "One. Two. Three. Four. Five. Six. Seven. Eight. Nine."
    start, rest = continuation(text, random.Random(0))
    assert (start, rest) == ("One. Two. Three. Four.", "Five. Six. Seven. Eight. Nine.")  # was "Five. … Eight."


def test_every_writing_answer_ends_where_its_passage_ends_with_one_eos(tiny_tokenizer):
    """The stop each writing task teaches is the author's own: after the passage's last words, once."""
    long = essay([None, None]).assign(text=lambda f: f["text"] + " Then more. And more. Still more. Later. The end.")
    for row in writing_examples(long).itertuples(index=False):
        assert long["text"].iloc[row.passage_index].endswith(row.answer)
        asked = row.mode != "pretrain"
        messages = chat_messages(row.system, row.question, row.answer) if asked else text_messages(row.answer)
        learned = [t for t in render_training_example(tiny_tokenizer, messages).labels if t != -100]
        assert learned.count(tiny_tokenizer.eos_token_id) == 1 and learned[-1] == tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode(learned[:-1]) == row.answer


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
