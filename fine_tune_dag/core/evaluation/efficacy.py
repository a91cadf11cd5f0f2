"""Was fine-tuning worth it? Voice, authorship, grounding, loops and memorization for every contender, paired
comparisons between every two of them, and the one recommendation the report opens with.

Voice is the perplexity of the author's held-out passages under the writing-task prompt (token-weighted);
authorship the share of a contender's written notes (cut to one length) that a classifier trained on the author
against other writers attributes to the author; grounding the unsupported-content share of Q&A answers, and
with retrieval whether the right note was cited. Every interval resamples held-out notes; every comparison is
paired over the items both contenders were scored on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np
import pandas as pd

from fine_tune_dag.core.common.statistics import Interval, clustered_mean, clustered_ratio, paired_difference
from fine_tune_dag.core.common.text_metrics import SharedRuns, has_repetition_loop
from fine_tune_dag.core.evaluation.gate import (
    ANSWER_NLL,
    AUTHORSHIP,
    GROUNDING,
    RETRIEVAL,
    VERDICT_MEASURES,
    VOICE,
    Measure,
    PromotionVerdict,
    gap_key,
    interval_metrics,
    stored_gap,
)

CONTENDER_ROLES = {
    "base": "base model, zero-shot",
    "prompted": "base model, best prompt (few-shot of your own train passages)",
    "base+rag": "base model + retrieval over your notes",
    "champion": "current champion adapter",
    "tuned": "the new adapter (fine-tuned)",
    "tuned+rag": "the new adapter + retrieval",
}
# What running each costs, cheapest first: a longer prompt, an index, an adapter already trained, a new one.
COST_ORDER = ("base", "prompted", "base+rag", "champion", "tuned", "tuned+rag")
ADAPTER_CONTENDERS = ("tuned", "tuned+rag")  # recommended only when the gate passed the new adapter
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
class HeldOut:
    """The held-out items behind each figure, and the notes they come from."""

    voice_notes: Sequence[str]  # one per scored passage
    qa_notes: Sequence[str]  # one per Q&A item
    written_notes: Sequence[str]  # one per written note (the first passages' prompts)

    @property
    def notes(self) -> int:
        return len({*self.voice_notes, *self.qa_notes})

    @property
    def text(self) -> str:
        return (
            f"{self.notes} held-out notes: {len(self.voice_notes)} passages (voice) from {len(set(self.voice_notes))} "
            f"notes, {len(self.qa_notes)} Q&A items from {len(set(self.qa_notes))} notes, {len(self.written_notes)} "
            f"written notes per writing contender from {len(set(self.written_notes))} notes"
        )


@dataclass(frozen=True)
class Efficacy:
    """Per contender: metrics that go into the summary (and the registry) and their intervals."""

    metrics: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, Interval]]
    held_out: HeldOut = field(default_factory=lambda: HeldOut((), (), ()))


def perplexity(frame: pd.DataFrame) -> float:
    """Token-weighted: a long passage counts per token, as a language model's perplexity does."""
    nll = frame["nll_sum"].sum() / max(frame["answer_tokens"].sum(), 1)
    return float(math.exp(min(nll, 50.0)))


def voice_perplexity(frame: pd.DataFrame, notes: Sequence[str], seed: int = 0) -> Interval:
    """Perplexity with an interval resampling notes (the exponential keeps the bootstrap's percentiles)."""
    nll = clustered_ratio(frame["nll_sum"], frame["answer_tokens"], notes, seed=seed)
    return Interval(*(math.exp(min(x, 50.0)) for x in (nll.value, nll.low, nll.high)), nll.notes, nll.items)


def _per_item_scores(
    measure: Measure,
    name: str,
    qa: Mapping[str, pd.DataFrame],
    voice: Mapping[str, pd.DataFrame],
    attributed: Mapping[str, list[float]],
) -> tuple[np.ndarray, np.ndarray] | None:
    """A contender's per-item numerators and weights on a measure, or None where it was not measured."""
    if measure is VOICE and name in voice and not voice[name].empty:
        return voice[name]["nll_sum"].to_numpy(float), voice[name]["answer_tokens"].to_numpy(float)
    if measure is ANSWER_NLL and name in qa and not qa[name].empty:
        return qa[name]["nll_sum"].to_numpy(float), qa[name]["answer_tokens"].to_numpy(float)
    if measure is GROUNDING and name in qa and not qa[name].empty:
        return qa[name]["unsupported"].to_numpy(float), np.ones(len(qa[name]))
    if measure is AUTHORSHIP and attributed.get(name):
        return np.asarray(attributed[name], dtype=float), np.ones(len(attributed[name]))
    return None


