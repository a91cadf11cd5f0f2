"""The promotion gate: a new adapter replaces the champion only when it is clearly better.

"Clearly" means a lower answer NLL on the same test items by a relative margin, with no
generation metric falling by more than a tolerance, so noise never flips the champion back and forth.
"""

from __future__ import annotations

from dataclasses import dataclass

GUARDED_METRICS = ("rouge_l", "token_f1")


@dataclass(frozen=True)
class PromotionPolicy:
    min_nll_improvement: float = 0.01  # relative: challenger NLL ≤ incumbent NLL × (1 − this)
    metric_tolerance: float = 0.02  # absolute drop allowed in each guarded metric


@dataclass(frozen=True)
class PromotionVerdict:
    passed: bool
    nll_improvement: float  # relative; positive means the challenger's NLL is lower
    reasons: tuple[str, ...]

    @property
    def text(self) -> str:
        return "; ".join(self.reasons)


def promotion_verdict(
    challenger: dict[str, float], incumbent: dict[str, float], policy: PromotionPolicy, incumbent_name: str
) -> PromotionVerdict:
    """Whether `challenger` should replace `incumbent` (the champion, or the base model when none exists)."""
    improvement = (incumbent["nll"] - challenger["nll"]) / incumbent["nll"] if incumbent["nll"] else 0.0
    reasons = []
    nll_ok = improvement >= policy.min_nll_improvement
    reasons.append(
        f"answer NLL {challenger['nll']:.4f} vs {incumbent_name} {incumbent['nll']:.4f} "
        f"({improvement:+.1%}, needs ≥ {policy.min_nll_improvement:+.1%})"
    )
    regressions = [
        f"{metric} fell {incumbent[metric] - challenger[metric]:.4f} "
        f"({incumbent[metric]:.4f} → {challenger[metric]:.4f}, tolerance {policy.metric_tolerance})"
        for metric in GUARDED_METRICS
        if incumbent[metric] - challenger[metric] > policy.metric_tolerance
    ]
    reasons.extend(regressions)
    return PromotionVerdict(nll_ok and not regressions, improvement, tuple(reasons))


def judge_challenger(summary: dict[str, dict[str, float]], policy: PromotionPolicy) -> PromotionVerdict:
    """The new adapter ("tuned") against the champion when one was evaluated beside it, else the base model."""
    incumbent = "champion" if "champion" in summary else "base"
    return promotion_verdict(summary["tuned"], summary[incumbent], policy, incumbent)
