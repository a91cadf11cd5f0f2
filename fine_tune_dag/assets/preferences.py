"""preference_candidates → (people choose on `fine-tune-dag annotate`) → preference_pairs.

Neither asset runs on its own: comparisons cost model time and wait for people, so they are
materialized when someone wants more to label (`preference_candidates`) or has labelled
(`preference_pairs`, then `dpo_adapter`).
"""

import dagster as dg

from fine_tune_dag.assets.common import as_metadata, loads_its_own_model, stage_failures
from fine_tune_dag.assets.config import PreferenceCandidatesConfig
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.edge_cases import edge_cases
from fine_tune_dag.assets.tags import GPU_STEP_TAGS
from fine_tune_dag.core.common.fingerprint import fingerprint
from fine_tune_dag.core.common.markdown import preview
from fine_tune_dag.core.evaluation.config import PreferenceSettings
from fine_tune_dag.core.store.labels import candidates_and_labels, replace_preference_pairs
from fine_tune_dag.resources.artifacts import ArtifactStoreResource
from fine_tune_dag.resources.llm import LLMResource
from fine_tune_dag.resources.warehouse import WarehouseResource


@dg.asset(
    # The champion is read from the registry when the step runs, as eval_report reads it: a declared
    # dependency would close a cycle (champion → comparisons → DPO → evaluation → champion). Every
    # comparison records the champion version it came from.
    deps=[dataset_splits, edge_cases],
    group_name="preferences",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    kinds={"pytorch", "duckdb"},
    code_version=f"preference-candidates-1+{fingerprint(PreferenceSettings())}",
)
@loads_its_own_model
def preference_candidates(
    context: dg.AssetExecutionContext,
    config: PreferenceCandidatesConfig,
    warehouse: WarehouseResource,
    artifacts: ArtifactStoreResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    """Two answers from different sources (champion vs best-prompted base, the champion at two
    temperatures, the author's passage vs the champion) to train-split questions and edge cases not yet
    compared for this champion; added to the comparisons people label, never replacing one."""
    from fine_tune_dag.core.workflows.preferences import add_comparisons

    db = warehouse.get()
    with stage_failures():
        metadata = add_comparisons(
            db, config.settings(), artifacts.get(), lambda: llm.judge(config.judge, db, context), context.log
        )
    return dg.MaterializeResult(metadata=as_metadata(metadata))


@dg.asset(
    deps=[preference_candidates],
    group_name="preferences",
    pool="duckdb",
    kinds={"duckdb"},
    code_version="preference-pairs-1",
)
def preference_pairs(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Chosen/rejected answers from the comparisons: a person's latest choice wins over the judge's; ties
    and skips are left out."""
    from fine_tune_dag.core.evaluation.preferences import pairs_from_labels

    db = warehouse.get()
    pairs, counts = pairs_from_labels(*candidates_and_labels(db))
    replace_preference_pairs(db, pairs)
    if counts["overruled_judge"]:
        context.log.info(f"people overruled the judge on {counts['overruled_judge']} comparisons")
    return dg.MaterializeResult(
        metadata={
            "pairs": len(pairs),
            **counts,
            "chosen_origins": dg.MetadataValue.json(pairs["chosen_origin"].value_counts().to_dict()),
            "preview": dg.MetadataValue.md(preview(pairs, ["question", "chosen_origin", "rejected_origin", "labeler"])),
        },
        data_version=dg.DataVersion(fingerprint(pairs[["candidate_id", "chosen"]].values.tolist())),
    )
