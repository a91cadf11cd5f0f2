"""Does a text read as the author's? A small classifier trained on the author's notes against other writers.

Character n-grams catch spelling, punctuation and word-ending habits that survive a change of topic; word
n-grams catch favourite words and phrasings. Both as TF-IDF into a logistic regression: fast on a few thousand
notes, no GPU, and the same texts and seed give the same probabilities. Classes are weighted by their size,
so a person with many notes and a short reference file still gets a classifier that is not just the majority.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from fine_tune_dag.core.modeling.statistics import Interval, clustered_mean

REFERENCE_WRITING = Path(__file__).with_name("reference_writing.txt")
AUTHOR, OTHER = 1, 0
# TF-IDF rows have unit length, so on a few dozen notes the default C=1 squeezes every probability towards 0.5,
# where the 0.5 cut of `attributed_share` is noise; weaker regularization lets them spread.
INVERSE_REGULARIZATION = 10.0


def _pipeline(seed: int) -> Pipeline:
    features = FeatureUnion(
        [
            ("characters", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)),
            ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)),
        ]
    )
    classifier = LogisticRegression(C=INVERSE_REGULARIZATION, class_weight="balanced", max_iter=1000, random_state=seed)
    return Pipeline([("features", features), ("classifier", classifier)])


class AuthorshipClassifier:
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    @classmethod
    def fit(cls, author_texts: Sequence[str], other_texts: Sequence[str], seed: int = 0) -> AuthorshipClassifier:
        """Learn the author's texts apart from the others'; both sides are needed, or there is nothing to contrast."""
        if not author_texts:
            raise ValueError("no author texts: the classifier needs the author's own writing to learn from")
        if not other_texts:
            raise ValueError("no other texts: the classifier needs writing by others to contrast the author with")
        labels = [AUTHOR] * len(author_texts) + [OTHER] * len(other_texts)
        return cls(_pipeline(seed).fit([*author_texts, *other_texts], labels))

    def author_probability(self, texts: Sequence[str]) -> list[float]:
        """Per text, the probability that the author wrote it."""
        if not texts:
            return []
        column = list(self._pipeline.classes_).index(AUTHOR)
        return [float(p) for p in self._pipeline.predict_proba(list(texts))[:, column]]

    def attributed_share(self, texts: Sequence[str], notes: Sequence[str], seed: int = 0) -> Interval:
        """Share of texts the classifier attributes to the author (probability above 0.5), with a bootstrap
        interval: a few dozen generations leave a wide one."""
        return clustered_mean([float(p > 0.5) for p in self.author_probability(texts)], notes, seed=seed)


def reference_writing() -> list[str]:
    """The shipped passages by other writers, the default negative class: varied voices and subjects, so the
    classifier learns the author's habits rather than one contrasting style."""
    lines = [line for line in REFERENCE_WRITING.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    passages = "\n".join(lines).split("\n\n")
    return [" ".join(passage.split()) for passage in passages if passage.strip()]
