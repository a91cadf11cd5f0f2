"""The authorship classifier: learned from the author's passages against the shipped reference writers only,
scored at one length and one formatting, and checked by note-wise cross-validation on the sample notes."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pytest

from fine_tune_dag.core.common.text_metrics import words
from fine_tune_dag.core.evaluation.authorship import (
    MAX_FALSE_POSITIVE_RATE,
    MIN_RECALL,
    SCORED_WORDS,
    AuthorshipClassifier,
    calibrate,
    length_matched,
    reference_writing,
)
from fine_tune_dag.core.ingest.notes import parse_note

SAMPLE_NOTES = Path(__file__).resolve().parents[2] / "data" / "notes"
# Twenty words that appear in no note and no reference passage: a tail whose every n-gram is new.
FOREIGN = (
    "zqx vormel quandrix plethwick jorvane skelt mubrion fandle trevisk oplander gruntwhistle yarrowquin "
    "belzaph crunkle dorriwan vespitch quillamor snade ottrevane blisk"
)


def sample_passages() -> tuple[list[str], list[str]]:
    """The sample author's Markdown and plain-text notes as passages of at least SCORED_WORDS words, each with
    its note's file name: a note's paragraphs joined in order until long enough (a lone "Good dog. Old dog."
    is too short to attribute), a short tail joined to the passage before it."""
    texts: list[str] = []
    notes: list[str] = []
    for path in sorted([*SAMPLE_NOTES.glob("*.md"), *SAMPLE_NOTES.glob("*.txt")]):
        passages: list[str] = []
        current = ""
        for paragraph in re.split(r"\n\s*\n", parse_note(path, SAMPLE_NOTES).text):
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(length_matched(current, SCORED_WORDS).split()) == SCORED_WORDS:
                passages.append(current)
                current = ""
        if current and passages:
            passages[-1] = f"{passages[-1]}\n\n{current}"
        texts += passages
        notes += [path.name] * len(passages)
    return texts, notes


@pytest.fixture(scope="module")
def sample() -> tuple[list[str], list[str]]:
    return sample_passages()


@pytest.fixture(scope="module")
def classifier(sample: tuple[list[str], list[str]]) -> AuthorshipClassifier:
    return AuthorshipClassifier.fit(sample[0], [passage.text for passage in reference_writing()])


def test_length_matched_drops_headings_and_markup_and_keeps_the_first_n_words():
    text = (
        "# Chain wear\n\n## How I check it\n\n- Three readings, **always** three.\n"
        "2. One near the   quick link.\n> Quoted, then\n\n---\n\nplain words at the end."
    )
    assert length_matched(text, 5) == "Three readings, always three. One"
    assert length_matched(text, 100) == (
        "Three readings, always three. One near the quick link. Quoted, then plain words at the end."
    )
    assert length_matched("one two three", 2) == "one two"
    assert length_matched("## only a heading", SCORED_WORDS) == ""


def test_a_text_and_the_same_text_with_200_more_words_get_the_same_probability(
    classifier: AuthorshipClassifier, sample: tuple[list[str], list[str]]
):
    passage = next(text for text in sample[0] if not text.startswith("#"))
    assert len(words(passage)) > SCORED_WORDS and classifier.words == SCORED_WORDS
    longer = f"{passage}\n\n{' '.join([FOREIGN] * 10)}"
    listed = f"## A heading\n\n- **{passage}**"
    reference = next(p.text for p in reference_writing() if p.register == "model-like")
    probabilities = classifier.author_probability([passage, longer, listed, reference, reference + " " + FOREIGN * 10])
    assert probabilities[0] == probabilities[1] == probabilities[2], probabilities
    assert probabilities[3] == probabilities[4], probabilities
    assert classifier.attributed([passage, reference]) == [float(probabilities[0] > 0.5), float(probabilities[3] > 0.5)]


def test_training_texts_are_cut_into_windows_and_a_tail_under_half_a_window_is_dropped(
    sample: tuple[list[str], list[str]]
):
    """Author texts of exactly two windows: twenty words more are a tail under half a window and change
    nothing; forty are over half, become a window of their own, and change what is learned."""
    cut = [length_matched(text, 2 * SCORED_WORDS) for text in sample[0]]
    author = [text for text in cut if len(text.split()) == 2 * SCORED_WORDS]
    other = [passage.text for passage in reference_writing()]
    probes = [sample[0][1], other[0], FOREIGN]
    assert len(author) == 4
    plain = AuthorshipClassifier.fit(author, other).author_probability(probes)
    short_tail = AuthorshipClassifier.fit([f"{text} {FOREIGN}" for text in author], other).author_probability(probes)
    long_tail = AuthorshipClassifier.fit([f"{text} {FOREIGN} {FOREIGN}" for text in author], other)
    assert short_tail == plain
    assert long_tail.author_probability(probes) != plain


def test_two_fits_on_the_same_texts_give_the_same_probabilities(sample: tuple[list[str], list[str]]):
    other = [passage.text for passage in reference_writing()]
    probes = sample[0][:5] + other[:5]
    first = AuthorshipClassifier.fit(sample[0], other, seed=3).author_probability(probes)
    second = AuthorshipClassifier.fit(sample[0], other, seed=3).author_probability(probes)
    assert first == second and len(first) == len(probes) and all(0.0 < p < 1.0 for p in first)
    assert AuthorshipClassifier.fit(sample[0], other).author_probability([]) == []


def test_on_the_sample_notes_the_classifier_finds_the_author_and_rarely_mistakes_other_writers(
    sample: tuple[list[str], list[str]]
):
    """Measured: 26 of the 27 held-out passages of 10 notes found; 23 of the 166 passages by 42 writers taken
    for the author's, nearly all plain first-person or model-like prose on the author's subjects."""
    texts, notes = sample
    assert (len(texts), len(set(notes))) == (27, 10)
    calibration = calibrate(texts, notes, reference_writing())
    recall, false_positives = calibration.recall, calibration.false_positive_rate
    assert (recall.notes, recall.items, false_positives.notes, false_positives.items) == (10, 27, 42, 166)
    assert calibration.folds == 5 and calibration.decides, calibration
    assert recall.value == pytest.approx(26 / 27) and false_positives.value == pytest.approx(23 / 166)
    assert (recall.low, false_positives.low, false_positives.high) == pytest.approx((0.889, 0.066, 0.214), abs=0.001)
    assert calibration.reason == (
        "the classifier finds 96% of your own held-out passages and takes 14% of other writers' for yours"
    )


FIVE_REGISTERS = {
    "Margaret Hollis",
    "a modern recipe column",
    "an encyclopedia",
    "a local newspaper reporter",
    "software documentation",
}
FIVE_FIRST_PERSON = {"Alan Birch", "Colin Marsh", "Danny Whitlock", "Gareth Pryce", "Kiran Mehta"}


@pytest.mark.parametrize(
    ("author_writers", "failing"),
    [(FIVE_REGISTERS, ["finds only", "takes"]), (FIVE_FIRST_PERSON, ["takes"])],
    ids=["five-voices-in-five-registers", "five-plain-first-person-voices"],
)
def test_calibration_cannot_decide_when_the_author_is_several_other_writers(
    author_writers: set[str], failing: list[str]
):
    """Each writer is one "note": five voices in five registers have nothing in common to learn, so a held-out
    one is not found; five plain first-person voices teach the classifier a register, not a person, and it
    then takes the other first-person writers for the author."""
    reference = reference_writing()
    mine = [p for p in reference if p.writer.split(",")[0] in author_writers]
    assert len({p.writer for p in mine}) == 5
    calibration = calibrate([p.text for p in mine], [p.writer for p in mine], [p for p in reference if p not in mine])
    assert not calibration.decides and calibration.folds == 5
    assert (calibration.recall.value < MIN_RECALL) == ("finds only" in failing), calibration
    assert calibration.false_positive_rate.value > MAX_FALSE_POSITIVE_RATE, calibration
    assert [phrase for phrase in ("finds only", "takes") if phrase in calibration.reason] == failing


def test_calibration_cannot_decide_on_two_notes(sample: tuple[list[str], list[str]]):
    texts, notes = sample
    two = [(text, note) for text, note in zip(texts, notes) if note in sorted(set(notes))[:2]]
    calibration = calibrate([text for text, _ in two], [note for _, note in two], reference_writing())
    assert not calibration.decides and calibration.folds == 0
    assert calibration.reason == "too few notes to check the classifier: 2, and it takes at least 3"
    assert math.isnan(calibration.recall.value) and math.isnan(calibration.false_positive_rate.value)


def test_the_reference_set_is_many_writers_and_registers_each_passage_with_its_source():
    passages = reference_writing()
    writers = Counter(p.writer for p in passages)
    registers: dict[str, set[str]] = {}
    for passage in passages:
        registers.setdefault(passage.register, set()).add(passage.writer)
    assert len(passages) >= 150 and len(writers) >= 15 and len(registers) >= 10, (len(passages), len(writers))
    assert len(registers["plain first-person"]) >= 5 and len(registers["model-like"]) >= 2
    assert all(writers[w] >= 6 for w in registers["plain first-person"] | registers["model-like"])
    assert all(60 <= len(words(p.text)) <= 150 for p in passages), [len(words(p.text)) for p in passages]
    assert all(p.source.startswith(("written for this project", "public domain: ")) for p in passages)
    assert len({p.text for p in passages}) == len(passages)
    assert not [p for p in passages if p.text.startswith("#")]
    austen = next(p for p in passages if p.writer == "Jane Austen")
    assert austen.register == "literary fiction"
    assert austen.source == "public domain: Jane Austen, Pride and Prejudice (1813)"
    assert austen.text.startswith("It is a truth universally acknowledged")


@pytest.mark.parametrize(
    ("author", "other", "missing"),
    [
        ([], ["some other writing", "and more"], "no author texts"),
        (["my own writing", "and more"], [], "no other texts"),
        (["## only a heading"], ["some other writing", "and more"], "no author texts"),
        (["my own writing"], ["some other writing", "and more"], "at least two author texts"),
    ],
)
def test_fitting_needs_two_texts_on_each_side(author: list[str], other: list[str], missing: str):
    with pytest.raises(ValueError, match=missing):
        AuthorshipClassifier.fit(author, other)
