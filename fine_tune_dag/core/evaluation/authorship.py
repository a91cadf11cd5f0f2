"""Does a text read as the author's? A small classifier trained on the author's passages against other writers.

Character n-grams catch spelling, punctuation and word-ending habits that survive a change of topic; word
n-grams catch favourite words and phrasings. Both as TF-IDF into a logistic regression: fast on a few thousand
passages, no GPU, and the same texts and seed give the same probabilities.

Three things keep the measure honest. The other class is other writers only (the shipped reference set), never
a contender's output: a contender the classifier was taught to reject scores zero by construction. Every text
is learned and scored at one length and one formatting (`length_matched`), so a two-sentence answer or a
Markdown list is not itself the signal. And `calibrate` says how well the classifier works on this author
before anyone reads its verdict: cross-validated by note and by writer, how many of the author's held-out
passages it finds and how many of other writers' passages it takes for the author's.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy.special import expit
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import FeatureUnion
from sklearn.utils.class_weight import compute_sample_weight

from fine_tune_dag.core.common.markdown import prose_words
from fine_tune_dag.core.common.statistics import NO_ITEMS, Interval, clustered_mean

REFERENCE_WRITING = Path(__file__).with_name("reference_writing")
AUTHOR, OTHER = 1, 0
# The author's passages run to about 100 words and a model's answer is often shorter: 60 words is most of
# a passage and still within reach of what a model writes.
SCORED_WORDS = 60
# A text is attributed to the author when the classifier gives it a probability above this.
ATTRIBUTION_THRESHOLD = 0.5
# Past these the classifier's verdict on a contender is not worth reporting: below the one it misses too
# many of the author's own passages, above the other it takes too many other writers' for the author's.
MIN_RECALL = 0.7
MAX_FALSE_POSITIVE_RATE = 0.2
# Cross-validation by note needs notes to hold out and notes left to train on, more than once.
MIN_NOTES = 3
# Folds `fit` sets its cut on; the cut rests on every training text once held out.
CUT_FOLDS = 5
# Once the cut is cross-validated, recall and false positives on the sample notes move by a few points at
# most anywhere between 1 and 100.
INVERSE_REGULARIZATION = 10.0

_HEADER_FIELD = re.compile(r"^#\s*(writer|register|source):\s*(.+?)\s*$")
_BLANK_LINE = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class ReferencePassage:
    """A passage by another writer. `source` says where it comes from (written for this project, or the
    public-domain work) so that nothing of unknown copyright ships."""

    writer: str
    register: str
    source: str
    text: str


@dataclass(frozen=True)
class Calibration:
    """How well the classifier tells this author from other writers, on passages it did not train on.

    `recall` is the share of the author's held-out passages attributed to the author (clustered by note),
    `false_positive_rate` the share of held-out writers' passages attributed to the author (clustered by
    writer). `decides` is whether the classifier is good enough for its verdict on a contender to count;
    `reason` says why in words."""

    recall: Interval
    false_positive_rate: Interval
    folds: int
    decides: bool
    reason: str

    @property
    def text(self) -> str:
        """The report's sentence: both rates with their intervals and counts, and whether authorship decides."""
        return (
            f"it finds {self.recall} of your own held-out passages ({self.recall.notes} notes) and takes "
            f"{self.false_positive_rate} of other writers' passages for yours ({self.false_positive_rate.notes} "
            f"writers), over {self.folds} folds: "
            + (self.reason if self.decides else f"authorship cannot decide — {self.reason}")
            + "."
        )


def length_matched(text: str, words: int) -> str:
    """The first `words` words of a text as plain prose: what the classifier scores, so that every text is
    judged on the same amount of writing."""
    return " ".join(prose_words(text)[:words])


def _windows(text: str, words: int) -> list[str]:
    """Consecutive `words`-word windows of a text, as plain prose. A remainder under half a window is
    dropped; a text shorter than one window is kept whole."""
    tokens = prose_words(text)
    if len(tokens) <= words:
        return [" ".join(tokens)] if tokens else []
    windows = [tokens[start : start + words] for start in range(0, len(tokens), words)]
    if len(windows[-1]) < words / 2:
        windows.pop()
    return [" ".join(window) for window in windows]


def _features() -> FeatureUnion:
    return FeatureUnion(
        [
            ("characters", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)),
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        ]
    )


