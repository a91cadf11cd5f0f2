"""When each asset runs on its own, in one place: `automation_conditions` is the table, `with_automation`
attaches it to the assets (and builds the gate check with its condition).

Training runs when the train split grew enough since the data the champion (and the last adapter) was
trained on, or (`retrain_on_deletion`) when notes the last adapter trained on left it: a deleted or forgotten
note must stop being known. That is read from materialization metadata, so the decision costs one event-log
lookup per asset and never opens the warehouse."""

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from fine_tune_dag.assets.champion import BEATS_CHAMPION, build_beats_champion, champion_adapter
from fine_tune_dag.assets.chunking import passages
from fine_tune_dag.assets.dataset import dataset_splits
from fine_tune_dag.assets.dpo import dpo_adapter
from fine_tune_dag.assets.edge_cases import edge_cases
from fine_tune_dag.assets.evaluation import eval_report
from fine_tune_dag.assets.models import base_model
from fine_tune_dag.assets.retrieval import retrieval_index
from fine_tune_dag.assets.synthesis import qa_pairs
from fine_tune_dag.assets.training import lora_adapter
from fine_tune_dag.core.common.metadata_keys import (
    ADAPTER_VERSION,
    DATASET_TRAIN_PAIRS,
    DATASET_VERSION,
    TRAIN_NOTES_LOST,
    TRAIN_PAIRS,
)


@dataclass(frozen=True)
class TrainingDataGrowth:
    train_pairs: int  # in the newest dataset_splits
    dataset_version: str
    baseline: int  # train pairs the champion or the last adapter saw, whichever is more
    baseline_from: str
    notes_lost: int = 0  # notes the last adapter trained on that this train split no longer has

    @property
    def new_examples(self) -> int:
        return self.train_pairs - self.baseline

    def describe(self) -> str:
        return (
            f"train split {self.dataset_version or 'not built'} has {self.train_pairs} pairs, "
            f"{self.new_examples:+d} since {self.baseline_from} ({self.baseline}), {self.notes_lost} notes lost"
        )


def _latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def training_data_growth(instance: dg.DagsterInstance) -> TrainingDataGrowth:
    dataset = _latest_metadata(instance, dataset_splits.key)
    baselines = [(0, "nothing trained yet")]
    for asset, label in ((champion_adapter, "champion"), (lora_adapter, "last adapter")):
        trained = _latest_metadata(instance, asset.key)
        if trained:
            baselines.append((int(trained.get(DATASET_TRAIN_PAIRS, 0)), f"{label} {trained.get(ADAPTER_VERSION, '?')}"))
    baseline, source = max(baselines, key=lambda b: b[0])
    version = str(dataset.get(DATASET_VERSION, ""))
    # a split the last adapter was trained on has lost nothing that adapter still knows
    trained_on_it = _latest_metadata(instance, lora_adapter.key).get(DATASET_VERSION) == version
    lost = 0 if trained_on_it else int(dataset.get(TRAIN_NOTES_LOST, 0))
    return TrainingDataGrowth(int(dataset.get(TRAIN_PAIRS, 0)), version, baseline, source, lost)


class TrainingDataGrew(dg.AutomationCondition):
    """True once the train split holds `min_new_examples` more pairs than the newest trained-on data, or, with
    `on_deletion`, once it lost a note the last adapter was trained on."""

    def __init__(self, min_new_examples: int, on_deletion: bool) -> None:
        self.min_new_examples = min_new_examples
        self.on_deletion = on_deletion

    @property
    def name(self) -> str:
        return "training_data_grew"

    @property
    def description(self) -> str:
        lost = " or lost a note the last adapter trained on" if self.on_deletion else ""
        return (
            f"train split grew by at least {self.min_new_examples} pairs since the champion's and last adapter's "
            f"data{lost}"
        )

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        growth = training_data_growth(context.asset_graph_view.instance)
        grew = growth.new_examples >= self.min_new_examples or (self.on_deletion and growth.notes_lost > 0)
        context.log.debug(growth.describe())
        return dg.AutomationResult(context, context.candidate_subset if grew else context.get_empty_subset())


def retrain_condition(min_new_examples: int, on_deletion: bool) -> dg.AutomationCondition:
    """Grown enough (or lost a trained-on note), nothing upstream or itself in flight, and the last attempt did not
    fail (retried nightly)."""
    return (
        TrainingDataGrew(min_new_examples, on_deletion)
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.execution_failed()
    ).with_label(f"retrain when the train split grew by ≥ {min_new_examples}")


def dataset_condition() -> dg.AutomationCondition:
    """Rebuild after any note's pairs change, once no note run is in flight (a burst rebuilds once).

    Unlike `eager()`, it does not wait for missing partitions: a bad note stays missing for good.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("rebuild when any note's pairs changed")


def base_model_condition() -> dg.AutomationCondition:
    """Resolved as soon as automation starts, so the first training does not wait for a download;
    a failed resolution (no network) is not retried in a loop."""
    return (
        dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.execution_failed()
    )


def edge_cases_condition() -> dg.AutomationCondition:
    """After each new adapter (not after every dataset rebuild)."""
    return dg.AutomationCondition.eager().replace(
        "any_deps_updated",
        dg.AutomationCondition.any_deps_updated().allow(dg.AssetSelection.assets(lora_adapter)),
    )


def evaluation_condition() -> dg.AutomationCondition:
    """After a new supervised or DPO adapter, or new edge cases; most people never train a DPO adapter, so its
    absence must not hold evaluation back, and a missing retrieval index only leaves out the retrieval contenders."""
    return (
        dg.AutomationCondition.eager()
        .replace(
            "any_deps_updated",
            dg.AutomationCondition.any_deps_updated().allow(
                dg.AssetSelection.assets(lora_adapter, dpo_adapter, edge_cases)
            ),
        )
        .replace(
            "any_deps_missing",
            dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets(dpo_adapter, retrieval_index)),
        )
    )


def automation_conditions(min_new_examples: int, on_deletion: bool) -> dict[str, dg.AutomationCondition]:
    """Asset (or check) name → its condition. Assets not named here run only when asked (jobs, the UI)."""
    return {
        passages.key.to_user_string(): dg.AutomationCondition.eager(),
        qa_pairs.key.to_user_string(): dg.AutomationCondition.eager(),
        dataset_splits.key.to_user_string(): dataset_condition(),
        retrieval_index.key.to_user_string(): dataset_condition().with_label(
            "rebuild when any note's passages changed"
        ),
        base_model.key.to_user_string(): base_model_condition(),
        lora_adapter.key.to_user_string(): retrain_condition(min_new_examples, on_deletion),
        edge_cases.key.to_user_string(): edge_cases_condition(),
        eval_report.key.to_user_string(): evaluation_condition(),
        # requested in the same run as eval_report and its blocking check, which stops it when it fails
        champion_adapter.key.to_user_string(): dg.AutomationCondition.eager(),
        BEATS_CHAMPION: dg.AutomationCondition.eager(),
    }


def with_automation(
    assets: Sequence[dg.AssetsDefinition], min_new_examples: int, on_deletion: bool
) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The assets with their conditions attached, and the gate check built with its own."""
    conditions = automation_conditions(min_new_examples, on_deletion)

    def attach(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = conditions.get(spec.key.to_user_string())
        return spec if condition is None else spec.replace_attributes(automation_condition=condition)

    return [asset.map_asset_specs(attach) for asset in assets], [build_beats_champion(conditions[BEATS_CHAMPION])]