def paired_comparisons(
    qa: Mapping[str, pd.DataFrame],
    voice: Mapping[str, pd.DataFrame],
    attributed: Mapping[str, list[float]],
    held_out: HeldOut,
    seed: int = 0,
) -> dict[str, dict[str, Interval]]:
    """Every contender against every other on voice, answer NLL, authorship and grounding, paired over the items
    both were scored on: contender → `<measure>_vs_<other>` → interval of mine − theirs."""
    notes_of = {VOICE: held_out.voice_notes, ANSWER_NLL: held_out.qa_notes, GROUNDING: held_out.qa_notes}
    notes_of[AUTHORSHIP] = held_out.written_notes
    names = list(dict.fromkeys([*qa, *voice]))
    gaps: dict[str, dict[str, Interval]] = {name: {} for name in names}
    for measure in (VOICE, ANSWER_NLL, AUTHORSHIP, GROUNDING):
        for mine, theirs in permutations(names, 2):
            a = _per_item_scores(measure, mine, qa, voice, attributed)
            b = _per_item_scores(measure, theirs, qa, voice, attributed)
            if a is None or b is None:
                continue
            notes = list(notes_of[measure])[: len(a[0])]
            gaps[mine][gap_key(measure, theirs)] = paired_difference(a[0], b[0], notes, a[1], seed=seed)
    return gaps


def measure_efficacy(
    qa: Mapping[str, pd.DataFrame],
    voice: Mapping[str, pd.DataFrame],
    written: Mapping[str, list[str]],
    attributed: Mapping[str, list[float]],
    held_out: HeldOut,
    qa_paths: Sequence[str],
    shared: SharedRuns,
    max_shared_words: int,
    seed: int = 0,
) -> Efficacy:
    """`attributed` holds, per writing contender, 1 for each written note the classifier attributes to the author
    (none without a classifier); `qa_paths` the note path of each Q&A item, to check retrieval cited it."""
    metrics: dict[str, dict[str, float]] = {}
    intervals: dict[str, dict[str, Interval]] = {}
    for name in dict.fromkeys([*qa, *voice]):
        answers = qa.get(name, pd.DataFrame(columns=["generation", "unsupported", "rouge_l", "cited"]))
        mine: dict[str, float] = {}
        spread: dict[str, Interval] = {}
        generations = answers["generation"].tolist() + written.get(name, [])
        runs = [shared.longest(text) for text in generations]
        mine["loops"] = float(np.mean([has_repetition_loop(text) for text in generations])) if generations else 0.0
        mine["memorized"] = float(np.mean([run > max_shared_words for run in runs])) if runs else 0.0
        mine["longest_shared_run"] = float(max(runs, default=0))
        qa_notes = list(held_out.qa_notes)[: len(answers)]
        spread["unsupported"] = clustered_mean(answers["unsupported"].tolist(), qa_notes, seed=seed)
        spread["rouge_l"] = clustered_mean(answers["rouge_l"].tolist(), qa_notes, seed=seed)
        frame = voice.get(name)
        if frame is not None and not frame.empty:
            spread["voice_perplexity"] = voice_perplexity(frame, list(held_out.voice_notes)[: len(frame)], seed)
            mine["voice_nll"] = math.log(spread["voice_perplexity"].value)
        else:
            mine["voice_nll"] = math.nan
        if attributed.get(name):
            notes = list(held_out.written_notes)[: len(attributed[name])]
            spread["authorship"] = clustered_mean(attributed[name], notes, seed=seed)
        if name in RETRIEVAL and len(answers):
            right = [float(path in cited) for path, cited in zip(qa_paths, answers["cited"])]
            spread["cited_right"] = clustered_mean(right, qa_notes, seed=seed)
        metrics[name], intervals[name] = mine, spread
    for name, gaps in paired_comparisons(qa, voice, attributed, held_out, seed).items():
        intervals[name].update(gaps)
    for name, spread in intervals.items():  # recorded with the evaluation, so the registry keeps the intervals
        for key, interval in spread.items():
            metrics[name].update(interval_metrics(key, interval))
        for key in ("voice_perplexity", "authorship", "cited_right"):
            metrics[name].setdefault(key, math.nan)
    return Efficacy(metrics, intervals, held_out)


