"""Was fine-tuning worth it? Voice, authorship, grounding, loops and memorization for every contender, with
intervals, and the recommendation the report opens with.

Voice is the perplexity of the author's held-out passages under the writing-task prompt (token-weighted);
authorship the share of a contender's written notes a classifier attributes to the author; grounding the
unsupported-content share and ROUGE-L of Q&A answers, and with retrieval whether the right note was cited.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fine_tune_dag.core.modeling.statistics import Interval, clustered_mean, paired_difference
from fine_tune_dag.core.store.promotion import strongest_untuned
from fine_tune_dag.core.text.metrics import SharedRuns, has_repetition_loop

if TYPE_CHECKING:  # scikit-learn loads only where a classifier is trained
    from fine_tune_dag.core.text.authorship import AuthorshipClassifier

RETRIEVAL = ("base+rag", "tuned+rag")
CONTENDER_ROLES = {
    "base": "base model, zero-shot",
    "prompted": "base model, best prompt (few-shot of your own train passages)",
    "base+rag": "base model + retrieval over your notes",
    "champion": "current champion adapter",
    "tuned": "the new adapter (fine-tuned)",
    "tuned+rag": "the new adapter + retrieval",
}
METRIC_LABELS = {
    "nll": "answer NLL (lower is better)",
    "perplexity": "perplexity (lower is better)",
    "rouge_l": "ROUGE-L F1 (higher is better)",
    "token_f1": "token F1 (higher is better)",
    "unsupported": "unsupported content (lower is better)",
    "style_distance": "style distance to the author (lower is better)",
    "words": "words per answer",
    "voice_perplexity": "voice perplexity of held-out passages (lower is better)",
    "authorship": "written notes attributed to the author (higher is better)",
    "cited_right": "right note cited by retrieval (higher is better)",
    "loops": "generations looping (lower is better)",
    "memorized": "generations regurgitating the train split (lower is better)",
}


@dataclass(frozen=True)
class Efficacy:
    """Per contender: metrics that go into the summary (and the registry), and their intervals."""

    metrics: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, Interval]]


def per_token(frame: pd.DataFrame) -> np.ndarray:
    return (frame["nll_sum"] / frame["answer_tokens"].clip(lower=1)).to_numpy(dtype=float)


def perplexity(frame: pd.DataFrame) -> float:
    """Token-weighted: a long passage counts per token, as a language model's perplexity does."""
    nll = frame["nll_sum"].sum() / max(frame["answer_tokens"].sum(), 1)
    return float(math.exp(min(nll, 50.0)))


def perplexity_ratio(mine: pd.DataFrame, theirs: pd.DataFrame, samples: int = 1000, seed: int = 0) -> Interval:
    """Perplexity of `mine` over `theirs` on the same passages, with a paired bootstrap interval over passages:
    0.7 means 30% lower."""
    if mine.empty:
        return Interval(float("nan"), float("nan"), float("nan"))
    a, b, tokens = (mine["nll_sum"].to_numpy(), theirs["nll_sum"].to_numpy(), mine["answer_tokens"].to_numpy())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(samples, len(a)))
    ratios = np.exp((a[draws].sum(1) - b[draws].sum(1)) / np.maximum(tokens[draws].sum(1), 1))
    value = math.exp((a.sum() - b.sum()) / max(tokens.sum(), 1))
    return Interval(value, float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5)))


def voice_gap(mine: pd.DataFrame, theirs: pd.DataFrame, notes: Sequence[str], seed: int = 0) -> Interval:
    """Per-token NLL difference on the same passages (negative: `mine` is closer to the author's words), paired,
    resampling notes."""
    return paired_difference(mine["nll_sum"], theirs["nll_sum"], notes, mine["answer_tokens"], seed=seed)


