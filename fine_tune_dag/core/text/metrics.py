"""Word-level overlap measures shared by the synthesis filters and the evaluation report."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[\w']+", re.UNICODE)

STOPWORDS = frozenset(
    """a an the and or but if so of to in on at by for with from as is are was were be been being it its
    this that these those i me my we our you your he him his she her they them their what which who whom
    how why when where do does did done not no yes there here than then too very can could would should
    will shall may might must have has had just about into over under up down out all any some each""".split()
)


def words(text: str) -> list[str]:
    """Lowercased word tokens; punctuation and markup do not count."""
    return [w.strip("'") for w in _WORD.findall(text.lower()) if w.strip("'")]


def content_words(text: str) -> list[str]:
    """Words that carry meaning: no stopwords."""
    return [w for w in words(text) if w not in STOPWORDS]


def repeated_trigram_share(text: str) -> float:
    """Share of word trigrams that occur more than once: small models stuck in a loop score high."""
    tokens = words(text)
    trigrams = list(zip(tokens, tokens[1:], tokens[2:]))
    if not trigrams:
        return 0.0
    counts = Counter(trigrams)
    return sum(n for n in counts.values() if n > 1) / len(trigrams)


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over word tokens (longest common subsequence)."""
    p, r = words(prediction), words(reference)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1."""
    p, r = words(prediction), words(reference)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def support(answer: str, source: str) -> float:
    """Share of the answer's words that occur in the source: a cheap groundedness check."""
    answer_words = words(answer)
    if not answer_words:
        return 0.0
    vocabulary = set(words(source))
    return sum(w in vocabulary for w in answer_words) / len(answer_words)


def unsupported_share(answer: str, source: str) -> float:
    """Share of the answer's content words absent from its source passage: invented material."""
    answer_words = content_words(answer)
    if not answer_words:
        return 0.0
    vocabulary = set(words(source))
    return sum(w not in vocabulary for w in answer_words) / len(answer_words)


def _cosine(a: Counter, b: Counter) -> float:
    dot = sum(a[key] * b[key] for key in a.keys() & b.keys())
    norm = (sum(v * v for v in a.values()) * sum(v * v for v in b.values())) ** 0.5
    return dot / norm if norm else 0.0


def style_profile(texts: list[str]) -> tuple[Counter, Counter]:
    """Function-word counts and character 3-gram counts: habits of an author that survive topic changes."""
    function_words: Counter = Counter()
    trigrams: Counter = Counter()
    for text in texts:
        function_words.update(w for w in words(text) if w in STOPWORDS)
        squeezed = " ".join(text.lower().split())
        trigrams.update(squeezed[i : i + 3] for i in range(len(squeezed) - 2))
    return function_words, trigrams


def style_distance(texts: list[str], reference_texts: list[str]) -> float:
    """0 when the two bodies of text use function words and character 3-grams alike, 1 when they share none.

    The mean of the two cosine distances between the profiles; computed over whole bodies of text,
    since single short answers are too small to have a style.
    """
    own_words, own_trigrams = style_profile(texts)
    ref_words, ref_trigrams = style_profile(reference_texts)
    return 1.0 - (_cosine(own_words, ref_words) + _cosine(own_trigrams, ref_trigrams)) / 2
