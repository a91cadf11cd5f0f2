import random

import pytest

from fine_tune_dag.core.synthesis.chunking import (
    ChunkingOutputError,
    ChunkingSettings,
    boundary_prompt_variables,
    boundary_requests,
    boundary_windows,
    heuristic_passages,
    needs_boundary_request,
    paragraph_units,
    parse_boundaries,
    passages_from_boundary_answers,
)

WORDS = "the chain wears slowly and the river rises while bees hum in the cold workshop".split()


def random_note(rng: random.Random, paragraphs: int) -> str:
    parts = []
    for _ in range(paragraphs):
        if rng.random() < 0.2:
            parts.append("#" * rng.randint(1, 3) + " " + " ".join(rng.choices(WORDS, k=3)).title())
        sentences = [
            " ".join(rng.choices(WORDS, k=rng.randint(4, 30))).capitalize() + "." for _ in range(rng.randint(1, 12))
        ]
        joiner = rng.choice([" ", "\n", "  "])
        parts.append(joiner.join(sentences))
    return rng.choice(["", "\n", "  \n"]) + rng.choice(["\n\n", "\n\n\n", "\n \n"]).join(parts) + rng.choice(["", "\n"])


def assert_span_invariant(text: str, passages) -> None:
    previous_end = 0
    for p in passages:
        assert text[p.start : p.end] == p.text
        assert p.text == p.text.strip() and p.text
        assert p.start >= previous_end
        previous_end = p.end


@pytest.mark.parametrize("seed", range(40))
def test_heuristic_passages_are_exact_ordered_spans_within_bounds(seed):
    rng = random.Random(seed)
    text = random_note(rng, rng.randint(1, 25))
    settings = ChunkingSettings(strategy="heuristic", min_chars=150, max_chars=700)
    result = heuristic_passages("n", text, "Title", settings)
    assert_span_invariant(text, result.passages)
    assert all(len(p.text) <= settings.max_chars for p in result.passages)
    covered = "".join(text[p.start : p.end] for p in result.passages)
    assert "".join(covered.split()) == "".join(text.split())  # nothing dropped but whitespace


def test_tiny_note_is_kept_whole_and_needs_no_llm_call():
    text = "A short note about oiling the chain on Sundays.\n"
    settings = ChunkingSettings()
    assert not needs_boundary_request(text, settings)
    result = heuristic_passages("n", text, "Oil", settings)
    assert [p.text for p in result.passages] == [text.strip()]
    assert result.strategy == "whole"


def test_headings_open_new_passages_and_label_them():
    text = "# Chains\n\n" + "Chains stretch. " * 30 + "\n\n## Bees\n\n" + "Bees cluster in winter. " * 30
    result = heuristic_passages("n", text, "Essay", ChunkingSettings(min_chars=100, max_chars=800))
    assert [p.topic for p in result.passages] == ["Chains", "Bees"]
    assert result.passages[1].text.startswith("## Bees")


def test_paragraph_units_keep_heading_lines_separate():
    text = "# Title\nfirst line\nsecond line\n\nnext para"
    units = paragraph_units(text)
    assert [text[u.start : u.end] for u in units] == ["# Title", "first line\nsecond line", "next para"]
    assert [u.is_heading for u in units] == [True, False, False]


def long_note() -> str:
    return "\n\n".join(f"Paragraph {i} talks about topic {i // 3}. " + "More words here. " * 12 for i in range(9))


def test_valid_llm_boundaries_are_used_with_topics():
    text = long_note()
    settings = ChunkingSettings(min_chars=100, max_chars=1000)
    assert needs_boundary_request(text, settings)
    assert "[9] Paragraph 8" in boundary_prompt_variables(text, settings)["paragraphs"]
    result = passages_from_boundary_answers(
        "n", text, "T", ["Sure!\n1 | topic zero\n4 | topic one\n7 | topic two"], settings
    )
    assert result.strategy == "llm" and result.fallback_reason is None
    assert [p.topic for p in result.passages] == ["topic zero", "topic one", "topic two"]
    assert result.passages[1].text.startswith("Paragraph 3")
    assert_span_invariant(text, result.passages)


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("I think this note is about bikes.", "no 'number | topic'"),
        ("2 | starts late\n5 | more", "not 1"),
        ("1 | a\n5 | b\n3 | c", "not strictly increasing"),
        ("1 | a\n42 | b", "does not exist"),
        ("1 | everything", "above max_chars"),
    ],
)
def test_invalid_llm_boundaries_fall_back_to_heuristic_with_reason(answer, reason):
    text = long_note()
    result = passages_from_boundary_answers("n", text, "T", [answer], ChunkingSettings(min_chars=100, max_chars=1000))
    assert result.strategy == "heuristic"
    assert reason in result.fallback_reason
    assert_span_invariant(text, result.passages)


def test_a_long_note_is_asked_about_in_windows_each_numbered_from_one_and_cut_before_a_heading():
    """A mailbox or a book has thousands of paragraphs: one prompt for all of them would not fit a small model's
    context, so each window of paragraphs is its own request; a window ends before a heading in its second half."""
    sections = [
        f"## Message {m}\n\n" + "\n\n".join(f"Message {m} paragraph {p}." * 6 for p in range(3)) for m in range(5)
    ]
    text = "\n\n".join(sections)
    settings = ChunkingSettings(min_chars=50, max_chars=400, window_paragraphs=6)
    windows = boundary_windows(text, settings)
    assert [len(w) for w in windows] == [4, 4, 4, 4, 4]  # each window a whole message: its heading and paragraphs
    assert all(window[0].is_heading for window in windows)
    requests = boundary_requests(text, settings, 64, note="mail")
    assert len(requests) == 5 and all("[1] ## Message" in r.messages[-1][1] for r in requests)
    assert all("[5]" not in r.messages[-1][1] for r in requests)
    answers = ["1 | opening\n3 | later"] * 4 + ["no boundaries here"]  # the last window's answer is unusable
    result = passages_from_boundary_answers("mail", text, "Mail", answers, settings)
    assert result.strategy == "llm" and result.fallback_reason.startswith("window 5 of 5: no 'number | topic'")
    assert_span_invariant(text, result.passages)
    assert [p.topic for p in result.passages][:2] == ["opening", "later"]
    last = [p for p in result.passages if "Message 4" in p.text]  # cut by headings and paragraphs, not lost
    assert last[0].text.startswith("## Message 4") and {p.strategy for p in last} == {"heuristic"}
    assert {p.strategy for p in result.passages if p not in last} == {"llm"}


def test_parse_boundaries_accepts_common_formats():
    messy = "**1 | Intro**\n- 3: the river\nParagraph 5 - bees\n"
    assert parse_boundaries(messy, 6) == [(1, "Intro"), (3, "the river"), (5, "bees")]
    with pytest.raises(ChunkingOutputError):
        parse_boundaries("", 3)


def test_settings_validation():
    with pytest.raises(ValueError):
        ChunkingSettings(strategy="magic")
    with pytest.raises(ValueError):
        ChunkingSettings(min_chars=500, max_chars=100)
