"""The promotion gate and the one step that moves the champion: champion_adapter and the sweep leaderboard
both promote through it, so an adapter is judged the same way whichever asset asks."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.evaluation.gate import PromotionPolicy, PromotionVerdict, judge_challenger
from fine_tune_dag.core.store.registry import current_champion, evaluation_summary, latest_evaluation, promote
from fine_tune_dag.core.store.warehouse import Warehouse


@dataclass(frozen=True)
class GateVerdict:
    """An evaluated adapter, its evaluation's figures and what the gate says of them."""

    version: str
    summary: dict[str, dict[str, float]]
    verdict: PromotionVerdict


def gate_verdict(db: Warehouse, version: str, policy: PromotionPolicy) -> GateVerdict:
    summary = evaluation_summary(db, version)
    return GateVerdict(version, summary, judge_challenger(summary, policy))


def latest_gate_verdict(db: Warehouse, policy: PromotionPolicy) -> GateVerdict:
    """The gate on the newest main-line evaluation."""
    evaluation = latest_evaluation(db)
    if evaluation is None:
        raise StageError("no evaluation yet: materialize eval_report first")
    return gate_verdict(db, evaluation.adapter_version, policy)


@dataclass(frozen=True)
class Promotion:
    """What the promotion step did: `previous` is the champion before it."""

    gate: GateVerdict
    previous: pd.Series | None
    promoted: bool

    @property
    def already_champion(self) -> bool:
        return self.previous is not None and self.previous.version == self.gate.version

    @property
    def text(self) -> str:
        version, verdict = self.gate.version, self.gate.verdict
        if self.already_champion:
            return f"{version} is already the champion"
        if self.promoted:
            return f"promoted {version}: {verdict.text}"
        keeping = "no champion yet" if self.previous is None else f"the champion stays {self.previous.version}"
        return f"adapter {version} did not pass the promotion gate ({verdict.text}); {keeping}"


def promote_through_gate(db: Warehouse, gate: GateVerdict, run_id: str) -> Promotion:
    """Make the adapter the champion when the gate lets it through; the old champion's NLL on the same items
    is recorded beside it when that evaluation compared the two. Changes nothing otherwise."""
    previous = current_champion(db)
    if (previous is not None and previous.version == gate.version) or not gate.verdict.promotes:
        return Promotion(gate, previous, promoted=False)
    incumbent_nll = gate.summary.get("champion", {}).get("nll")
    promote(db, gate.version, gate.summary["tuned"]["nll"], previous, incumbent_nll, gate.verdict.text, run_id)
    return Promotion(gate, previous, promoted=True)
