"""Canaries: proof of what a model memorized, and that a forgotten note is gone (Carlini et al., "The Secret
Sharer", 2019, https://arxiv.org/abs/1802.08232).

A canary is a sentence of random words and a random secret of digits, drawn from a seed, planted in a note that
the audit writes into a notes folder of its own (never the user's, unless asked). Its exposure is how highly the
model ranks it among same-format candidates that differ only in the secret: with N candidates and the canary at
rank r by log-likelihood, exposure = log2 N − log2 r bits. A model that never saw it ranks it anywhere, which
averages about log2 e ≈ 1.44 bits (`chance_exposure`), and reaches e bits with probability 2^−e; a memorized
canary ranks first, log2 N bits.

The likelihood is read the way continued pretraining trains on a note: plain text, every token scored.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# random words for the canaries' sentences: common, so no tokenizer splits them oddly
_WORDS = (
    "amber apple bridge candle copper desert falcon garden harbor island jacket lantern maple meadow mirror "
    "orange pepper pillow river saddle silver spider stone thunder timber tunnel velvet violet walnut willow"
).split()
CANARY_NOTE = "privacy-audit-canaries.md"


@dataclass(frozen=True)
class CanarySettings:
    count: int = field(default=4, metadata={"help": "canaries planted in the audit's note"})
    words: int = field(default=3, metadata={"help": "random words before each canary's secret"})
    digits: int = field(default=6, metadata={"help": "random digits in each secret (10^digits possible secrets)"})
    candidates: int = field(
        default=4096, metadata={"help": "same-format candidates each canary is ranked among (2^12: at most 12 bits)"}
    )
    repetitions: int = field(
        default=8,
        metadata={"help": "times each canary is written into the note: raise it until the model memorizes"},
    )
    seed: int = field(default=0, metadata={"help": "draws the canaries and their candidates"})
    batch_size: int = field(default=64, metadata={"help": "rows of the output layer computed at once (memory)"})

    def __post_init__(self) -> None:
        if self.candidates >= 10**self.digits:
            raise ValueError(f"{self.candidates} candidates need more than {self.digits} digits of secret")


@dataclass(frozen=True)
class Canary:
    prefix: str  # the random words, the same for every candidate
    secret: str  # digits, space-separated so every tokenizer reads one digit at a time

    def with_secret(self, secret: str) -> str:
        """The sentence scored: it ends with the secret, so candidates differ in their last tokens only."""
        return f"the {self.prefix} code is {secret}"

    @property
    def text(self) -> str:
        return self.with_secret(self.secret)


@dataclass(frozen=True)
class Exposure:
    canary: Canary
    rank: int  # 1: the canary is the likeliest of its candidates
    candidates: int  # the canary included

    @property
    def bits(self) -> float:
        return math.log2(self.candidates) - math.log2(self.rank)


def _secret(rng: random.Random, digits: int) -> str:
    return " ".join(str(rng.randrange(10)) for _ in range(digits))


def make_canaries(settings: CanarySettings) -> list[Canary]:
    rng = random.Random(f"canaries:{settings.seed}")
    return [
        Canary(" ".join(rng.choice(_WORDS) for _ in range(settings.words)), _secret(rng, settings.digits))
        for _ in range(settings.count)
    ]


def canary_note(canaries: list[Canary], repetitions: int) -> str:
    """A Markdown note with each canary written `repetitions` times, one short paragraph each."""
    paragraphs = [f"Reminder {round_ + 1}: {canary.text}." for round_ in range(repetitions) for canary in canaries]
    return "# Codes to remember\n\n" + "\n\n".join(paragraphs) + "\n"


def plant_canaries(notes_dir: Path, settings: CanarySettings, name: str = CANARY_NOTE) -> tuple[Path, list[Canary]]:
    """Write the canary note `name` into `notes_dir` (the audit's own folder); refuses to overwrite a file."""
    canaries = make_canaries(settings)
    path = notes_dir / name
    notes_dir.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as handle:
        handle.write(canary_note(canaries, settings.repetitions))
    return path, canaries


def candidate_secrets(canary: Canary, settings: CanarySettings) -> list[str]:
    """`candidates − 1` distinct secrets of the canary's format, none of them the canary's own."""
    rng = random.Random(f"candidates:{settings.seed}:{canary.prefix}")
    found: set[str] = set()
    while len(found) < settings.candidates - 1:
        secret = _secret(rng, settings.digits)
        if secret != canary.secret:
            found.add(secret)
    return sorted(found)


@torch.no_grad()
def log_likelihoods(model: Any, tokenizer: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """Each text's summed log-probability of its tokens after the first, as plain text (no chat template).

    The texts are read as a tree: their shared beginning once, then one pass per token depth that feeds each
    distinct sequence its next token beside the keys and values cached for the rest. The candidates of a
    canary share their words and differ only in the secret, so a secret costs a few short passes, not a full
    pass per candidate: 4,096 candidates of a 4-digit secret took 6 s on the bundled model, against 98 s read
    whole in batches (bfloat16, one core of a loaded machine). The output layer runs in float32 whatever the model's dtype, so bfloat16 weights do not round
    scores onto a grid where candidates tie."""
    encoded = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    shared = min(len(os.path.commonprefix(encoded)), min(map(len, encoded)) - 1)
    if shared < 1:
        raise ValueError("the texts must share their first token and each have one more (a canary's candidates)")
    device = next(model.parameters()).device
    output = model.get_output_embeddings().weight.float()
    decoder = model.get_decoder()

    def step(ids: list[list[int]], cache: Any) -> tuple[torch.Tensor, Any]:
        read = decoder(input_ids=torch.tensor(ids, device=device), cache=cache, use_cache=True)
        return read.last_hidden_state, read.cache

    hidden, cache = step([encoded[0][:shared]], None)
    log_probs = torch.log_softmax(hidden[0].float() @ output.T, dim=-1)
    first = log_probs[:-1].gather(-1, torch.tensor(encoded[0][1:shared], device=device)[:, None]).sum()
    scores = np.full(len(texts), float(first))
    nodes, next_log_probs = {(): 0}, log_probs[-1:]  # the sequences read so far beyond the shared beginning
    for depth in range(max(map(len, encoded)) - shared):
        for i, ids in enumerate(encoded):
            if len(ids) > shared + depth:
                scores[i] += float(next_log_probs[nodes[tuple(ids[shared : shared + depth])], ids[shared + depth]])
        children = list(
            dict.fromkeys(tuple(e[shared : shared + depth + 1]) for e in encoded if len(e) > shared + depth + 1)
        )
        if not children:
            break
        cache.reorder_cache(torch.tensor([nodes[c[:-1]] for c in children], device=device))
        hidden, cache = step([[c[-1]] for c in children], cache)
        next_log_probs = torch.cat(
            [
                torch.log_softmax(hidden[start : start + batch_size, -1].float() @ output.T, dim=-1)
                for start in range(0, len(children), batch_size)
            ]
        )
        nodes = {c: i for i, c in enumerate(children)}
    return scores


def exposures(model: Any, tokenizer: Any, canaries: list[Canary], settings: CanarySettings) -> list[Exposure]:
    """Each canary's rank among its candidates under `model` (ties count against the canary)."""
    model.eval()
    found = []
    for canary in canaries:
        texts = [canary.text, *(canary.with_secret(s) for s in candidate_secrets(canary, settings))]
        scores = log_likelihoods(model, tokenizer, texts, settings.batch_size)
        found.append(Exposure(canary, int((scores[1:] >= scores[0]).sum()) + 1, len(texts)))
    return found


def chance_exposure(candidates: int) -> float:
    """The mean exposure of a canary the model never saw: its rank is uniform over 1 … candidates."""
    return math.log2(candidates) - float(np.mean(np.log2(np.arange(1, candidates + 1))))


def chance_bound(canaries: int, level: float = 0.05) -> float:
    """The exposure that `canaries` canaries a model never saw all stay below with probability at least
    1 − `level`: each ranks uniformly among candidates drawn as it was, so it reaches e bits with probability
    2^−e, and the highest of k with at most k·2^−e. Below it, a canary is within noise of chance."""
    return math.log2(canaries / level)
