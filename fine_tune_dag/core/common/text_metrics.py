"""Word-level overlap measures shared by the synthesis filters and the evaluation report."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

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


_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64 and window hashes come from prefix sums
_CACHED_LENGTHS = 12  # each cached run length holds one 8-byte hash per train word


def _powers(base: int, count: int) -> np.ndarray:
    """base**0 … base**(count - 1) modulo 2**64 (uint64 arithmetic wraps)."""
    return np.concatenate((np.ones(1, np.uint64), np.cumprod(np.full(count - 1, base, np.uint64))))


class _WindowHashes:
    """Polynomial hashes of every run of L words in one word sequence, each in O(length) for any L.

    `breaks` marks positions no run may cover: the seams between train texts, and words of a generation
    that no train text has.
    """

    def __init__(self, values: np.ndarray, breaks: np.ndarray) -> None:
        count = len(values) + 1
        self.powers = _powers(_BASE, count)
        inverse = _powers(pow(_BASE, -1, 2**64), count)
        self.scaled = np.concatenate((np.zeros(1, np.uint64), np.cumsum(values * inverse[:-1], dtype=np.uint64)))
        self.breaks = np.concatenate(([0], np.cumsum(breaks)))

    def runs(self, length: int) -> np.ndarray:
        """Hash of each run of `length` words that covers no break: sum of value[p + k] * base**(length - 1 - k)."""
        hashes = (self.scaled[length:] - self.scaled[:-length]) * self.powers[length - 1 : len(self.powers) - 1]
        return hashes[self.breaks[length:] == self.breaks[:-length]]


class SharedRuns:
    """The longest run of consecutive words a text shares with any single train text: regurgitation, not style.

    Word runs are hashed (random 64-bit word values, polynomial in position), and `longest` searches the run
    length: a text sharing L words shares L - 1 too. The search probes 1, 2, 4, … and then halves, so generations
    mostly probe the same small lengths, whose sorted train hashes stay cached: 10,000 notes of 300 words take
    about a second to index and 100 generations another. A false match of two 64-bit hashes is negligible.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        self._vocabulary: dict[str, int] = {}
        ids: list[int] = []
        for text in texts:
            ids.extend(self._vocabulary.setdefault(word, len(self._vocabulary)) for word in words(text))
            ids.append(-1)  # a seam: no run crosses from one train text into the next
        # One value more than words: index -1 (seams, unknown words) picks it, and the breaks mask it out anyway.
        self._word_values = np.random.default_rng(0).integers(0, 2**64, len(self._vocabulary) + 1, np.uint64)
        corpus = np.asarray(ids, dtype=np.int64)
        train = _WindowHashes(self._word_values[corpus], corpus < 0)
        self._train_runs = lru_cache(maxsize=_CACHED_LENGTHS)(lambda length: np.sort(train.runs(length)))

    def longest(self, text: str) -> int:
        ids = np.asarray([self._vocabulary.get(word, -1) for word in words(text)], dtype=np.int64)
        if not (ids >= 0).any():
            return 0
        hashed = _WindowHashes(self._word_values[ids], ids < 0)

        def shares(length: int) -> bool:
            train, runs = self._train_runs(length), hashed.runs(length)
            if not len(train):
                return False
            found = np.minimum(np.searchsorted(train, runs), len(train) - 1)
            return bool((train[found] == runs).any())

        low, high = 1, 2  # a length known to be shared (some word is), and one not yet known
        while high <= len(ids) and shares(high):
            low, high = high, high * 2
        high = min(high, len(ids) + 1)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if shares(middle) else (low, middle)
        return low


def has_repetition_loop(text: str, n: int = 4, min_repeats: int = 3) -> bool:
    """True when some run of `n` words occurs `min_repeats` times: a model stuck repeating itself until the token limit.

    A loop repeats its sentence (or phrase) whole, so by the third pass every 4 words of it have come three times;
    prose of a few hundred words repeats stock phrases and anaphora of two or three words ("it was the"), rarely
    the same four words three times. Meant for single generations: over thousands of words chance repeats add up.
    """
    tokens = words(text)
    runs = Counter(zip(*(tokens[i:] for i in range(n))))
    return bool(runs) and max(runs.values()) >= min_repeats
