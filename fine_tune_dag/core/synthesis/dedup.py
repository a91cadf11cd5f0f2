"""Near-duplicate detection with MinHash (`datasketch`), as distilabel and NeMo Curator deduplicate.

Texts are compared as sets of lower-cased word n-grams ("shingles") by their Jaccard similarity; MinHash
signatures in an LSH index find the candidates without comparing every pair. Of each group of near-duplicates
the first in the given order is kept, so a caller that passes a stable order (files by path, passages by index)
drops the same texts on every run.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasketch import MinHash, MinHashLSH

from fine_tune_dag.core.common.text_metrics import words

NUM_PERM = 128  # datasketch's default: Jaccard estimates within about ±0.09 at two standard errors
DEFAULT_PASSAGE_THRESHOLD = 0.8
PASSAGE_SHINGLE_WORDS = 3  # word trigrams: reworded sentences differ, a re-wrapped or quoted copy does not
LSH_MAX_THRESHOLD = 0.9  # datasketch needs at least two bands, which a threshold near 1 leaves no room for
LSH_MARGIN = 0.1
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

    Two texts are near-duplicates when the Jaccard similarity of their shingles reaches `threshold`
    (0 < threshold ≤ 1): MinHash LSH proposes the candidates, so a text is compared with a few, not with every
    other. Texts with no words are never duplicates."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"a near-duplicate threshold must be in (0, 1], got {threshold}")
    sets = [shingles(text, shingle_words) if words(text) else set() for text in texts]
    signatures = MinHash.bulk([sorted(s) for s in sets], num_perm=num_perm)
    # the index only finds candidates, with a margin below the threshold so that MinHash's estimation error
    # (about ±0.09 at 128 permutations) misses few; each candidate's exact Jaccard decides
    index = MinHashLSH(threshold=min(max(threshold - LSH_MARGIN, 0.05), LSH_MAX_THRESHOLD), num_perm=num_perm)
    repeats: dict[int, int] = {}
    for position, (shingle_set, signature) in enumerate(zip(sets, signatures)):
        if not shingle_set:
            continue
        earlier = [other for other in index.query(signature) if jaccard(sets[other], shingle_set) >= threshold]
        if earlier:
            repeats[position] = min(earlier)
        else:
            index.insert(position, signature)
    return repeats


def jaccard(first: set[bytes], second: set[bytes]) -> float:
    return len(first & second) / len(first | second) if first or second else 0.0
