"""Near-duplicate detection with MinHash (`datasketch`), as distilabel and NeMo Curator deduplicate.

Texts are compared as sets of lower-cased word n-grams ("shingles"); MinHash estimates their Jaccard
similarity and an LSH index finds the candidates without comparing every pair. Of each group of near-duplicates
the first in the given order is kept, so a caller that passes a stable order (files by path, passages by index)
drops the same texts on every run.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasketch import MinHash, MinHashLSH

from fine_tune_dag.core.text.metrics import words

NUM_PERM = 128  # datasketch's default: Jaccard estimates within about ±0.09 at two standard errors
DEFAULT_PASSAGE_THRESHOLD = 0.8
PASSAGE_SHINGLE_WORDS = 3  # word trigrams: reworded sentences differ, a re-wrapped or quoted copy does not
QUESTION_SHINGLE_WORDS = 1  # questions are a dozen words: trigrams would leave too few to compare


def shingles(text: str, size: int) -> set[bytes]:
    """The text's lower-cased word n-grams; a text shorter than `size` words is one shingle."""
    tokens = words(text)
    if len(tokens) <= size:
        return {" ".join(tokens).encode("utf-8")}
    return {" ".join(tokens[i : i + size]).encode("utf-8") for i in range(len(tokens) - size + 1)}


def near_duplicates(
    texts: Sequence[str], threshold: float, shingle_words: int, num_perm: int = NUM_PERM
) -> dict[int, int]:
    """Index of each text that near-duplicates an earlier one → index of the earlier text it repeats.

    Two texts are near-duplicates when their estimated Jaccard similarity reaches `threshold` (0 < threshold ≤ 1).
    Texts with no words are never duplicates."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"a near-duplicate threshold must be in (0, 1], got {threshold}")
    sets = [shingles(text, shingle_words) if words(text) else set() for text in texts]
    signatures = MinHash.bulk([sorted(s) for s in sets], num_perm=num_perm)
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    repeats: dict[int, int] = {}
    for position, (shingle_set, signature) in enumerate(zip(sets, signatures)):
        if not shingle_set:
            continue
        earlier = [other for other in index.query(signature) if signatures[other].jaccard(signature) >= threshold]
        if earlier:
            repeats[position] = min(earlier)
        else:
            index.insert(position, signature)
    return repeats
