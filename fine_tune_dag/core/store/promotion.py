"""The promotion gate: a new adapter replaces the champion only when it is clearly better, and better than
what needs no fine-tuning at all.

"Clearly" means a lower answer NLL than the incumbent by a relative margin, with no generation metric falling
by more than a tolerance; a voice perplexity below the strongest contender without fine-tuning (the
best-prompted base model, base + retrieval), with an interval that excludes no difference; enough held-out
passages to tell; and no regurgitation of the train split. Noise never flips the champion back and forth,
and an adapter that loses to prompting is never promoted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

GUARDED_METRICS = ("rouge_l", "token_f1")  # higher is better
GUARDED_LOWER_METRICS = ("unsupported",)  # lower is better
UNTUNED = ("base", "prompted", "base+rag")  # contenders that involve no fine-tuning


@dataclass(frozen=True)
class PromotionPolicy:
    min_nll_improvement: float = 0.01  # relative: challenger NLL ≤ incumbent NLL × (1 − this)
    metric_tolerance: float = 0.02  # absolute worsening allowed in each guarded metric
    min_test_items: int = 5  # held-out passages below which the voice comparison cannot decide
    promote_when_uncertain: bool = False  # promote on too few items or an interval that spans no difference
    max_shared_words: int = 40  # a generation sharing a longer run of words with the train split regurgitates
    max_memorized_share: float = 0.05  # largest share of generations allowed to regurgitate


@dataclass(frozen=True)
class PromotionVerdict:
    passed: bool
    nll_improvement: float  # relative; positive means the challenger's NLL is lower
    reasons: tuple[str, ...]
    uncertain: bool = False  # too few items or an interval spanning no difference decided it

    @property
    def text(self) -> str:
        return "; ".join(self.reasons)


def promotion_verdict(
    challenger: Mapping[str, float], incumbent: Mapping[str, float], policy: PromotionPolicy, incumbent_name: str
) -> PromotionVerdict:
    """Whether `challenger` should replace `incumbent` (the champion, or the base model when none exists) on
    answer NLL and the guarded generation metrics."""
    if math.isnan(challenger["nll"]) or math.isnan(incumbent["nll"]):
        return PromotionVerdict(True, 0.0, ("no held-out Q&A items: answer NLL not compared",))
    improvement = (incumbent["nll"] - challenger["nll"]) / incumbent["nll"] if incumbent["nll"] else 0.0
    reasons = []
    nll_ok = improvement >= policy.min_nll_improvement
    reasons.append(
        f"answer NLL {challenger['nll']:.4f} vs {incumbent_name} {incumbent['nll']:.4f} "
        f"({improvement:+.1%}, needs ≥ {policy.min_nll_improvement:+.1%})"
    )
    worse = [(m, incumbent[m] - challenger[m]) for m in GUARDED_METRICS]
    if incumbent_name == "champion":  # a base model that says little is "grounded" by saying nothing
        worse += [
            (m, challenger[m] - incumbent[m]) for m in GUARDED_LOWER_METRICS if m in challenger and m in incumbent
        ]
    regressions = [
        f"{metric} worsened {change:.4f} ({incumbent[metric]:.4f} → {challenger[metric]:.4f}, "
        f"tolerance {policy.metric_tolerance})"
        for metric, change in worse
        if change > policy.metric_tolerance
    ]
    reasons.extend(regressions)
    return PromotionVerdict(nll_ok and not regressions, improvement, tuple(reasons))


def strongest_untuned(summary: Mapping[str, Mapping[str, float]]) -> str | None:
    """The contender without fine-tuning whose voice perplexity is lowest: what tuning has to beat."""
    measured = [n for n in UNTUNED if n in summary and not math.isnan(summary[n].get("voice_nll", math.nan))]
    return min(measured, key=lambda name: summary[name]["voice_nll"]) if measured else None


def voice_verdict(summary: Mapping[str, Mapping[str, float]], policy: PromotionPolicy) -> tuple[bool, bool, str]:
    """(passed, uncertain, reason) of the new adapter's voice against the strongest untuned contender."""
    tuned = summary["tuned"]
    rival = strongest_untuned(summary)
    if rival is None or math.isnan(tuned.get("voice_gap", math.nan)):
        return True, False, "voice not measured (an evaluation from before voice items)"
    items = int(tuned.get("voice_items", 0))
    compared = (
        f"voice perplexity {tuned['voice_perplexity']:.2f} vs {rival} {summary[rival]['voice_perplexity']:.2f} "
        f"(per-token NLL gap {tuned['voice_gap']:+.3f} [{tuned['voice_gap_low']:+.3f}, {tuned['voice_gap_high']:+.3f}])"
    )
    if items < policy.min_test_items:
        return (
            False,
            True,
            f"too few test items to judge: {items} held-out passages < {policy.min_test_items}; {compared}",
        )
    if tuned["voice_gap"] >= 0:
        return False, False, f"loses to {rival}, which needs no fine-tuning: {compared}"
    if tuned["voice_gap_high"] >= 0:
        return False, True, f"too close to call against {rival} (the interval spans no difference): {compared}"
    return True, False, f"beats {rival} beyond noise: {compared}"


def judge_challenger(summary: Mapping[str, Mapping[str, float]], policy: PromotionPolicy) -> PromotionVerdict:
    """The new adapter ("tuned") against the champion when one was evaluated beside it, else the base model,
    and against the strongest contender without fine-tuning; refused when it regurgitates."""
    incumbent = "champion" if "champion" in summary else "base"
    verdict = promotion_verdict(summary["tuned"], summary[incumbent], policy, incumbent)
    voice_ok, uncertain, voice_reason = voice_verdict(summary, policy)
    reasons = [*verdict.reasons, voice_reason]
    passed = verdict.passed and (voice_ok or (uncertain and policy.promote_when_uncertain))
    if uncertain and policy.promote_when_uncertain and verdict.passed:
        reasons.append("promoted although uncertain: promote_when_uncertain is set")
    memorized = summary["tuned"].get("memorized", 0.0)
    if memorized > policy.max_memorized_share:
        passed = False
        reasons.append(
            f"regurgitates: {memorized:.0%} of its generations share a run of more than {policy.max_shared_words} "
            f"words with the train split (allowed {policy.max_memorized_share:.0%})"
        )
    return PromotionVerdict(passed, verdict.nll_improvement, tuple(reasons), uncertain)