def measure_efficacy(
    qa: Mapping[str, pd.DataFrame],
    voice: Mapping[str, pd.DataFrame],
    written: Mapping[str, list[str]],
    item_notes: Sequence[str],
    voice_notes: Sequence[str],
    classifier: AuthorshipClassifier | None,
    shared: SharedRuns,
    max_shared_words: int,
    seed: int = 0,
) -> Efficacy:
    """`item_notes` is the note path of each Q&A item, to check retrieval cited the right one."""
    metrics: dict[str, dict[str, float]] = {}
    intervals: dict[str, dict[str, Interval]] = {}
    for name, answers in qa.items():
        mine: dict[str, float] = {}
        spread: dict[str, Interval] = {}
        generations = answers["generation"].tolist() + written.get(name, [])
        runs = [shared.longest(text) for text in generations]
        mine["loops"] = float(np.mean([has_repetition_loop(text) for text in generations])) if generations else 0.0
        mine["memorized"] = float(np.mean([run > max_shared_words for run in runs])) if runs else 0.0
        mine["longest_shared_run"] = float(max(runs, default=0))
        spread["unsupported"] = clustered_mean(answers["unsupported"].tolist(), item_notes, seed=seed)
        spread["rouge_l"] = clustered_mean(answers["rouge_l"].tolist(), item_notes, seed=seed)
        if name in voice and not voice[name].empty:
            mine["voice_nll"] = float(voice[name]["nll_sum"].sum() / max(voice[name]["answer_tokens"].sum(), 1))
            mine["voice_perplexity"] = perplexity(voice[name])
            mine["voice_items"] = float(len(voice[name]))
        else:
            mine["voice_nll"] = mine["voice_perplexity"] = math.nan
            mine["voice_items"] = 0.0
        if name in written and classifier is not None:
            spread["authorship"] = classifier.attributed_share(written[name], voice_notes[: len(written[name])], seed=seed)
            mine["authorship"] = spread["authorship"].value
        else:
            mine["authorship"] = math.nan
        if name in RETRIEVAL:
            right = [note in cited for note, cited in zip(item_notes, answers["cited"])]
            spread["cited_right"] = clustered_mean([float(r) for r in right], item_notes, seed=seed)
            mine["cited_right"] = spread["cited_right"].value
        else:
            mine["cited_right"] = math.nan
        metrics[name], intervals[name] = mine, spread
    rival = strongest_untuned(metrics)
    if "tuned" in voice and rival is not None:
        gap = voice_gap(voice["tuned"], voice[rival], voice_notes, seed)
        metrics["tuned"].update(voice_gap=gap.value, voice_gap_low=gap.low, voice_gap_high=gap.high)
        for other in {"base", "prompted", rival} & set(voice):
            intervals["tuned"][f"voice_ratio_vs_{other}"] = perplexity_ratio(voice["tuned"], voice[other], seed=seed)
    for name, spread in intervals.items():  # recorded with the evaluation, so the registry keeps the intervals
        for key, interval in spread.items():
            metrics[name].update({key: interval.value, f"{key}_low": interval.low, f"{key}_high": interval.high})
    return Efficacy(metrics, intervals)


def recommendation(summary: Mapping[str, Mapping[str, float]]) -> str:
    """Tune, retrieve, both, or neither, from voice and grounding, each beyond noise: the adapter's voice
    interval against the strongest contender without fine-tuning, and a retrieval contender's whole
    unsupported-content interval below what the plain models invent."""
    tuned = summary["tuned"]
    rival = strongest_untuned(summary)
    voice_wins = rival is not None and tuned.get("voice_gap_high", math.nan) < 0
    plain = min(summary[name]["unsupported"] for name in ("base", "tuned"))
    retrieval_grounds = any(
        summary[name].get("unsupported_high", math.nan) < plain for name in RETRIEVAL if name in summary
    )
    voice_text = (
        f"the adapter writes more like you than {rival} (voice perplexity {tuned['voice_perplexity']:.1f} against "
        f"{summary[rival]['voice_perplexity']:.1f}, beyond noise)"
        if voice_wins
        else "the adapter does not write measurably more like you than "
        + (
            f"{rival} (voice perplexity {tuned['voice_perplexity']:.1f} against {summary[rival]['voice_perplexity']:.1f})"
            if rival
            else "the base model"
        )
    )
    grounding_text = (
        "retrieval grounds answers in your notes better than the model alone"
        if retrieval_grounds
        else "retrieval does not ground answers better than the model alone"
    )
    if voice_wins and retrieval_grounds:
        advice = "**Both**: use the tuned model with retrieval (`tuned+rag`)"
    elif voice_wins:
        advice = "**Tune**: the tuned model alone"
    elif retrieval_grounds:
        advice = "**Retrieve**: the base model with retrieval; fine-tuning did not pay for itself on these notes yet"
    else:
        advice = "**Prompt**: neither fine-tuning nor retrieval beat prompting the base model on these notes yet"
    return f"{advice} — {voice_text}; {grounding_text}."