@dataclass(frozen=True)
class Verdict:
    """What the report opens with: the recommended contender (None when nothing can be recommended), in words."""

    choice: str | None
    text: str


ADVICE = {
    "base": "**Base model**: nothing measured beat the base model as it is",
    "prompted": "**Prompt**: the base model with your own passages as examples",
    "base+rag": "**Retrieve**: the base model with retrieval over your notes",
    "champion": "**Keep the champion**: the current adapter",
    "tuned": "**Tune**: the new adapter",
    "tuned+rag": "**Both**: the new adapter with retrieval over your notes",
}


AUTHORSHIP_DECIDES = "authorship_decides"  # 0 when the classifier's own calibration is too poor to decide anything


def verdict_measures(summary: Mapping[str, Mapping[str, float]]) -> tuple[Measure, ...]:
    """Voice, authorship and grounding; authorship only while its classifier can tell the author from others."""
    decides = summary.get("tuned", {}).get(AUTHORSHIP_DECIDES, 1.0) == 1.0
    return tuple(m for m in VERDICT_MEASURES if m is not AUTHORSHIP or decides)


def beaten_by(summary: Mapping[str, Mapping[str, float]], name: str) -> list[str]:
    """Why `name` cannot be recommended: every contender that beats it beyond noise on voice, authorship or
    grounding, in words."""
    losses = []
    for other in summary:
        for measure in verdict_measures(summary):
            gap = stored_gap(summary, other, measure, name)
            if other != name and gap is not None and measure.better(gap):
                losses.append(f"{other} beats {name} on {measure.label} ({gap})")
    return losses


def wins_of(summary: Mapping[str, Mapping[str, float]], name: str) -> list[str]:
    """The measures on which `name` beats other contenders beyond noise, each with whom it beats, in words."""
    wins = []
    for measure in verdict_measures(summary):
        beaten = [
            other
            for other in summary
            if other != name and (gap := stored_gap(summary, name, measure, other)) is not None and measure.better(gap)
        ]
        if beaten:
            wins.append(f"{measure.label} over {', '.join(beaten)}")
    return wins


def what_would_decide(held_out_notes: int, min_notes: int, blind_picks: int) -> str:
    steps = []
    if held_out_notes < min_notes:
        steps.append(
            f"more notes (only {held_out_notes} held out), or a cross-validated verdict (`fine-tune-dag crossval`)"
        )
    steps.append("a larger base model")
    if blind_picks == 0:
        steps.append("blind readings (`fine-tune-dag annotate --blind`)")
    return ", ".join(steps)


def recommendation(
    summary: Mapping[str, Mapping[str, float]],
    gate: PromotionVerdict,
    held_out_notes: int,
    min_notes: int = 5,
    blind_picks: int = 0,
) -> Verdict:
    """The cheapest contender that no other beats beyond noise on voice, authorship or grounding, among those
    that may be recommended (the new adapter only when the gate passed it)."""
    names = [name for name in COST_ORDER if name in summary]
    eligible = [name for name in names if name not in ADAPTER_CONTENDERS or gate.passed]
    unbeaten = [name for name in eligible if not beaten_by(summary, name)]
    decided = {name: wins_of(summary, name) for name in names}
    notes = [f"{name} is better beyond noise on {'; and on '.join(wins)}" for name, wins in decided.items() if wins]
    if not gate.passed and "tuned" in summary:
        notes.append(f"the promotion gate refused the new adapter ({gate.text})")
    evidence = "; ".join(notes) if notes else "no contender is better than another beyond noise on any measure"
    decide = what_would_decide(held_out_notes, min_notes, blind_picks)
    if not unbeaten:
        return Verdict(
            None,
            f"**Undecided**: every contender that may be recommended loses to another beyond noise on some measure, "
            f"so the measures disagree — {evidence}. What would decide it: {decide}.",
        )
    choice = unbeaten[0]
    if all(not wins for wins in decided.values()):
        return Verdict(
            choice,
            f"{ADVICE[choice]} — nothing is decided: {evidence}, so the cheapest contender stands. "
            f"What would decide it: {decide}.",
        )
    others = [name for name in unbeaten[1:] if name != choice]
    tie = f" ({', '.join(others)} also unbeaten, at a higher cost)" if others else ""
    return Verdict(choice, f"{ADVICE[choice]}{tie} — {evidence}. What would decide more: {decide}.")
