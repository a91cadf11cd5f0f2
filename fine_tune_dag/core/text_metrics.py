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
