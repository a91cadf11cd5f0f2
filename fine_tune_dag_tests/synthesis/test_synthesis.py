import pytest

from fine_tune_dag.core.synthesis.chunking import Passage
from fine_tune_dag.core.synthesis.qa_pairs import (
    SynthesisSettings,
    candidate_pairs,
    filter_pairs,
    parse_instruction,
    parse_qa_pairs,
)

PASSAGE = Passage(
    "note-1",
    0,
    0,
    0,
    "I oil the chain every Sunday and wipe it on Monday. A clean chain lasts three thousand kilometres.",
    "chains",
    "whole",
)


@pytest.mark.parametrize(
    "output",
    [
        "Q: When do you oil the chain?\nA: Every Sunday.\nQ: How long does a clean chain last?\nA: Three thousand kilometres.",
        "Sure! Here are two questions:\n\n1. **Q:** When do you oil the chain?\n   **A:** Every Sunday.\n\n2. Q: How long does a clean chain last?\n   A: Three thousand kilometres.",
        'Here you go: [{"question": "When do you oil the chain?", "answer": "Every Sunday."}, '
        '{"question": "How long does a clean chain last?", "answer": "Three thousand kilometres."}]',
        "Question 1: When do you oil the chain? Answer: Every Sunday.\nQuestion 2: How long does a clean chain last?\nAnswer: Three\nthousand kilometres.",
    ],
)
def test_parser_survives_messy_outputs(output):
    assert parse_qa_pairs(output) == [
        ("When do you oil the chain?", "Every Sunday."),
        ("How long does a clean chain last?", "Three thousand kilometres."),
    ]


def test_parser_returns_nothing_for_garbage():
    assert parse_qa_pairs("I'm sorry, I cannot help with that.") == []
    assert parse_qa_pairs("") == []
    assert parse_qa_pairs("{not json") == []


def test_parse_instruction_takes_the_first_line_without_labels():
    assert (
        parse_instruction('\n**Question:** "How long does a chain last?"\nExtra chatter')
        == "How long does a chain last?"
    )
    assert parse_instruction("1. Tell me about chains.") == "Tell me about chains."
    assert parse_instruction("   \n") == ""


def test_candidates_are_capped_and_back_translation_answers_verbatim():
    looping = "Q: When do you oil the chain?\nA: Every Sunday.\n" * 5
    assert len(candidate_pairs(PASSAGE, "grounded", looping, limit=2)) == 2
    (pair,) = candidate_pairs(PASSAGE, "back_translation", "How do you care for a chain?", limit=2)
    assert pair.answer == PASSAGE.text
    ids = {p.pair_id for p in candidate_pairs(PASSAGE, "grounded", looping, limit=5)}
    assert len(ids) == 5  # a repeated question still gets its own id


def judged(question: str, answer: str, mode: str = "grounded"):
    pair = candidate_pairs(PASSAGE, mode, f"Q: {question}\nA: {answer}" if mode == "grounded" else question, 1)[0]
    return filter_pairs([(pair, PASSAGE)], SynthesisSettings())[0]


@pytest.mark.parametrize(
    "question, answer, reason",
    [
        ("When do you oil the chain?", "", "empty"),
        ("Why?", "Every Sunday I oil the chain.", "question has 1 words"),
        ("What does the note say about chains?", "I oil the chain every Sunday.", "refers to the note"),
        ("What does the author do on Sundays?", "I oil the chain every Sunday.", "refers to the note"),
        ("When do you oil the chain?", "On Tuesdays with olive oil from the market stall.", "not supported"),
        ("When do you oil the chain?", " ".join(["chain"] * 301), "longer than 300 words"),
    ],
)
def test_filters_reject_with_reason(question, answer, reason):
    pair = judged(question, answer)
    assert pair.status == "rejected"
    assert reason in pair.reason


def test_supported_pair_is_kept_with_its_support():
    pair = judged("When do you oil the chain?", "I oil the chain every Sunday.")
    assert pair.status == "kept" and pair.reason is None and pair.support == 1.0


def test_back_translation_that_copies_the_passage_is_rejected():
    pair = judged("Do I oil the chain every Sunday and wipe it on Monday?", "", mode="back_translation")
    assert pair.reason == "question copies the answer"


def test_duplicate_questions_within_a_note_are_rejected():
    output = "Q: When do you oil the chain?\nA: Every Sunday.\nQ: When do you oil your chain?\nA: I oil the chain every Sunday."
    pairs = filter_pairs([(p, PASSAGE) for p in candidate_pairs(PASSAGE, "grounded", output, 2)], SynthesisSettings())
    assert [p.status for p in pairs] == ["kept", "rejected"]
    assert pairs[1].reason == "duplicate question"


def test_unknown_or_missing_modes_are_refused():
    with pytest.raises(ValueError):
        SynthesisSettings(modes=("poetry",))
    with pytest.raises(ValueError):
        SynthesisSettings(modes=())


@pytest.mark.parametrize(
    "output, expected",
    [
        ("You're right, I'm not sure. What's the point of a chain? And a hair?", "What's the point of a chain?"),
        ("Describe how you clean a chain.", "Describe how you clean a chain."),
        ("I'm glad you're happy with your patch. I'm glad you're happy.", ""),
    ],
)
def test_back_translation_keeps_only_a_question_or_an_instruction(output, expected):
    assert parse_instruction(output) == expected


def test_back_translation_answer_drops_leading_headings_but_stays_verbatim():
    passage = Passage("n", 0, 0, 0, "## How I check it\n\nI keep a chain checker on the nail.", "t", "llm")
    (pair,) = candidate_pairs(passage, "back_translation", "How do you check a chain?", 1)
    assert pair.answer == "I keep a chain checker on the nail." and pair.answer in passage.text


def test_looping_and_tautological_answers_are_rejected():
    looping = judged(
        "When do you oil the chain?",
        "I oil the chain every Sunday and I oil the chain every Sunday and I oil the chain every Sunday.",
    )
    assert looping.reason == "repetitive output"
    restated = judged("When do you oil the chain?", "I oil the chain.")
    assert restated.reason == "answer only restates the question"