def _equal_error_cut(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score above which as few of the author's held-out windows are missed as other writers' windows
    are taken for the author's."""
    false_positive_rate, recall, cuts = roc_curve(labels, scores)
    return float(cuts[np.argmin(np.abs((1 - recall) - false_positive_rate))])


class AuthorshipClassifier:
    """The author's writing against other writers', learned and scored at `words` words per text."""

    def __init__(self, features: FeatureUnion, weights: np.ndarray, bias: float, words: int) -> None:
        self._features = features
        self._weights = weights
        self._bias = bias
        self.words = words

    @classmethod
    def fit(
        cls, author_texts: Sequence[str], other_texts: Sequence[str], words: int = SCORED_WORDS, seed: int = 0
    ) -> AuthorshipClassifier:
        """Learn the author's texts apart from other writers'. Never pass a contender's output as
        `other_texts`: the classifier would learn to reject that contender, whatever it wrote.

        Texts are cut into `words`-word windows, so both classes are learned at the length that is scored.
        Classes are weighted by their size, so a long reference set does not make the author the rare class.
        A logistic regression on a few dozen of the author's windows separates them from the rest with room
        to spare, and its 0.5 lies where the author's training windows end: a passage of a note it has not
        seen falls short about half the time (on the sample notes, 45% found and nothing mistaken). So the
        regression is fitted in folds (a text's windows together), the cut is set where their held-out
        windows are missed and mistaken equally often, and the classifier is the folds' average, the models
        that cut was measured on, shifted so that 0.5 is the cut."""
        author = [_windows(text, words) for text in author_texts]
        other = [_windows(text, words) for text in other_texts]
        if not any(author):
            raise ValueError("no author texts: the classifier needs the author's own writing to learn from")
        if not any(other):
            raise ValueError("no other texts: the classifier needs writing by others to contrast the author with")
        folds = min(CUT_FOLDS, sum(map(bool, author)), sum(map(bool, other)))
        if folds < 2:
            raise ValueError("the classifier needs at least two author texts and two other texts, to set its cut")
        windows = [window for text in [*author, *other] for window in text]
        labels = np.array([AUTHOR] * sum(map(len, author)) + [OTHER] * sum(map(len, other)))
        texts = [index for index, text in enumerate([*author, *other]) for _ in text]
        features = _features()
        matrix = features.fit_transform(windows)
        weights = compute_sample_weight("balanced", labels)
        held_out = np.empty(len(labels))
        models = []
        for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(matrix, labels, texts):
            model = LogisticRegression(
                C=INVERSE_REGULARIZATION, solver="liblinear", dual=True, max_iter=1000, random_state=seed
            )
            models.append(model.fit(matrix[train], labels[train], sample_weight=weights[train]))
            held_out[test] = model.decision_function(matrix[test])
        cut = _equal_error_cut(held_out, labels)
        average = np.mean([model.coef_[0] for model in models], axis=0)
        bias = float(np.mean([model.intercept_[0] for model in models])) - cut
        return cls(features, average, bias, words)

    def author_probability(self, texts: Sequence[str]) -> list[float]:
        """Per text, the probability that the author wrote its first `words` words, with even odds at the
        cut `fit` set."""
        if not texts:
            return []
        scores = self._features.transform([length_matched(text, self.words) for text in texts]) @ self._weights
        return [float(p) for p in expit(scores + self._bias)]

    def attributed(self, texts: Sequence[str]) -> list[float]:
        """Per text, 1.0 when the classifier attributes it to the author, else 0.0: the values whose mean, per
        note, is a contender's authorship."""
        return [float(p > ATTRIBUTION_THRESHOLD) for p in self.author_probability(texts)]


def _folds_of(keys: Sequence[Hashable], folds: int, rng: np.random.Generator) -> dict[Hashable, int]:
    """Each distinct key's fold, dealt round-robin in a shuffled order so folds differ by at most one key."""
    distinct = list(dict.fromkeys(keys))
    return {distinct[index]: position % folds for position, index in enumerate(rng.permutation(len(distinct)))}


def calibrate(
    author_texts: Sequence[str],
    author_notes: Sequence[Hashable],
    reference: Sequence[ReferencePassage],
    folds: int = 5,
    words: int = SCORED_WORDS,
    seed: int = 0,
) -> Calibration:
    """Cross-validate the classifier before trusting it: each fold trains on the other folds' notes and
    writers and scores its own, so every score is on a note and a writer the classifier never saw.

    Notes and writers are held out whole, because passages of one note (or one writer) share subject and
    phrasing: holding out single passages would let the classifier recognise the note, not the author."""
    if len(author_texts) != len(author_notes):
        raise ValueError(f"{len(author_texts)} author texts but {len(author_notes)} note ids")
    writers = {passage.writer for passage in reference}
    if len(writers) < 2:
        raise ValueError("calibration needs passages by at least two other writers, to hold some out")
    notes = len(set(author_notes))
    if notes < MIN_NOTES:
        reason = f"too few notes to check the classifier: {notes}, and it takes at least {MIN_NOTES}"
        return Calibration(NO_ITEMS, NO_ITEMS, 0, False, reason)
    count = min(folds, notes)
    rng = np.random.default_rng(seed)
    note_fold = _folds_of(author_notes, count, rng)
    writer_fold = _folds_of([passage.writer for passage in reference], count, rng)
    found: list[float] = []
    found_notes: list[Hashable] = []
    mistaken: list[float] = []
    mistaken_writers: list[str] = []
    for fold in range(count):
        held_author = [(t, n) for t, n in zip(author_texts, author_notes) if note_fold[n] == fold]
        held_other = [p for p in reference if writer_fold[p.writer] == fold]
        classifier = AuthorshipClassifier.fit(
            [t for t, n in zip(author_texts, author_notes) if note_fold[n] != fold],
            [p.text for p in reference if writer_fold[p.writer] != fold],
            words,
            seed,
        )
        found += classifier.attributed([text for text, _ in held_author])
        found_notes += [note for _, note in held_author]
        mistaken += classifier.attributed([passage.text for passage in held_other])
        mistaken_writers += [passage.writer for passage in held_other]
    recall = clustered_mean(found, found_notes, seed=seed)
    false_positive_rate = clustered_mean(mistaken, mistaken_writers, seed=seed)
    return Calibration(recall, false_positive_rate, count, *_verdict(recall, false_positive_rate))


def _verdict(recall: Interval, false_positive_rate: Interval) -> tuple[bool, str]:
    """Whether the classifier decides, and why, in the author's terms. Written so that a NaN fails."""
    problems = []
    if not recall.value >= MIN_RECALL:
        problems.append(
            f"the classifier finds only {recall.value:.0%} of your own held-out passages (it needs {MIN_RECALL:.0%})"
        )
    if not false_positive_rate.value <= MAX_FALSE_POSITIVE_RATE:
        problems.append(
            f"it takes {false_positive_rate.value:.0%} of other writers' passages for yours "
            f"(at most {MAX_FALSE_POSITIVE_RATE:.0%} is acceptable)"
        )
    if problems:
        return False, "; ".join(problems)
    return True, (
        f"the classifier finds {recall.value:.0%} of your own held-out passages and takes "
        f"{false_positive_rate.value:.0%} of other writers' for yours"
    )


def _read_reference_file(path: Path) -> list[ReferencePassage]:
    """One writer per file: `# writer:`, `# register:` and `# source:` lines (other `#` lines at the top are
    comments), then passages separated by blank lines, kept with their line breaks so lists stay lists."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header_length = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    fields = dict(m.groups() for m in map(_HEADER_FIELD.match, lines[:header_length]) if m)
    missing = [key for key in ("writer", "register", "source") if key not in fields]
    if missing:
        raise ValueError(f"{path.name}: no {', '.join(missing)} line in the header")
    body = "\n".join(lines[header_length:])
    passages = ["\n".join(line.strip() for line in block.strip().splitlines()) for block in _BLANK_LINE.split(body)]
    return [ReferencePassage(fields["writer"], fields["register"], fields["source"], p) for p in passages if p]


@cache
def _reference_passages() -> tuple[ReferencePassage, ...]:
    return tuple(p for path in sorted(REFERENCE_WRITING.glob("*.txt")) for p in _read_reference_file(path))


def reference_writing() -> list[ReferencePassage]:
    """The shipped passages by other writers, the classifier's other class: plain modern first-person prose on
    the author's kind of subjects (so topic alone does not give the author away), model-like prose (what an
    untuned model writes), and other registers and centuries."""
    return list(_reference_passages())
