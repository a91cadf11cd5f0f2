"""champion_adapter: the adapter people use, moved only through the promotion gate on eval_report."""

import dagster as dg

from fine_tune_dag.assets.common import stage_failures
from fine_tune_dag.assets.evaluation import eval_report
from fine_tune_dag.core.common.metadata_keys import ADAPTER_VERSION, DATASET_TRAIN_PAIRS
from fine_tune_dag.core.store.registry import adapter_by_version
from fine_tune_dag.core.workflows.champion import GateVerdict, latest_gate_verdict, promote_through_gate
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource

BEATS_CHAMPION = "beats_champion"


def build_beats_champion(automation_condition: dg.AutomationCondition) -> dg.AssetChecksDefinition:
    """The blocking gate check; built with its automation condition, which automation/conditions.py chooses."""

    @dg.asset_check(
        name=BEATS_CHAMPION,
        asset=eval_report,
        blocking=True,
        automation_condition=automation_condition,
        description="The evaluated adapter beats every contender without fine-tuning on voice and answer NLL "
        "beyond noise, and is not worse than the champion beyond the margin (paired intervals resampling "
        "held-out notes). Blocks champion_adapter when it fails.",
    )
    def beats_champion(warehouse: WarehouseResource, policy: AutomationPolicy) -> dg.AssetCheckResult:
        with stage_failures():
            gate = latest_gate_verdict(warehouse.get(), policy.promotion())
        return _check_result(gate)

    return beats_champion


def _check_result(gate: GateVerdict) -> dg.AssetCheckResult:
    version, summary, verdict = gate.version, gate.summary, gate.verdict
    return dg.AssetCheckResult(
        passed=verdict.promotes,
        severity=dg.AssetCheckSeverity.ERROR,
        description=verdict.text,
        metadata={
            "challenger": version,
            "incumbent": "champion" if "champion" in summary else "none yet",
            "uncertain": verdict.uncertain,
            "reasons": dg.MetadataValue.md("\n".join(f"- {reason}" for reason in verdict.reasons)),
            "challenger_nll": round(summary["tuned"]["nll"], 4),
        },
    )


@dg.asset(
    deps=[eval_report],
    group_name="evaluation",
    pool="duckdb",
    kinds={"duckdb"},
    code_version="champion-1",
)
def champion_adapter(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: AutomationPolicy
) -> dg.MaterializeResult:
    """Points at the newest evaluated adapter once it passed the gate; refuses (and changes nothing) otherwise."""
    db = warehouse.get()
    with stage_failures():
        promotion = promote_through_gate(db, latest_gate_verdict(db, policy.promotion()), context.run_id)
    if promotion.already_champion:
        context.log.info(promotion.text)
    elif not promotion.promoted:
        raise dg.Failure(description=promotion.text, allow_retries=False)
    previous = promotion.previous
    champion = adapter_by_version(db, promotion.gate.version)
    return dg.MaterializeResult(
        metadata={
            ADAPTER_VERSION: champion.version,
            "path": dg.MetadataValue.path(str(champion.path)),
            "previous_version": "none" if previous is None else str(previous.version),
            "dataset_version": champion.dataset_version,
            DATASET_TRAIN_PAIRS: int(champion.dataset_train_pairs),
            "base_model": champion.base_model,
            "test_nll": round(float(champion.test_nll), 4),
            "gate": promotion.gate.verdict.text,
        },
        data_version=dg.DataVersion(champion.version),
    )
