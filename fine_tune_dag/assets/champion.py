"""champion_adapter: the adapter people use, moved only through the promotion gate on eval_report."""

import dagster as dg

from fine_tune_dag.assets.common import stage_failures
from fine_tune_dag.assets.evaluation import eval_report
from fine_tune_dag.core.common.errors import StageError
from fine_tune_dag.core.common.metadata_keys import ADAPTER_VERSION, DATASET_TRAIN_PAIRS
from fine_tune_dag.core.evaluation.gate import PromotionVerdict, judge_challenger
from fine_tune_dag.core.store.registry import (
    adapter_by_version,
    current_champion,
    evaluation_summary,
    latest_evaluation,
    promote,
)
from fine_tune_dag.core.store.warehouse import Warehouse
from fine_tune_dag.resources.policy import AutomationPolicy
from fine_tune_dag.resources.warehouse import WarehouseResource

BEATS_CHAMPION = "beats_champion"


def _latest_verdict(db: Warehouse, policy: AutomationPolicy) -> tuple[str, dict, PromotionVerdict]:
    evaluation = latest_evaluation(db)
    if evaluation is None:
        raise StageError("no evaluation yet: materialize eval_report first")
    summary = evaluation_summary(db, evaluation.adapter_version)
    return evaluation.adapter_version, summary, judge_challenger(summary, policy.promotion())


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
            version, summary, verdict = _latest_verdict(warehouse.get(), policy)
        return _check_result(version, summary, verdict)

    return beats_champion


def _check_result(version: str, summary: dict, verdict: PromotionVerdict) -> dg.AssetCheckResult:
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
        version, summary, verdict = _latest_verdict(db, policy)
    previous = current_champion(db)
    if previous is not None and previous.version == version:
        context.log.info(f"{version} is already the champion")
    elif not verdict.promotes:
        keeping = "no champion yet" if previous is None else f"the champion stays {previous.version}"
        raise dg.Failure(
            description=f"adapter {version} did not pass the promotion gate ({verdict.text}); {keeping}",
            allow_retries=False,
        )
    else:
        incumbent_nll = summary["champion"]["nll"] if "champion" in summary else None
        promote(db, version, summary["tuned"]["nll"], previous, incumbent_nll, verdict.text, context.run_id)
    champion = adapter_by_version(db, version)
    return dg.MaterializeResult(
        metadata={
            ADAPTER_VERSION: champion.version,
            "path": dg.MetadataValue.path(str(champion.path)),
            "previous_version": "none" if previous is None else str(previous.version),
            "dataset_version": champion.dataset_version,
            DATASET_TRAIN_PAIRS: int(champion.dataset_train_pairs),
            "base_model": champion.base_model,
            "test_nll": round(float(champion.test_nll), 4),
            "gate": verdict.text,
        },
        data_version=dg.DataVersion(champion.version),
    )
