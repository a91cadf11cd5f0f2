"""The promotion gate: a new adapter replaces the champion only when it is better than what needs no
fine-tuning beyond noise, and not worse than the champion beyond a stated margin.

Every comparison is a paired interval over the same held-out items that resamples notes
(`core/common/statistics.py`), read from the evaluation's summary, so the gate gives the same verdict in
eval_report, in the blocking check and in the sweep. Nothing passes on a point estimate, and nothing passes
because it had no items to be judged on. Against the champion a tie is enough: a retrained adapter that knows
newer notes should replace an equal one, or a champion that cannot be beaten by noise would freeze the data's
growth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fine_tune_dag.core.common.statistics import Interval

UNTUNED = ("base", "prompted", "base+rag")  # contenders that involve no fine-tuning
RETRIEVAL = ("base+rag", "tuned+rag")


@dataclass(frozen=True)
class Measure:
    """One thing contenders are compared on; a gap is always `mine − theirs`."""

    key: str
    label: str
    lower_is_better: bool
    rivals: tuple[str, ...]  # the untuned contenders the new adapter must beat on it

    def better(self, gap: Interval) -> bool:
        """`mine` better than `theirs` beyond noise: the whole interval on the good side of no difference."""
        return gap.below(0.0) if self.lower_is_better else gap.above(0.0)

    def worse(self, gap: Interval) -> bool:
        return gap.above(0.0) if self.lower_is_better else gap.below(0.0)


# Voice: per-token NLL of the author's held-out passages under "write a note about …". Answer NLL: per-token NLL of
# the reference answers; base + retrieval is no rival there, since it reads the answer's passage in its context.
VOICE = Measure("voice", "voice (per-token NLL of your held-out passages)", True, UNTUNED)
ANSWER_NLL = Measure("nll", "answer NLL (per token)", True, ("base", "prompted"))
AUTHORSHIP = Measure("authorship", "written notes attributed to you", False, ())
GROUNDING = Measure("unsupported", "unsupported content in answers", True, ())
GATED = (VOICE, ANSWER_NLL)
# Set on an adapter trained on every note (nothing held out): the notes of its cross-validated verdict of "Tune",
# the evidence it is kept on.
CROSSVAL_TUNE_NOTES = "crossval_tune_notes"
VERDICT_MEASURES = (VOICE, AUTHORSHIP, GROUNDING)


def gap_key(measure: Measure, theirs: str) -> str:
    return f"{measure.key}_vs_{theirs}"


def interval_metrics(key: str, interval: Interval) -> dict[str, float]:
    """An interval as flat metrics, so the registry keeps what the gate and the verdict read."""
    return {
        key: interval.value,
        f"{key}_low": interval.low,
        f"{key}_high": interval.high,
        f"{key}_notes": float(interval.notes),
        f"{key}_items": float(interval.items),
    }


def stored_interval(values: Mapping[str, float], key: str) -> Interval | None:
    """The interval `interval_metrics` stored under `key`, or None when it was never measured."""
    if key not in values or math.isnan(values[key]):
        return None
    return Interval(
        values[key],
        values.get(f"{key}_low", math.nan),
        values.get(f"{key}_high", math.nan),
        int(values.get(f"{key}_notes", 0)),
        int(values.get(f"{key}_items", 0)),
    )


def stored_gap(summary: Mapping[str, Mapping[str, float]], mine: str, measure: Measure, theirs: str) -> Interval | None:
    return stored_interval(summary.get(mine, {}), gap_key(measure, theirs))


@dataclass(frozen=True)
class PromotionPolicy:
    champion_margin: float = 0.05  # per-token NLL (nats) the newcomer may trail the champion by: 5% perplexity
    min_test_notes: int = 3  # held-out notes below which an interval decides nothing
    promote_when_uncertain: bool = False  # promote when every comparison that failed was within noise
    promote_always: bool = False  # promote whatever the evidence (trying things out); the report still says why not
    max_shared_words: int = 40  # a generation sharing a longer run of words with the train split regurgitates
    max_memorized_share: float = 0.05  # largest share of generations allowed to regurgitate


@dataclass(frozen=True)
class PromotionVerdict:
    passed: bool  # what the evidence says; the recommendation reads only this
    reasons: tuple[str, ...]
    uncertain: bool = False  # what held it back was noise or too few notes, not a loss
    override: str = ""  # the policy setting that promotes it although the evidence did not pass it

    @property
    def promotes(self) -> bool:
        """Whether the champion moves: on the evidence, or on a setting the user chose."""
        return self.passed or bool(self.override)

    @property
    def text(self) -> str:
        return "; ".join(
            (*self.reasons, *([f"promoted although not passed: {self.override} is set"] * bool(self.override)))
        )


@dataclass(frozen=True)
class _Check:
    passed: bool
    uncertain: bool
    reason: str


def _against_rival(measure: Measure, gap: Interval, rival: str, policy: PromotionPolicy) -> _Check:
    compared = f"{measure.label} vs {rival}: gap {gap} over {gap.notes} notes, {gap.items} items"
    if gap.notes < policy.min_test_notes or not gap.decided:
        return _Check(
            False, True, f"too few held-out notes to judge ({gap.notes} < {policy.min_test_notes}): {compared}"
        )
    if measure.better(gap):
        return _Check(True, False, f"better than {rival} beyond noise: {compared}")
    if measure.worse(gap):
        return _Check(False, False, f"worse than {rival}, which needs no fine-tuning, beyond noise: {compared}")
    return _Check(False, True, f"not better than {rival} beyond noise: {compared}")


def _against_champion(measure: Measure, gap: Interval, policy: PromotionPolicy) -> _Check:
    margin = policy.champion_margin
    compared = f"{measure.label} vs champion: gap {gap} over {gap.notes} notes, margin {margin}"
    if gap.notes < policy.min_test_notes or not gap.decided:
        return _Check(
            False, True, f"too few held-out notes to judge ({gap.notes} < {policy.min_test_notes}): {compared}"
        )
    if gap.high < margin:
        return _Check(True, False, f"not worse than the champion beyond the margin: {compared}")
    if gap.low > margin:
        return _Check(False, False, f"worse than the champion beyond the margin: {compared}")
    return _Check(False, True, f"may be worse than the champion by more than the margin: {compared}")


def _checks(summary: Mapping[str, Mapping[str, float]], measure: Measure, policy: PromotionPolicy) -> list[_Check]:
    rivals = [rival for rival in measure.rivals if rival in summary]
    gaps = {rival: stored_gap(summary, "tuned", measure, rival) for rival in rivals}
    if not rivals or any(gap is None or gap.items == 0 for gap in gaps.values()):
        return [_Check(False, False, f"{measure.label} not judged: no held-out items to compare on")]
    checks = [_against_rival(measure, gap, rival, policy) for rival, gap in gaps.items() if gap is not None]
    if "champion" in summary:
        gap = stored_gap(summary, "tuned", measure, "champion")
        if gap is None or gap.items == 0:
            checks.append(_Check(False, False, f"{measure.label} vs champion not judged: no held-out items"))
        else:
            checks.append(_against_champion(measure, gap, policy))
    return checks


def judge_challenger(summary: Mapping[str, Mapping[str, float]], policy: PromotionPolicy) -> PromotionVerdict:
    """The new adapter ("tuned") on voice and answer NLL against every untuned contender (better beyond noise)
    and the champion when one was evaluated beside it (not worse beyond the margin); refused when it
    regurgitates the train split."""
    checks = [check for measure in GATED for check in _checks(summary, measure, policy)]
    crossval_notes = summary["tuned"].get(CROSSVAL_TUNE_NOTES, 0.0)
    if crossval_notes and all(not c.passed and not c.uncertain and "not judged" in c.reason for c in checks):
        checks = [
            _Check(
                True,
                False,
                f"trained on every note after a cross-validated verdict of Tune over {crossval_notes:.0f} notes: "
                "the folds measured the method, so nothing is held out from the adapter kept",
            )
        ]
    memorized = summary["tuned"].get("memorized", 0.0)
    if memorized > policy.max_memorized_share:
        checks.append(
            _Check(
                False,
                False,
                f"regurgitates: {memorized:.0%} of its generations share a run of more than {policy.max_shared_words} "
                f"words with the train split (allowed {policy.max_memorized_share:.0%})",
            )
        )
    failed = [check for check in checks if not check.passed]
    uncertain = bool(failed) and all(check.uncertain for check in failed)
    override = (
        "promote_always"
        if failed and policy.promote_always
        else "promote_when_uncertain"
        if uncertain and policy.promote_when_uncertain
        else ""
    )
    return PromotionVerdict(not failed, tuple(check.reason for check in (failed or checks)), uncertain, override)
